"""Coordination between replicas that share one store: leases and shared token buckets.

A **lease** is a named row in the store (``lane:<lane>``, ``topic:<mesh>:<topic id>``,
``gateway:<name>:poll``) that one replica owns until it expires. The store decides with its own
clock (PostgreSQL's), so replicas with skewed clocks agree; a replica counts a lease as held only
until ``ttl * 0.8`` seconds after the request that took or renewed it was *sent*, so it stops
acting before the database would hand the lease to another replica. A background task renews
every held lease each ``ttl / 3`` seconds; a lease that could not be renewed in time (the database
is unreachable, or another replica took it after an expiry) is dropped and ``on_lost``
callbacks hear of it. ``close()`` releases everything, so a clean shutdown hands over at once.

On a store without lease support (SQLite: one process by construction, enforced by its file
lock) every lease is granted and nothing is written.

A **shared token bucket** is one token bucket per name across replicas (the broker's per-member
rate limit, which all replicas of one member share). It has the interface of
:class:`claudemesh_gateway.mesh.ratelimit.TokenBucket`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

from ..errors import StoreUnavailable

__all__ = ["Leases", "SharedTokenBucket", "default_replica_id", "supports_leases"]

log = logging.getLogger(__name__)

VALID_FRACTION = 0.8  # of the ttl, counted from when the request was sent


def supports_leases(store: Any) -> bool:
    """True for stores several replicas share (they implement the lease and bucket methods)."""
    return all(callable(getattr(store, n, None)) for n in ("lease_acquire", "lease_release", "bucket_take"))


def default_replica_id() -> str:
    """The host name: stable across restarts, so a replica gets its own session identity back."""
    return socket.gethostname() or "replica"


@dataclasses.dataclass(slots=True)
class _Held:
    valid_until: float  # monotonic
    since: float = 0.0  # wall clock: when this replica took it
    refs: int = 0  # acquire() calls not yet released
    sticky: bool = False  # hold(): kept until close() or loss


class Leases:
    """This replica's leases. See the module docstring.

    :param store: a store with ``lease_acquire/lease_release/lease_list`` (else every lease is granted).
    :param replica: this replica's stable name (``[store] replica_id``).
    :param ttl: lease time in seconds: how long another replica waits after a crash.
    """

    def __init__(self, store: Any, *, replica: str, ttl: float = 15.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be > 0")
        self.store = store
        self.replica = replica
        # one owner per process: a replica restarted under the same name is a new owner (its old
        # leases expire), while the replica name stays stable for the session identity
        self.owner = f"{replica}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
        self.ttl = float(ttl)
        self.shared = supports_leases(store)
        self._mono = monotonic
        self._held: dict[str, _Held] = {}
        self._lost_callbacks: list[Callable[[str], None]] = []
        self._renewer: asyncio.Task[None] | None = None
        self.acquired = 0  # leases taken (not renewals)
        self.lost = 0
        self.renew_errors = 0

    # -- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> None:
        if self.shared and self._renewer is None:
            self._renewer = asyncio.create_task(self._renew_loop(), name="leases-renew")

    async def close(self) -> None:
        """Stop renewing and release every lease this replica holds (a quick handover)."""
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
            self._renewer = None
        names, self._held = list(self._held), {}
        if self.shared and names:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.store.lease_release(names, self.owner), 5)

    def abandon(self) -> None:
        """Stop renewing and forget every lease without releasing it: what a killed process leaves
        behind (the leases expire in the store after ``ttl``). For fault tests."""
        if self._renewer is not None:
            self._renewer.cancel()
            self._renewer = None
        self._held.clear()

    def on_lost(self, callback: Callable[[str], None]) -> None:
        """``callback(name)`` when a held lease is lost (not when it is released)."""
        self._lost_callbacks.append(callback)

    # -- queries ---------------------------------------------------------------------------------------------
    def holds(self, name: str) -> bool:
        if not self.shared:
            return True
        h = self._held.get(name)
        return h is not None and h.valid_until > self._mono()

    def held(self) -> dict[str, float]:
        """name -> seconds this replica still counts the lease as its own."""
        now = self._mono()
        return {n: round(h.valid_until - now, 1) for n, h in sorted(self._held.items()) if h.valid_until > now}

    def describe(self) -> dict[str, Any]:
        """For /-/health: who this replica is and which leases it holds."""
        held = self.held()
        return {"replica": self.replica, "owner": self.owner, "shared": self.shared, "ttl_s": self.ttl,
                "leases": held, "since": {n: round(self._held[n].since, 3) for n in held},
                "acquired": self.acquired, "lost": self.lost, "renew_errors": self.renew_errors}

    # -- taking and giving back ------------------------------------------------------------------------------
    async def _take(self, name: str) -> _Held | None:
        h = self._held.get(name)
        if h is not None and h.valid_until > self._mono():
            return h
        t0 = self._mono()
        try:
            got = await self.store.lease_acquire([name], self.owner, self.ttl)
        except Exception as e:  # noqa: BLE001 - the store is unreachable: we hold nothing new
            log.debug("lease %s: acquire failed: %s", name, e)
            return None
        if name not in got:
            if h is not None:  # ours a moment ago, another replica's now
                self._drop(name)
            return None
        if h is None:
            h = self._held[name] = _Held(valid_until=0.0, since=time.time())
            self.acquired += 1
            log.info("lease %s taken by %s", name, self.replica)
        h.valid_until = t0 + self.ttl * VALID_FRACTION
        return h

    async def acquire(self, name: str) -> bool:
        """Take (or share, within this process) lease ``name``; False when another replica owns it.
        Every True must be paired with :meth:`release`."""
        if not self.shared:
            return True
        h = await self._take(name)
        if h is None:
            return False
        h.refs += 1
        return True

    async def release(self, name: str) -> None:
        if not self.shared:
            return
        h = self._held.get(name)
        if h is None:
            return
        h.refs = max(0, h.refs - 1)
        if h.refs or h.sticky:
            return
        del self._held[name]
        try:
            await self.store.lease_release([name], self.owner)
        except Exception as e:  # noqa: BLE001 - it expires on its own
            log.debug("lease %s: release failed (it expires by itself): %s", name, e)

    async def hold(self, name: str) -> bool:
        """Keep lease ``name`` for as long as this replica can (renewed in the background, released
        by :meth:`close` or :meth:`drop`): True while held, False while another replica has it."""
        if not self.shared:
            return True
        h = await self._take(name)
        if h is None:
            return False
        h.sticky = True
        return True

    async def drop(self, name: str) -> None:
        """Give up a :meth:`hold`."""
        h = self._held.get(name)
        if h is None:
            return
        h.sticky = False
        if h.refs == 0:
            del self._held[name]
            with contextlib.suppress(Exception):
                await self.store.lease_release([name], self.owner)

    def _drop(self, name: str) -> None:
        if self._held.pop(name, None) is None:
            return
        self.lost += 1
        log.warning("lease %s lost by %s (not renewed in time, or another replica took it)", name, self.replica)
        for cb in self._lost_callbacks:
            try:
                cb(name)
            except Exception:
                log.exception("lease %s: an on_lost callback raised", name)

    async def renew_once(self) -> None:
        """Renew every held lease now (the background task calls this each ttl/3)."""
        names = list(self._held)
        now = self._mono()
        for n in names:  # past their local validity: no longer ours, whatever the store says
            h = self._held.get(n)
            if h is not None and h.valid_until <= now:
                self._drop(n)
        names = list(self._held)
        if not names:
            return
        t0 = self._mono()
        try:
            got = set(await self.store.lease_acquire(names, self.owner, self.ttl))
        except Exception as e:  # noqa: BLE001 - try again next round; validity runs out meanwhile
            self.renew_errors += 1
            # an outage of the store is logged by the store itself, once (rate-limited)
            (log.debug if isinstance(e, StoreUnavailable) else log.warning)(
                "leases: renewing %d lease(s) failed: %s", len(names), e)
            return
        for n in names:
            h = self._held.get(n)
            if h is None:
                continue
            if n in got:
                h.valid_until = t0 + self.ttl * VALID_FRACTION
            else:
                self._drop(n)

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                await self.renew_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("leases: the renew round failed")

    # -- views -----------------------------------------------------------------------------------------------
    def lanes(self) -> LaneLeases:
        """The delivery engine's gate: lease ``lane:<lane>`` per destination lane."""
        return LaneLeases(self)

    def topic_gate(self, mesh: str) -> Callable[[Any], Any]:
        """A topic poller's gate: ``await gate(poller)`` is True while this replica may poll it."""

        async def gate(poller: Any) -> bool:
            return await self.hold(f"topic:{mesh}:{poller.topic.id}")

        return gate


