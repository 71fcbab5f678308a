"""In-chat commands, handled once in the core for every gateway.

``/help``, ``/topics``, ``/peers``, ``/status`` and ``/dm <peer> <text>``. A command
is answered to the chat it came from, through the outbox like any other message
(durable, rate-limited, ordered). Commands are only honoured from chats bound to
a route that admits the sender, and from direct messages of mesh peers.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import re
from typing import TYPE_CHECKING, Any

from ..messages import Address, Message
from .config import MESH_GATEWAY
from .table import RouteTable, mesh_address

if TYPE_CHECKING:
    from ..runtime import Runtime

__all__ = ["BOT_SENDER", "COMMANDS", "HELP_TEXT", "CommandHandler", "CommandResult", "parse_command"]

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
    def __init__(self, runtime: Runtime) -> None:
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
            except Exception as exc:
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
        except Exception as exc:  # status must answer even when the store struggles
            lines.append(f"store: unavailable ({type(exc).__name__})")
        return CommandResult(reply="\n".join(lines) if lines else "No components.")

    async def _cmd_dm(self, table: RouteTable, message: Message, args: str) -> CommandResult:
        who, _, text = args.partition(" ")
        who, text = who.strip().lstrip("@"), text.strip()
        if not who or not text:
            return CommandResult(reply="Usage: /dm <peer> <text>")
        problems = []
        for mesh in table.meshes_for(message.origin):
            peer = self.runtime.meshes.get(mesh)
            if peer is None:
                continue
            try:
                found = await _maybe(peer.resolve_peer(who))
            except Exception as exc:  # unknown / ambiguous: try the next mesh, report at the end
                problems.append(f"{mesh}: {exc}")
                continue
            if found is None:
                continue
            pubkey = _attr(found, "pubkey")
            name = _attr(found, "display_name", "displayName", "name", default=who)
            if not pubkey:
                continue
            dm = dataclasses.replace(message, id=f"{message.id}:dm", text=text, is_command=False,
                                     reply_to=None, edit_of=None, tags=frozenset())
            return CommandResult(reply=f"DM to {name} queued.", extra=((dm, mesh_address(mesh, peer=pubkey)),))
        detail = f" ({'; '.join(problems)})" if problems else ""
        return CommandResult(reply=f"No peer named {who!r} on the bridged mesh(es){detail}.")
