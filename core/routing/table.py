"""The route table: validated ``[[routes]]`` compiled into lookups the pipeline uses per message.

Built once per configuration (``RouteTable.build``); immutable afterwards, so a
reload swaps the whole table atomically (``runtime.routes = new_table``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from ..delivery.text import DEFAULT_ATTRIBUTION
from ..errors import ConfigError
from ..gateway import Binding, Directed, Gateway
from ..logconfig import url_password
from ..messages import Address, Message
from .config import MESH_GATEWAY, MeshChat, RouteConfig, parse_mesh_chat

__all__ = [
    "DEFAULT_ATTRIBUTION",
    "Destination",
    "Resolution",
    "Route",
    "RouteBinding",
    "RouteTable",
    "mesh_address",
    "sender_matches",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_HOPS = 2


def mesh_address(mesh: str, *, topic: str | None = None, tag: str | None = None, peer: str | None = None) -> Address:
    """``Address("mesh", "<mesh>:#<topic>" | "<mesh>:tag:<tag>" | "<mesh>:@<peer>")``."""
    if topic is not None:
        return Address(MESH_GATEWAY, f"{mesh}:#{topic}")
    if tag is not None:
        return Address(MESH_GATEWAY, f"{mesh}:tag:{tag}")
    if peer is not None:
        return Address(MESH_GATEWAY, f"{mesh}:@{peer}")
    raise ValueError("one of topic, tag or peer is required")


def sender_matches(entries: frozenset[str], *ids: str) -> bool:
    """True if any of ``ids`` (exact, or case-insensitively for names) is in ``entries``."""
    for i in ids:
        if not i:
            continue
        if i in entries or i.lower() in entries:
            return True
    return False


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RouteBinding(Directed):
    """One compiled binding of a route."""

    route: str
    address: Address
    direction: Literal["in", "out", "both"]
    tags: frozenset[str] = frozenset()
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # JSON-safe (persisted in the outbox)
    options_model: Any = None  # the gateway's BindingOptions instance (None for mesh addresses)
    allow: frozenset[str] = frozenset()
    deny: frozenset[str] = frozenset()
    mesh_chat: MeshChat | None = None

    def matches_origin(self, origin: Address, sender: str = "") -> bool:
        if origin.gateway != self.address.gateway:
            return False
        if self.mesh_chat is not None and self.mesh_chat.kind == "peer":
            if origin.chat.lower() == self.address.chat.lower():
                return True
            # a binding by display name ("<mesh>:@alice") matches DMs from that peer's name
            return (bool(sender) and origin.chat.startswith(f"{self.mesh_chat.mesh}:@")
                    and sender.lower() == self.mesh_chat.value.lower())
        if origin.chat != self.address.chat:
            return False
        return self.address.thread is None or self.address.thread == origin.thread


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    cfg: RouteConfig
    topic_address: Address | None
    binds: tuple[RouteBinding, ...]
    tags: frozenset[str]
    allow: frozenset[str]
    deny: frozenset[str]
    mesh_allow: frozenset[str]
    mesh_deny: frozenset[str]

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def topic_is_source(self) -> bool:
        return self.topic_address is not None and self.cfg.direction in ("out", "both")

    @property
    def topic_is_destination(self) -> bool:
        return self.topic_address is not None and self.cfg.direction in ("in", "both")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Destination:
    """One place a message goes, with the route's rendering rules."""

    route: str
    address: Address
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    attribution: str = DEFAULT_ATTRIBUTION
    allow_mass_mentions: bool = False
    notify_failures: bool = False
    mesh: str | None = None  # the route's mesh (for the {mesh} field)
    topic: str | None = None  # the route's topic (for the {topic} field)
    max_hops: int | None = None  # mesh->mesh hop limit of the route (None: the table default)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Resolution:
    """What the table made of a message: destinations, and which routes matched or refused it."""

    destinations: tuple[Destination, ...] = ()
    matched: tuple[str, ...] = ()  # routes the message matched (by source or tag)
    denied: tuple[str, ...] = ()  # routes that matched but refused the sender
    sources: tuple[str, ...] = ()  # routes whose source (topic or inbound binding) is the origin


