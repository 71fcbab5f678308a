"""Issue 17 item 12 (admin API): ``{"ids": [10**30]}`` answered 500 (SQLite integer overflow) and a 404
body built with an f-string was not valid JSON for a route name with quotes. Now ids are checked (integers
from 1 to 2**63-1, at most MAX_IDS per call) with a 400 naming the rule, and every error body is encoded
by json.dumps. Runs on the real app with the real SQLite store and pipeline."""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import quote

import jwt
import pytest
from claudemesh_gateway.web.admin import MAX_IDS

JWT_SECRET = "defect17-admin-jwt-secret-0123456789abcdef"
CONFIG: dict[str, Any] = {
    "admin": {"jwt_secret": JWT_SECRET},
    "gateways": {"a": {"type": "memory"}, "b": {"type": "memory"}},
    "routes": [{"name": "ab", "binds": [{"gateway": "a", "chat": "room"}, {"gateway": "b", "chat": "room"}]}],
}


def auth() -> dict[str, str]:
    now = int(time.time())
    tok = jwt.encode({"sub": "ops", "aud": "claudemesh-gateway", "iat": now, "exp": now + 300}, JWT_SECRET,
                     algorithm="HS256")
    return {"Authorization": f"Bearer {tok}"}


@pytest.mark.parametrize("action", ["retry", "drop"])
@pytest.mark.parametrize(("ids", "expect"), [
    ([10**30], "from 1 to 2**63-1"),
    ([2**63], "from 1 to 2**63-1"),
    ([-(2**63) - 1], "from 1 to 2**63-1"),
    ([0], "from 1 to 2**63-1"),
    (list(range(1, MAX_IDS + 2)), f"at most {MAX_IDS}"),
    ([1.5], "list of integers"),
    ([True], "list of integers"),
], ids=["1e30", "2**63", "below_int64", "zero", "too_many", "float", "bool"])
async def test_out_of_range_ids_are_400_with_a_reason(core_app, action: str, ids: list[Any], expect: str) -> None:
    client, runtime = await core_app(CONFIG)
    resp = await client.post(f"/-/api/dlq/{action}", data=json.dumps({"ids": ids}),
                             headers={**auth(), "Content-Type": "application/json"})
    text = await resp.text()
    assert resp.status == 400, text
    assert expect in json.loads(text)["error"]
    assert await runtime.store.audit_list(10) == []  # nothing happened, nothing audited


async def test_largest_int64_id_is_fine(core_app) -> None:
    client, _ = await core_app(CONFIG)
    resp = await client.post("/-/api/dlq/drop", json={"ids": [2**63 - 1, 1]}, headers=auth())
    assert (resp.status, await resp.json()) == (200, {"action": "drop", "count": 0})


@pytest.mark.parametrize("name", ['a"b', "back\\slash", 'x", "injected": "1', "new\nline"])
async def test_404_for_an_unknown_route_is_valid_json(core_app, name: str) -> None:
    client, _ = await core_app(CONFIG)
    resp = await client.post(f"/-/api/routes/{quote(name, safe='')}/test", json={"text": "hi"}, headers=auth())
    assert resp.status == 404
    body = json.loads(await resp.text())  # main: json.JSONDecodeError for quotes and backslashes
    assert body == {"error": f"no route named {name!r}"}


def test_dlq_cli_refuses_ids_the_store_cannot_hold(tmp_path, capsys) -> None:
    from claudemesh_gateway import cli

    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[server]\nstate_dir = "{tmp_path}/var"\n')
    code = cli.main(["-c", str(cfg), "dlq", "retry", str(10**30)])
    _, err = capsys.readouterr()
    expected = "claudemesh-gateway: config error: dlq: dead-letter ids are integers from 1 to 2**63-1"
    assert (code, err.splitlines()) == (2, [expected])
