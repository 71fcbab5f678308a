"""Issue 15, done-when: with OpenTelemetry on and an in-process exporter, one message yields ONE trace
with the expected spans across a restart of the gateway between receive and deliver (the trace
context travels in the outbox row), and the delivery's log lines carry the trace id."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import pytest

pytest.importorskip("opentelemetry.sdk")

from claudemesh_gateway.plugins.webhook.testing import WebhookSink, signed_post
from claudemesh_gateway.testing import build_test_app
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

WH = "otel-webhook-secret-0123456789"


@pytest.fixture
def spans():
    """The process's global tracer provider ([otel] exporter = "global") with an in-memory exporter."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        trace.set_tracer_provider(TracerProvider())
        provider = trace.get_tracer_provider()
    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    try:
        yield exporter
    finally:
        processor.shutdown()  # stop recording into this exporter (the provider may live on)


def config(sink: WebhookSink) -> dict:
    return {
        "gateways": {"wh": {"type": "webhook", "secret": WH}},
        "otel": {"enabled": True, "exporter": "global"},
        "delivery": {"backoff_base": 0.05, "backoff_cap": 0.1, "drain_timeout": 0.3, "poll_interval": 0.5},
        "routes": [{"name": "alerts", "binds": [
            {"gateway": "wh", "chat": "src", "direction": "in"},
            {"gateway": "wh", "chat": "up", "direction": "out", "options": {"url": sink.url("up")}}]}],
    }


async def test_one_trace_from_receive_to_deliver_across_a_restart(tmp_path: Path, aiohttp_server, spans, caplog):
    sink = WebhookSink(WH)
    server = await aiohttp_server(sink.app(), host="127.0.0.1")
    sink.base = str(server.make_url("/sink"))
    state = tmp_path / "gw"

    # 1st process: receives and enqueues; its delivery hangs at the sink and the process stops
    sink.delay_s = 30
    client, _runtime = await build_test_app(config(sink), state_dir=state)
    try:
        body, headers = signed_post({"id": "o1", "sender": "ann", "text": "hello"}, WH)
        assert (await client.post("/gateways/wh/src", data=body, headers=headers)).status == 200
        async with asyncio.timeout(20):
            while not sink.attempts["up"]:  # noqa: ASYNC110 - the send is in flight
                await asyncio.sleep(0.02)
    finally:
        await client.close()  # shutdown: the in-flight send is cancelled, the item stays queued
    first = {s.name for s in spans.get_finished_spans()}
    assert first == {"receive", "route"}, first

    # 2nd process, same store: the first attempt fails (503), the retry is delivered
    sink.delay_s = 0
    sink.script["up"] = lambda body, n: (503, {}) if n == 2 else (200, {})  # n counts the 1st process's too
    caplog.set_level(logging.INFO, logger="claudemesh_gateway.delivery")
    client, _runtime = await build_test_app(config(sink), state_dir=state)
    try:
        async with asyncio.timeout(20):
            while not sink.received["up"]:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        async with asyncio.timeout(10):
            while sum(s.name == "deliver" for s in spans.get_finished_spans()) < 2:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
    finally:
        await client.close()

    finished = spans.get_finished_spans()
    by_name: dict[str, list] = {}
    for s in finished:
        by_name.setdefault(s.name, []).append(s)
    assert sorted(by_name) == ["deliver", "receive", "route"]
    (receive,) = by_name["receive"]
    (route,) = by_name["route"]
    delivers = sorted(by_name["deliver"], key=lambda s: s.start_time)
    assert len(delivers) == 2
    tid = receive.context.trace_id
    assert {s.context.trace_id for s in finished} == {tid}, "one trace for the whole journey"
    assert receive.parent is None
    assert route.parent.span_id == receive.context.span_id
    assert all(d.parent.span_id == receive.context.span_id for d in delivers)  # from the outbox row
    assert receive.attributes["messaging.message.id"] == "webhook:wh:src:o1"
    assert receive.attributes["cmgw.native_id"] == "o1"
    assert list(route.attributes["cmgw.lanes"]) == ["wh/up"]
    assert delivers[0].status.status_code is StatusCode.ERROR and "503" in delivers[0].status.description
    assert delivers[1].status.status_code is StatusCode.UNSET
    assert delivers[1].attributes["cmgw.lane"] == "wh/up" and delivers[1].attributes["cmgw.route"] == "alerts"
    # the failed attempt's log line carries the trace id
    lines = [r for r in caplog.records if "retrying in" in r.getMessage()]
    assert lines and all(getattr(r, "trace_id", None) == format(tid, "032x") for r in lines)


def test_otel_off_imports_nothing_and_leaves_log_records_alone() -> None:
    import subprocess

    code = ("import sys, logging; from claudemesh_gateway.settings import settings_from_dict;"
            "from claudemesh_gateway.otel import build_otel;"
            "s = settings_from_dict({}); assert build_otel(s.otel) is None;"
            "import claudemesh_gateway.app, claudemesh_gateway.delivery, claudemesh_gateway.routing;"
            "assert not [m for m in sys.modules if m.startswith('opentelemetry')], 'imported';"
            "assert logging.getLogRecordFactory() is logging.LogRecord")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
