"""Slack mrkdwn in both directions.

Outbound: only ``&``, ``<`` and ``>`` are special in Slack text; escaping them is
what keeps ``<!channel>``, ``<!here>``, ``<@U…>`` and ``<!subteam^…>`` coming from
the mesh from ever becoming live mentions. :func:`escape` is *idempotent* (an
``&`` that already starts ``&amp;``/``&lt;``/``&gt;`` is left alone), so text that
was escaped once by ``render_text`` and once more in ``send`` is unchanged.

Inbound: :func:`to_readable` turns ``<@U123>``, ``<#C123|name>``, ``<https://x|label>``,
``<!here>``, ``<!subteam^S1|@team>``, ``<!date^…|fallback>`` into plain readable text,
resolving ids through a :class:`NameResolver` (cached, coalesced, rate-aware).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

__all__ = [
    "LookupRateLimited",
    "NameResolver",
    "enable_mass_mentions",
    "escape",
    "referenced_ids",
    "to_readable",
    "unescape",
]

log = logging.getLogger(__name__)

_AMP = re.compile(r"&(?!(?:amp|lt|gt);)")
_TOKEN = re.compile(r"<([^<>\n]*)>")
_MASS = re.compile(r"(?<![\w@/&])@(here|channel|everyone)\b")
# escaped forms of Slack's own mention markup: &lt;!here&gt;, &lt;!subteam^S1|@ops&gt;, &lt;@U123&gt;
_ESCAPED_MENTION = re.compile(
    r"&lt;((?:!(?:here|channel|everyone)|!subteam\^[A-Z0-9]+|@[UW][A-Z0-9]+)(?:\|[^&<>|]{0,80})?)&gt;"
)


def escape(text: str) -> str:
    """Escape ``& < >`` for Slack. Idempotent: ``escape(escape(x)) == escape(x)``."""
    return _AMP.sub("&amp;", text).replace("<", "&lt;").replace(">", "&gt;")


def unescape(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def enable_mass_mentions(escaped: str) -> str:
    """Make mentions in already-escaped text live again: the plain words ``@here`` /
    ``@channel`` / ``@everyone`` and Slack's own ``<!here>``, ``<!channel>``, ``<!everyone>``,
    ``<!subteam^ID>`` and ``<@U…>`` markup. Only for routes/bindings that explicitly allow
    mass mentions; links and any other markup stay escaped."""
    revived = _ESCAPED_MENTION.sub(lambda m: f"<{m.group(1)}>", escaped)
    return _MASS.sub(lambda m: f"<!{m.group(1)}>", revived)


def _split(body: str) -> tuple[str, str | None]:
    target, sep, label = body.partition("|")
    return target, (label if sep else None)


def referenced_ids(text: str) -> tuple[set[str], set[str]]:
    """(user ids, channel ids) referenced without a label, i.e. needing a lookup."""
    users: set[str] = set()
    channels: set[str] = set()
    for m in _TOKEN.finditer(text):
        target, label = _split(m.group(1))
        if label:
            continue
        if target.startswith("@") and len(target) > 1:
            users.add(target[1:])
        elif target.startswith("#") and len(target) > 1:
            channels.add(target[1:])
    return users, channels


def to_readable(
    text: str, user_name: Callable[[str], str | None], channel_name: Callable[[str], str | None]
) -> str:
    """Convert Slack markup to readable plain text. ``user_name``/``channel_name`` answer
    from a cache (None = unknown: the id is shown)."""

    def repl(m: re.Match[str]) -> str:
        target, label = _split(m.group(1))
        if target.startswith("@"):
            return "@" + (label or user_name(target[1:]) or target[1:])
        if target.startswith("#"):
            return "#" + (label or channel_name(target[1:]) or target[1:])
        if target.startswith("!"):
            special = target[1:]
            if special in ("here", "channel", "everyone"):
                return "@" + special
            if special.startswith("subteam^"):
                return label if label else "@" + special.split("^", 1)[1]
            if label:
                return label
            if special.startswith("date^"):
                parts = special.split("^")
                return parts[-1] if len(parts) > 2 else special
            return "@" + special
        url = target.removeprefix("mailto:")
        if label and label not in (target, url):
            return f"{label} ({url})"
        return url

    return unescape(_TOKEN.sub(repl, text))


class LookupRateLimited(Exception):
    def __init__(self, retry_after: float):
        super().__init__(f"rate limited for {retry_after:.0f}s")
        self.retry_after = retry_after


class _Cache:
    def __init__(self, ttl: float, cap: int = 5000) -> None:
        self.ttl, self.cap = ttl, cap
        self._d: OrderedDict[str, tuple[float, str | None]] = OrderedDict()

    def get(self, key: str) -> tuple[bool, str | None]:
        hit = self._d.get(key)
        if hit is None or hit[0] < time.monotonic():
            return False, None
        return True, hit[1]

    def put(self, key: str, value: str | None, ttl: float | None = None) -> None:
        self._d[key] = (time.monotonic() + (self.ttl if ttl is None else ttl), value)
        self._d.move_to_end(key)
        while len(self._d) > self.cap:
            self._d.popitem(last=False)


class NameResolver:
    """Cached display names for user and channel ids.

    * hits are served from memory for ``ttl`` seconds, misses (unknown ids) for a minute;
    * concurrent lookups of one id share one request;
    * a rate-limit answer pauses *all* lookups for Retry-After; meanwhile callers get None
      (the raw id is shown) instead of waiting;
    * :meth:`resolve` waits at most ``budget_s``; unfinished lookups keep running in the
      background and fill the cache for the next message.
    """

    def __init__(
        self,
        fetch_user: Callable[[str], Awaitable[str | None]],
        fetch_channel: Callable[[str], Awaitable[str | None]],
        *,
        ttl: float = 3600.0,
    ) -> None:
        self._fetch = {"user": fetch_user, "channel": fetch_channel}
        self._cache = {"user": _Cache(ttl), "channel": _Cache(ttl)}
        self._inflight: dict[tuple[str, str], asyncio.Task[str | None]] = {}
        self._paused_until = 0.0
        self.requests = 0  # lookups actually sent (observability, tests)

    def user(self, uid: str) -> str | None:
        return self._cache["user"].get(uid)[1]

    def channel(self, cid: str) -> str | None:
        return self._cache["channel"].get(cid)[1]

    def prime_user(self, uid: str, name: str) -> None:
        if uid and name:
            self._cache["user"].put(uid, name)

    async def resolve(self, users: set[str], channels: set[str], budget_s: float) -> None:
        tasks = [self._lookup("user", u) for u in users] + [self._lookup("channel", c) for c in channels]
        tasks = [t for t in tasks if t is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=budget_s)

    def _lookup(self, kind: str, key: str) -> asyncio.Task[str | None] | None:
        hit, _ = self._cache[kind].get(key)
        if hit or time.monotonic() < self._paused_until:
            return None
        task = self._inflight.get((kind, key))
        if task is None:
            task = asyncio.create_task(self._run(kind, key), name=f"slack-lookup:{kind}:{key}")
            self._inflight[(kind, key)] = task
            task.add_done_callback(lambda _t, k=(kind, key): self._inflight.pop(k, None))
        return task

    async def _run(self, kind: str, key: str) -> str | None:
        self.requests += 1
        try:
            name = await self._fetch[kind](key)
        except LookupRateLimited as exc:
            self._paused_until = time.monotonic() + exc.retry_after
            log.warning("slack %s lookups rate limited; pausing them for %.0fs", kind, exc.retry_after)
            return None
        except Exception as exc:  # noqa: BLE001 - a failed lookup only costs a readable name
            log.warning("slack %s lookup failed: %s", kind, type(exc).__name__)
            return None
        self._cache[kind].put(key, name, None if name else 60.0)
        return name

    async def aclose(self) -> None:
        tasks = list(self._inflight.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
