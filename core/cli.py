"""``claudemesh-gateway``: the operator's command line.

Exit codes (each with one human-readable line on stderr, never a traceback for an
expected error):

====  =======================================================================
0     clean stop / success
1     unexpected error (``--traceback`` shows where)
2     configuration error: one ``path.to.key: message`` line per problem
3     plugin error (import failure, name clash, invalid hookimpl, duplicate kind)
4     startup error (store, mesh or gateway could not start)
====  =======================================================================

Only this module configures logging and calls ``sys.exit`` (through ``__main__``).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import importlib
import json
import logging
import os
import sys
import traceback
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .confcheck import expand_path, one_line, read_regular_file
from .errors import ConfigError, GatewayError, PluginError, StartupError
from .files import make_private_dir
from .logconfig import configure_logging, redact
from .plugin_manager import gateway_kinds, make_plugin_manager, plugin_info
from .settings import BootstrapSettings, Settings, load_bootstrap_settings, load_settings

__all__ = ["EXIT_CONFIG", "EXIT_OK", "EXIT_PLUGIN", "EXIT_STARTUP", "EXIT_UNEXPECTED", "build_parser", "main"]

log = logging.getLogger(__name__)

EXIT_OK, EXIT_UNEXPECTED, EXIT_CONFIG, EXIT_PLUGIN, EXIT_STARTUP = 0, 1, 2, 3, 4
EXIT_NOT_FOUND = 5  # `trace ID`: no message of that id within the trace retention
DEFAULT_CONFIG = "config.toml"
CONFIG_ENV = "CLAUDEMESH_CONFIG"


# -- helpers -------------------------------------------------------------------------------------------------------
def _out(obj: Any) -> None:
    print(json.dumps(obj, ensure_ascii=False, default=str))


def _config_path(args: argparse.Namespace) -> Path:
    return Path(args.config or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)


def _tool(module: str, name: str) -> Callable[..., Any]:  # functions other packages provide to the CLI
    """A function another part of the gateway provides to the CLI (mesh tools, dev broker)."""
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise StartupError(f"{module} is not available in this installation ({exc})") from exc
    fn = getattr(mod, name, None)
    if fn is None:
        raise StartupError(f"{module}.{name} is not available in this installation")
    return fn


def _run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(_as_coro(coro))


async def _as_coro(aw: Awaitable[Any]) -> Any:
    return await aw


def _quiet_logging(args: argparse.Namespace, settings: Settings | None = None) -> None:
    """Tools print results on stdout; logs (warnings and up unless -v) go to stderr."""
    level = "DEBUG" if args.verbose else "WARNING"
    configure_logging(settings, level=level, fmt=settings.log.format if settings else "text")


def _load(args: argparse.Namespace, *, allow_missing_includes: bool = False, **kw: Any) -> Settings:
    return load_settings(_config_path(args), allow_missing_includes=allow_missing_includes, **kw)


def _bootstrap(args: argparse.Namespace) -> BootstrapSettings:
    """[server]/[dev_broker]/[log]; on a problem, report every problem of the whole file instead."""
    try:
        return load_bootstrap_settings(_config_path(args))
    except ConfigError:
        _load(args, allow_missing_includes=True)  # raises with the complete list
        raise


def _dev_broker_pending(settings: Settings | BootstrapSettings) -> bool:
    """The embedded dev broker is on and has not yet written the files the config includes."""
    if not settings.dev_broker.embedded or settings.config_path is None:
        return False
    base = settings.config_path.parent
    return any(not (base / inc).expanduser().exists() for inc in settings.include)


async def _start_dev_broker(settings: Settings | BootstrapSettings, *, port: int | None = None) -> Any:
    from .devbroker import DevBroker

    db = settings.dev_broker
    make_private_dir(db.state_dir)  # 0700, parents too (it is under [server] state_dir by default)
    broker = DevBroker(db.state_dir, host=db.host, port=db.port if port is None else port)
    try:
        await broker.start()
    except OSError as exc:
        raise StartupError(f"embedded dev broker could not listen on {db.host}:{db.port}: {exc.strerror}") from exc
    log.info("embedded dev broker on %s (state in %s)", getattr(broker, "ws_url", "?"), db.state_dir)
    return broker


# -- run -------------------------------------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from aiohttp import web

    from .app import create_app, install_reload_signal

    first = _bootstrap(args)
    configure_logging(None, level="DEBUG" if args.verbose else first.log.level, fmt=first.log.format)
    # everything is validated before anything starts (after the embedded broker wrote its tables)
    load_once: Settings | None = None if first.dev_broker.embedded else _load(args)

    async def build() -> web.Application:
        broker = await _start_dev_broker(first) if first.dev_broker.embedded else None
        try:
            settings = load_once if load_once is not None else _load(args)
            configure_logging(settings, level="DEBUG" if args.verbose else None)
            pm = make_plugin_manager(disable=settings.plugins.disable)
            app = create_app(settings, pm, dev_broker=broker)
            install_reload_signal(app)
        except BaseException:
            if broker is not None:
                await broker.stop()
            raise
        return app

    def announce(text: str) -> None:  # aiohttp's banner, once the sockets are bound
        urls = [word for word in text.split() if word.startswith(("http://", "https://"))]
        log.info("claudemesh-gateway %s listening on %s", __version__, ", ".join(urls) or text.strip())

    try:
        web.run_app(
            build(), host=first.server.host, port=first.server.port, shutdown_timeout=first.server.shutdown_timeout,
            print=announce, access_log=logging.getLogger("aiohttp.access"),
        )
    except OSError as exc:
        if exc.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
            raise StartupError(f"cannot listen on {first.server.host}:{first.server.port}: {exc.strerror}") from exc
        raise
    log.info("stopped")
    return EXIT_OK


# -- check -------------------------------------------------------------------------------------------------------------
def cmd_check(args: argparse.Namespace) -> int:
    from .app import validate_gateways

    boot = _bootstrap(args)
    pending = _dev_broker_pending(boot)
    if args.online and boot.dev_broker.embedded:
        _quiet_logging(args)
        return _run(_check_with_embedded_broker(args, pending=pending))
    settings = _load(args, allow_missing_includes=pending)
    _quiet_logging(args, settings)
    if pending:
        print("note: the embedded dev broker has not written its mesh tables yet; they appear on first `run`"
              " (mesh references are checked then)", file=sys.stderr)
    pm = make_plugin_manager(disable=settings.plugins.disable)
    kinds = gateway_kinds(pm)
    configs = validate_gateways(settings, kinds)
    problems = _route_problems(settings, configs, skip_meshes=pending)
    if problems:
        raise ConfigError(problems)
    _check_store(settings)
    warnings: list[str] = []
    encryption: list[str] = []
    if args.online:
        warnings = _run(_online_checks(settings, pm, encryption))
    elif not pending:
        from .app import configured_encryption

        encryption = configured_encryption(settings)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"ok: {len(settings.mesh)} mesh(es), {len(configs)} gateway(s), {len(settings.routes)} route(s)")
    _print_encryption(encryption)
    return EXIT_OK


def _print_encryption(lines: Sequence[str]) -> None:
    """The effective encryption of every bound topic, after the ``ok:`` line (docs: README Security)."""
    for line in lines:
        print(f"encryption: {line}")


async def _check_with_embedded_broker(args: argparse.Namespace, *, pending: bool) -> int:
    """``check --online`` with ``[dev_broker] embedded``: start it as ``run`` would. When its port is
    taken (a gateway is running with it) and its tables exist, check against that one instead."""
    first = load_bootstrap_settings(_config_path(args))
    try:
        broker = await _start_dev_broker(first)
    except StartupError:
        if pending:
            raise
        broker = None
        print(f"note: the dev broker port {first.dev_broker.port} is taken; checking against the broker"
              " running there", file=sys.stderr)
    try:
        settings = _load(args)
        pm = make_plugin_manager(disable=settings.plugins.disable)
        from .app import validate_gateways

        configs = validate_gateways(settings, gateway_kinds(pm))
        problems = _route_problems(settings, configs)
        if problems:
            raise ConfigError(problems)
        encryption: list[str] = []
        await _check_store_async(settings)
        for w in await _online_checks(settings, pm, encryption):
            print(f"warning: {w}", file=sys.stderr)
    finally:
        if broker is not None:
            await asyncio.wait_for(broker.stop(), 15)
    print(f"ok: {len(settings.mesh)} mesh(es), {len(configs)} gateway(s), {len(settings.routes)} route(s)")
    _print_encryption(encryption)
    return EXIT_OK


def _check_store(settings: Settings) -> None:
    if settings.store.backend != "sqlite":
        _run(_check_store_async(settings))


async def _check_store_async(settings: Settings) -> None:
    """The store's reachability and schema version (PostgreSQL): problems raise, notes print."""
    from .app import store_check

    problems, notes = await store_check(settings)
    if problems:
        raise ConfigError(problems)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)