def _gateway_class(g: Any) -> type[Gateway] | None:
    if isinstance(g, type) and issubclass(g, Gateway):
        return g
    if isinstance(g, Gateway):
        return type(g)
    return None


class RouteTable:
    """Compiled routes. Build with :meth:`build` (or :meth:`from_settings`)."""

    def __init__(self, routes: Sequence[Route], *, max_hops: Mapping[str, int] | None = None,
                 gateway_kinds: Mapping[str, str] | None = None) -> None:
        self.routes: tuple[Route, ...] = tuple(routes)
        self._by_name = {r.name: r for r in self.routes}
        self._max_hops = dict(max_hops or {})
        self._kinds = dict(gateway_kinds or {})
        self._encryption: dict[tuple[str, str], str] = {}  # only what routes set explicitly
        self._meshes: dict[str, Any] = {}
        for r in self.routes:
            if r.cfg.topic is not None and r.cfg.mesh is not None and "encryption" in r.cfg.model_fields_set:
                self._encryption[(r.cfg.mesh, r.cfg.topic)] = r.cfg.encryption
        # Per-message lookups (``match``, ``static_tags``) consult only the routes that can concern
        # the message instead of scanning every route: with thousands of topics, a scan per row
        # was most of the routing cost. Lists hold route indexes in config order.
        self._by_chat: dict[tuple[str, str], list[int]] = {}  # exact (gateway, chat): sources, inbound binds
        self._by_gateway: dict[str, list[int]] = {}  # inbound mesh peer binds (case-insensitive, by name)
        self._by_tag: dict[str, list[int]] = {}
        self._tagged_binds: tuple[RouteBinding, ...] = tuple(b for r in self.routes for b in r.binds if b.tags)
        for i, r in enumerate(self.routes):
            if r.topic_is_source and r.topic_address is not None:
                _index(self._by_chat, (r.topic_address.gateway, r.topic_address.chat), i)
            for b in r.binds:
                if not b.inbound:
                    continue
                if b.mesh_chat is not None and b.mesh_chat.kind == "peer":
                    _index(self._by_gateway, b.address.gateway, i)
                else:
                    _index(self._by_chat, (b.address.gateway, b.address.chat), i)
            for t in r.tags:
                _index(self._by_tag, t, i)
        # every route's destinations, built once: (destination key, Destination) in match() order
        self._dests: tuple[tuple[tuple[str, Destination], ...], ...] = tuple(
            tuple(_route_destinations(r)) for r in self.routes)

    def _candidates(self, origin: Address, tags: frozenset[str]) -> Sequence[int]:
        """Indexes (config order) of the routes a message from ``origin`` with ``tags`` may match:
        a superset of those ``match`` keeps, so ``match`` applies the full rules to them."""
        found = [lst for lst in (self._by_chat.get((origin.gateway, origin.chat)),
                                 self._by_gateway.get(origin.gateway)) if lst]
        if tags and self._by_tag:
            found += [lst for t in tags if (lst := self._by_tag.get(t))]
        if not found:
            return ()
        if len(found) == 1:
            return found[0]
        return sorted({i for lst in found for i in lst})

    # -- construction ---------------------------------------------------------------------------------------
    @classmethod
    def empty(cls) -> RouteTable:
        return cls(())

    @classmethod
    def from_settings(cls, settings: Any, gateways: Mapping[str, Any]) -> RouteTable:
        """``build`` from a loaded Settings (``settings.routes``, ``settings.mesh``)."""
        routes = [r if isinstance(r, RouteConfig) else RouteConfig.model_validate(_as_dict(r))
                  for r in getattr(settings, "routes", [])]
        return cls.build(routes, gateways=gateways, meshes=getattr(settings, "mesh", {}))

    @classmethod
    def build(
        cls,
        routes: Iterable[RouteConfig | Mapping[str, Any]],
        *,
        gateways: Mapping[str, Any],
        meshes: Mapping[str, Any],
    ) -> RouteTable:
        """Compile and cross-check ``routes``. Raises ConfigError listing every problem.

        ``gateways`` maps instance names to Gateway instances or classes (``check``
        builds the table before instances exist); ``meshes`` maps mesh config names
        to their MeshConfig (only the names and ``bridge.max_hops`` are read).
        """
        problems: list[str] = []
        compiled: list[Route] = []
        names: set[str] = set()
        encryption: dict[tuple[str, str], tuple[str, str]] = {}
        for i, raw in enumerate(routes):
            where = f"routes[{i}]"
            if not isinstance(raw, RouteConfig):
                try:
                    raw = RouteConfig.model_validate(_as_dict(raw))
                except ValidationError as exc:
                    for err in exc.errors(include_url=False):
                        loc = ".".join(str(p) for p in err.get("loc", ()))
                        problems.append(f"{where}{'.' + loc if loc else ''}: {err.get('msg')}")
                    continue
            cfg = raw
            where = f"routes[{i}] ({cfg.name})"
            if cfg.name in names:
                problems.append(f"{where}: duplicate route name {cfg.name!r}")
            names.add(cfg.name)
            if cfg.mesh is not None and cfg.mesh not in meshes:
                problems.append(f"{where}.mesh: unknown mesh {cfg.mesh!r} (configured: {_known(meshes)})")
            topic_address = mesh_address(cfg.mesh, topic=cfg.topic) if cfg.topic and cfg.mesh else None
            if cfg.topic and cfg.mesh and "encryption" in cfg.model_fields_set:
                key = (cfg.mesh, cfg.topic)
                prev = encryption.get(key)
                if prev is not None and prev[0] != cfg.encryption:
                    problems.append(f"{where}.encryption: {cfg.encryption!r} conflicts with route {prev[1]!r} "
                                    f"({prev[0]!r}) for {cfg.mesh}:#{cfg.topic}")
                declared = _mesh_topic_encryption(meshes.get(cfg.mesh), cfg.topic)
                if declared is not None and declared != cfg.encryption:
                    problems.append(f"{where}.encryption: {cfg.encryption!r} conflicts with "
                                    f"mesh.{cfg.mesh}.topics.{cfg.topic}.encryption ({declared!r}); set it once")
                encryption.setdefault(key, (cfg.encryption, cfg.name))
            binds: list[RouteBinding] = []
            before = len(problems)
            for j, b in enumerate(cfg.binds):
                bwhere = f"{where}.binds[{j}]"
                direction = b.direction or cfg.direction
                if b.gateway == MESH_GATEWAY:
                    mc = parse_mesh_chat(b.chat)
                    if mc.mesh not in meshes:
                        problems.append(f"{bwhere}.chat: unknown mesh {mc.mesh!r} (configured: {_known(meshes)})")
                    if mc.kind == "tag" and direction != "out":
                        problems.append(f"{bwhere}: a tag address ({b.chat}) can only be a destination; "
                                        "set direction = \"out\"")
                    chat = f"{mc.mesh}:#{mc.value}" if mc.kind == "topic" else (
                        f"{mc.mesh}:tag:{mc.value}" if mc.kind == "tag" else f"{mc.mesh}:@{mc.value}")
                    binds.append(RouteBinding(
                        route=cfg.name, address=Address(MESH_GATEWAY, chat, b.thread), direction=direction,
                        tags=frozenset(b.tags), allow=frozenset(b.allow), deny=frozenset(b.deny), mesh_chat=mc,
                    ))
                    continue
                gw = gateways.get(b.gateway)
                if gw is None:
                    problems.append(f"{bwhere}.gateway: unknown gateway {b.gateway!r} "
                                    f"(configured: {_known(gateways)}, or \"mesh\")")
                    continue
                gcls = _gateway_class(gw)
                options_model: Any = None
                options: dict[str, Any] = dict(b.options)
                if gcls is not None:
                    try:
                        options_model = gcls.BindingOptions.model_validate(b.options)
                        options = options_model.model_dump(mode="json", exclude_unset=True)
                    except ValidationError as exc:
                        for err in exc.errors(include_url=False):
                            loc = ".".join(str(p) for p in err.get("loc", ()))
                            msg = "unknown key" if err.get("type") == "extra_forbidden" else err.get("msg")
                            problems.append(f"{bwhere}.options{'.' + loc if loc else ''}: {msg}")
                        continue
                    for key in _credential_urls(options):
                        problems.append(f"{bwhere}.options.{key}: a URL with a password (user:password@host); "
                                        "binding options are stored with every queued message, so "
                                        f"credentials belong in [gateways.{b.gateway}]")
                    if direction in ("in", "both") and not getattr(gcls, "supports_inbound", True):
                        problems.append(f"{bwhere}: gateway {b.gateway!r} ({gcls.kind}) cannot receive; "
                                        "its binding can only be direction = \"out\"")
                    if direction in ("out", "both") and not getattr(gcls, "supports_outbound", True):
                        problems.append(f"{bwhere}: gateway {b.gateway!r} ({gcls.kind}) cannot send; "
                                        "its binding can only be direction = \"in\"")
                binds.append(RouteBinding(
                    route=cfg.name, address=Address(b.gateway, b.chat, b.thread), direction=direction,
                    tags=frozenset(b.tags), options=options, options_model=options_model,
                    allow=frozenset(b.allow), deny=frozenset(b.deny),
                ))
            route = Route(
                cfg=cfg, topic_address=topic_address, binds=tuple(binds), tags=frozenset(cfg.tags),
                allow=frozenset(cfg.allow), deny=frozenset(cfg.deny),
                mesh_allow=frozenset(s.lower() for s in cfg.mesh_allow),
                mesh_deny=frozenset(s.lower() for s in cfg.mesh_deny),
            )
            if len(problems) == before:  # shape checks only make sense when every binding compiled
                problems.extend(f"{where}: {p}" for p in _shape_problems(route))
            compiled.append(route)
        if problems:
            raise ConfigError(problems)
        max_hops = {}
        for name, mcfg in meshes.items():
            bridge = getattr(mcfg, "bridge", None)
            hops = getattr(bridge, "max_hops", None) if bridge is not None else None
            max_hops[name] = int(hops) if isinstance(hops, int) else DEFAULT_MAX_HOPS
        kinds = {}
        for name, g in gateways.items():
            gcls = _gateway_class(g)
            kinds[name] = gcls.kind if gcls is not None and hasattr(gcls, "kind") else name
        table = cls(compiled, max_hops=max_hops, gateway_kinds=kinds)
        table._encryption = {key: mode for key, (mode, _route) in encryption.items()}
        table._meshes = dict(meshes)
        return table

    # -- lookups ----------------------------------------------------------------------------------------------
    def route(self, name: str) -> Route | None:
        return self._by_name.get(name)

    def max_hops(self, mesh: str) -> int:
        return self._max_hops.get(mesh, DEFAULT_MAX_HOPS)

    def gateway_kind(self, gateway: str) -> str:
        return self._kinds.get(gateway, gateway)

    def explicit_encryption(self, mesh: str, topic: str) -> str | None:
        """The ``encryption`` a route sets for ``mesh``/``topic``, or None when no route sets it."""
        return self._encryption.get((mesh, topic.removeprefix("#")))

    def encryption_for(self, mesh: str, topic: str) -> str:
        """``"auto"``, ``"hkdf"`` or ``"plaintext"`` for ``mesh``/``topic``: a route's explicit
        ``encryption``, else the mesh config (``[mesh.<m>.topics.<t>]`` / ``default_encryption``),
        else ``"auto"``. What ``auto`` sends depends on the topic (the mesh peer decides)."""
        topic = topic.removeprefix("#")
        mode = self._encryption.get((mesh, topic))
        if mode is not None:
            return mode
        return _mesh_topic_encryption(self._meshes.get(mesh), topic, defaults=True) or "auto"

    def topic_encryption(self) -> dict[str, dict[str, str]]:
        """``{mesh: {topic: mode}}`` for every topic whose route sets ``encryption`` explicitly."""
        out: dict[str, dict[str, str]] = {}
        for (mesh, topic), mode in sorted(self._encryption.items()):
            out.setdefault(mesh, {})[topic] = mode
        return out

    def apply_encryption(self, meshes: Mapping[str, Any]) -> dict[str, Any]:
        """``meshes`` (name -> MeshConfig) with every route's explicit ``encryption`` written into
        ``topics.<topic>.encryption``, so the KeyRing built from them seals and opens each topic
        exactly as the routes say. Build the KeyRing from the result::

            ring = KeyRing.from_configs(runtime.routes.apply_encryption(settings.mesh))
        """
        out = dict(meshes)
        for (mesh, topic), mode in self._encryption.items():
            cfg = out.get(mesh)
            topics = getattr(cfg, "topics", None)
            if cfg is None or not isinstance(topics, Mapping):
                continue
            current = topics.get(topic)
            if current is not None:
                entry = current.model_copy(update={"encryption": mode})
            else:
                from ..mesh.config import TopicKeyConfig

                entry = TopicKeyConfig(encryption=mode)
            out[mesh] = cfg.model_copy(update={"topics": {**topics, topic: entry}})
        return out

    def bindings_for(self, gateway_name: str) -> list[Binding]:
        """The bindings of gateway instance ``gateway_name`` across all routes (``ctx.bindings``)."""
        out: list[Binding] = []
        for r in self.routes:
            for b in r.binds:
                if b.address.gateway == gateway_name:
                    out.append(Binding(
                        route=r.name, address=b.address, direction=b.direction, options=b.options_model,
                        allow=tuple(sorted(b.allow | r.allow)), deny=tuple(sorted(b.deny | r.deny)),
                    ))
        return out

    def watched_topics(self, mesh: str | None = None) -> Any:
        """Topics the mesh peers must poll because they are sources of a route.

        With ``mesh``: the set of topic names for that mesh; without: ``{mesh: set[topic]}``.
        """
        out: dict[str, set[str]] = {}
        for r in self.routes:
            if r.topic_is_source and r.cfg.mesh and r.cfg.topic:
                out.setdefault(r.cfg.mesh, set()).add(r.cfg.topic)
            for b in r.binds:
                if b.mesh_chat is not None and b.mesh_chat.kind == "topic" and b.inbound:
                    out.setdefault(b.mesh_chat.mesh, set()).add(b.mesh_chat.value)
        if mesh is not None:
            return out.get(mesh, set())
        return out

    def static_tags(self, origin: Address) -> frozenset[str]:
        """Tags configured on every binding whose chat is ``origin``."""
        tags: set[str] = set()
        for b in self._tagged_binds:
            if b.matches_origin(origin):
                tags |= b.tags
        return frozenset(tags)

    def binding_options(self, address: Address) -> dict[str, Any]:
        """The (JSON-safe) options of the first binding for chat ``address`` (answers to a chat
        reuse them, e.g. a webhook binding's ``url``); empty when none is configured."""
        for r in self.routes:
            for b in r.binds:
                if b.matches_origin(address):
                    return dict(b.options)
        return {}

    def inbound_routes(self, origin: Address) -> list[Route]:
        """Routes that accept messages from ``origin`` (its topic, or an inbound binding)."""
        return [r for r in self.routes if self._source_binding(r, origin) is not None or
                (r.topic_is_source and r.topic_address == _topic_key(origin))]

    def meshes_for(self, origin: Address) -> list[str]:
        """Meshes of the routes ``origin`` is bound to (for in-chat commands), in config order."""
        out: list[str] = []
        for r in self.inbound_routes(origin):
            meshes = [r.cfg.mesh] if r.cfg.mesh else []
            meshes += [b.mesh_chat.mesh for b in r.binds if b.mesh_chat is not None]
            for m in meshes:
                if m and m not in out:
                    out.append(m)
        if origin.gateway == MESH_GATEWAY:
            mesh = origin.chat.partition(":")[0]
            if mesh and mesh not in out:
                out.insert(0, mesh)
        return out

    # -- resolution -----------------------------------------------------------------------------------------------
    def resolve(self, message: Message) -> list[Destination]:
        """Every destination of ``message`` under the configured routes (before loop guards)."""
        return list(self.match(message).destinations)

    def match(self, message: Message) -> Resolution:
        origin = message.origin
        topic_origin = _topic_key(origin)
        dests: dict[str, Destination] = {}
        matched: list[str] = []
        denied: list[str] = []
        sources: list[str] = []
        sender = message.sender if origin.gateway == MESH_GATEWAY else ""
        routes = self.routes
        for i in self._candidates(origin, message.tags):
            r = routes[i]
            src_bind = self._source_binding(r, origin, sender)
            from_topic = r.topic_is_source and topic_origin is not None and r.topic_address == topic_origin
            by_tag = bool(r.tags & message.tags)
            if src_bind is None and not from_topic and not by_tag:
                continue
            if src_bind is not None or from_topic:
                sources.append(r.name)
            matched.append(r.name)
            if not self._admits(r, src_bind, message):
                denied.append(r.name)
                continue
            for key, dest in self._dests[i]:
                if key not in dests:
                    dests[key] = dest
        return Resolution(destinations=tuple(dests.values()), matched=tuple(matched), denied=tuple(denied),
                          sources=tuple(sources))

    def admits(self, route: Route, message: Message) -> bool:
        sender = message.sender if message.origin.gateway == MESH_GATEWAY else ""
        return self._admits(route, self._source_binding(route, message.origin, sender), message)

    @staticmethod
    def _source_binding(r: Route, origin: Address, sender: str = "") -> RouteBinding | None:
        for b in r.binds:
            if b.inbound and b.matches_origin(origin, sender):
                return b
        return None

    @staticmethod
    def _admits(r: Route, src: RouteBinding | None, message: Message) -> bool:
        if message.origin.gateway == MESH_GATEWAY:
            ids = (message.sender_id, message.sender)
            if r.mesh_deny and sender_matches(r.mesh_deny, *ids):
                return False
            if r.mesh_allow and not sender_matches(r.mesh_allow, *ids):
                return False
            if src is not None:
                if src.deny and sender_matches(src.deny, *ids):
                    return False
                if src.allow and not sender_matches(src.allow, *ids):
                    return False
            return True
        sid = message.sender_id
        deny = r.deny | (src.deny if src is not None else frozenset())
        if deny and sid in deny:
            return False
        allow = src.allow if (src is not None and src.allow) else r.allow
        return not allow or sid in allow

    # -- operations -------------------------------------------------------------------------------------------------------
    def describe(self) -> list[dict[str, Any]]:
        """One dict per route, for ``claudemesh-gateway routes`` and the admin API."""
        out = []
        for r in self.routes:
            c = r.cfg
            out.append({
                "name": c.name, "mesh": c.mesh, "topic": c.topic, "tags": list(c.tags), "direction": c.direction,
                "encryption": c.encryption if c.topic else None,
                "attribution": c.attribution or DEFAULT_ATTRIBUTION,
                "allow": list(c.allow), "deny": list(c.deny), "mesh_allow": list(c.mesh_allow),
                "mesh_deny": list(c.mesh_deny), "allow_mass_mentions": c.allow_mass_mentions,
                "notify_failures": c.notify_failures, "max_hops": c.max_hops,
                "binds": [
                    {"gateway": b.address.gateway, "chat": b.address.chat, "thread": b.address.thread,
                     "direction": b.direction, "tags": sorted(b.tags)}
                    for b in r.binds
                ],
            })
        return out


