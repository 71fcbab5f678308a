"""Found by tests/fuzz (issue 16): a Socket Mode envelope whose payload can never parse (not an object,
or an event_callback the wire models refuse) was left un-acked with an ERROR traceback, so Slack would
redeliver it on every connection. Now it is acknowledged and skipped with one WARNING line."""

from __future__ import annotations

import logging

import pytest
from claudemesh_gateway.testing import wait_until


@pytest.mark.parametrize("payload", [
    [],                                                        # not an object: slack_sdk cannot read it
    7,
    {"type": "event_callback", "event": "not an object"},      # the wire models refuse these
    {"type": "event_callback", "event": {"type": "message", "text": {"x": 1}, "channel": "C1"}},
    {"event": {"type": "message"}},                            # no type
])
async def test_defect16_socket_unreadable_envelope_is_acked_and_skipped(make_gateway, fake_slack, sk, caplog,
                                                                        payload):
    gw = await make_gateway(mode="socket")
    caplog.set_level(logging.INFO, logger="claudemesh_gateway.plugins.slack")
    env = await fake_slack.push(payload, wait_ack=False)
    await wait_until(lambda: env in fake_slack.acks, 10, "the unreadable envelope's ack")
    assert gw.ctx.submitted == []
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and "skipped a Socket Mode" in lines[0].getMessage()
    assert not [r for r in caplog.records if r.exc_info]       # no traceback
    # the socket is still the same one, and the next event flows
    await fake_slack.push(sk.event_callback(sk.message_event("after the bad one"), event_id="EvAfter"))
    await wait_until(lambda: [m.text for m in gw.ctx.submitted] == ["after the bad one"], 10, "the good event")
    assert fake_slack.connections_opened == 1
