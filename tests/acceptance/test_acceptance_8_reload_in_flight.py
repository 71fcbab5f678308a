"""#8 hot reload on the REAL app built from a config file, while messages are in flight:
a valid config (which also restarts the delivering gateway) and then an invalid one, both through
``POST /-/api/reload``; no message is lost, per-chat order is kept, the invalid config is refused
with its reason and the running one kept."""

from __future__ import annotations

from .conftest import JWT_SECRET, WH_SECRET, admin_token, bearer, post_inbound, to_toml, wait_until


def config(sink, *, timeout: float = 10.0, extra_route: bool = False, bad_key: bool = False) -> dict:
    gw = {"type": "webhook", "secret": WH_SECRET, "timeout": timeout}
    if bad_key:
        gw["secrte"] = "typo"
    routes = [{"name": "r1", "binds": [
        {"gateway": "wh", "chat": "src", "direction": "in"},
        {"gateway": "wh", "chat": "out", "direction": "out", "options": {"url": sink.url("out")}},
    ]}]
    if extra_route:
        routes.append({"name": "r2", "binds": [
            {"gateway": "wh", "chat": "src2", "direction": "in"},
            {"gateway": "wh", "chat": "out2", "direction": "out", "options": {"url": sink.url("out2")}},
        ]})
    return {
        "admin": {"jwt_secret": JWT_SECRET},
        "gateways": {"wh": gw},
        "delivery": {"backoff_base": 0.05, "backoff_cap": 0.2, "poll_interval": 0.5},
        "routes": routes,
    }


def rewrite(path, sink, **kw) -> None:
    """Replace the config file keeping the [server] table the fixture wrote."""
    server = path.read_text().split("[server]", 1)[1].split("\n[", 1)[0]
    path.write_text(to_toml(config(sink, **kw)) + "[server]" + server + "\n")


async def test_reload_valid_then_invalid_while_messages_are_in_flight_loses_nothing(file_app, sink):
    sink.delay_s = 0.03  # each delivery takes a while, so the outbox is busy during the reloads
    client, runtime, path = await file_app(config(sink))
    h = bearer(admin_token())
    sent: list[str] = []

    async def burst(start: int, n: int) -> None:
        for i in range(start, start + n):
            await post_inbound(client, "src", {"id": f"m{i}", "sender": "ann", "text": f"msg {i}"})
            sent.append(f"ann: msg {i}")

    await burst(0, 40)
    depth = sum(n for n, _ in (await runtime.store.outbox_depths()).values())
    assert depth > 0, "the test needs messages queued/in flight at reload time"

    # 1. a valid config: the webhook gateway's table changed (restarted mid-flight) and a route is added
    rewrite(path, sink, timeout=11.0, extra_route=True)
    resp = await client.post("/-/api/reload", json={}, headers=h)
    result = await resp.json()
    assert resp.status == 200 and result["ok"] is True, result
    assert result["gateways"]["restarted"] == ["wh"], result
    assert runtime.gateways["wh"].config.timeout == 11.0
    await burst(40, 20)
    await post_inbound(client, "src2", {"id": "n1", "sender": "bo", "text": "new route"})

    # 2. an invalid config: refused with its reason, the running one kept, traffic flows on
    depth = sum(n for n, _ in (await runtime.store.outbox_depths()).values())
    assert depth > 0, "the test needs messages queued/in flight at the second reload too"
    routes_before, settings_before = runtime.routes, runtime.settings
    rewrite(path, sink, timeout=12.0, extra_route=True, bad_key=True)
    resp = await client.post("/-/api/reload", json={}, headers=h)
    result = await resp.json()
    assert resp.status == 422 and result["ok"] is False, result
    assert any("gateways.wh.secrte" in e and "unknown key" in e for e in result["errors"]), result
    assert runtime.routes is routes_before and runtime.settings is settings_before
    assert runtime.gateways["wh"].config.timeout == 11.0
    await burst(60, 20)

    await wait_until(lambda: set(sink.texts("out")) >= set(sent), 60, "every message at the sink")
    await wait_until(lambda: sink.texts("out2") == ["bo: new route"], 20, "the route added by the reload")
    got = sink.texts("out")
    first_seen = list(dict.fromkeys(got))
    assert first_seen == sent, "per-chat order must survive the reloads"
    assert len(got) - len(first_seen) <= 2, f"duplicates beyond what was in flight: {len(got) - len(first_seen)}"
    assert sink.bad_signatures == 0
    assert await runtime.store.dlq_count() == 0
    audit = await runtime.store.audit_list(20)
    reloads = [a for a in audit if a["action"] == "config.reload"]
    assert len(reloads) == 2, audit
