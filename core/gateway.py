"""The contract between the core and a gateway plugin.

A gateway *translates*: platform event -> :class:`Message` (handed to
``ctx.submit``), and :class:`Outbound` -> platform API call (``send``). It never
sees a key, never retries, never sleeps for rate limits and never decides
routes: the core does all of that once, for every gateway.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict

from .errors import Unsupported
from .events import Event, GatewayState
from .messages import Address, Attachment, Capabilities, Message, Outbound, SendResult

if TYPE_CHECKING:
    import aiohttp
    from aiohttp import web

__all__ = [
    "Binding",
    "BindingOptions",
    "Gateway",
    "GatewayConfig",
    "GatewayContext",
    "MeshHandle",
    "RateLimit",
    "SubmitResult",
]

log = logging.getLogger(__name__)


class GatewayConfig(BaseModel):
    """Base for a gateway's ``[gateways.<name>]`` table. Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class BindingOptions(BaseModel):
    """Base for per-binding options (``options = {...}`` on a route binding)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RateLimit:
    """A token bucket the core applies before ``send``: ``burst`` tokens, refilled at ``per_second``.

    ``scope`` names the bucket; buckets with the same scope are shared (e.g. one
    ``telegram:<bot>:global`` bucket for every chat of a bot).
    """

    scope: str
    per_second: float
    burst: float = 1.0


class Directed:
    """``inbound`` / ``outbound`` of a binding's ``direction`` (``"in"``, ``"out"`` or ``"both"``)."""

    __slots__ = ()
    direction: Literal["in", "out", "both"]

    @property
    def inbound(self) -> bool:
        return self.direction in ("in", "both")

    @property
    def outbound(self) -> bool:
        return self.direction in ("out", "both")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Binding(Directed):
    """A route's binding to one chat of this gateway, as the gateway needs to know it."""

    route: str
    address: Address
    direction: Literal["in", "out", "both"]
    options: Any = None  # an instance of the gateway's BindingOptions
    allow: tuple[str, ...] = ()  # external sender ids allowed (empty: everyone)
    deny: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SubmitResult:
    """What ``ctx.submit`` did. Acknowledge the source only once this is returned."""

    status: Literal["queued", "duplicate", "dropped"]
    reason: str = ""
    destinations: int = 0


class MeshHandle(Protocol):
    """A gateway's view of one configured mesh, through the core's mesh peer.

    No key material crosses this interface: text goes in and comes out as
    plaintext, and the core's key ring encrypts (bodyVersion 3 or 1, per the
    mesh's topic settings) and decrypts inside. The mesh-to-mesh bridge uses it.
    """

    name: str  # the [mesh.<name>] table

    @property
    def state(self) -> str:
        """connecting | connected | backoff | terminal | stopped."""

    @property
    def mesh_id(self) -> str: ...

    @property
    def rate_limit(self) -> RateLimit:
        """The mesh member's send budget (``[mesh.<name>] rate_per_minute`` / ``rate_burst``), the
        scope the core's own posts to this mesh use: return it from ``rate_limits`` for what is
        posted through this handle, so both share one bucket. Follows a config reload."""

    async def watch_topic(self, topic: str, on_message: Callable[[Message], Awaitable[None]]) -> None:
        """Poll ``topic`` (joining it) and hand each new row, decrypted, to ``on_message`` as a
        :class:`Message` with ``origin = Address(<gateway name>, topic)``, ``native_id`` = the topic
        message id, ``sender_id`` = the sender's pubkey and ``hops`` from any ``__cmh<n>:`` prefix
        (stripped). The cursor advances only after ``on_message`` returns. Rows posted by this
        gateway's own identity are never delivered."""

    async def post_topic(self, topic: str, text: str, *, reply_to: str | None = None,
                         idempotency_key: str | None = None) -> str | None:
        """Post to ``topic`` (by name); returns the topic message id. Raises DeliveryError.

        Pass ``Outbound.idempotency_key``: retries of one part then reuse one client message id,
        as the core's own mesh posts do. Mentions are derived from ``@name`` tokens in ``text``."""

    async def send_dm(self, peer: str, text: str) -> str:
        """Direct, encrypted message to a peer by display name or pubkey. Raises DeliveryError."""

    async def peers(self) -> list[dict[str, Any]]:
        """The roster: ``{"name", "pubkey", "groups", "status"}`` per live peer."""