def _route_destinations(r: Route) -> list[tuple[str, Destination]]:
    """The destinations of route ``r`` with their keys: its topic (when it is a destination),
    then its outbound bindings, in config order."""
    targets: list[tuple[Address, Mapping[str, Any]]] = []
    if r.topic_is_destination and r.topic_address is not None:
        targets.append((r.topic_address, {}))
    for b in r.binds:
        if b.outbound:
            targets.append((b.address, b.options))
    return [(address.key, Destination(
        route=r.name, address=address, options=dict(options),
        attribution=r.cfg.attribution or DEFAULT_ATTRIBUTION,
        allow_mass_mentions=r.cfg.allow_mass_mentions, notify_failures=r.cfg.notify_failures,
        mesh=r.cfg.mesh, topic=r.cfg.topic, max_hops=r.cfg.max_hops,
    )) for address, options in targets]


def _index(index: dict[Any, list[int]], key: Any, i: int) -> None:
    lst = index.setdefault(key, [])
    if not lst or lst[-1] != i:
        lst.append(i)


def _topic_key(origin: Address) -> Address | None:
    """The topic address an origin corresponds to (threads ignored), or None if not a mesh topic."""
    if origin.gateway != MESH_GATEWAY or ":#" not in origin.chat:
        return None
    return Address(MESH_GATEWAY, origin.chat)