def _route_problems(settings: Settings, configs: dict[str, Any], *, skip_meshes: bool = False) -> list[str]:
    """Routes that name an unknown gateway instance or mesh, via the routing package's own check."""
    from .app import route_problems

    return route_problems(settings, {name: cls for name, (cls, _) in configs.items()}, skip_meshes=skip_meshes)


async def _online_checks(settings: Settings, pm: Any, encryption: list[str] | None = None) -> list[str]:
    """Resolve every routed topic against its broker (and its effective encryption into
    ``encryption``) and run each gateway's ``check()``."""
    import aiohttp

    from .app import online_problems

    async with aiohttp.ClientSession() as http:
        problems, warnings = await online_problems(settings, pm, http, encryption=encryption)
    if problems:
        raise ConfigError(problems)
    return warnings


# -- plugins / routes ---------------------------------------------------------------------------------------------------
def cmd_plugins(args: argparse.Namespace) -> int:
    disable: Sequence[str] = ()
    try:
        settings = _load(args, allow_missing_includes=True, allow_placeholders=True)
        disable = settings.plugins.disable
    except ConfigError:
        if args.config:  # an explicitly named config must be valid; the default one is optional here
            raise
        settings = None
    _quiet_logging(args, settings)
    pm = make_plugin_manager(disable=disable)
    kinds = gateway_kinds(pm)
    info = plugin_info(pm)
    for p in info:
        p["gateway_kinds"] = sorted(k for k, cls in kinds.items() if cls.__module__.startswith(_module_of(pm, p["name"])))
    if args.json:
        _out(info)
        return EXIT_OK
    for p in info:
        where = "built-in" if p["builtin"] else (p["distribution"] or "registered")
        kinds_txt = f" kinds={','.join(p['gateway_kinds'])}" if p["gateway_kinds"] else ""
        print(f"{p['name']:<12} {p['version'] or '-':<10} {where:<20} hooks={','.join(p['hooks']) or '-'}{kinds_txt}")
    return EXIT_OK