class GatewayContext(Protocol):
    """What the core hands a gateway instance. Everything a plugin may touch."""

    name: str  # the gateway instance name
    http: aiohttp.ClientSession  # shared session; never create your own per call
    #: the server's public base URL ([server] public_url, no trailing slash), for gateways that
    #: register webhooks; None when not configured. A gateway's own ``public_url`` takes precedence.
    public_url: str | None

    @property
    def bindings(self) -> Sequence[Binding]:
        """Current bindings of this gateway (changes on reload)."""

    async def submit(self, message: Message) -> SubmitResult:
        """Hand an inbound message to the core: dedup, admit, loop guard, route, and
        durable enqueue in one transaction. Returns after the commit."""

    async def kv_get(self, key: str) -> Any | None:
        """Read a small JSON value persisted for this gateway instance (offsets, registries)."""

    async def kv_set(self, key: str, value: Any) -> None:
        """Persist a small JSON value for this gateway instance (durable on return)."""

    async def kv_delete(self, key: str) -> None: ...

    async def lookup_origin(self, native_id: str, chat: str) -> str | None:
        """Message map: the core message id whose copy on this gateway's ``chat`` has
        ``native_id`` (used e.g. to attribute a vendor status callback)."""

    def emit(self, event: Event) -> None:
        """Send an event to ``track_event`` observers (isolated per plugin)."""

    def set_state(self, state: GatewayState, detail: str = "") -> None:
        """Report this gateway's state (health, readiness, metrics, dashboard)."""

    def register_secret(self, value: str) -> None:
        """Have the log redaction filter scrub ``value`` (config secrets are registered already)."""

    def mesh(self, name: str) -> MeshHandle:
        """The configured mesh ``name`` (a ``[mesh.<name>]`` table). Raises KeyError if unknown."""

    async def exclusive(self, what: str) -> bool:
        """True while this replica holds the lease ``what`` of this gateway instance (e.g. "poll"):
        for ingress that only one replica may run at a time (Telegram getUpdates, a Slack socket).
        Call it before each round; once taken it is renewed in the background until the process
        stops or loses it. Always True with one process (the SQLite store)."""


class Gateway(abc.ABC):
    """Subclass per platform. One instance per ``[gateways.<name>]`` table.

    Class attributes: ``kind`` (the ``type`` operators write), ``Config`` (the
    table's model), ``BindingOptions`` (per-binding options model),
    ``capabilities`` and ``log_redactions``: regular expressions of values the
    gateway makes at run time that must never reach a log line (capability tokens in
    URLs); the core's log redaction masks each match, or only its ``secret`` group.
    Secrets the gateway *knows* go through ``ctx.register_secret`` instead.
    """

    kind: ClassVar[str]
    Config: ClassVar[type[GatewayConfig]] = GatewayConfig
    BindingOptions: ClassVar[type[BindingOptions]] = BindingOptions
    capabilities: ClassVar[Capabilities] = Capabilities()
    log_redactions: ClassVar[tuple[str, ...]] = ()

    def __init__(self, name: str, config: GatewayConfig, ctx: GatewayContext) -> None:
        self.name = name
        self.config = config
        self.ctx = ctx
        self._state = GatewayState.STOPPED
        self._detail = ""

    # -- lifecycle -----------------------------------------------------------
    @abc.abstractmethod
    async def start(self) -> None:
        """Connect, register webhooks, start polling. Idempotent."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop ingress and release resources. Idempotent; never raises on a second call."""

    # -- egress ----------------------------------------------------------------
    @abc.abstractmethod
    async def send(self, out: Outbound) -> SendResult:
        """Deliver one part. Raise :class:`DeliveryError` (``permanent``/``retry_after``) on failure."""

    async def fetch_attachment(self, attachment: Attachment, max_bytes: int) -> bytes:
        """The bytes of a file this gateway referenced in a message it submitted.

        The core calls it at delivery time when the message goes to *another* gateway that
        takes files (``Capabilities.media``) and the attachment has no bytes and no http(s)
        URL: a reference in this gateway's own scheme (``tgfile:…``, ``slackfile:…``). Never
        read more than ``max_bytes``. Raise :class:`DeliveryError`: ``permanent`` when the file
        is gone or too large (the destination then gets its description), otherwise the
        delivery is retried. The default: this gateway's files cannot be fetched."""
        raise Unsupported(f"{self.kind} files cannot be fetched for other platforms")

    def rate_limits(self, to: Address) -> Sequence[RateLimit]:
        """Token buckets that apply to ``to``. Default: none (the core still serialises per chat)."""
        return ()

    def mesh_of(self, address: Address) -> str | None:
        """The mesh (``[mesh.<name>]``) an address of this gateway lies on, or None.

        Gateways that carry messages into another mesh (the bridge) return it, so the
        core applies the mesh loop rules to them: hop limit, visited meshes and the
        ``__cmh<n>:`` hop prefix on what it sends.
        """
        return None

    def render_text(self, message: Message, text: str, out_options: Mapping[str, Any]) -> str | None:
        """Gateway's own default rendering of already-attributed ``text``; None = plain text."""
        return None

    # -- ingress over HTTP ------------------------------------------------------
    def web_routes(self) -> Sequence[web.RouteDef]:
        """Routes mounted under ``/gateways/<name>/`` (webhooks). Verify signatures first."""
        return ()

    # -- operations ---------------------------------------------------------------
    async def check(self) -> list[str]:
        """Warnings for ``claudemesh-gateway check`` (e.g. Telegram privacy mode on)."""
        return []

    @property
    def state(self) -> GatewayState:
        return self._state

    @property
    def state_detail(self) -> str:
        return self._detail

    def set_state(self, state: GatewayState, detail: str = "") -> None:
        if state != self._state or detail != self._detail:
            self._state, self._detail = state, detail
            self.ctx.set_state(state, detail)
