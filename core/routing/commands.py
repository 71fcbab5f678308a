"""In-chat commands, handled once in the core for every gateway.

``/help``, ``/topics``, ``/peers``, ``/status`` and ``/dm <peer>[@<mesh>] <text>``. A command
is answered to the chat it came from, through the outbox like any other message
(durable, rate-limited, ordered). Commands are only honoured from chats bound to
a route that admits the sender, and from direct messages of mesh peers.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import re
from typing import Any

from ..messages import Address, Message
from .config import MESH_GATEWAY, mesh_of
from .table import Route, RouteTable, mesh_address

__all__ = ["BOT_SENDER", "COMMANDS", "HELP_TEXT", "CommandHandler", "CommandResult", "DmScope", "parse_command"]

log = logging.getLogger(__name__)

COMMANDS = ("help", "topics", "peers", "status", "dm")
BOT_SENDER = "claudemesh-gateway"
_COMMAND = re.compile(r"^/([A-Za-z]+)(?:@[A-Za-z0-9_]+)?(?:\s+(.*))?$", re.DOTALL)

HELP_TEXT = (
    "claudemesh-gateway commands:\n"
    "/topics: the mesh topics and tags this chat is bridged to\n"
    "/peers: who is on the mesh right now\n"
    "/status: gateway and mesh status\n"
    "/dm <peer> <text>: send a direct message to a mesh peer\n"
    "/dm <peer>@<mesh> <text>: the same, to a peer of that mesh (another mesh bridged to this chat)\n"
    "/help: this help\n"
    "Start a message with tag:<name> to send it to everyone following that tag."
)


def parse_command(text: str) -> tuple[str, str] | None:
    """``("dm", "bob hello")`` for ``/dm bob hello`` (also ``/dm@MyBot ...``); None if not one of ours."""
    m = _COMMAND.match(text.strip())
    if not m:
        return None
    name = m.group(1).lower()
    if name not in COMMANDS:
        return None
    return name, (m.group(2) or "").strip()


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CommandResult:
    """The reply to the origin, plus an optional extra (message, destination) such as a /dm."""

    reply: str
    extra: tuple[tuple[Message, Address], ...] = ()
    attribution: str | None = None  # template for the extras (None: the default "{sender}: {text}")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DmScope:
    """Where ``/dm`` may look from one chat.

    ``near``: the meshes of the routes the chat is bound to (and a mesh origin's own mesh), searched
    without ``@mesh``; ``far``: far mesh -> bridge gateway (``allow_dm = true``) bound in those
    routes, also searched; ``closed``: far mesh -> bridge gateway with ``allow_dm = false`` (refused);
    ``own``: the mesh the origin lies on (None for a platform chat).
    """

    near: tuple[str, ...]
    far: dict[str, str]
    closed: dict[str, str]
    own: str | None

    @property
    def searched(self) -> list[str]:
        return [*self.near, *(m for m in self.far if m not in self.near)]


def _attr(obj: Any, *names: str, default: Any = None) -> Any:
    for n in names:
        if isinstance(obj, dict) and n in obj:
            return obj[n]
        v = getattr(obj, n, None)
        if v is not None:
            return v
    return default


async def _maybe(v: Any) -> Any:
    return await v if inspect.isawaitable(v) else v


class CommandHandler:
    def __init__(self, runtime: Any) -> None:  # the running gateway (runtime.Runtime, a layer above)
        self.runtime = runtime

    def authorised(self, table: RouteTable, message: Message) -> bool:
        """Commands come from a chat bound (inbound) to a route that admits the sender, or a mesh DM."""
        if message.origin.gateway == MESH_GATEWAY:  # direct messages only (not topics, not broadcasts)
            return ":@" in message.origin.chat and message.raw.get("kind", "dm") == "dm"
        return any(table.admits(r, message) for r in table.inbound_routes(message.origin))

    async def handle(self, table: RouteTable, message: Message, name: str, args: str) -> CommandResult:
        handler = getattr(self, f"_cmd_{name}")
        try:
            return await handler(table, message, args)
        except Exception:  # a failing command must answer, not lose the message
            log.exception("command /%s failed", name)
            return CommandResult(reply=f"/{name} failed; see the gateway log.")

    async def _cmd_help(self, table: RouteTable, message: Message, args: str) -> CommandResult:
        return CommandResult(reply=HELP_TEXT)

    async def _cmd_topics(self, table: RouteTable, message: Message, args: str) -> CommandResult:
        lines = []
        for r in table.inbound_routes(message.origin):
            c = r.cfg
            what = f"{c.mesh}:#{c.topic}" if c.topic else "(no topic)"
            extra = f", tags {', '.join('tag:' + t for t in c.tags)}" if c.tags else ""
            lines.append(f"- {c.name}: {what} ({c.direction}{extra})")
        tag_routes = [r for r in table.routes if r.tags and r not in table.inbound_routes(message.origin)]
        for r in tag_routes:
            lines.append(f"- {r.name}: reached with {', '.join('tag:' + t for t in sorted(r.tags))}")
        if not lines:
            return CommandResult(reply="This chat is not bridged to any topic.")
        return CommandResult(reply="Routes for this chat:\n" + "\n".join(lines))

    async def _cmd_peers(self, table: RouteTable, message: Message, args: str) -> CommandResult:
        out = []
        for mesh in table.meshes_for(message.origin):
            peer = self.runtime.meshes.get(mesh)
            if peer is None:
                continue
            try:
                peers = await _maybe(peer.peers())
            except Exception as exc:  # noqa: BLE001 - one mesh's trouble must not hide the others
                out.append(f"{mesh}: roster unavailable ({type(exc).__name__})")
                continue
            names = []
            for p in peers:
                name = _attr(p, "display_name", "displayName", "name", default="?")
                status = _attr(p, "status", default="")
                names.append(f"{name}" + (f" ({status})" if status else ""))
            out.append(f"{mesh}: " + (", ".join(sorted(names, key=str.lower)) if names else "nobody online"))
        return CommandResult(reply="\n".join(out) if out else "No mesh is bridged to this chat.")

    async def _cmd_status(self, table: RouteTable, message: Message, args: str) -> CommandResult:
        rt = self.runtime
        lines = []
        for name, (state, detail, _since) in sorted(rt.states.items()):
            kind = "mesh" if name in rt.meshes else "gateway"
            lines.append(f"{kind} {name}: {getattr(state, 'value', state)}" + (f" ({detail})" if detail else ""))
        try:
            depths = await rt.store.outbox_depths()
            queued = sum(n for n, _ in depths.values())
            dead = await rt.store.dlq_count()
            lines.append(f"queued: {queued}, dead letters: {dead}")
        except Exception as exc:  # noqa: BLE001 - status must answer even when the store struggles
            lines.append(f"store: unavailable ({type(exc).__name__})")
        return CommandResult(reply="\n".join(lines) if lines else "No components.")

    def dm_scope(self, table: RouteTable, origin: Address) -> DmScope:
        """The meshes ``/dm`` may reach from ``origin`` (see :class:`DmScope`).

        Bridges count when bound in a route the origin is bound to; for a DM to the gateway from a
        mesh peer, also in the routes whose ``mesh`` is that peer's mesh. A bridge's far mesh that is
        the origin's own mesh (a ``/dm`` typed on the far side of that bridge) is not "far".
        """
        near = table.meshes_for(origin)
        try:
            own = mesh_of(self.runtime, origin)
        except Exception:  # noqa: BLE001  (a plugin's mesh_of must not break /dm)
            own = None
        routes: list[Route] = list(table.inbound_routes(origin))
        if origin.gateway == MESH_GATEWAY and ":@" in origin.chat and own:
            routes += [r for r in table.routes if r.cfg.mesh == own and r not in routes]
        far: dict[str, str] = {}
        closed: dict[str, str] = {}
        for r in routes:
            for b in r.binds:
                name = b.address.gateway
                gw = self.runtime.gateways.get(name) if name != MESH_GATEWAY else None
                if gw is None:
                    continue
                try:
                    mesh = gw.mesh_of(b.address)
                except Exception:  # a plugin's mesh_of must not break the command
                    log.debug("mesh_of of %s failed", name, exc_info=True)
                    continue
                if not mesh or mesh == own or mesh in near:
                    continue
                if getattr(getattr(gw, "config", None), "allow_dm", False) is True:
                    far.setdefault(mesh, name)
                else:
                    closed.setdefault(mesh, name)
        for mesh in far:
            closed.pop(mesh, None)  # one bridge that allows DMs to that mesh is enough
        return DmScope(near=tuple(near), far=far, closed=closed, own=own)

    def _configured_meshes(self) -> set[str]:
        return set(getattr(self.runtime.settings, "mesh", None) or {}) | set(self.runtime.meshes)

    async def _cmd_dm(self, table: RouteTable, message: Message, args: str) -> CommandResult:
        who, _, text = args.partition(" ")
        who, text = who.strip().lstrip("@"), text.strip()
        if not who or not text:
            return CommandResult(reply="Usage: /dm <peer> <text> or /dm <peer>@<mesh> <text>")
        scope = self.dm_scope(table, message.origin)
        name_part, at, mesh_part = who.rpartition("@")
        explicit: str | None = None
        unknown_mesh = ""
        if at and name_part:
            if mesh_part in self._configured_meshes():
                explicit, who = mesh_part, name_part
            else:  # maybe a display name with an "@" in it; say so if nobody has that name
                unknown_mesh = f" There is no mesh named {mesh_part!r}."
        if explicit is not None:
            if explicit in scope.near or explicit == scope.own or explicit in scope.far:
                candidates = [explicit]
            elif explicit in scope.closed:
                return CommandResult(reply=f"DMs to mesh {explicit} are off: bridge {scope.closed[explicit]} "
                                           "has allow_dm = false. Nothing was sent.")
            else:
                return CommandResult(reply=f"Mesh {explicit} is not bridged to this chat. Nothing was sent.")
        else:
            candidates = scope.searched
        found: list[tuple[str, Any]] = []
        problems: list[str] = []
        for mesh in candidates:
            peer = self.runtime.meshes.get(mesh)
            if peer is None:
                problems.append(f"{mesh}: not connected")
                continue
            try:
                hit = await _maybe(peer.resolve_peer(who))
            except Exception as exc:  # noqa: BLE001  unknown / ambiguous: try the next mesh, report at the end
                problems.append(f"{mesh}: {exc}")
                continue
            if hit is not None and _attr(hit, "pubkey"):
                found.append((mesh, hit))
        if len(found) > 1:  # a pubkey "resolves" on every mesh: prefer the meshes whose roster knows it
            known = [(m, p) for m, p in found if _attr(p, "display_name", "displayName", "name")]
            found = known if known else found[:1]
        if len(found) > 1:
            meshes = ", ".join(m for m, _ in found)
            return CommandResult(reply=f"{who!r} is on several meshes ({meshes}); write /dm {who}@<mesh> <text> "
                                       f"(e.g. /dm {who}@{found[-1][0]} ...). Nothing was sent.")
        if not found:
            detail = f" ({'; '.join(problems)})" if problems else ""
            if explicit is not None:
                return CommandResult(reply=f"No peer named {who!r} on mesh {explicit}{detail}.")
            closed = ""
            if scope.closed:
                closed = " " + "; ".join(f"mesh {m} is not searched: bridge {g} has allow_dm = false"
                                         for m, g in sorted(scope.closed.items())) + "."
            return CommandResult(reply=f"No peer named {who!r} on the bridged mesh(es){detail}.{closed}{unknown_mesh}")
        mesh, hit = found[0]
        pubkey = str(_attr(hit, "pubkey"))
        name = _attr(hit, "display_name", "displayName", "name", default=who) or who
        dm = dataclasses.replace(message, id=f"{message.id}:dm", text=text, is_command=False,
                                 reply_to=None, edit_of=None, tags=frozenset())
        crossing = scope.own is not None and mesh != scope.own
        where = f" on {mesh}" if explicit is not None or mesh not in scope.near else ""
        return CommandResult(reply=f"DM to {name}{where} queued.", extra=((dm, mesh_address(mesh, peer=pubkey)),),
                             attribution="{sender} @ {origin_mesh}: {text}" if crossing else None)
