"""Issue 15 dashboard, operator panels: the config diff (secrets masked) and reload, leases and
replicas."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jwt
import pytest
from aiohttp import web
from claudemesh_gateway import Gateway, GatewayConfig, Outbound, SendResult, hookimpl
from claudemesh_gateway.events import GatewayState
from claudemesh_gateway.store.leases import Leases
from claudemesh_gateway.testing import build_test_app, build_test_app_from_file
from claudemesh_gateway.web import setup_web
from claudemesh_gateway.web.replicas import lease_view
from pydantic import SecretStr
from web_fakes import AUD as FAKE_AUD
from web_fakes import SECRET as FAKE_SECRET
from web_fakes import make_runtime

SECRET = "issue15-ops-jwt-secret-0123456789-abcd"
NEW_SECRET = "issue15-ops-jwt-secret-rotated-9876543210"
AUD = "claudemesh-gateway"
WH = "issue15-ops-webhook-secret-0123456789"
WH_NEW = "issue15-ops-webhook-secret-rotated-000"
SIGNING = "sig-key-abcdef-0123456789"
SIGNING_NEW = "sig-key-rotated-987654"
URL_PASSWORD = "hunter2-url-password"


def _auth(secret: str = SECRET, aud: str = AUD) -> dict[str, str]:
    tok = jwt.encode({"sub": "ops", "aud": aud, "exp": int(time.time()) + 300}, secret, algorithm="HS256")
    return {"Authorization": f"Bearer {tok}"}


# -- config diff and reload ------------------------------------------------------------------------------------------
class Signer(Gateway):
    """A gateway whose secret's key name does not look secret: only its model says it is one."""

    kind = "signer"

    class Config(GatewayConfig):
        signing_key: SecretStr
        label: str = "a"

    async def start(self) -> None:
        self.ctx.set_state(GatewayState.CONNECTED)

    async def stop(self) -> None:
        return None

    async def send(self, out: Outbound) -> SendResult:
        return SendResult()


class SignerPlugin:
    @hookimpl
    def register_gateways(self, register):
        register(Signer)


def _toml(state: Path, *, jwt_secret: str = SECRET, wh: str = WH, timeout: float = 10.0, signing: str = SIGNING,
          label: str = "a", url: str = "https://hooks.example.org/in", level: str = "INFO") -> str:
    return f"""
[server]
state_dir = "{state}"
shutdown_timeout = 5.0

[log]
level = "{level}"

[admin]
jwt_secret = "{jwt_secret}"

[gateways.wh]
type = "webhook"
secret = "{wh}"
timeout = {timeout}

[gateways.sig]
type = "signer"
signing_key = "{signing}"
label = "{label}"

[[routes]]
name = "hooks"
binds = [
  {{gateway = "wh", chat = "src", direction = "in"}},
  {{gateway = "wh", chat = "out", direction = "out", options = {{url = "{url}"}}}},
]
"""


@pytest.fixture
async def file_gateway(tmp_path: Path):
    path = tmp_path / "gateway.toml"
    state = tmp_path / "state"
    path.write_text(_toml(state))
    client, runtime = await build_test_app_from_file(path, plugins=[("signer", SignerPlugin())])
    try:
        yield client, runtime, path, state
    finally:
        await client.close()


