"""Issue 16, "Secrets": the WHOLE app at DEBUG, every secret type configured, errors and tracebacks
driven through it, and every surface scanned for every secret in every obvious encoding. Zero hits.

The gateway runs as ``claudemesh-gateway -c gateway.toml run`` does: a subprocess (through
``twilio_loopback_run.py``, which only points the twilio library's one test seam at a loopback fake
and then calls the real CLI entry point) on spare loopback ports, a temporary state dir,
``[log] level = "DEBUG"`` and ``library_level = "DEBUG"`` (aiosqlite's SQL arguments, aiohttp's
access log, PTB / slack_sdk / twilio debug output all on). A dev broker runs in this test process
(so it can be stopped and restarted on the same port), next to the vendor fakes of tests/telegram,
tests/slack, tests/whatsapp and the webhook sink of ``claudemesh_gateway.plugins.webhook.testing``.

Secrets configured: two Telegram bot tokens (one the fake rejects with 401) and a webhook secret,
Slack bot and app tokens and signing secret, the Twilio auth token, API key secret and webhook shared
key, the webhook HMAC secret, a password in the userinfo of the webhook's target URL, two mesh member
secret keys (one inline, one from ``secret_key_file``), the mesh root key, a mesh-wide and a
per-topic ``key_secret``, the admin JWT secret and the run's valid admin bearer token, plus the values
of an invalid reload (which never validate, so nothing registers them for redaction before the error
is written). Each is looked for raw, URL-quoted, JSON-escaped, hex and base64 (std/url, padded or
not), keys also as their bytes' hex/base64, Twilio credentials also as their Basic auth header. The
store's DSN (and its password) joins them where the base accepts ``[store] backend = "postgres"`` and
``CLAUDEMESH_TEST_PG_DSN`` names a server (the ``postgres`` parametrisation; skipped with its reason
otherwise; there the store scan reads every table's rows back instead of files).

Traffic: mesh posts fanned out to every vendor, inbound from every vendor, bad signatures on every
signed endpoint, vendors answering 401 / 429 / 500, a send that keeps failing, a malformed HTTP
request whose parser traceback carries a secret, secrets in request URLs (aiohttp's access log),
admin calls with forged tokens, an invalid reload (SIGHUP) and a valid one, a broker restart.

Scanned: every stdout/stderr line (the gateway has no log file), /-/metrics, /-/health, /-/ready,
/-/plugins.json, the dashboard page and every admin API answer (valid token), and the store files
(the SQLite db, its -wal and -shm while running and after shutdown, and a backup made with the
store's own backup API).

The mesh session identity secret is the one secret the store holds by design (kv ``mesh``
``<mesh>:session``, so a restart resumes the same session): the file is 0600 in a 0700 directory
(tests/store/test_defect17_5_file_modes.py); it is checked to sit in exactly those rows and in no
log line, metric or API answer. It is not encrypted at rest: the key would have to live beside it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import importlib.util
import json
import os
import shutil
import signal
import socket
import sqlite3
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp.test_utils import TestServer
from claudemesh_gateway.devbroker import DevBroker
from claudemesh_gateway.plugins.webhook.testing import WebhookSink
from claudemesh_gateway.plugins.webhook.testing import signed_post as _signed_post
from claudemesh_gateway.testing import dev_mesh_tables, mesh_member, wait_until

from .conftest import to_toml

TESTS = Path(__file__).resolve().parents[1]
LAUNCHER = Path(__file__).with_name("twilio_loopback_run.py")


def _load(name: str, path: Path) -> Any:
    """A fake of another test directory (importlib mode: no cross-directory conftest imports)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


tg_fake = _load("secrets16_telegram_fake_api", TESTS / "telegram" / "telegram_fake_api.py")
slack_fake = _load("secrets16_slack_fakes", TESTS / "slack" / "conftest.py")
twilio_fake = _load("secrets16_whatsapp_fakes", TESTS / "whatsapp" / "conftest.py")