def _module_of(pm: Any, name: str) -> str:
    plugin = pm.get_plugin(name)
    return getattr(plugin, "__name__", None) or type(plugin).__module__


def cmd_routes(args: argparse.Namespace) -> int:
    from .app import describe_routes, validate_gateways

    settings = _load(args, allow_missing_includes=True, allow_placeholders=True)
    _quiet_logging(args, settings)
    pm = make_plugin_manager(disable=settings.plugins.disable)
    configs = validate_gateways(settings, gateway_kinds(pm))
    table = describe_routes(settings, {name: cls for name, (cls, _) in configs.items()})
    if args.json:
        _out(table)
        return EXIT_OK
    for row in table:
        print(row if isinstance(row, str) else json.dumps(row, ensure_ascii=False, default=str))
    return EXIT_OK


# -- dead letters -----------------------------------------------------------------------------------------------------
def cmd_dlq(args: argparse.Namespace) -> int:
    settings = _load(args, allow_missing_includes=True, allow_placeholders=True)
    _quiet_logging(args, settings)
    return _run(_dlq(args, settings))


async def _dlq(args: argparse.Namespace, settings: Settings) -> int:
    from .app import open_store

    store = open_store(settings, prune=False)
    await store.open()
    try:
        if args.dlq_cmd == "list":
            for dl in await store.dlq_list(limit=args.limit):
                item = dl.item
                _out({"id": dl.id, "reason": dl.reason, "failed_at": dl.failed_at, "lane": item.lane,
                      "route": item.route, "attempts": item.attempts, "message_id": item.message.get("id"),
                      "last_error": item.last_error})
            return EXIT_OK
        ids = None if args.all else args.ids
        if not ids and not args.all:
            raise ConfigError("dlq: give dead-letter ids or --all")
        if ids and not all(1 <= i <= 2**63 - 1 for i in ids):  # what the store's 64-bit ids can hold
            raise ConfigError("dlq: dead-letter ids are integers from 1 to 2**63-1")
        if settings.trace.enabled:  # the messages' traces say who retried / dropped them
            from .trace import TraceRecorder

            recorder = TraceRecorder(store)
            wanted = None if ids is None else set(ids)
            recorder.dlq(args.dlq_cmd, [d for d in await store.dlq_list(limit=1_000_000)
                                        if wanted is None or d.id in wanted], "cli")
            await recorder.flush()
        if args.dlq_cmd == "retry":
            n = await store.dlq_retry(ids)
            await store.audit("cli", "dlq_retry", {"ids": ids, "count": n})
            print(f"moved {n} dead letter(s) back to the outbox (a running gateway picks them up)")
        else:
            n = await store.dlq_drop(ids)
            await store.audit("cli", "dlq_drop", {"ids": ids, "count": n})
            print(f"dropped {n} dead letter(s)")
        return EXIT_OK
    finally:
        await store.close()