async def test_config_diff_masks_every_secret_and_reload_applies_it(file_gateway) -> None:
    client, runtime, path, state = file_gateway
    assert (await client.get("/-/api/config/diff")).status == 401
    d = await (await client.get("/-/api/config/diff", headers=_auth())).json()
    assert d == {"ok": True, "config_path": str(path.resolve()), "changes": [], "restart_required": [], "errors": []}

    path.write_text(_toml(state, jwt_secret=NEW_SECRET, wh=WH_NEW, timeout=12.5, signing=SIGNING_NEW, label="b",
                          url="https://hooks.example.org/v2", level="DEBUG"))
    resp = await client.get("/-/api/config/diff", headers=_auth())
    assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
    raw = await resp.text()
    for secret in (SECRET, NEW_SECRET, WH, WH_NEW, SIGNING, SIGNING_NEW):
        assert secret not in raw, f"a secret value is in the diff: {secret[:6]}…"
    d = json.loads(raw)
    assert d["ok"] is True
    changes = {c["path"]: c for c in d["changes"]}
    secret_paths = {"admin.jwt_secret", "gateways.wh.secret", "gateways.sig.signing_key"}
    for p in secret_paths:  # changed, and said so, never what to
        assert changes[p]["secret"] is True and changes[p]["change"] == "changed", changes[p]
        assert "old" not in changes[p] and "new" not in changes[p]
    assert changes["gateways.wh.timeout"] == {"path": "gateways.wh.timeout", "table": "gateways",
                                             "change": "changed", "applies": "reload", "secret": False,
                                             "old": 10.0, "new": 12.5}
    assert changes["gateways.sig.label"]["old"] == "a" and changes["gateways.sig.label"]["new"] == "b"
    assert changes["log.level"]["applies"] == "restart" and changes["log.level"]["new"] == "DEBUG"
    assert changes["admin.jwt_secret"]["applies"] == "restart"
    assert changes["routes[0].binds[1].options.url"]["new"] == "https://hooks.example.org/v2"
    assert set(changes) == secret_paths | {"gateways.wh.timeout", "gateways.sig.label", "log.level",
                                           "routes[0].binds[1].options.url"}
    assert d["restart_required"] == ["admin", "log"]

    # the dashboard's reload button: the reload applies what it can and names what needs a restart
    resp = await client.post("/-/api/reload", json={}, headers=_auth())
    result = await resp.json()
    assert resp.status == 200 and result["ok"] is True, result
    assert result["restart_required"] == ["log", "admin"]
    assert runtime.gateways["wh"].config.timeout == 12.5
    d = await (await client.get("/-/api/config/diff", headers=_auth())).json()  # [admin]: not until a restart
    # what the reload applied is the running configuration now; what needs a restart is still listed
    assert [(c["path"], c["secret"]) for c in d["changes"]] == [("log.level", False), ("admin.jwt_secret", True)]
    assert d["restart_required"] == ["admin", "log"]

    # a file that would be refused: the diff says why, as the reload would
    path.write_text(_toml(state).replace("[log]", "[log]\nlevl = 1"))
    d = await (await client.get("/-/api/config/diff", headers=_auth())).json()
    assert d["ok"] is False and d["changes"] == [] and d["errors"] == ["log.levl: unknown key"], d


async def test_config_diff_without_a_config_file(aiohttp_client) -> None:
    runtime = make_runtime({"jwt_secret": FAKE_SECRET, "audience": FAKE_AUD})
    app = web.Application()
    setup_web(app, runtime)
    client = await aiohttp_client(app)
    d = await (await client.get("/-/api/config/diff", headers=_auth(FAKE_SECRET, FAKE_AUD))).json()
    assert d["ok"] is False and d["errors"] == ["this gateway was not started from a config file"]


def test_diff_settings_masks_secrets_of_untyped_tables_and_values_holding_one() -> None:
    from claudemesh_gateway.settings import diff_settings, settings_from_dict

    old = settings_from_dict({"gateways": {"x": {"type": "k", "api_token": "tok-old-123456", "note": "n"}}})
    new = settings_from_dict({"gateways": {"x": {"type": "k", "api_token": "tok-new-654321",
                                                 "note": "uses tok-new-654321 inline", "extra": 1,
                                                 "endpoint": f"https://bot:{URL_PASSWORD}@example.org/"}}})
    changes = {c["path"]: c for c in diff_settings(old, new)}
    assert changes["gateways.x.api_token"]["secret"] is True  # the key's name says so
    assert changes["gateways.x.note"]["secret"] is True  # it holds a secret
    assert changes["gateways.x.endpoint"]["secret"] is True  # a URL with its password
    assert changes["gateways.x.extra"] == {"path": "gateways.x.extra", "table": "gateways", "change": "added",
                                           "applies": "reload", "secret": False, "new": 1}
    assert "tok-" not in json.dumps(list(changes.values())) and URL_PASSWORD not in json.dumps(list(changes.values()))
    assert diff_settings(old, old) == []


