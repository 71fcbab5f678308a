"""The core's one Retry-After parser (claudemesh_gateway.retry_after), which every gateway uses."""

from __future__ import annotations

import pytest
from claudemesh_gateway.retry_after import RETRY_AFTER_CAP, parse_retry_after, retry_after_header


def test_retry_after_parsing():
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("garbage") is None
    assert parse_retry_after("99999") == 3600.0
    when = "Wed, 21 Oct 2015 07:28:00 GMT"
    assert parse_retry_after(when, now=1445412470.0) == pytest.approx(10.0)


def test_retry_after_bounds():
    assert parse_retry_after("-5") == 0.0
    assert parse_retry_after(" 2.5 ") == 2.5
    assert parse_retry_after("nan") is None
    assert parse_retry_after("inf") == RETRY_AFTER_CAP
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480.0 + 60) == 0.0  # in the past
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=0.0) == RETRY_AFTER_CAP
    assert parse_retry_after("120", cap=30.0) == 30.0


def test_retry_after_header_any_case():
    assert retry_after_header({"Content-Type": "x", "retry-after": "3"}) == 3.0
    assert retry_after_header({"Retry-After": ["4", "9"]}) == 4.0
    assert retry_after_header({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, now=1445412475.0) == \
        pytest.approx(5.0)
    assert retry_after_header({}) is None
    assert retry_after_header(None) is None


def test_every_plugin_uses_the_core_parser():
    """Slack's, WhatsApp's and Telegram's Retry-After handling read HTTP-dates and cap, as the webhook
    gateway does (WhatsApp's: tests/whatsapp/test_whatsapp_egress.py, through its fake Twilio)."""
    from claudemesh_gateway.plugins.slack import api as slack
    from slack_sdk.errors import SlackApiError
    from slack_sdk.web.async_slack_response import AsyncSlackResponse

    def limited(value: str) -> SlackApiError:
        resp = AsyncSlackResponse(client=None, http_verb="POST", api_url="http://127.0.0.1/api/chat.postMessage",
                                  req_args={}, data={"ok": False, "error": "ratelimited"},
                                  headers={"Retry-After": value}, status_code=429)
        return SlackApiError("ratelimited", resp)

    date = "Wed, 21 Oct 2015 07:28:00 GMT"
    assert slack.retry_after(limited("99999")) == RETRY_AFTER_CAP
    assert slack.retry_after(limited(date)) == parse_retry_after(date)
    assert slack.retry_after(limited("7")) == 7.0

    from claudemesh_gateway.plugins.telegram.transport import retry_after_seconds
    from telegram.error import RetryAfter

    assert retry_after_seconds(RetryAfter(99999)) == RETRY_AFTER_CAP
    assert retry_after_seconds(RetryAfter(3)) == 3.0
