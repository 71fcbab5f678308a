"""The ``bridge`` gateway: carries topics of this gateway's meshes into another mesh.

A ``[gateways.<name>] type = "bridge"`` instance stands for one *far* mesh (``mesh``,
a ``[mesh.<name>]`` table). A route binding ``{gateway = "<name>", chat = "<far topic>"}``
is that topic on the far mesh, so a route on mesh A carries ``A:#general <-> B:#<topic>``.

It only translates. Everything else is the core's:

- keys: text crosses ``ctx.mesh(name)`` in plaintext; the core's key ring opens the far
  rows with the far mesh's topic keys and seals what we post with them (bodyVersion 3);
- loops: :meth:`mesh_of` tells the core our chats lie on the far mesh, so the mesh loop
  rules apply (``__cmh<n>:`` hop prefix, hop limit, visited meshes) and the core puts the
  prefix on what we post; rows the core's identity posted are never handed back to us;
- durability, ordering, retries and the far mesh's per-member rate limit (one shared bucket
  ``mesh:<mesh>:member``, the same scope the core uses for mesh destinations);
- replies: ``Message.native_id`` / ``reply_to`` are far topic message ids and the core's
  message map translates them across the bridge.

The gateway's state mirrors the far mesh's connection (``/-/health``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import time
from collections.abc import Sequence
from typing import Any, ClassVar

from claudemesh_gateway import (
    Address,
    BindingOptions,
    Capabilities,
    ConfigError,
    DeliveryError,
    Gateway,
    GatewayConfig,
    GatewayState,
    Message,
    MessageDropped,
    Outbound,
    RateLimit,
    SendResult,
)
from pydantic import Field, field_validator

__all__ = ["STATE_POLL_S", "BridgeBindingOptions", "BridgeConfig", "BridgeGateway", "is_dm_command"]

log = logging.getLogger(__name__)

#: how often the far mesh's connection state is mirrored into this gateway's state
STATE_POLL_S = 0.25
#: after stop(), rows of watched topics are refused (so re-read later) for this long; then dropped
STOPPED_RETRY_S = 60.0
#: characters per part. The core splits by characters, the mesh limits UTF-8 bytes
#: (``max_plaintext_bytes``, 45,000 by default): 11,000 characters stay under it even when
#: every character takes 4 bytes, hop prefix and part numbers included.
DEFAULT_MAX_TEXT = 11_000

_LEADING_TAGS = re.compile(r"^(?:\s*tag:\S+)+\s*", re.IGNORECASE)
_DM = re.compile(r"^/dm(?:@[A-Za-z0-9_]+)?(?:\s|$)", re.IGNORECASE)


def is_dm_command(text: str) -> bool:
    """True for ``/dm ...`` (also after leading ``tag:<name>`` tokens, as the core reads commands)."""
    return bool(_DM.match(_LEADING_TAGS.sub("", text.lstrip(), count=1)))


class BridgeConfig(GatewayConfig):
    """``[gateways.<name>]`` with ``type = "bridge"``."""

    mesh: str = Field(min_length=1)  # the far mesh: a [mesh.<name>] table
    #: DMs across this bridge, both ways. On: ``/dm <peer> <text>`` typed on the far mesh is a DM to a
    #: peer of the route's mesh, and ``/dm`` from the chats of its routes also looks up (or, with
    #: ``<peer>@<far mesh>``, only looks up) peers of the far mesh. Off: such far-side commands are
    #: dropped at the bridge (never relayed: the text was meant to be private), and the core refuses
    #: ``/dm`` to the far mesh with a reply.
    allow_dm: bool = False
    max_text: int = Field(DEFAULT_MAX_TEXT, ge=200, le=45_000)

    @field_validator("mesh")
    @classmethod
    def _mesh(cls, v: str) -> str:
        return v.strip()


class BridgeBindingOptions(BindingOptions):
    """A bridge binding takes no options (its ``chat`` is the far topic's name)."""


_STATES = {
    "connected": GatewayState.CONNECTED,
    "backoff": GatewayState.TRANSIENT_DISCONNECT,
    "terminal": GatewayState.BAD_CREDENTIALS,
}


class BridgeGateway(Gateway):
    kind: ClassVar[str] = "bridge"
    Config: ClassVar[type[GatewayConfig]] = BridgeConfig
    BindingOptions: ClassVar[type[BindingOptions]] = BridgeBindingOptions
    capabilities: ClassVar[Capabilities] = Capabilities(
        max_text=DEFAULT_MAX_TEXT, max_parts=10, replies=True, threads=False, edits=False, deletes=False,
        media=False, formatting="plain",
    )

    def __init__(self, name: str, config: GatewayConfig, ctx: Any) -> None:
        super().__init__(name, config, ctx)
        assert isinstance(config, BridgeConfig)
        self.cfg: BridgeConfig = config
        if config.max_text != DEFAULT_MAX_TEXT:  # per instance; the core reads gw.capabilities
            self.capabilities = Capabilities(  # type: ignore[misc]
                max_text=config.max_text, max_parts=10, replies=True, media=False, formatting="plain")
        self._handle: Any = None
        self._watched: set[str] = set()
        self._state_task: asyncio.Task[None] | None = None
        self._connect_task: asyncio.Task[None] | None = None
        self._running = False
        self._ever_connected = False
        self._stopped_at = time.monotonic()

    def __repr__(self) -> str:
        return f"<BridgeGateway {self.name} -> mesh {self.cfg.mesh}>"

    # -- lifecycle ----------------------------------------------------------------------------------------
    def _mesh(self) -> Any:
        if self._handle is None:
            try:
                self._handle = self.ctx.mesh(self.cfg.mesh)
            except KeyError:
                raise ConfigError(
                    f"gateways.{self.name}.mesh: no [mesh.{self.cfg.mesh}] table; the bridge needs the far "
                    "mesh's identity (broker_url, mesh_id, member_id, secret_key, root_key)") from None
        return self._handle

    def far_topic(self, chat: str) -> str:
        """The far topic a binding ``chat`` names: ``"lobby"``, ``"#lobby"`` or ``"<mesh>:#lobby"``
        (the last reads well in attributions: ``{chat}`` is then ``b:#lobby`` as for mesh chats)."""
        chat = chat.strip()
        mesh, sep, topic = chat.partition(":#")
        if sep:
            if mesh != self.cfg.mesh:
                raise ConfigError(f"gateways.{self.name}: chat {chat!r} names mesh {mesh!r}, but this bridge "
                                  f"carries mesh {self.cfg.mesh!r} (write \"{topic}\" or \"{self.cfg.mesh}:#{topic}\")")
            return topic
        return chat.removeprefix("#")

    def inbound_topics(self) -> list[str]:
        """Far topics this bridge reads: the chats of its bindings with direction in/both."""
        out: list[str] = []
        for b in self.ctx.bindings:
            topic = self.far_topic(b.address.chat)
            if b.inbound and topic not in out:
                out.append(topic)
        return out

    def _origin_chats(self) -> dict[str, str]:
        """far topic -> the ``chat`` its (first) inbound binding spells it with (a message's origin
        must be that exact chat for the core to find its route)."""
        out: dict[str, str] = {}
        for b in self.ctx.bindings:
            if b.inbound:
                topic = self.far_topic(b.address.chat)
                if out.setdefault(topic, b.address.chat) != b.address.chat:
                    log.warning("bridge %s: #%s is bound as %r and %r; inbound rows use %r (spell it one way)",
                                self.name, topic, out[topic], b.address.chat, out[topic])
        return out

    async def start(self) -> None:
        if self._running:
            return
        handle = self._mesh()  # raises ConfigError when the far mesh is not configured
        for b in self.ctx.bindings:
            self.far_topic(b.address.chat)  # raises ConfigError for a chat on another mesh
        self._running = True
        self.set_state(GatewayState.STARTING, f"connecting to mesh {self.cfg.mesh}")
        for topic in self.inbound_topics():
            await self._watch(handle, topic)
        self._state_task = asyncio.create_task(self._mirror_state(), name=f"bridge:{self.name}:state")
        self._sync_state()
        log.info("bridge %s started: mesh %s, reading %s", self.name, self.cfg.mesh,
                 ", ".join("#" + t for t in sorted(self._watched)) or "no topic (send only)")

    async def _watch(self, handle: Any, topic: str) -> None:
        await handle.watch_topic(topic, self._on_row)
        self._watched.add(topic)

    async def stop(self) -> None:
        if self._running:
            self._stopped_at = time.monotonic()
        self._running = False
        task, self._state_task = self._state_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.set_state(GatewayState.STOPPED)

    # -- state ----------------------------------------------------------------------------------------------
    def _sync_state(self) -> str:
        handle = self._handle
        raw = str(handle.state) if handle is not None else "stopped"
        state = _STATES.get(raw)
        if state is GatewayState.CONNECTED:
            self._ever_connected = True
        if state is None:  # connecting / stopped
            state = GatewayState.TRANSIENT_DISCONNECT if self._ever_connected else GatewayState.STARTING
        detail = "" if state is GatewayState.CONNECTED else f"mesh {self.cfg.mesh}: {raw}"
        self.set_state(state, detail)
        return raw

    async def _mirror_state(self) -> None:
        """Mirror the far mesh's connection into this gateway's state. If the far mesh was stopped
        under us (a config reload that no longer lists it among the meshes routes use), connect it
        again and re-watch our topics: ``ctx.mesh`` connects a mesh on first use."""
        handle = self._mesh()
        if not self._watched:  # send-only: connect now, so health shows the far mesh from the start
            self._start_connect(handle)
        try:
            await self._mirror_loop(handle)
        finally:
            task, self._connect_task = self._connect_task, None
            if task is not None and not task.done():
                task.cancel()

    def _start_connect(self, handle: Any) -> None:
        """Connect the far mesh in the background (``ctx.mesh`` connects on first use)."""
        if self._connect_task is not None and not self._connect_task.done():
            return

        async def connect() -> None:
            with contextlib.suppress(Exception):  # the state mirror reports what happens
                await asyncio.wait_for(handle.peers(), 30)

        self._connect_task = asyncio.create_task(connect(), name=f"bridge:{self.name}:connect")

    async def _mirror_loop(self, handle: Any) -> None:
        stopped_polls = 0
        while self._running:
            raw = self._sync_state()
            await self._watch_new_topics(handle)
            stopped_polls = stopped_polls + 1 if raw == "stopped" else 0
            if stopped_polls >= 4 and self._running:
                log.warning("bridge %s: mesh %s was stopped; connecting it again", self.name, self.cfg.mesh)
                stopped_polls = 0
                try:
                    topics = self.inbound_topics()
                    for topic in topics:
                        await self._watch(handle, topic)
                    if not topics:
                        self._start_connect(handle)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001  (retried on the next round)
                    log.warning("bridge %s: reconnecting mesh %s failed: %s", self.name, self.cfg.mesh, exc)
            await asyncio.sleep(STATE_POLL_S)

    async def _watch_new_topics(self, handle: Any) -> None:
        """A reload that only changes routes keeps this gateway running: read far topics that
        inbound bindings gained since."""
        try:
            new = [t for t in self.inbound_topics() if t not in self._watched]
        except ConfigError as exc:
            log.error("bridge %s: %s", self.name, exc)
            return
        for topic in new:
            try:
                await self._watch(handle, topic)
                log.info("bridge %s: now reading #%s of mesh %s", self.name, topic, self.cfg.mesh)
            except Exception as exc:  # noqa: BLE001  (retried on the next round)
                log.warning("bridge %s: cannot read #%s of mesh %s yet: %s", self.name, topic, self.cfg.mesh, exc)

    # -- ingress ----------------------------------------------------------------------------------------------
    async def _on_row(self, message: Message) -> None:
        """A decrypted row of a watched far topic. Returns only after the core durably took it, so
        the far topic's cursor advances only then. Raises while stopped: the row is read again."""
        if not self._running:
            stopped_for = time.monotonic() - self._stopped_at
            if stopped_for < STOPPED_RETRY_S:  # shutting down or restarting: the row is read again later
                raise RuntimeError(f"bridge {self.name} is stopped; row {message.id} will be read again")
            # removed by a reload (the core keeps our subscription): do not block the topic forever
            log.warning("bridge %s is stopped; row %s of mesh %s not taken", self.name, message.id, self.cfg.mesh)
            return
        if not self.cfg.allow_dm and is_dm_command(message.text):
            log.info("bridge %s: /dm from %s on mesh %s dropped (allow_dm = false)", self.name,
                     message.sender or message.sender_id[:8], self.cfg.mesh)
            self.ctx.emit(MessageDropped(message=message, reason="dm_disabled"))
            return
        chat = self._origin_chats().get(message.origin.chat)
        if chat is not None and chat != message.origin.chat:
            message = dataclasses.replace(message, origin=Address(self.name, chat, message.origin.thread))
        await self.ctx.submit(message)

    # -- egress -------------------------------------------------------------------------------------------------
    async def send(self, out: Outbound) -> SendResult:
        try:
            topic = self.far_topic(out.to.chat)
        except ConfigError as exc:
            raise DeliveryError(str(exc), permanent=True) from None
        # the core puts the hop prefix on every part (mesh_of) and derives the client id from the key
        native = await self._mesh().post_topic(topic, out.text, reply_to=out.reply_to,
                                               idempotency_key=out.idempotency_key)
        return SendResult(native_ids=(str(native),) if native else ())

    def rate_limits(self, to: Address) -> Sequence[RateLimit]:
        # the far broker's per-member budget (A.7.3, [mesh.<name>] rate_per_minute / rate_burst),
        # shared with the core's own posts to that mesh
        try:
            limit = getattr(self.ctx.mesh(self.cfg.mesh), "rate_limit", None)
        except KeyError:  # no such [mesh] table: check() reports it
            limit = None
        if isinstance(limit, RateLimit):
            return (limit,)
        return (RateLimit(scope=f"mesh:{self.cfg.mesh}:member", per_second=60 / 60, burst=10),)

    def mesh_of(self, address: Address) -> str | None:
        return self.cfg.mesh

    async def check(self) -> list[str]:
        warnings: list[str] = []
        try:
            self.ctx.mesh(self.cfg.mesh)
        except KeyError:
            warnings.append(f"mesh: no [mesh.{self.cfg.mesh}] table; the bridge cannot start")
        for b in self.ctx.bindings:
            try:
                self.far_topic(b.address.chat)
            except ConfigError as exc:
                warnings.append(str(exc).removeprefix(f"gateways.{self.name}: "))
        if not self.ctx.bindings:
            warnings.append(f"no route binds it; mesh {self.cfg.mesh} carries nothing")
        return warnings
