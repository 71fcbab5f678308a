"""The core's GatewayContract, run against the webhook gateway and a loopback receiver."""

from __future__ import annotations

import json

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from claudemesh_gateway import Address, Binding, Message, Outbound
from claudemesh_gateway.plugins.webhook.gateway import WebhookBindingOptions, WebhookConfig, WebhookGateway
from claudemesh_gateway.plugins.webhook.signature import signature_headers
from claudemesh_gateway.testing import GatewayContract, RecordingContext

SECRET = "contract-secret-0123456789abcdef"


class TestWebhookContract(GatewayContract):
    @pytest.fixture
    async def receiver(self, aiohttp_server):
        state = {"status": 200}

        async def handle(request: web.Request) -> web.Response:
            await request.read()
            return web.json_response({"id": "r-1"}, status=state["status"])

        app = web.Application()
        app.router.add_post("/in", handle)
        server = await aiohttp_server(app)
        state["url"] = str(server.make_url("/in"))
        return state

    @pytest.fixture
    async def contract_gateway(self, receiver):
        async with aiohttp.ClientSession() as http:
            binding = Binding(route="r", address=Address("wh", "chat"), direction="both",
                              options=WebhookBindingOptions())
            ctx = RecordingContext("wh", http, bindings=[binding])
            gw = WebhookGateway("wh", WebhookConfig(secret=SECRET, url=receiver["url"]), ctx)
            app = web.Application()
            sub = web.Application()
            sub.add_routes(gw.web_routes())
            app.add_subapp("/gateways/wh/", sub)
            client = TestClient(TestServer(app, host="127.0.0.1", port=0))
            await client.start_server()
            gw._test_client = client  # type: ignore[attr-defined]
            try:
                yield gw
            finally:
                await client.close()

    @pytest.fixture
    def contract_inbound(self):
        async def deliver(gateway, update_id: str, *, signed: bool = True) -> int:
            body = json.dumps({"id": update_id, "sender": "contract", "text": f"contract {update_id}"}).encode()
            headers = signature_headers(SECRET if signed else "not-the-secret-at-all", body)
            resp = await gateway._test_client.post("/gateways/wh/chat", data=body, headers=headers)
            return resp.status

        return deliver

    @pytest.fixture
    def contract_outbound(self):
        m = Message(id="mesh:dev:1", origin=Address("mesh", "dev:#general"), sender="alice", text="hi")
        return Outbound(message=m, to=Address("wh", "chat"), text="alice: hi", idempotency_key="k1")

    @pytest.fixture
    def contract_break_vendor(self, receiver):
        def brk(permanent: bool) -> None:
            receiver["status"] = 410 if permanent else 503

        return brk
