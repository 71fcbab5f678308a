"""Log redaction (message, args, exception text, JSON) and the TaskSupervisor."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import pytest
from claudemesh_gateway.logconfig import JsonFormatter, RedactionFilter, SecretRegistry, TextFormatter
from claudemesh_gateway.settings import settings_from_dict
from claudemesh_gateway.tasks import TaskSupervisor

TOKEN = "123456:AAE-secret-bot-token"


def make_logger(fmt: logging.Formatter, registry: SecretRegistry) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(fmt)
    handler.addFilter(RedactionFilter(registry))
    logger = logging.getLogger(f"cmgw-test-{id(stream)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, stream


def test_redaction_of_message_args_and_exception_text() -> None:
    from claudemesh_gateway.settings import iter_secrets

    settings = settings_from_dict({"gateways": {"tg": {"type": "telegram", "token": TOKEN}},
                                   "admin": {"jwt_secret": "j" * 40}})
    reg = SecretRegistry()
    for s in iter_secrets(settings):
        reg.add(s)
    logger, stream = make_logger(TextFormatter("%(levelname)s %(message)s"), reg)
    logger.warning("send failed: %s", f"400, url='https://api.telegram.org/bot{TOKEN}/sendMessage'")
    try:
        raise RuntimeError(f"boom at /bot{TOKEN}/getUpdates with {'j' * 40}")
    except RuntimeError:
        logger.exception("poll failed", extra={"gateway": "tg"})
    out = stream.getvalue()
    assert TOKEN not in out and "j" * 40 not in out
    assert "/bot***/sendMessage" in out and "/bot***/getUpdates" in out
    assert "[gateway=tg]" in out and "Traceback" in out


def test_url_encoded_secret_is_scrubbed_and_short_values_ignored() -> None:
    reg = SecretRegistry()
    reg.add("p@ss word/1")
    reg.add("ab")  # too short to scrub safely
    logger, stream = make_logger(logging.Formatter("%(message)s"), reg)
    logger.info("q=p%40ss%20word%2F1 and p%40ss+word%2F1 and ab")
    assert stream.getvalue().strip() == "q=*** and *** and ab"


def test_json_format_carries_structured_fields_and_redacts() -> None:
    reg = SecretRegistry()
    reg.add(TOKEN)
    logger, stream = make_logger(JsonFormatter(), reg)
    logger.info("delivered via %s", TOKEN, extra={"route": "ops", "message_id": "m1", "gateway": "tg"})
    row = json.loads(stream.getvalue())
    assert row["msg"] == "delivered via ***"
    assert (row["route"], row["message_id"], row["gateway"], row["level"]) == ("ops", "m1", "tg", "INFO")


async def test_supervisor_runs_logs_failures_and_refuses_after_close(caplog: pytest.LogCaptureFixture) -> None:
    sup = TaskSupervisor("t")
    done = asyncio.Event()

    async def ok() -> None:
        done.set()

    async def bad() -> None:
        raise ValueError("kaput")

    sup.spawn(ok(), what="ok")
    with caplog.at_level(logging.ERROR, logger="claudemesh_gateway.tasks"):
        sup.spawn(bad(), what="bad")
        await asyncio.wait_for(done.wait(), 2)
        await sup.aclose(grace=1)
    assert "t: background bad failed" in caplog.text
    assert len(sup) == 0
    coro = ok()
    with pytest.raises(RuntimeError, match="shutting down"):
        sup.spawn(coro, what="late")
    assert coro.cr_frame is None  # closed, not left un-awaited


async def test_supervisor_cancels_what_outlives_the_grace() -> None:
    sup = TaskSupervisor("t")
    cancelled = asyncio.Event()
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    sup.spawn(forever(), what="forever")
    await started.wait()
    await sup.aclose(grace=0.05)
    assert cancelled.is_set() and len(sup) == 0

