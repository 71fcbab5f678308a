"""``claudemesh-gateway dev-broker`` and ``mint-invite``: run the dev broker as a standalone process."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path

from ..signals import add_signal_handler, remove_signal_handler
from .api import build_invite
from .broker import DevBroker
from .config import DevBrokerConfig
from .seed import MESHES_TOML, meshes_toml
from .store import Store

log = logging.getLogger(__name__)

DEFAULT_STATE_DIR = Path(".devbroker")
DEFAULT_PORT = 7900


async def run(state_dir: Path | None, host: str = "127.0.0.1", port: int = DEFAULT_PORT, *,
              config: DevBrokerConfig | None = None, stop: asyncio.Event | None = None) -> None:
    """Run until ``stop`` is set (or SIGINT/SIGTERM); state survives restarts in ``state_dir``."""
    broker = DevBroker(state_dir, host, port, config=config)
    await broker.start()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = [name for name in ("SIGINT", "SIGTERM") if add_signal_handler(loop, name, stop.set)]
    seed = broker.default_mesh
    print(f"dev broker: {broker.ws_url}  (http {broker.http_url}, REST {broker.rest_url}/api/v1)", flush=True)
    print(f"mesh 'dev' id={seed.mesh_id} members: gateway, alice, bob; topics general (keyless), "
          "team (sealed key)", flush=True)
    if state_dir is not None:
        print(f"mesh tables: {Path(state_dir) / 'meshes.toml'}", flush=True)
    else:
        print(meshes_toml(seed, broker.ws_url), flush=True)
    try:
        await stop.wait()
    finally:
        for name in installed:
            remove_signal_handler(loop, name)
        await broker.stop()


def mint_invite_offline(state_dir: Path, *, mesh: str = "dev", role: str = "member", expires_in: int = 7 * 86400,
                        max_uses: int = 1, broker_url: str | None = None) -> str:
    """Mint an invite into a state directory; a broker running on it adopts it on its next save or /join."""
    store = Store(state_dir)
    store.load()
    row = store.meshes.get(mesh) or store.mesh_by_slug(mesh)
    if row is None:
        raise SystemExit(f"no mesh {mesh!r} in {state_dir} (start the dev broker once to seed it)")
    url = broker_url or _last_broker_url(Path(state_dir)) or f"ws://127.0.0.1:{DEFAULT_PORT}/ws"
    token = build_invite(store, row.id, url, role=role, expires_in=expires_in, max_uses=max_uses)
    store.save()
    return token


def _last_broker_url(state_dir: Path) -> str | None:
    """The broker_url the last broker start wrote to meshes.toml (it carries the bound port)."""
    try:
        doc = tomllib.loads((state_dir / MESHES_TOML).read_text(encoding="utf-8"))
        url = doc["mesh"]["dev"]["broker_url"]
    except (OSError, KeyError, TypeError, tomllib.TOMLDecodeError):
        return None
    return url if isinstance(url, str) else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="claudemesh-gateway dev-broker",
                                     description="Loopback emulation of the claudemesh broker for development.")
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR,
                        help="state directory (state.json, meshes.toml); default .devbroker")
    parser.add_argument("--memory", action="store_true", help="keep state in memory only")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command")
    inv = sub.add_parser("mint-invite", help="print a v1 invite token for POST /join")
    inv.add_argument("--mesh", default="dev", help="mesh slug or id")
    inv.add_argument("--role", choices=("member", "admin"), default="member")
    inv.add_argument("--expires-in", type=int, default=7 * 86400, help="seconds")
    inv.add_argument("--max-uses", type=int, default=1)
    inv.add_argument("--broker-url", default=None,
                     help="ws URL written into the token (default: the one in <state-dir>/meshes.toml)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "mint-invite":
        print(mint_invite_offline(args.state_dir, mesh=args.mesh, role=args.role, expires_in=args.expires_in,
                                  max_uses=args.max_uses, broker_url=args.broker_url))
        return 0
    state_dir = None if args.memory else args.state_dir
    try:
        asyncio.run(run(state_dir, args.host, args.port))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
