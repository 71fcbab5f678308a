"""#8 admin API on the REAL app (not a fake runtime): every endpoint with a valid, a missing, an
expired and a wrong-audience token. Bad tokens: 401/401/403, JSON, no secret or body leaked, and no
side effect (no dead letter moved, no test message sent, no reload, no audit row). A valid token
reaches every endpoint and each action really happens (dead letter retried/dropped, test message at
the sink, reload audited)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from .conftest import JWT_SECRET, WH_SECRET, admin_token, bearer, post_inbound, wait_until

ENDPOINTS = [
    ("GET", "/-/api/overview", None), ("GET", "/-/api/routes", None), ("GET", "/-/api/gateways", None),
    ("GET", "/-/api/queue", None), ("GET", "/-/api/dlq", None), ("POST", "/-/api/dlq/retry", {}),
    ("POST", "/-/api/dlq/drop", {}), ("GET", "/-/api/audit", None),
    ("POST", "/-/api/routes/alerts/test", {"text": "audit test message"}), ("POST", "/-/api/reload", {}),
]


def config(sink) -> dict[str, Any]:
    return {
        "admin": {"jwt_secret": JWT_SECRET},
        "gateways": {"wh": {"type": "webhook", "secret": WH_SECRET}},
        "delivery": {"backoff_base": 0.05, "backoff_cap": 0.1, "max_attempts": 1, "poll_interval": 0.5},
        "routes": [{"name": "alerts", "binds": [
            {"gateway": "wh", "chat": "src", "direction": "in"},
            {"gateway": "wh", "chat": "down", "direction": "out", "options": {"url": sink.url("down")}},
        ]}],
    }


@pytest.fixture
async def with_dead_letter(file_app, sink):
    """The real app with one dead letter (sink answered 400 -> permanent)."""
    broken = {"on": True}
    sink.script["down"] = lambda body, n: (400, {}) if broken["on"] else (200, {})
    client, runtime, _path = await file_app(config(sink))
    await post_inbound(client, "src", {"id": "d1", "sender": "ann", "text": "secret body text"})
    async with asyncio.timeout(20):
        while await runtime.store.dlq_count() < 1:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    return client, runtime, broken


@pytest.mark.parametrize(("case", "status"), [("missing", 401), ("expired", 401), ("wrong_audience", 403)])
async def test_every_admin_endpoint_refuses_bad_tokens_on_the_real_app(with_dead_letter, sink, case, status):
    client, runtime, broken = with_dead_letter
    broken["on"] = False  # a retry that slipped through would now be delivered and be seen
    headers = {
        "missing": {},
        "expired": bearer(admin_token(exp_in=-3600)),
        "wrong_audience": bearer(admin_token(aud="someone-else")),
    }[case]
    audit_before = await runtime.store.audit_list(50)
    for method, path, body in ENDPOINTS:
        resp = await client.request(method, path, json=body, headers=headers)
        text = await resp.text()
        assert resp.status == status, (method, path, resp.status, text)
        assert resp.content_type == "application/json", (path, resp.content_type)
        for leak in (JWT_SECRET, WH_SECRET, "secret body text"):
            assert leak not in text, (path, leak)
    await asyncio.sleep(0.5)
    assert await runtime.store.dlq_count() == 1, "a refused call moved a dead letter"
    assert sink.received["down"] == [], "a refused call delivered something"
    assert await runtime.store.audit_list(50) == audit_before, "a refused call left an audit row"


async def test_every_admin_endpoint_works_with_a_valid_token_on_the_real_app(with_dead_letter, sink):
    client, runtime, broken = with_dead_letter
    h = bearer(admin_token())

    async def call(method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        resp = await client.request(method, path, json=body, headers=h)
        assert resp.status == expect, (path, resp.status, await resp.text())
        return await resp.json()

    ov = await call("GET", "/-/api/overview")
    assert "secret body text" not in str(ov)  # bodies are not exposed
    assert ov["gateways"]["wh"]["state"] == "connected", ov
    assert "HTTP 400" in ov["dead_letters"][0]["reason"], ov
    routes = await call("GET", "/-/api/routes")
    assert [r["name"] for r in routes["routes"]] == ["alerts"]
    assert routes["routes"][0]["states"] == {"wh": "connected"}
    gws = await call("GET", "/-/api/gateways")
    assert gws["gateways"]["wh"]["state"] == "connected"
    queue = await call("GET", "/-/api/queue")
    assert isinstance(queue["queue"], list)
    dlq = await call("GET", "/-/api/dlq")
    assert dlq["count"] == 1 and "HTTP 400" in dlq["dead_letters"][0]["reason"]
    first_id = dlq["dead_letters"][0]["id"]

    # retry once the sink recovers: delivered exactly once
    broken["on"] = False
    assert await call("POST", "/-/api/dlq/retry", {"ids": [first_id]}) == {"action": "retry", "count": 1}
    await wait_until(lambda: len(sink.received["down"]) == 1, 20, "redelivery after retry")
    assert sink.texts("down") == ["ann: secret body text"]

    # a second dead letter, then drop it
    broken["on"] = True
    await post_inbound(client, "src", {"id": "d2", "sender": "ann", "text": "to be dropped"})
    async with asyncio.timeout(20):
        while await runtime.store.dlq_count() < 1:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    assert (await call("POST", "/-/api/dlq/drop", {}))["count"] == 1
    assert await runtime.store.dlq_count() == 0

    # test message through the route reaches its outbound destination
    broken["on"] = False
    res = await call("POST", "/-/api/routes/alerts/test", {"text": "audit test message"})
    assert res, res
    await wait_until(lambda: any("audit test message" in t for t in sink.texts("down")), 20, "test message")
    await call("POST", "/-/api/routes/nope/test", {"text": "x"}, expect=404)

    # reload of the unchanged file is accepted
    rl = await call("POST", "/-/api/reload", {})
    assert rl["ok"] is True, rl

    audit = (await call("GET", "/-/api/audit"))["audit"]
    actions = [a["action"] for a in audit]
    assert {"dlq.retry", "dlq.drop", "route.test", "config.reload"} <= set(actions), actions
    assert {a["actor"] for a in audit} == {"auditor@example"}, audit  # who changed what