def _shape_problems(r: Route) -> list[str]:
    """Routes that can never carry a message."""
    problems: list[str] = []
    sources: list[Address] = [b.address for b in r.binds if b.inbound]
    if r.topic_is_source and r.topic_address is not None:
        sources.append(r.topic_address)
    dests: list[Address] = [b.address for b in r.binds if b.outbound]
    if r.topic_is_destination and r.topic_address is not None:
        dests.append(r.topic_address)
    if not sources and not r.tags:
        if r.topic_address is not None and r.cfg.direction == "in":
            problems.append("direction \"in\" (platform -> mesh) but no binding can receive "
                            "(every binding is direction \"out\")")
        else:
            problems.append("nothing can enter this route: no source topic, no tags and no inbound binding")
    if not dests:
        problems.append("nothing can leave this route: no destination topic and no outbound binding")
    elif not r.tags and sources and all(all(d == s for d in dests) for s in sources):
        problems.append("its only destination is its only source; a message would go back where it came from")
    return problems


def _mesh_topic_encryption(cfg: Any, topic: str, *, defaults: bool = False) -> str | None:
    """The encryption a MeshConfig declares for ``topic`` (explicit ``topics`` entry; with
    ``defaults`` also what the entry inherits: ``default_encryption``), or None."""
    if cfg is None:
        return None
    topics = getattr(cfg, "topics", None)
    if isinstance(topics, Mapping) and topic in topics:
        entry = topics[topic]
        mode = getattr(entry, "encryption", None)
        if mode is not None and (defaults or "encryption" in getattr(entry, "model_fields_set", {"encryption"})):
            return mode
    if defaults:
        settings = getattr(cfg, "topic_settings", None)
        if callable(settings):
            return settings(topic).encryption
        mode = getattr(cfg, "default_encryption", None)
        return mode if isinstance(mode, str) else None
    return None


def _credential_urls(options: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Keys (dotted) of binding option values that are URLs carrying a password."""
    found: list[str] = []
    for key, value in options.items():
        where = f"{prefix}{key}"
        if isinstance(value, str) and url_password(value) is not None:
            found.append(where)
        elif isinstance(value, Mapping):
            found.extend(_credential_urls(value, f"{where}."))
    return found


def _known(m: Mapping[str, Any]) -> str:
    return ", ".join(sorted(m)) or "none"


def _as_dict(v: Any) -> dict[str, Any]:
    if isinstance(v, BaseModel):
        return v.model_dump()
    return dict(v)