# -- leases and replicas ------------------------------------------------------------------------------------------------
class LeaseStore:
    """A store several replicas share, as far as the leases go (the database decides who holds what)."""

    def __init__(self, others: list[dict], *, fail_list: bool = False) -> None:
        self.owners: dict[str, str] = {}
        self.others = others
        self.fail_list = fail_list

    async def lease_acquire(self, names, owner, ttl):
        return [n for n in names if self.owners.setdefault(n, owner) == owner]

    async def lease_release(self, names, owner):
        return sum(1 for n in names if self.owners.get(n) == owner and self.owners.pop(n))

    async def bucket_take(self, name, burst, per_second):
        return 0.0

    async def lease_list(self):
        if self.fail_list:
            raise ConnectionRefusedError("database down")
        return [{"name": n, "owner": o, "expires_in_s": 12.0} for n, o in sorted(self.owners.items())] + self.others


async def _replicas(aiohttp_client, leases) -> dict:
    runtime = make_runtime({"jwt_secret": FAKE_SECRET, "audience": FAKE_AUD})
    runtime.leases = leases
    if leases is not None:
        runtime.store = leases.store
        runtime.settings.store = type("S", (), {"backend": "postgres"})()
    app = web.Application()
    setup_web(app, runtime)
    client = await aiohttp_client(app)
    assert (await client.get("/-/api/replicas")).status == 401
    return await (await client.get("/-/api/replicas", headers=_auth(FAKE_SECRET, FAKE_AUD))).json()


async def test_replicas_panel_on_a_shared_store(aiohttp_client) -> None:
    others = [{"name": "lane:tg/-100", "owner": "gw-b/42/abcd1234", "expires_in_s": 9.5},
              {"name": "gateway:tg:poll", "owner": "gw-b/42/abcd1234", "expires_in_s": 9.5}]
    leases = Leases(LeaseStore(others), replica="gw-a", ttl=15)
    assert await leases.acquire("lane:wh/out")
    assert await leases.hold("topic:dev:general")
    r = await _replicas(aiohttp_client, leases)
    assert r["shared"] is True and r["backend"] == "postgres" and r["replica"] == "gw-a" and r["ttl_s"] == 15
    assert [(lease["kind"], lease["what"]) for lease in r["leases"]] == [("lane", "wh/out"), ("topic", "dev #general")]
    assert all(lease["valid_s"] > 0 for lease in r["leases"])
    assert r["others"] == [{"replica": "gw-b", "owner": "gw-b/42/abcd1234", "leases": [
        {"name": "lane:tg/-100", "kind": "lane", "what": "tg/-100", "expires_in_s": 9.5},
        {"name": "gateway:tg:poll", "kind": "gateway", "what": "tg polling", "expires_in_s": 9.5}]}]
    assert r["others_error"] is None
    await leases.close()


async def test_replicas_panel_when_the_database_does_not_answer(aiohttp_client) -> None:
    leases = Leases(LeaseStore([], fail_list=True), replica="gw-a")
    r = await _replicas(aiohttp_client, leases)
    assert r["shared"] is True and r["others"] == []
    assert r["others_error"] == "could not list the leases (ConnectionRefusedError)"
    assert "database down" not in json.dumps(r)


async def test_replicas_panel_single_process(aiohttp_client, tmp_path: Path) -> None:
    r = await _replicas(aiohttp_client, None)
    assert r == {"shared": False, "backend": "sqlite", "mode": "single process (SQLite)", "replica": None}
    client, _runtime = await build_test_app({"admin": {"jwt_secret": SECRET}}, state_dir=tmp_path / "gw")
    try:  # the real app on SQLite: its leases grant everything and share nothing
        o = await (await client.get("/-/api/overview", headers=_auth())).json()
        assert o["replicas"]["shared"] is False and o["replicas"]["mode"] == "single process (SQLite)"
    finally:
        await client.close()


def test_lease_names_read_as_what_they_guard() -> None:
    assert lease_view("gateway:slack:socket")["what"] == "slack socket"
    assert lease_view("topic:dev:a:b")["what"] == "dev #a:b"
    assert lease_view("odd")["kind"] == "other"