# -- message trace -------------------------------------------------------------------------------------------------------
def cmd_trace(args: argparse.Namespace) -> int:
    settings = _load(args, allow_missing_includes=True, allow_placeholders=True)
    _quiet_logging(args, settings)
    return _run(_trace(args, settings))


async def _trace(args: argparse.Namespace, settings: Settings) -> int:
    from .app import open_store
    from .trace import format_timeline

    store = open_store(settings)
    await store.open()
    try:
        ids = await store.trace_resolve(args.id, limit=args.limit)
        traces = [t for t in [await store.trace_get(m) for m in ids] if t is not None]
    finally:
        await store.close()
    if args.json:
        _out({"query": args.id, "messages": traces})
    elif not traces:
        print(f"no trace of {args.id!r} (not a message id, native id or outbox id seen within the "
              f"trace retention of {settings.retention.trace_days:g} day(s))", file=sys.stderr)
    else:
        print("\n\n".join(format_timeline(t) for t in traces))
    return EXIT_OK if traces else EXIT_NOT_FOUND


# -- admin tokens ------------------------------------------------------------------------------------------------------
_TTL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> int:
    """``3600``, ``90s``, ``30m``, ``1h``, ``2d`` -> seconds (> 0). ValueError otherwise."""
    raw = text.strip().lower()
    unit = raw[-1:] if raw[-1:] in _TTL_UNITS else "s"
    number = raw[:-1] if raw[-1:] in _TTL_UNITS else raw
    try:
        seconds = int(float(number) * _TTL_UNITS[unit])
    except ValueError:
        raise ValueError(f"--ttl {text!r}: use seconds or a number with s, m, h or d (e.g. 1h, 30m, 3600)") from None
    if seconds <= 0:
        raise ValueError(f"--ttl {text!r}: must be positive")
    return seconds


def cmd_token(args: argparse.Namespace) -> int:
    """A JWT for the admin API and dashboard, signed as ``[admin]`` says (HS256 secret or EdDSA key)."""
    settings = _load(args, allow_missing_includes=True, allow_placeholders=True)
    _quiet_logging(args, settings)
    from .web.auth import mint_token

    admin = settings.admin
    if admin.jwt_secret is None and admin.jwt_public_key is None:
        raise ConfigError("token: the admin API is not configured (set [admin] jwt_secret or jwt_public_key)")
    try:
        ttl = parse_ttl(args.ttl)
    except ValueError as exc:
        raise ConfigError(f"token: {exc}") from None
    pem: str | None = None
    if args.private_key:
        if admin.jwt_secret is not None:
            raise ConfigError("token: [admin] uses jwt_secret (HS256); --private-key is for EdDSA setups")
        try:  # a regular file only: a FIFO would block for ever
            raw = read_regular_file(expand_path(args.private_key), max_bytes=64 * 1024, what="file")
            pem = raw.decode("utf-8")
        except FileNotFoundError:
            raise ConfigError(f"token: --private-key {args.private_key}: no such file") from None
        except (ValueError, UnicodeDecodeError) as exc:
            reason = "not a PEM text file" if isinstance(exc, UnicodeDecodeError) else str(exc)
            raise ConfigError(f"token: --private-key: {reason}") from None
    try:
        token = mint_token(admin, ttl_s=ttl, subject=args.subject, private_key_pem=pem)
    except ValueError as exc:  # EdDSA without --private-key, or a key that is not an Ed25519 PEM
        raise ConfigError(f"token: {exc}") from None
    except Exception as exc:  # noqa: BLE001  (PyJWT/cryptography reject a bad key in several ways)
        raise ConfigError(f"token: the private key could not sign ({type(exc).__name__})") from None
    print(token)
    return EXIT_OK


