"""Pattern-based redaction in the core's log configuration (``Gateway.log_redactions``)."""

from __future__ import annotations

import logging
from typing import ClassVar

import pytest
from claudemesh_gateway import Gateway, Outbound, SendResult
from claudemesh_gateway.logconfig import RedactionFilter, SecretRegistry, register_patterns


def test_a_pattern_masks_its_secret_group_or_the_whole_match():
    reg = SecretRegistry()
    reg.add_pattern(r"/media/(?P<secret>[A-Za-z0-9_-]+)")
    reg.add_pattern(r"sk-[0-9a-f]{8,}")
    assert reg.redact("GET /gateways/wa/media/AbC_12-x HTTP/1.1") == "GET /gateways/wa/media/*** HTTP/1.1"
    assert reg.redact("key sk-0123456789abcdef used twice: sk-0123456789abcdef") == "key *** used twice: ***"
    assert reg.redact("nothing here") == "nothing here"
    reg.clear()
    assert reg.redact("/media/AbC") == "/media/AbC"


@pytest.mark.parametrize("bad", ["(unclosed", r"\d*"])
def test_a_bad_pattern_is_refused(bad):
    with pytest.raises(ValueError, match="redaction pattern"):
        SecretRegistry().add_pattern(bad)


def test_the_filter_scrubs_message_args_and_every_extra_field():
    reg = SecretRegistry()
    reg.add_pattern(r"/media/(?P<secret>\w+)")
    record = logging.makeLogRecord({"msg": 'fetch "%s" done', "args": ("GET /media/tok1",),
                                    "first_request_line": "GET /media/tok1 HTTP/1.1", "gateway": "wa /media/tok2"})
    RedactionFilter(reg).filter(record)
    assert record.getMessage() == 'fetch "GET /media/***" done'
    assert record.first_request_line == "GET /media/*** HTTP/1.1"
    assert record.gateway == "wa /media/***"


async def test_create_app_registers_each_gateway_class_patterns(tmp_path):
    from claudemesh_gateway import hookimpl
    from claudemesh_gateway.app import create_app
    from claudemesh_gateway.logconfig import SECRETS
    from claudemesh_gateway.plugin_manager import make_plugin_manager
    from claudemesh_gateway.settings import settings_from_dict

    class Tokens(Gateway):
        kind = "tokens"
        log_redactions: ClassVar[tuple[str, ...]] = (r"cap=(?P<secret>[a-z0-9]{6,})",)

        async def start(self) -> None: ...
        async def stop(self) -> None: ...
        async def send(self, out: Outbound) -> SendResult:
            return SendResult()

    class Plugin:
        @hookimpl
        def register_gateways(self, register):
            register(Tokens)

    pm = make_plugin_manager(entry_points=False)
    pm.register(Plugin(), name="tokens-plugin")
    settings = settings_from_dict({"server": {"store_path": str(tmp_path / "s.db")}, "gateways": {"tok": {"type": "tokens"}}})
    create_app(settings, pm)
    assert SECRETS.redact("url?cap=abcdef123") == "url?cap=***"


def test_register_patterns_is_idempotent():
    reg = SecretRegistry()
    reg.add_pattern(r"dup-(?P<secret>\d{4,})")
    reg.add_pattern(r"dup-(?P<secret>\d{4,})")
    assert reg.redact("dup-12345 dup-678") == "dup-*** dup-678"
    register_patterns([])  # nothing to add is fine
