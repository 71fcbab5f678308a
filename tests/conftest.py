"""Shared fixtures. Area-specific fixtures live in each tests/<area>/conftest.py."""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

VECTORS = Path(__file__).parent / "vectors"


@pytest.fixture(autouse=True)
def _library_log_levels():
    """``configure_logging`` caps third-party loggers (``LIBRARY_LOGGERS``) at INFO; a test that runs
    it (the CLI, log tests) must not leave the cap on for the tests after it (caplog at DEBUG)."""
    import logging

    from claudemesh_gateway import logconfig

    levels = {name: logging.getLogger(name).level for name in getattr(logconfig, "LIBRARY_LOGGERS", ())}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


@pytest.fixture(scope="session")
def mesh_vectors() -> dict:
    return json.loads((VECTORS / "mesh-vectors.json").read_text())


def pytest_configure(config: pytest.Config) -> None:
    """The fake vendors listen on 127.0.0.1: let file downloads reach loopback there (see
    ``claudemesh_gateway.files``); the SSRF tests take the setting away again where they need to."""
    import os

    from claudemesh_gateway.files import LOOPBACK_ENV

    os.environ.setdefault(LOOPBACK_ENV, "1")


@pytest.fixture(scope="session")
def topic_key_vectors() -> dict:
    return json.loads((VECTORS / "topic-key-vectors.json").read_text())


class RawHTTP:
    """HTTP/1.1 written byte by byte to a loopback server: header values aiohttp's client refuses to
    send (bytes that are not UTF-8) and clients that hang up in the middle of a body."""

    @staticmethod
    def mount(gateway: Any) -> Any:
        """An app with ``gateway.web_routes()`` under ``/gateways/<name>/`` behind the core's error
        middleware, as ``create_app`` mounts them."""
        from aiohttp import web
        from claudemesh_gateway.app import error_middleware

        app = web.Application(middlewares=[error_middleware])
        sub = web.Application()
        sub.add_routes(list(gateway.web_routes()))
        app.add_subapp(f"/gateways/{gateway.name}/", sub)
        return app

    @staticmethod
    @contextlib.asynccontextmanager
    async def serve(app: Any) -> AsyncIterator[int]:
        """Serve ``app`` on 127.0.0.1 as ``claudemesh-gateway run`` does (``web.run_app`` defaults: a
        client that hangs up does not cancel its handler, unlike aiohttp's TestServer); yields the port."""
        from aiohttp import web

        runner = web.AppRunner(app)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            yield runner.addresses[0][1]
        finally:
            await runner.cleanup()

    @staticmethod
    def _head(method: str, path: str, headers: list[tuple[str, bytes | str]], length: int) -> bytes:
        lines = [f"{method} {path} HTTP/1.1".encode(), b"Connection: close"]
        names = {name.lower() for name, _ in headers}
        if "host" not in names:
            lines.append(b"Host: 127.0.0.1")
        if "content-length" not in names:
            lines.append(b"Content-Length: " + str(length).encode())
        for name, value in headers:  # a None value only suppresses the default (e.g. Content-Length)
            if value is not None:
                lines.append(name.encode() + b": " + (value.encode() if isinstance(value, str) else value))
        return b"\r\n".join(lines) + b"\r\n\r\n"

    async def request(self, port: int, method: str, path: str, headers: list[tuple[str, bytes | str]] = (),
                      body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
        """Send one request; return (status, headers, body) of the answer."""
        import asyncio

        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(self._head(method, path, list(headers), len(body)) + body)
            await writer.drain()
            raw = await asyncio.wait_for(reader.read(), 30)
        finally:
            writer.close()
        head, _, rest = raw.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        answer = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            answer[name.strip().lower()] = value.strip()
        return int(status_line.split()[1]), answer, rest

    async def hang_up_mid_body(self, port: int, method: str, path: str, headers: list[tuple[str, bytes | str]],
                               body: bytes, *, sent: int) -> None:
        """Announce ``len(body)`` bytes, send the first ``sent`` of them, then close the connection."""
        import asyncio

        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(self._head(method, path, list(headers), len(body)) + body[:sent])
        await writer.drain()
        await asyncio.sleep(0.2)  # let the server start reading the body
        writer.close()
        await writer.wait_closed()


@pytest.fixture
def raw_http() -> RawHTTP:
    return RawHTTP()


# -- PostgreSQL (the second store backend) -----------------------------------------------------------------------
# scripts/test.sh starts a throwaway server and exports CLAUDEMESH_TEST_PG_DSN; without it the
# PostgreSQL half of the suite is skipped, and the end of the run says so loudly.
PG_DSN_ENV = "CLAUDEMESH_TEST_PG_DSN"


def _pg_missing() -> str | None:
    if not os.environ.get(PG_DSN_ENV):
        return f"{PG_DSN_ENV} is not set (scripts/test.sh sets it when the PostgreSQL server binaries are installed)"
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        return "asyncpg is not installed (pip install -e '.[test]')"
    return None


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    why = _pg_missing()
    if why is None:
        return
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if "postgres" in str(r.longrepr).lower()]
    if not skipped:
        return
    terminalreporter.write_sep("!", f"PostgreSQL HALF OF THE SUITE SKIPPED ({len(skipped)} tests): {why}",
                               red=True, bold=True)


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    """The throwaway server's DSN; skips the test (PostgreSQL half) when there is none."""
    why = _pg_missing()
    if why is not None:
        pytest.skip(f"PostgreSQL tests skipped: {why}")
    return os.environ[PG_DSN_ENV]


def _with_search_path(dsn: str, schema: str) -> str:
    # asyncpg passes unknown DSN query parameters on as server settings
    return f"{dsn}{'&' if '?' in dsn else '?'}search_path={schema}"


@pytest.fixture
async def pg_schema_dsn(pg_dsn: str) -> AsyncIterator[str]:
    """A DSN whose search_path is a fresh, empty schema (dropped after the test): one database
    per test would cost a template copy each; a schema costs nothing."""
    import asyncpg

    schema = f"t_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(pg_dsn)
    try:
        await admin.execute(f'CREATE SCHEMA "{schema}"')
    finally:
        await admin.close()
    try:
        yield _with_search_path(pg_dsn, schema)
    finally:
        admin = await asyncpg.connect(pg_dsn)
        try:
            await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await admin.close()