# -- keys, enrolment, dev broker --------------------------------------------------------------------------------------
def cmd_keygen(args: argparse.Namespace) -> int:
    """A new ed25519 member identity, printed as the keys of a [mesh.*] table."""
    _quiet_logging(args)
    from .errors import MeshError

    keygen = _tool("claudemesh_gateway.mesh.tools", "keygen")
    try:
        keys = keygen(args.key_file)
    except (OSError, ValueError, MeshError) as exc:  # e.g. the key file exists: never overwrite an identity
        raise ConfigError(f"keygen: {exc}") from None
    print("# a new claudemesh member identity; paste into a [mesh.<name>] table")
    for key, value in keys.items():
        print(f"{key} = {json.dumps(value)}")
    return EXIT_OK


def cmd_enroll(args: argparse.Namespace) -> int:
    _quiet_logging(args)
    enroll = _tool("claudemesh_gateway.mesh.tools", "enroll")
    from .mesh.tools import EnrollError

    try:
        result = _run(enroll(args.invite, display_name=args.display_name, key_path=args.key_file, name=args.name))
    except EnrollError as exc:
        message = str(exc)
        if message.startswith("invite:"):  # the link itself is bad: the operator's input
            raise ConfigError(f"enroll: {message}") from None
        raise StartupError(f"enroll: {message}") from None
    note = " (this key was already a member)" if result.get("already_member") else ""
    print(f"# joined as {args.display_name}{note}; paste into your config")
    print(result["toml"], end="")
    return EXIT_OK


def _broker_defaults(args: argparse.Namespace) -> tuple[Path, str, int]:
    """--state-dir/--host/--port, defaulting to the config's [dev_broker] table when one loads."""
    state, host, port = Path("var/devbroker"), "127.0.0.1", 7900
    path = _config_path(args)
    if args.config or path.is_file():
        db = _load(args, allow_missing_includes=True, allow_placeholders=True).dev_broker
        state, host, port = db.state_dir, db.host, db.port
    return (Path(args.state_dir) if args.state_dir else state, args.host or host,
            args.port if args.port is not None else port)


def cmd_dev_broker(args: argparse.Namespace) -> int:
    state_dir, host, port = _broker_defaults(args)
    configure_logging(None, level="DEBUG" if args.verbose else "INFO")
    run = _tool("claudemesh_gateway.devbroker.cli", "run")
    make_private_dir(state_dir)
    try:
        _run(run(state_dir, host, port))
    except OSError as exc:
        raise StartupError(f"dev broker could not listen on {host}:{port}: {exc.strerror or exc}") from exc
    return EXIT_OK


def cmd_mint_invite(args: argparse.Namespace) -> int:
    state_dir, host, port = _broker_defaults(args)
    _quiet_logging(args)
    mint = _tool("claudemesh_gateway.devbroker.cli", "mint_invite_offline")
    try:
        token = mint(state_dir, mesh=args.mesh, role=args.role, expires_in=args.expires_in, max_uses=args.max_uses,
                     broker_url=args.broker_url or f"ws://{host}:{port}/ws")
    except SystemExit as exc:  # the dev broker tool reports a missing mesh this way
        raise ConfigError(f"mint-invite: {exc.code}") from None
    print(token)
    return EXIT_OK


def _print_result(result: Any) -> None:
    if result is None:
        return
    if isinstance(result, str):
        print(result)
    else:
        _out(result)


# -- mesh tools (claudemesh_gateway.mesh.tools: an ephemeral cli session, never the gateway's own) ------------------
def _mesh_cfg(settings: Settings, name: str) -> Any:
    try:
        return settings.mesh[name]
    except KeyError:
        known = ", ".join(sorted(settings.mesh)) or "none"
        raise ConfigError(f"mesh: no [mesh.{name}] table (configured: {known})") from None


