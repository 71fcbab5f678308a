"""The public WebhookSink helper: verifies signatures, records per chat, scripts failures."""

from __future__ import annotations

from claudemesh_gateway.plugins.webhook.testing import WebhookSink, signed_post

SECRET = "sink-test-secret-0123456789"


async def test_sink_checks_signatures_records_and_scripts(aiohttp_client):
    sink = WebhookSink(SECRET)
    client = await aiohttp_client(sink.app())
    body, headers = signed_post({"id": "m1", "text": "hi"}, SECRET)
    assert (await client.post("/sink/ops", data=body, headers=headers)).status == 200
    forged, forged_headers = signed_post({"id": "m2", "text": "forged"}, "another-secret-0123456789")
    assert (await client.post("/sink/ops", data=forged, headers=forged_headers)).status == 401
    sink.script["down"] = lambda body, attempt: (503, {"Retry-After": "1"}) if attempt == 1 else (200, {})
    body, headers = signed_post({"id": "m3", "text": "retry me"}, SECRET)
    assert (await client.post("/sink/down", data=body, headers=headers)).status == 503
    assert (await client.post("/sink/down", data=body, headers=headers)).status == 200
    assert sink.texts("ops") == ["hi"] and sink.texts("down") == ["retry me"]
    assert sink.bad_signatures == 1
    assert sink.events == [("ops", "m1", 200), ("down", "m3", 503), ("down", "m3", 200)]