class LaneLeases:
    """``acquire/release/holds(lane)`` for :class:`~claudemesh_gateway.delivery.engine.DeliveryEngine`."""

    def __init__(self, leases: Leases) -> None:
        self.leases = leases

    async def acquire(self, lane: str) -> bool:
        return await self.leases.acquire(f"lane:{lane}")

    async def release(self, lane: str) -> None:
        await self.leases.release(f"lane:{lane}")

    def holds(self, lane: str) -> bool:
        return self.leases.holds(f"lane:{lane}")


class SharedTokenBucket:
    """One token bucket per ``name`` in the store, shared by every replica (burst tokens, refilled
    at ``per_minute``/60 per second, starting full). Same interface as the mesh's local
    ``TokenBucket``: ``acquire()``, ``drain()``, ``wait_time()``, ``tokens``.

    When the store cannot be reached the bucket waits and asks again (a send that cannot be
    counted is not made)."""

    def __init__(self, store: Any, name: str, burst: int, per_minute: float, *,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.name = name
        self.burst = float(burst)
        self.rate = per_minute / 60.0
        self._mono = monotonic
        self._lock = asyncio.Lock()
        self._known_wait_until = 0.0  # monotonic: the last wait the store told us about
        self.errors = 0

    @property
    def tokens(self) -> float:
        """Not known without asking the store; reported as full when no wait is pending."""
        return 0.0 if self.wait_time() > 0 else 1.0

    def wait_time(self) -> float:
        return max(0.0, self._known_wait_until - self._mono())

    async def acquire(self) -> float:
        """Take one token from the shared bucket, sleeping as long as needed. Returns seconds waited."""
        waited = 0.0
        async with self._lock:
            while True:
                try:
                    delay = await self.store.bucket_take(self.name, self.burst, self.rate)
                except Exception as e:  # noqa: BLE001 - cannot count the send: wait, then ask again
                    self.errors += 1
                    (log.debug if isinstance(e, StoreUnavailable) else log.warning)(
                        "shared rate limit %s: the store did not answer (%s); waiting", self.name, e)
                    delay = 1.0
                else:
                    if delay <= 0:
                        self._known_wait_until = 0.0
                        return waited
                self._known_wait_until = self._mono() + delay
                await asyncio.sleep(delay)
                waited += delay

    def drain(self) -> None:
        """The broker said rate_limit: empty the shared bucket (for every replica)."""
        self._known_wait_until = max(self._known_wait_until, self._mono() + 1.0 / max(self.rate, 1e-9))
        task = asyncio.ensure_future(self.store.bucket_drain(self.name))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # best effort; seen by the next take
