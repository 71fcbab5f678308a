"""Prometheus metrics (prometheus-client), one registry per app.

Counters move on ``track_event`` (this module registers itself as an observer
plugin); gauges that describe current state (queue depth, oldest item age, dead
letters, connection states) are refreshed from the runtime at each scrape.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .. import events as ev
from ..hookspecs import hookimpl

if TYPE_CHECKING:
    from ..runtime import Runtime

log = logging.getLogger(__name__)

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

SKIP_REASONS = ("beyond_window", "backfill_cap")  # TopicPoller.skipped keys
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class Metrics:
    """Holds every metric of one gateway process; also a pluggy observer plugin."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        p = "claudemesh_gateway_"
        self.received = Counter(p + "messages_received", "Messages received from a source", ["gateway"], registry=r)
        self.queued = Counter(p + "messages_queued", "Outbox rows enqueued", ["route", "gateway"], registry=r)
        self.delivered = Counter(p + "messages_delivered", "Messages delivered", ["route", "gateway"], registry=r)
        self.dropped = Counter(p + "messages_dropped", "Messages dropped before routing", ["gateway", "reason"],
                               registry=r)
        self.failed = Counter(p + "delivery_failures", "Failed delivery attempts", ["route", "gateway", "kind"],
                              registry=r)
        self.latency = Histogram(p + "delivery_latency_seconds", "Enqueue-to-delivered latency", ["gateway"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.vendor_status = Counter(p + "vendor_status", "Vendor delivery status callbacks", ["gateway", "status"],
                                     registry=r)
        self.queue_depth = Gauge(p + "queue_depth", "Queued outbox items per destination", ["lane"], registry=r)
        self.queue_oldest = Gauge(p + "queue_oldest_age_seconds", "Age of the oldest queued item per destination",
                                  ["lane"], registry=r)
        self.dead_letters = Gauge(p + "dead_letters", "Dead letters waiting for retry or drop", registry=r)
        self.rate_waits = Gauge(p + "rate_limit_waits", "Sends that waited for a rate-limit token (cumulative)",
                                registry=r)
        self.throttled = Gauge(p + "vendor_429", "429 / retry_after answers from vendors (cumulative)", registry=r)
        self.state = Gauge(p + "component_up", "1 when a mesh or gateway is connected", ["component", "kind"],
                           registry=r)
        self.state_changes = Counter(p + "state_changes", "State transitions", ["component", "state"], registry=r)
        self.mesh_reconnects = Gauge(p + "mesh_reconnects", "Mesh reconnects since start (cumulative)", ["mesh"],
                                     registry=r)
        self.mesh_bad_frames = Gauge(p + "mesh_bad_frames", "Frames from the broker dropped as bad (cumulative)",
                                     ["mesh", "reason"], registry=r)
        self.poll_age = Gauge(p + "mesh_poll_age_seconds", "Seconds since a topic poll last completed",
                              ["mesh", "topic"], registry=r)
        self.poll_latency = Gauge(p + "mesh_poll_latency_seconds", "Duration of the last topic poll",
                                  ["mesh", "topic"], registry=r)
        self.topic_skipped = Counter(p + "mesh_topic_rows_skipped",
                                     "Unseen topic rows not delivered (beyond_window: below the rows already seen; "
                                     "backfill_cap: over topic_max_backfill)", ["mesh", "topic", "reason"], registry=r)
        self.topic_bad_time = Counter(p + "mesh_topic_rows_bad_created_at",
                                      "Topic rows delivered with the receipt time: their createdAt did not convert",
                                      ["mesh", "topic"], registry=r)
        self._lanes: set[str] = set()
        self._poll_counts: dict[tuple[str, ...], int] = {}

    # -- observer plugin ----------------------------------------------------------------
    @hookimpl
    def track_event(self, event: ev.Event) -> None:
        self.observe(event)

    def observe(self, event: ev.Event) -> None:
        if isinstance(event, ev.MessageReceived):
            self.received.labels(event.message.origin.gateway).inc()
        elif isinstance(event, ev.MessageDropped):
            self.dropped.labels(event.message.origin.gateway, event.reason).inc()
        elif isinstance(event, ev.MessageQueued):
            self.queued.labels(event.route, event.to.gateway).inc()
        elif isinstance(event, ev.MessageDelivered):
            self.delivered.labels(event.route, event.to.gateway).inc()
            self.latency.labels(event.to.gateway).observe(max(event.latency_s, 0.0))
        elif isinstance(event, ev.DeliveryFailed):
            self.failed.labels(event.route, event.to.gateway, "permanent" if event.permanent else "transient").inc()
        elif isinstance(event, ev.DeliveryStatus):
            self.vendor_status.labels(event.gateway, event.status).inc()
        elif isinstance(event, ev.GatewayStateChanged):
            self.state_changes.labels(event.gateway, str(event.state)).inc()

    # -- scrape -------------------------------------------------------------------------------
    async def refresh(self, runtime: Runtime) -> None:
        now = time.time()
        depths = await runtime.store.outbox_depths()
        for lane in self._lanes - set(depths):
            self.queue_depth.labels(lane).set(0)
            self.queue_oldest.labels(lane).set(0)
        for lane, (count, oldest) in depths.items():
            self.queue_depth.labels(lane).set(count)
            self.queue_oldest.labels(lane).set(max(0.0, now - oldest) if oldest else 0.0)
        self._lanes |= set(depths)
        self.dead_letters.set(await runtime.store.dlq_count())
        stats = _delivery_stats(runtime)
        self.rate_waits.set(stats.get("rate_limit_waits", 0))
        self.throttled.set(stats.get("throttled", stats.get("http_429", 0)))
        for name, (state, _detail, _since) in list(runtime.states.items()):
            kind = "mesh" if name in runtime.meshes else "gateway"
            self.state.labels(name, kind).set(1 if state == ev.GatewayState.CONNECTED else 0)
        for mesh_name, peer in runtime.meshes.items():
            self.mesh_reconnects.labels(mesh_name).set(getattr(peer, "reconnects", 0))
            for reason, count in (getattr(peer, "bad_frames", None) or {}).items():
                self.mesh_bad_frames.labels(mesh_name, reason).set(count)
            for topic, (age, latency) in poll_status(peer, now).items():
                self.poll_age.labels(mesh_name, topic).set(age)
                self.poll_latency.labels(mesh_name, topic).set(latency)
            self._poll_counters(mesh_name, peer)

    def _poll_counters(self, mesh_name: str, peer: Any) -> None:
        """Advance the poller counters by what ``poll_stats()`` gained since the last scrape (a poller
        that was replaced, e.g. on reload, starts again from 0: its whole count is new)."""
        stats = getattr(peer, "poll_stats", None)
        for topic, info in ((stats() if callable(stats) else stats) or {}).items():
            counts = {("skipped", reason): 0 for reason in SKIP_REASONS}  # the series exist from the start
            counts.update({("skipped", str(reason)): n for reason, n in (info.get("skipped") or {}).items()})
            counts[("bad_created_at",)] = info.get("bad_timestamps") or 0
            for what, n in counts.items():
                key = (mesh_name, topic, *what)
                last = self._poll_counts.get(key, 0)
                gained = n - last if n >= last else n
                self._poll_counts[key] = n
                metric = (self.topic_skipped.labels(mesh_name, topic, what[1]) if what[0] == "skipped"
                          else self.topic_bad_time.labels(mesh_name, topic))
                if gained > 0:
                    metric.inc(gained)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def _delivery_stats(runtime: Runtime) -> dict[str, Any]:
    stats = getattr(runtime.delivery, "stats", None)
    if callable(stats):
        stats = stats()
    return dict(stats or {})


def poll_status(peer: Any, now: float) -> dict[str, tuple[float, float]]:
    """topic -> (seconds since the last completed poll, last poll duration), from ``MeshPeer.poll_stats()``.

    A watched topic that has never completed a poll reports ``inf``. Topics another replica polls
    (this replica's poller is on standby) are left out.
    """
    out: dict[str, tuple[float, float]] = {}
    stats = getattr(peer, "poll_stats", None)
    for topic, info in ((stats() if callable(stats) else stats) or {}).items():
        if info.get("standby"):
            continue
        last = info.get("last_poll_at") or 0.0
        out[topic] = (now - last if last else float("inf"), float(info.get("poll_latency") or 0.0))
    return out
