"""End to end with the embedded dev broker: mesh topic <-> WhatsApp (fake Twilio) through the whole app.

alice and bob are real mesh clients (``MeshPeer`` with the dev broker's demo identities), so
"another peer decrypts" is checked with the real key ring.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from claudemesh_gateway.plugins.whatsapp.gateway import WhatsAppGateway
from claudemesh_gateway.testing import build_test_app, dev_broker, mesh_member_factory, wait_until  # noqa: F401  (fixtures)

TEMPLATE = "HX" + "cd" * 16




@pytest.fixture
async def mesh_app(tmp_path, dev_broker, monkeypatch, wh):  # noqa: F811
    fake = wh.FakeTwilio()
    await fake.server.start_server()
    monkeypatch.setattr(WhatsAppGateway, "http_client_class", wh.fake_http_class(fake.url))
    cfg = {
        "gateways": {"wa": {"type": "whatsapp", **wh.default_config()}},
        "routes": [{"name": "general", "mesh": "dev", "topic": "general", "direction": "both",
                    "encryption": "hkdf",  # v3, chosen explicitly (the default auto posts v1 here)
                    "binds": [
            {"gateway": "wa", "chat": wh.USER},
            {"gateway": "wa", "chat": wh.OTHER, "options": {
                "outside_window": "template", "template_content_sid": TEMPLATE,
                "template_variables": {"1": "{sender}", "2": "{text}"}}},
        ]}],
    }
    state = tmp_path / "gw"
    state.mkdir()
    client, runtime = await build_test_app(cfg, state_dir=state, broker=dev_broker)
    try:
        await runtime.meshes["dev"].wait_connected(10)
        yield client, runtime, dev_broker, fake
    finally:
        await client.close()
        await fake.server.close()


@pytest.fixture
def member(mesh_app, mesh_member_factory):  # noqa: F811
    """``await member("dev_bob", on_message=...)``: a started mesh client with a demo identity."""
    runtime = mesh_app[1]

    async def make(name: str, on_message=None):
        return await mesh_member_factory(None, name, mesh=runtime.settings.mesh[name], on_message=on_message)

    return make


async def _inbound(client, wh, **kw):
    params = wh.inbound_params(**kw)
    url = f"{wh.PUBLIC_URL}/gateways/wa/inbound"
    resp = await client.post("/gateways/wa/inbound", data=params,
                             headers={"X-Twilio-Signature": wh.sign(params, url)})
    assert resp.status == 200
    return params


async def test_whatsapp_message_reaches_the_topic_encrypted_and_another_peer_decrypts_it(mesh_app, member, wh):
    client, _, broker, _ = mesh_app
    got = []
    bob = await member("dev_bob", on_message=got.append)
    await bob.watch_topic("general")
    await _inbound(client, wh, body="hello mesh from whatsapp")
    await wait_until(lambda: any("hello mesh from whatsapp" in i.text for i in got))
    [inbound] = [i for i in got if "hello mesh from whatsapp" in i.text]
    assert inbound.body_version == 3 and inbound.topic == "general"
    assert "Ada" in inbound.text  # attributed to the WhatsApp profile name
    stored = [t for t in broker.topic_messages(topic_id=broker.default_mesh.general_topic_id) if t.id == inbound.id]
    assert stored and stored[0].body_version == 3
    assert "hello mesh" not in stored[0].ciphertext  # the broker only ever held ciphertext


async def test_mesh_post_goes_to_whatsapp_with_attribution_window_and_template(mesh_app, member, wh):
    client, _, _, fake = mesh_app
    await _inbound(client, wh, body="hi, on call today")  # opens USER's 24-hour window
    alice = await member("dev_alice")
    await alice.post_topic("general", "deploy done")
    await wait_until(lambda: any(dict(r).get("Body") == "alice: deploy done" for r in fake.requests)
                     and any("deploy done" in dict(r).get("ContentVariables", "") for r in fake.requests))
    to_user = [dict(r) for r in fake.requests if dict(r)["To"] == wh.USER]
    assert [r["Body"] for r in to_user] == ["alice: deploy done"]
    assert to_user[0]["From"] == wh.FROM
    assert to_user[0]["StatusCallback"] == f"{wh.PUBLIC_URL}/gateways/wa/status"
    # OTHER never wrote: outside the window, the binding's approved template is used
    to_other = [dict(r) for r in fake.requests if dict(r)["To"] == wh.OTHER]
    # USER's own message was relayed to OTHER first (bindings of a route relay to each other)
    variables = [json.loads(r["ContentVariables"]) for r in to_other]
    assert {"1": "alice", "2": "alice: deploy done"} in variables
    assert all(r["ContentSid"] == TEMPLATE and "Body" not in r for r in to_other)


async def test_long_mesh_post_is_split_into_parts_in_order(mesh_app, member, wh):
    client, _, _, fake = mesh_app
    await _inbound(client, wh, body="ready")
    alice = await member("dev_alice")
    text = " ".join(f"sentence {i} is here." for i in range(120))  # > 2,000 characters
    assert len(text) > 2000
    await alice.post_topic("general", text)
    await wait_until(lambda: len([r for r in fake.requests
                                  if dict(r)["To"] == wh.USER and "sentence" in dict(r).get("Body", "")]) >= 2)
    await asyncio.sleep(0.3)  # let any further part arrive
    parts = [dict(r)["Body"] for r in fake.requests if dict(r)["To"] == wh.USER]
    assert len(parts) == 2 and all(len(p) <= 1600 for p in parts)
    assert parts[0].startswith("alice: sentence 0 is here.")
    assert "sentence 119 is here." in parts[1]
    assert "sentence 0 is here." not in parts[1]  # part 1 went out first, then part 2
    # nothing lost at the split: every sentence arrives exactly once, in order
    joined = " ".join(parts)
    positions = [joined.find(f"sentence {i} is here.") for i in range(120)]
    assert all(p >= 0 for p in positions) and positions == sorted(positions)
