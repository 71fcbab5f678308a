"""OpenTelemetry: a span per message step, one trace per message from receive to deliver.

Optional (``pip install 'claudemesh-gateway[otel]'``) and off by default (``[otel] enabled``). Off,
nothing here is imported and the message path pays nothing. On, the message trace recorder
(:mod:`.trace`) hands each step to :class:`OtelSink`:

* ``receive`` — a root span from the message's arrival to its routing outcome (attributes: message
  id, source, native id; ``cmgw.dropped`` = the reason when it was dropped);
* ``route`` — child of ``receive``: the routes matched and the outbox items made. Before the items
  are written, their ``options["traceparent"]`` gets the W3C trace context of ``receive``: the
  context travels in the outbox row, so the deliver spans join the same trace even when another
  process (after a restart) delivers;
* ``deliver`` — one per delivery attempt, child of that context (lane, route, attempt, native ids;
  status ERROR with the error and retry-after for a failed one); ``dead_letter``, ``dlq_retry``,
  ``dlq_drop`` likewise.

Spans go to an OTLP/HTTP exporter (``[otel] endpoint``, or the ``OTEL_EXPORTER_OTLP_*`` environment),
or to the process's global tracer provider (``exporter = "global"``: an embedding application or
``opentelemetry-instrument`` set one up). While a delivery runs, log records carry its ``trace_id``.
"""

from __future__ import annotations

import collections
import logging
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, SecretStr

from .errors import StartupError
from .logconfig import TRACE_ID, install_trace_ids, uninstall_trace_ids

if TYPE_CHECKING:
    from .store.base import OutboxItem, TraceEvent

__all__ = ["OtelSettings", "OtelSink", "build_otel"]

log = logging.getLogger(__name__)

OPEN_MAX = 10_000  # receive spans awaiting their routing outcome (a bug that never ends one cannot grow this)