TG_TOKEN = "7654321098:AAsecrets16TelegramTokenXYZ0123456789ab"
TG_REVOKED_TOKEN = "1234509876:AArevokedSecrets16TokenQRS9876543210cd"  # the fake answers 401 to it
TG_WEBHOOK_SECRET = "tg-hook-secret-secrets16-0123456789"
WH_SECRET = "secrets16-webhook-hmac-secret-0123456789"
JWT_SECRET = "secrets16-admin-jwt-secret-0123456789-abcdef"
MESH_KEY_SECRET = "S16meshwideKeySecret_abcdefghijklmnopqrstuA"  # 43 chars of base64url
TOPIC_KEY_SECRET = "S16topicKeySecretVault_abcdefghijklmnopqrsA"
# values of the invalid reload: they never validate, so nothing registers them for redaction
RELOAD_BAD_TOKEN = "not-a-bot-token-Rl16zzQ8xVwPq"
RELOAD_SHORT_SECRET = "Rl16shortK9q"
TWILIO_SHARED_KEY = "twilio-webhook-rule-shared-key-secrets16"
URL_PASSWORD = "UrlPass16-sink-basic-auth-0123"  # in the userinfo of a webhook binding's url
PUBLIC_URL = "https://gw.secrets16.example"
TG_CHAT = "-1001234567890"
SLACK_CHAT = "C1"
WA_USER = twilio_fake.USER
FAST_MESH = {"topic_poll_interval": 0.2, "topic_poll_idle_interval": 0.5, "roster_refresh": 1.0,
             "backoff": [0.2, 0.5, 1.0], "backoff_jitter": 0.0}
# [store] backends: "sqlite" always; "postgres" where the base accepts it and a server is given
def secrets_token() -> str:
    import secrets as _secrets

    return _secrets.token_hex(12)


PG_DSN_ENV = "CLAUDEMESH_TEST_PG_DSN"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the secrets and their encodings ---------------------------------------------------------------------------------
def _b64_forms(raw: bytes) -> set[str]:
    std = base64.b64encode(raw).decode()
    url = base64.urlsafe_b64encode(raw).decode()
    return {std, std.rstrip("="), url, url.rstrip("=")}


def encodings(value: str) -> set[str]:
    """``value`` as a log line, a URL, a header or a stored blob could show it."""
    raw = value.encode()
    forms = {value, urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value), raw.hex(),
             raw.hex().upper(), json.dumps(value)[1:-1], *_b64_forms(raw)}
    if len(value) in (64, 128) and all(c in "0123456789abcdef" for c in value):  # a hex key: its bytes too
        key = bytes.fromhex(value)
        forms |= {value.upper(), *_b64_forms(key)}
    with contextlib.suppress(ValueError):
        if len(value) == 43:  # a base64url key (root key, key_secret): its bytes in hex and std base64
            key = base64.urlsafe_b64decode(value + "=")
            forms |= {key.hex(), *_b64_forms(key)}
    return {f for f in forms if len(f) >= 8}


def basic_auth(user: str, password: str) -> set[str]:
    return _b64_forms(f"{user}:{password}".encode())


def scan(surfaces: dict[str, str | bytes], secrets: dict[str, str],
         extra: dict[str, set[str]] | None = None) -> list[str]:
    """``surface: kind (form)`` for every secret form found anywhere."""
    hits = []
    for kind, value in secrets.items():
        forms = encodings(value) | (extra or {}).get(kind, set())
        for where, text in surfaces.items():
            for form in forms:
                needle: str | bytes = form.encode() if isinstance(text, bytes) else form
                if needle in text:
                    hits.append(f"{where}: {kind} ({'raw' if form == value else 'encoded ' + form[:12] + '...'})")
    return hits