def cmd_mesh(args: argparse.Namespace) -> int:
    from .errors import MeshError

    settings = _load(args, allow_placeholders=True)
    _quiet_logging(args, settings)
    cfg = _mesh_cfg(settings, args.mesh)
    tools = "claudemesh_gateway.mesh.tools"
    try:
        if args.mesh_cmd == "peers":
            _out(_run(_tool(tools, "peers")(args.mesh, cfg, timeout=args.timeout)))
        elif args.mesh_cmd == "send":
            _out(_run(_tool(tools, "send")(args.mesh, cfg, args.text, topic=args.topic, to=args.to,
                                           timeout=args.timeout)))
        else:
            def emit(row: dict[str, Any]) -> None:
                _out(row)
                sys.stdout.flush()

            _run(_tool(tools, "tail")(args.mesh, cfg, args.topic, count=args.count, timeout=args.timeout,
                                      on_row=emit))
    except LookupError as exc:  # unknown peer or topic name: the operator's input
        raise ConfigError(f"mesh {args.mesh}: {exc}") from None
    except (MeshError, TimeoutError) as exc:
        detail = str(exc) or type(exc).__name__
        raise StartupError(f"mesh {args.mesh}: {detail} (broker {cfg.broker_url})") from None
    return EXIT_OK


# -- parser -------------------------------------------------------------------------------------------------------------
def _global_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """-c/-v/--traceback: on the top-level parser with their defaults, and on every subcommand again
    (through the ``parents`` of each) with ``SUPPRESS`` defaults, so ``check -c FILE`` works as
    ``-c FILE check`` does and an option given before the subcommand is not reset by its parser."""
    def default(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument("-c", "--config", default=default(None),
                        help=f"TOML config file (default: ${CONFIG_ENV} or ./{DEFAULT_CONFIG})")
    parser.add_argument("-v", "--verbose", action="store_true", default=default(False), help="debug logging")
    parser.add_argument("--traceback", action="store_true", default=default(False),
                        help="show a traceback for unexpected errors")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="claudemesh-gateway",
        description="Connect claudemesh meshes to Telegram, Slack, WhatsApp, webhooks and other meshes.",
        epilog="exit codes: 0 ok, 1 unexpected, 2 config error, 3 plugin error, 4 startup error, 5 not found (trace)",
    )
    _global_options(p, defaults=True)
    p.add_argument("--version", action="version", version=f"claudemesh-gateway {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, defaults=False)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    s = sub.add_parser("run", parents=[common],
                       help="run the gateway (embedded dev broker first when [dev_broker] embedded)")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("check", parents=[common],
                       help="validate the configuration without starting; exit 2 on problems")
    s.add_argument("--online", action="store_true", help="also resolve topics on the broker and run gateway checks")
    s.set_defaults(func=cmd_check)

    s = sub.add_parser("plugins", parents=[common],
                       help="list loaded plugins, their versions, hooks and gateway kinds")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_plugins)

    s = sub.add_parser("routes", parents=[common], help="print the resolved route table")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_routes)

    s = sub.add_parser("token", parents=[common],
                       help="print a JWT for the admin API and dashboard ([admin] must be configured)")
    s.add_argument("--ttl", default="1h", help="lifetime: seconds or 30m, 1h, 2d (default 1h)")
    s.add_argument("--subject", default="admin", help="the token's sub claim, recorded in the audit log")
    s.add_argument("--private-key", default=None, help="Ed25519 private key PEM file (EdDSA setups)")
    s.set_defaults(func=cmd_token)

    s = sub.add_parser("keygen", parents=[common], help="generate an ed25519 identity for a [mesh.*] table")
    s.add_argument("--key-file", default=None, help="write the secret to this file (mode 600) instead of stdout")
    s.set_defaults(func=cmd_keygen)

    s = sub.add_parser("enroll", parents=[common],
                       help="join a mesh from a v1 invite link; prints the [mesh.*] table")
    s.add_argument("invite")
    s.add_argument("--name", default=None, help="config name of the mesh table")
    s.add_argument("--display-name", default="gateway", help="peer display name on the mesh")
    s.add_argument("--key-file", default=None, help="write the secret to this file (mode 600) instead of stdout")
    s.set_defaults(func=cmd_enroll)

    s = sub.add_parser("dev-broker", parents=[common],
                       help="run the loopback dev broker standalone (development only)")
    s.add_argument("--state-dir", default=None, help="default: [dev_broker] state_dir, else var/devbroker")
    s.add_argument("--host", default=None, help="default: [dev_broker] host, else 127.0.0.1")
    s.add_argument("--port", type=int, default=None, help="default: [dev_broker] port, else 7900")
    s.set_defaults(func=cmd_dev_broker)

    s = sub.add_parser("mint-invite", parents=[common],
                       help="mint a v1 invite token into the dev broker's state")
    s.add_argument("--state-dir", default=None, help="default: [dev_broker] state_dir, else var/devbroker")
    s.add_argument("--host", default=None)
    s.add_argument("--port", type=int, default=None)
    s.add_argument("--mesh", default="dev", help="mesh slug or id (default: dev)")
    s.add_argument("--role", choices=("member", "admin"), default="member")
    s.add_argument("--expires-in", type=int, default=7 * 86400, help="seconds")
    s.add_argument("--max-uses", type=int, default=1)
    s.add_argument("--broker-url", default=None, help="ws URL written into the token (default: the dev broker's)")
    s.set_defaults(func=cmd_mint_invite)

    s = sub.add_parser("dlq", parents=[common], help="dead letters: list, retry, drop")
    dsub = s.add_subparsers(dest="dlq_cmd", metavar="ACTION")
    dsub.required = True
    d = dsub.add_parser("list", parents=[common])
    d.add_argument("--limit", type=int, default=100)
    for action in ("retry", "drop"):
        d = dsub.add_parser(action, parents=[common])
        d.add_argument("ids", nargs="*", type=int)
        d.add_argument("--all", action="store_true")
    s.set_defaults(func=cmd_dlq)

    s = sub.add_parser("trace", parents=[common], help="where did a message go? its journey as a timeline")
    s.add_argument("id", help="mesh message id, native id of any platform, or outbox / dead-letter id")
    s.add_argument("--json", action="store_true", help="one JSON object: the query and every matching trace")
    s.add_argument("--limit", type=int, default=5, help="most messages shown when the id is ambiguous")
    s.set_defaults(func=cmd_trace)

    s = sub.add_parser("mesh", parents=[common], help="talk to a configured mesh as the gateway's identity")
    msub = s.add_subparsers(dest="mesh_cmd", metavar="ACTION")
    msub.required = True
    m = msub.add_parser("peers", parents=[common], help="JSON list of the mesh's peers")
    m.add_argument("mesh")
    m.add_argument("--timeout", type=float, default=10.0)
    m = msub.add_parser("send", parents=[common], help="post to a topic or DM a peer")
    m.add_argument("mesh")
    target = m.add_mutually_exclusive_group(required=True)
    target.add_argument("--topic")
    target.add_argument("--to", help="peer pubkey (hex) or display name")
    m.add_argument("text")
    m.add_argument("--timeout", type=float, default=10.0)
    m = msub.add_parser("tail", parents=[common],
                        help="one JSON object per line per topic message (id, sender, text, createdAt)")
    m.add_argument("mesh")
    m.add_argument("--topic", required=True)
    m.add_argument("--count", type=int, default=None, help="stop after N messages")
    m.add_argument("--timeout", type=float, default=None, help="stop after S seconds")
    s.set_defaults(func=cmd_mesh)
    return p


# -- entry point ------------------------------------------------------------------------------------------------------
def _fail(prefix: str, lines: Sequence[str]) -> None:
    for line in lines:  # stderr bypasses the logging filter: scrub here too (URLs can embed tokens)
        print(f"claudemesh-gateway: {prefix}: {one_line(redact(line))}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or EXIT_OK)
    except ConfigError as exc:
        _fail("config error", exc.problems)
        return EXIT_CONFIG
    except PluginError as exc:
        _fail("plugin error", [exc.human_message])
        return EXIT_PLUGIN
    except StartupError as exc:
        _fail("startup error", [exc.human_message])
        return EXIT_STARTUP
    except GatewayError as exc:
        _fail("error", [exc.human_message])
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception as exc:  # noqa: BLE001  (the CLI boundary: exit code 1)
        if args.traceback:
            traceback.print_exc()
        _fail("unexpected error", [f"{type(exc).__name__}: {exc} (re-run with --traceback for details)"])
        return EXIT_UNEXPECTED
