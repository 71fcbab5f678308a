"""The core's GatewayContract, run against the WhatsApp gateway and the fake Twilio API."""

from __future__ import annotations

import hashlib

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from claudemesh_gateway.plugins.whatsapp.gateway import WhatsAppGateway
from claudemesh_gateway.testing import GatewayContract, RecordingContext


class TestWhatsAppContract(GatewayContract):
    @pytest.fixture
    async def fake_twilio(self, wh):
        fake = wh.FakeTwilio()
        await fake.server.start_server()
        yield fake
        await fake.server.close()

    @pytest.fixture
    async def contract_gateway(self, fake_twilio, wh):
        async with aiohttp.ClientSession() as http:
            ctx = RecordingContext(wh.NAME, http, bindings=[wh.binding()])
            await ctx.kv_set(f"window:{wh.USER}", __import__("time").time())
            cls = type("ContractWhatsApp", (WhatsAppGateway,),
                       {"http_client_class": wh.fake_http_class(fake_twilio.url)})
            gw = cls(wh.NAME, WhatsAppGateway.Config.model_validate(wh.default_config()), ctx)
            app = web.Application()
            sub = web.Application()
            sub.add_routes(gw.web_routes())
            app.add_subapp(f"/gateways/{wh.NAME}/", sub)
            client = TestClient(TestServer(app, host="127.0.0.1", port=0))
            await client.start_server()
            gw._test_client = client  # type: ignore[attr-defined]
            try:
                yield gw
            finally:
                await client.close()

    @pytest.fixture
    def contract_inbound(self, wh):
        async def deliver(gateway, update_id: str, *, signed: bool = True) -> int:
            sid = "SM" + hashlib.sha256(update_id.encode()).hexdigest()[:32]
            params = wh.inbound_params(sid=sid, body=f"contract {update_id}")
            url = f"{wh.PUBLIC_URL}/gateways/{wh.NAME}/inbound"
            sig = wh.sign(params, url, wh.AUTH_TOKEN if signed else "wrong-token")
            resp = await gateway._test_client.post(f"/gateways/{wh.NAME}/inbound", data=params,
                                                   headers={"X-Twilio-Signature": sig})
            return resp.status

        return deliver

    @pytest.fixture
    def contract_outbound(self, wh):
        return wh.WA.outbound(None, "[alice] contract")  # type: ignore[arg-type]

    @pytest.fixture
    def contract_break_vendor(self, fake_twilio):
        def brk(permanent: bool) -> None:
            for _ in range(5):
                if permanent:
                    fake_twilio.fail(400, 21211, "The 'To' number is not a valid phone number.")
                else:
                    fake_twilio.fail(503, 20503, "Service Unavailable")

        return brk