# -- the world around the gateway ------------------------------------------------------------------------------------
class World:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.broker_port = _free_port()
        self.port = _free_port()
        self.broker: DevBroker | None = None
        self.servers: list[TestServer] = []
        self.tg = tg_fake.FakeBotAPI(TG_TOKEN)
        self.slack = slack_fake.FakeSlack()
        self.twilio = twilio_fake.FakeTwilio(twilio_fake.API_KEY_SID, twilio_fake.API_KEY_SECRET)
        self.sink = WebhookSink(WH_SECRET)
        self.proc: asyncio.subprocess.Process | None = None
        self.out = tmp / "gateway.stdout"
        self.err = tmp / "gateway.stderr"
        self.state = tmp / "state"
        self.cfg_path = tmp / "gateway.toml"
        self.snapshots = tmp / "store-snapshots"
        self.log_format = "text"
        self.admin = admin_token()  # the one valid bearer token of this run: a credential, scanned for too

    async def serve(self, app: Any) -> str:
        server = TestServer(app, host="127.0.0.1", port=0)
        await server.start_server()
        self.servers.append(server)
        return str(server.make_url("")).rstrip("/")

    async def start_broker(self) -> None:
        self.broker = DevBroker(self.tmp / "devbroker", host="127.0.0.1", port=self.broker_port)
        await self.broker.start()

    async def stop_broker(self) -> None:
        if self.broker is not None:
            await self.broker.stop()
            self.broker = None

    async def start_fakes(self) -> None:
        self.tg.url = await self.serve(self.tg.app)
        self.slack.url = await self.serve(self.slack.app())
        await self.twilio.server.start_server()
        self.sink.base = await self.serve(self.sink.app()) + "/sink"

    def config(self, store: dict[str, Any] | None, *, broken: bool = False) -> dict[str, Any]:
        log_format = self.log_format
        tables = dev_mesh_tables(self.tmp / "devbroker")
        key_file = self.tmp / "keys" / "side.key"
        key_file.parent.mkdir(mode=0o700, exist_ok=True)
        key_file.write_text(tables["dev_bob"]["secret_key"] + "\n")
        os.chmod(key_file, 0o600)
        side = {k: v for k, v in tables["dev_bob"].items() if k != "secret_key"}
        telegram: dict[str, Any] = {"token": TG_TOKEN, "mode": "webhook", "webhook_secret": TG_WEBHOOK_SECRET,
                                    "api_base": self.tg.url}
        webhook: dict[str, Any] = {"secret": WH_SECRET, "url": self.sink_url_with_password("general")}
        if broken:  # an invalid reload: a malformed bot token and a too-short HMAC secret
            telegram["token"] = RELOAD_BAD_TOKEN
            webhook["secret"] = RELOAD_SHORT_SECRET
        cfg: dict[str, Any] = {
            "server": {"host": "127.0.0.1", "port": self.port, "state_dir": str(self.state),
                       "public_url": PUBLIC_URL, "shutdown_timeout": 3.0},
            "log": {"level": "DEBUG", "library_level": "DEBUG", "format": log_format},
            "admin": {"jwt_secret": JWT_SECRET},
            "delivery": {"backoff_base": 0.1, "backoff_cap": 0.5, "poll_interval": 0.3},
            "mesh": {
                "dev": {**tables["dev"], **FAST_MESH, "topics": {"vault": {"key_secret": TOPIC_KEY_SECRET}}},
                "side": {**side, **FAST_MESH, "secret_key_file": str(key_file), "key_secret": MESH_KEY_SECRET},
            },
            "gateways": {
                "telegram": telegram,
                "tg_revoked": {"type": "telegram", "token": TG_REVOKED_TOKEN, "api_base": self.tg.url,
                               "poll_timeout": 1},
                "slack": {"bot_token": slack_fake.BOT_TOKEN, "app_token": slack_fake.APP_TOKEN,
                          "signing_secret": slack_fake.SIGNING_SECRET, "mode": "socket",
                          "api_base": f"{self.slack.url}/api/", "ping_interval": 1.0},
                "whatsapp": {"account_sid": twilio_fake.ACCOUNT_SID, "auth_token": twilio_fake.AUTH_TOKEN,
                             "api_key_sid": twilio_fake.API_KEY_SID, "api_key_secret": twilio_fake.API_KEY_SECRET,
                             "webhook_shared_key": TWILIO_SHARED_KEY, "from_number": twilio_fake.FROM},
                "webhook": webhook,
            },
            "routes": [
                {"name": "general", "mesh": "dev", "topic": "general", "binds": [
                    {"gateway": "telegram", "chat": TG_CHAT}, {"gateway": "tg_revoked", "chat": TG_CHAT},
                    {"gateway": "slack", "chat": SLACK_CHAT}, {"gateway": "whatsapp", "chat": WA_USER},
                    {"gateway": "webhook", "chat": "general"}]},  # to [gateways.webhook] url
                {"name": "vault", "mesh": "side", "topic": "vault",
                 "binds": [{"gateway": "webhook", "chat": "vault", "options": {"url": self.sink.url("vault")}}]},
                {"name": "vault-dev", "mesh": "dev", "topic": "vault", "direction": "in",
                 "binds": [{"gateway": "webhook", "chat": "vault-dev"}]},
            ],
        }
        if store:
            cfg["store"] = store
        return cfg

    def sink_url_with_password(self, chat: str) -> str:
        """The sink's URL with credentials in its userinfo (``https://user:password@host/...``), as an
        operator may configure a webhook target that wants HTTP basic auth."""
        parts = urllib.parse.urlsplit(self.sink.url(chat))
        return parts._replace(netloc=f"hookuser:{URL_PASSWORD}@{parts.netloc}").geturl()

    def write_config(self, store: dict[str, Any] | None, *, broken: bool = False) -> None:
        self.cfg_path.write_text(to_toml(self.config(store, broken=broken)))

    async def start_gateway(self, http: aiohttp.ClientSession) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "CLAUDEMESH_TEST_TWILIO_BASE": self.twilio.url}
        env = {k: v for k, v in env.items() if not k.startswith("CLAUDEMESH_") or k in (
            "CLAUDEMESH_TEST_TWILIO_BASE", "CLAUDEMESH_FETCH_ALLOW_LOOPBACK")}  # fakes on 127.0.0.1
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, str(LAUNCHER), "-c", str(self.cfg_path), "run",
                stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=err, env=env, cwd=self.tmp)
        async with asyncio.timeout(30):
            while True:
                if self.proc.returncode is not None:
                    raise AssertionError(f"gateway exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(self.url("/-/health")) as r:
                        if r.status == 200:
                            return
                await asyncio.sleep(0.1)

    async def stop_gateway(self) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.proc.wait(), 20)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise AssertionError(f"the gateway did not stop on SIGTERM:\n{self.log()[-3000:]}") from None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def log(self) -> str:
        return self.err.read_text("utf-8", "replace") + self.out.read_text("utf-8", "replace")

    def snapshot_store(self, label: str) -> None:
        dest = self.snapshots / label
        dest.mkdir(parents=True, exist_ok=True)
        for p in self.state.glob("gateway.sqlite3*"):
            shutil.copy(p, dest / p.name)

    async def close(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        for ws in list(self.slack.sockets):
            await ws.close()
        await self.stop_broker()
        for server in reversed(self.servers):
            await server.close()
        await self.twilio.server.close()


def admin_token(secret: str = JWT_SECRET, **claims: Any) -> str:
    now = int(time.time())
    body = {"sub": "secrets16@example", "aud": "claudemesh-gateway", "iat": now, "exp": now + 300, **claims}
    return jwt.encode(body, secret, algorithm="HS256")


def slack_signed(body: bytes, secret: str) -> dict[str, str]:
    ts = str(int(time.time()))
    sig = "v0=" + hmac.new(secret.encode(), f"v0:{ts}:".encode() + body, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": sig, "Content-Type": "application/json"}


async def raw_request(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(65536), 10)
    finally:
        writer.close()


def _store_params() -> list[Any]:
    from claudemesh_gateway.settings import Settings

    why = None
    if "store" not in Settings.model_fields:
        why = "this base has no [store] table: the PostgreSQL DSN cannot be configured yet"
    elif not os.environ.get(PG_DSN_ENV):
        why = f"{PG_DSN_ENV} is not set (no PostgreSQL server for the DSN password)"
    # the "postgres" case: its DSN and the DSN's password join the secrets; the rows are read back
    return [("sqlite", "text"), ("sqlite", "json"),
            pytest.param("postgres", "text", marks=pytest.mark.skipif(why is not None, reason=why or ""))]


# -- the test --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("store_backend", "log_format"), _store_params())
async def test_whole_app_at_debug_leaks_no_secret(tmp_path: Path, store_backend: str, log_format: str) -> None:
    world = World(tmp_path)
    world.log_format = log_format
    store: dict[str, Any] | None = None
    secrets = {
        "telegram token": TG_TOKEN, "telegram token (revoked)": TG_REVOKED_TOKEN,
        "telegram webhook secret": TG_WEBHOOK_SECRET,
        "slack bot token": slack_fake.BOT_TOKEN, "slack app token": slack_fake.APP_TOKEN,
        "slack signing secret": slack_fake.SIGNING_SECRET,
        "twilio auth token": twilio_fake.AUTH_TOKEN, "twilio api key secret": twilio_fake.API_KEY_SECRET,
        "twilio webhook shared key": TWILIO_SHARED_KEY,
        "webhook secret": WH_SECRET, "admin jwt secret": JWT_SECRET, "password in a webhook url": URL_PASSWORD,
        "mesh key_secret (mesh-wide)": MESH_KEY_SECRET, "mesh key_secret (topic)": TOPIC_KEY_SECRET,
        "invalid reload: bot token": RELOAD_BAD_TOKEN, "invalid reload: webhook secret": RELOAD_SHORT_SECRET,
    }
    extra = {"telegram token": {TG_TOKEN.split(":", 1)[1]},  # the part after the bot id is the secret
             "telegram token (revoked)": {TG_REVOKED_TOKEN.split(":", 1)[1]},
             "twilio auth token": basic_auth(twilio_fake.ACCOUNT_SID, twilio_fake.AUTH_TOKEN),
             "twilio api key secret": basic_auth(twilio_fake.API_KEY_SID, twilio_fake.API_KEY_SECRET)}
    secrets["admin bearer token (valid)"] = world.admin
    if store_backend == "postgres":
        dsn = os.environ[PG_DSN_ENV]
        parts = urllib.parse.urlsplit(dsn)
        if not parts.password:  # the throwaway server trusts loopback and ignores it: a secret to look for
            user = urllib.parse.quote(parts.username or "postgres")
            dsn = urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:pg-Secret-{secrets_token()}@{parts.hostname}:{parts.port or 5432}"))
        store = {"backend": "postgres", "dsn": dsn}
        password = urllib.parse.urlsplit(dsn).password
        assert password, f"{PG_DSN_ENV} must carry a password for this test to mean anything"
        secrets["postgres dsn password"] = urllib.parse.unquote(password)
        secrets["postgres dsn"] = dsn
    surfaces: dict[str, str | bytes] = {}
    got: list[Any] = []
    alice = None
    try:
        await world.start_broker()
        tables = dev_mesh_tables(tmp_path / "devbroker")
        secrets |= {"mesh secret key (inline)": tables["dev"]["secret_key"],
                    "mesh secret key (seed)": tables["dev"]["secret_key"][:64],
                    "mesh secret key (secret_key_file)": tables["dev_bob"]["secret_key"],
                    "mesh secret key (secret_key_file, seed)": tables["dev_bob"]["secret_key"][:64],
                    "mesh root key": tables["dev"]["root_key"]}
        await world.start_fakes()
        alice = await mesh_member(world.broker, "dev_alice", on_message=got.append, options=FAST_MESH)
        await alice.create_topic("vault")
        await alice.watch_topic("general")  # before any traffic: a first poll skips older rows
        world.write_config(store)
        async with aiohttp.ClientSession() as http:
            await world.start_gateway(http)
            await _drive(world, http, alice, got, store)
            surfaces |= await _collect_web(world, http)
            world.snapshot_store("running")
            code = await world.stop_gateway()
        log = world.log()
        assert code == 0, log[-3000:]
        world.snapshot_store("stopped")
        if store_backend == "sqlite":
            from claudemesh_gateway.store.sqlite import SqliteStore

            backup = world.snapshots / "backup.sqlite3"
            db = SqliteStore(world.state / "gateway.sqlite3")
            await db.open()
            try:
                await db.backup(backup)
            finally:
                await db.close()
    finally:
        if alice is not None:
            await alice.stop()
        await world.close()

    log = world.log()
    # the run really went through the error paths it claims to (each is a line of the log)
    expected_lines = ["bot token rejected by Telegram", "reload refused (sighup)", "config reloaded by sighup",
                      "Traceback (most recent call last)", "aiohttp.access"]
    if store_backend == "sqlite":
        expected_lines += ["aiosqlite", "_op_kv_set"]  # the SQL arguments are logged (library_level DEBUG)
    for expected in expected_lines:
        assert expected in log, f"the run never logged {expected!r}: the scan would prove nothing"
    assert "***" in log  # the redaction filter did work on this run

    surfaces["gateway stderr+stdout"] = log
    store_files = sorted(p for p in world.snapshots.rglob("*") if p.is_file())
    if store_backend == "sqlite":
        assert any(p.name.endswith("-wal") for p in store_files), [p.name for p in store_files]
    for p in store_files:
        surfaces[f"store {p.relative_to(world.snapshots)}"] = p.read_bytes()
    if store_backend == "postgres":
        surfaces["store postgres rows"] = await _postgres_rows(os.environ[PG_DSN_ENV])

    hits = scan(surfaces, secrets, extra)
    # the session identities: in their own kv rows of the store (by design), nowhere else
    if store_backend == "sqlite":
        sessions = _session_secrets(world.snapshots / "backup.sqlite3")
        assert set(sessions) == {"dev:session", "side:session"}, sessions
        _assert_only_in_session_rows(world.snapshots / "backup.sqlite3", sessions)
        not_store = {k: v for k, v in surfaces.items() if not k.startswith("store ")}
        hits += scan(not_store, {f"session secret {k}": v for k, v in sessions.items()}
                     | {f"session seed {k}": v[:64] for k, v in sessions.items()})
    assert hits == [], "secrets found:\n" + "\n".join(hits)


async def _drive(world: World, http: aiohttp.ClientSession, alice: Any, got: list[Any],
                 store: dict[str, Any] | None) -> None:
    """Traffic through every gateway, including every error path this test is about."""
    base = world.url("")
    # the gateway is up: Telegram registered its webhook, Slack's socket is connected
    await wait_until(lambda: bool(world.tg.webhook.get("url")), 15, "Telegram setWebhook")
    await world.slack.wait_socket(15)
    await _wait_health(http, world, lambda c: c.get("dev", {}).get("state") == "connected"
                       and c.get("side", {}).get("state") == "connected", "both meshes connected")

    # vendors answering errors: Telegram 500 twice, Slack 429 once, Twilio 401 then 500, the sink 500 first
    world.tg.fail_next("sendMessage", 500, "Internal Server Error", times=2)
    world.slack.fail_429[SLACK_CHAT].append(1)
    world.twilio.fail(401, 20003, "Authenticate")
    world.twilio.fail(500, None, "Internal Server Error")
    world.sink.script["general"] = lambda body, attempt: (500, {}) if attempt == 1 else (200, {})

    # WhatsApp inbound (opens the 24 h window), signed; then one with a bad signature
    params = twilio_fake.inbound_params(body="hello from whatsapp")
    url = f"{PUBLIC_URL}/gateways/whatsapp/inbound"
    async with http.post(base + "/gateways/whatsapp/inbound", data=params,
                         headers={"X-Twilio-Signature": twilio_fake.sign(params, url)}) as r:
        assert r.status < 300, await r.text()
    world.twilio.media_errors.append(500)  # the first media download fails (retried), then it works
    media = world.twilio.add_media(b"\xff\xd8 a jpeg", "image/jpeg")
    params = twilio_fake.inbound_params(body="a photo from whatsapp", NumMedia="1", MediaUrl0=media,
                                        MediaContentType0="image/jpeg")
    async with http.post(base + "/gateways/whatsapp/inbound", data=params,
                         headers={"X-Twilio-Signature": twilio_fake.sign(params, url)}) as r:
        assert r.status < 300, await r.text()
    bad = twilio_fake.inbound_params(body="forged")
    async with http.post(base + "/gateways/whatsapp/inbound", data=bad,
                         headers={"X-Twilio-Signature": twilio_fake.sign(bad, url, "wrong-token")}) as r:
        assert r.status in (401, 403), r.status

    # mesh -> every vendor (through the failures above)
    await alice.post_topic("general", "hello from alice over the mesh")
    await world.tg.wait_sent(TG_CHAT, 1, 20)
    await world.slack.wait_posts(SLACK_CHAT, 1, 20)
    await wait_until(lambda: world.sink.received["general"], 20, "webhook sink delivery")

    # Telegram inbound: right secret, wrong secret, a secret in the query string (the access log)
    update = world.tg.make_update(world.tg.make_message(int(TG_CHAT), "hello from telegram"))
    async with http.post(base + "/gateways/telegram/webhook", json=update,
                         headers={"X-Telegram-Bot-Api-Secret-Token": TG_WEBHOOK_SECRET}) as r:
        assert r.status == 200, await r.text()
    world.tg.fail_next("getFile", 500, "Internal Server Error")  # the token is in the download URL
    file_id = world.tg.add_file(b"%PDF a document", "documents/report.pdf")
    doc = world.tg.make_update(world.tg.make_message(
        int(TG_CHAT), None, caption="a file from telegram",
        document={"file_id": file_id, "file_unique_id": file_id, "file_name": "report.pdf", "file_size": 15}))
    async with http.post(base + "/gateways/telegram/webhook", json=doc,
                         headers={"X-Telegram-Bot-Api-Secret-Token": TG_WEBHOOK_SECRET}) as r:
        assert r.status == 200, await r.text()
    async with http.post(base + "/gateways/telegram/webhook", json=update,
                         headers={"X-Telegram-Bot-Api-Secret-Token": "wrong-secret"}) as r:
        assert r.status in (401, 403), r.status
    async with http.post(base + f"/gateways/telegram/webhook?secret={TG_WEBHOOK_SECRET}&token={TG_TOKEN}",
                         json=update) as r:
        assert r.status in (401, 403), r.status

    # Slack: an event over the socket, a forged Events API request, a slash command signed with the wrong key
    await world.slack.push(slack_fake.event_callback(slack_fake.message_event("hello from slack", ts="1700000200.000100"),
                                                     event_id="EvSecrets16"))
    world.slack.download_status.append((500, {}))  # the bot token goes with the download: first answer 500
    shared = world.slack.add_file(b"\x89PNG a plot", "plot.png", "image/png")
    await world.slack.push(slack_fake.event_callback(slack_fake.message_event(
        "a file from slack", ts="1700000201.000100", subtype="file_share", files=[shared]), event_id="EvFile16"))
    body = json.dumps(slack_fake.event_callback(slack_fake.message_event("forged"), event_id="EvForged")).encode()
    async with http.post(base + "/gateways/slack/events", data=body,
                         headers=slack_signed(body, "not-the-signing-secret")) as r:
        assert r.status in (401, 403, 404), r.status
    form = f"command=%2Fstatus&text=&token={slack_fake.BOT_TOKEN}".encode()
    async with http.post(base + "/gateways/slack/commands", data=form,
                         headers={**slack_signed(form, "wrong"), "Content-Type": "application/x-www-form-urlencoded"}) as r:
        assert r.status in (401, 403, 404), r.status

    # the webhook gateway: signed in (to #general and to the key_secret topics), forged, secret in the URL
    for chat, text in (("general", "hello from the webhook"), ("vault", "into the vault")):
        payload, headers = _signed_post({"sender": "ops", "text": text}, WH_SECRET)
        async with http.post(base + f"/gateways/webhook/{chat}", data=payload, headers=headers) as r:
            assert r.status == 200, await r.text()
    payload, headers = _signed_post({"sender": "ops", "text": "forged"}, "a-different-secret-0123456789")
    async with http.post(base + f"/gateways/webhook/general?secret={urllib.parse.quote(WH_SECRET)}",
                         data=payload, headers=headers) as r:
        assert r.status in (401, 403), r.status

    # a malformed request whose parser error (logged with its traceback at DEBUG) quotes a secret
    await raw_request(world.port, f"GET /gateways/telegram/webhook?t={TG_TOKEN} HTTP/1.1\r\nHost: x\r\n"
                      f"X-Api-Key {slack_fake.BOT_TOKEN}\r\nContent-Length: {JWT_SECRET}\r\n\r\n".encode())

    # everything inbound reached the mesh (alice reads #general)
    def texts() -> str:
        return " ".join(str(getattr(m, "text", m)) for m in got)

    await wait_until(lambda: all(t in texts() for t in ("hello from whatsapp", "hello from telegram",
                                                        "hello from slack", "hello from the webhook")),
                     20, "inbound from every vendor on the mesh")
    await wait_until(lambda: world.twilio.count >= 1, 20, "a Twilio send after its 401 and 500")
    await wait_until(lambda: len(world.twilio.cdn_requests) >= 1 and len(world.slack.downloads) >= 2
                     and world.tg.method_calls("getFile"), 20, "media downloads from Twilio, Slack and Telegram")

    # admin API: forged tokens (wrong key, alg none, in the query string), then a test message with a valid one
    forged = admin_token("x" * 40)
    none = jwt.encode({"sub": "x", "aud": "claudemesh-gateway", "exp": int(time.time()) + 60}, None, algorithm="none")
    for headers, path in (({"Authorization": f"Bearer {forged}"}, "/-/api/overview"),
                          ({"Authorization": f"Bearer {none}"}, "/-/api/overview"),
                          ({}, f"/-/api/overview?token={world.admin}&secret={JWT_SECRET}")):
        async with http.get(base + path, headers=headers) as r:
            assert r.status in (400, 401), r.status
    good = {"Authorization": f"Bearer {world.admin}"}
    async with http.post(base + "/-/api/routes/general/test", headers=good, json={"text": "admin test"}) as r:
        assert r.status < 500, await r.text()

    # an invalid reload (SIGHUP): refused, the running config stays; then a valid one
    assert world.proc is not None
    world.write_config(store, broken=True)
    world.proc.send_signal(signal.SIGHUP)
    await wait_until(lambda: "reload refused (sighup)" in world.log(), 15, "the invalid reload refused")
    world.write_config(store)
    world.proc.send_signal(signal.SIGHUP)
    await wait_until(lambda: "config reloaded by sighup" in world.log(), 15, "the valid reload applied")

    # the broker restarts under the gateway; traffic flows again afterwards
    await world.stop_broker()
    await _wait_health(http, world, lambda c: c.get("dev", {}).get("state") != "connected", "mesh down")
    await world.start_broker()
    await _wait_health(http, world, lambda c: c.get("dev", {}).get("state") == "connected"
                       and c.get("side", {}).get("state") == "connected", "meshes reconnected", limit=20)
    await alice.wait_connected(20)
    before = len(world.sink.received["general"])
    await alice.post_topic("general", "after the broker restart")
    await wait_until(lambda: len(world.sink.received["general"]) > before, 20, "delivery after the broker restart")
    assert world.proc.returncode is None, world.log()[-3000:]


async def _wait_health(http: aiohttp.ClientSession, world: World, pred: Any, what: str, limit: float = 15) -> None:
    """Until ``pred(meshes of /-/health)`` holds."""
    components: dict[str, Any] = {}

    async def check() -> bool:
        nonlocal components
        async with http.get(world.url("/-/health")) as r:
            components = (await r.json()).get("meshes", {})
        return bool(pred(components))

    try:
        async with asyncio.timeout(limit):
            while not await check():  # noqa: ASYNC110 - the state lives in another process
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}: {components}\n{world.log()[-2000:]}") from None


async def _collect_web(world: World, http: aiohttp.ClientSession) -> dict[str, str]:
    out: dict[str, str] = {}
    good = {"Authorization": f"Bearer {world.admin}"}
    paths = ["/-/metrics", "/-/health", "/-/ready", "/-/plugins.json", "/-/"]
    admin = ["/-/api/overview", "/-/api/routes", "/-/api/gateways", "/-/api/queue", "/-/api/dlq", "/-/api/audit"]
    for path in paths + admin:
        async with http.get(world.url(path), headers=good if path in admin else {}) as r:
            text = await r.text()
            if path in admin or path in ("/-/metrics", "/-/health", "/-/plugins.json", "/-/"):
                assert r.status == 200, f"{path}: {r.status} {text[:300]}"
            out[f"GET {path}"] = text + "\n" + "\n".join(f"{k}: {v}" for k, v in r.headers.items())
    assert "config.reload" in out["GET /-/api/audit"], out["GET /-/api/audit"][:500]  # the refused reload too
    return out


def _session_secrets(db: Path) -> dict[str, str]:
    with contextlib.closing(sqlite3.connect(db)) as c:
        rows = c.execute("SELECT key, value FROM kv WHERE namespace = 'mesh' AND key LIKE '%:session'").fetchall()
    return {key: json.loads(value)["session_secret"] for key, value in rows}


def _assert_only_in_session_rows(db: Path, sessions: dict[str, str]) -> None:
    """The session secrets occur in exactly their own kv rows of the store, nowhere else in it."""
    with contextlib.closing(sqlite3.connect(db)) as c:
        tables = [r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for row in c.execute(f"SELECT * FROM {table}"):  # table names from sqlite_master
                cells = " ".join(str(v) for v in row)
                for key, secret in sessions.items():
                    if secret[:64] in cells:
                        assert table == "kv" and key in cells, f"session secret of {key} in {table}: {row!r}"[:300]


async def _postgres_rows(dsn: str) -> str:
    """Every row of every table the gateway's PostgreSQL store holds, as text."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        tables = await conn.fetch("SELECT table_schema, table_name FROM information_schema.tables "
                                  "WHERE table_schema NOT IN ('pg_catalog', 'information_schema')")
        out = []
        for t in tables:
            name = f'"{t["table_schema"]}"."{t["table_name"]}"'
            out += [r[0] for r in await conn.fetch(f"SELECT t::text FROM {name} t")]  # names from the catalog
        return "\n".join(out)
    finally:
        await conn.close()