class OtelSettings(BaseModel):
    """``[otel]``: OpenTelemetry export of the message steps (needs the ``otel`` extra)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    exporter: Literal["otlp", "global"] = "otlp"
    endpoint: str | None = None  # OTLP/HTTP traces URL, e.g. http://collector:4318/v1/traces
    headers: dict[str, SecretStr] = {}  # e.g. an API key of a hosted collector (redacted in logs)
    service_name: str = "claudemesh-gateway"


def _ns(ts: float) -> int:
    return int(ts * 1e9)


class OtelSink:
    """Turns :class:`~claudemesh_gateway.store.base.TraceEvent` steps into spans of ``provider``."""

    def __init__(self, provider: Any, *, owns_provider: bool = False) -> None:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._trace = trace
        self._prop = TraceContextTextMapPropagator()
        self.provider = provider
        self.owns_provider = owns_provider
        self.tracer = provider.get_tracer("claudemesh_gateway")
        self._open: collections.OrderedDict[str, Any] = collections.OrderedDict()
        install_trace_ids()

    # -- context in the outbox row -----------------------------------------------------------------
    def _traceparent(self, span: Any) -> str | None:
        carrier: dict[str, str] = {}
        self._prop.inject(carrier, context=self._trace.set_span_in_context(span))
        return carrier.get("traceparent")

    def _context(self, traceparent: str | None) -> Any:
        return self._prop.extract({"traceparent": traceparent}) if traceparent else None

    def stamp(self, message_id: str, items: list[OutboxItem]) -> list[OutboxItem]:
        """``items`` with the message's trace context in ``options["traceparent"]``."""
        import dataclasses

        span = self._open.get(message_id)
        tp = self._traceparent(span) if span is not None else None
        if tp is None:
            return items
        return [dataclasses.replace(i, options={**i.options, "traceparent": tp}) for i in items]

    def attach(self, traceparent: str | None) -> Any:
        """Log records of this task carry the trace id of ``traceparent`` until :meth:`detach`."""
        ctx = self._context(traceparent)
        if ctx is None:
            return None
        sc = self._trace.get_current_span(ctx).get_span_context()
        return TRACE_ID.set(format(sc.trace_id, "032x")) if sc.is_valid else None

    @staticmethod
    def detach(token: Any) -> None:
        if token is not None:
            TRACE_ID.reset(token)

    # -- steps -------------------------------------------------------------------------------------------
    def on_event(self, ev: TraceEvent, traceparent: str | None = None) -> None:
        try:
            self._on_event(ev, traceparent)
        except Exception:
            log.debug("otel: span for %s %s failed", ev.step, ev.message_id, exc_info=True)

    def _on_event(self, ev: TraceEvent, traceparent: str | None) -> None:
        d = ev.detail
        t = _ns(ev.ts)
        if ev.step == "received":
            attrs = {"messaging.message.id": ev.message_id, "cmgw.source": d.get("source", ""),
                     "cmgw.gateway": d.get("gateway", "")}
            if d.get("native_id"):
                attrs["cmgw.native_id"] = d["native_id"]
            span = self.tracer.start_span("receive", context=self._trace.set_span_in_context(
                self._trace.INVALID_SPAN), start_time=t, attributes=attrs)
            self._open[ev.message_id] = span
            while len(self._open) > OPEN_MAX:
                _mid, old = self._open.popitem(last=False)
                old.end()
            return
        if ev.step == "duplicate":
            span = self.tracer.start_span("duplicate", start_time=t, context=self._trace.set_span_in_context(
                self._trace.INVALID_SPAN), attributes={"messaging.message.id": ev.message_id, "cmgw.dedup": "duplicate"})
            span.end(end_time=t)
            return
        if ev.step in ("dropped", "queued"):
            root = self._open.pop(ev.message_id, None)
            if root is None:
                return
            if ev.step == "dropped":
                root.set_attribute("cmgw.dropped", d.get("reason", ""))
                if d.get("rule"):
                    root.set_attribute("cmgw.rule", d["rule"])
            else:
                child = self.tracer.start_span("route", context=self._trace.set_span_in_context(root), start_time=t,
                                               attributes={"cmgw.routes": list(d.get("routes", [])),
                                                           "cmgw.lanes": [i.get("lane", "") for i in d.get("items", [])]})
                child.end(end_time=t)
            root.end(end_time=t)
            return
        # a step of one outbox item: its context came with the row
        ctx = self._context(traceparent)
        if ctx is None:
            return
        attrs = {"messaging.message.id": ev.message_id, "cmgw.lane": d.get("lane", ""), "cmgw.route": d.get("route", "")}
        if ev.outbox_id is not None:
            attrs["cmgw.outbox_id"] = ev.outbox_id
        if "attempt" in d:
            attrs["cmgw.attempt"] = d["attempt"]
        start = t
        if ev.step == "delivered":
            attrs["cmgw.native_ids"] = [str(n) for n in d.get("native_ids", [])]
            start = t - int(float(d.get("took_ms", 0)) * 1e6)
        if d.get("retry_after") is not None:
            attrs["cmgw.retry_after"] = float(d["retry_after"])
        if d.get("actor"):
            attrs["cmgw.actor"] = d["actor"]
        name = "deliver" if ev.step in ("delivered", "failed") else ev.step
        span = self.tracer.start_span(name, context=ctx, start_time=start, attributes=attrs)
        if ev.step in ("failed", "dead_letter"):
            from opentelemetry.trace import Status, StatusCode

            span.set_status(Status(StatusCode.ERROR, str(d.get("error", ""))[:500]))
        span.end(end_time=t)

    def shutdown(self) -> None:
        for span in self._open.values():
            span.end()
        self._open.clear()
        uninstall_trace_ids()
        if self.owns_provider:
            try:
                self.provider.shutdown()  # flushes the batch exporter
            except Exception:
                log.warning("otel: the exporter did not shut down cleanly", exc_info=True)


def build_otel(cfg: OtelSettings | None) -> OtelSink | None:
    """The sink ``cfg`` asks for, or None (off: nothing imported)."""
    if cfg is None or not cfg.enabled:
        return None
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise StartupError("[otel] enabled needs the otel extra: pip install 'claudemesh-gateway[otel]'") from exc
    if cfg.exporter == "global":
        return OtelSink(trace.get_tracer_provider())
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        raise StartupError("[otel] exporter = \"otlp\" needs opentelemetry-exporter-otlp-proto-http "
                           "(pip install 'claudemesh-gateway[otel]')") from exc
    provider = TracerProvider(resource=Resource.create({"service.name": cfg.service_name}))
    exporter = OTLPSpanExporter(endpoint=cfg.endpoint,
                                headers={k: v.get_secret_value() for k, v in cfg.headers.items()} or None)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    log.info("OpenTelemetry: exporting message spans over OTLP/HTTP to %s", cfg.endpoint or "the OTEL_* default")
    return OtelSink(provider, owns_provider=True)
