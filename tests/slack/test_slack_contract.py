"""The core's GatewayContract, run against the Slack gateway in Events API mode."""

from __future__ import annotations

import json
import time
import zlib

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from claudemesh_gateway import Address, Message, Outbound
from claudemesh_gateway.plugins.slack.gateway import SlackGateway
from claudemesh_gateway.plugins.slack.signature import sign
from claudemesh_gateway.testing import GatewayContract, RecordingContext


class TestSlackContract(GatewayContract):
    @pytest.fixture
    async def contract_gateway(self, fake_slack, http_session, sk):
        ctx = RecordingContext("slack", http_session, [sk.binding("C1")])
        cfg = SlackGateway.Config.model_validate(
            {
                "bot_token": sk.BOT_TOKEN,
                "signing_secret": sk.SIGNING_SECRET,
                "mode": "events",
                "api_base": f"{fake_slack.url}/api/",
            }
        )
        gw = SlackGateway("slack", cfg, ctx)
        yield gw
        await gw.stop()

    @pytest.fixture
    async def contract_inbound(self, sk):
        clients: dict[int, TestClient] = {}

        async def deliver(gateway, update_id: str, *, signed: bool = True) -> int:
            client = clients.get(id(gateway))
            if client is None:
                app = web.Application()
                sub = web.Application()
                sub.add_routes(gateway.web_routes())
                app.add_subapp(f"/gateways/{gateway.name}/", sub)
                client = clients[id(gateway)] = TestClient(TestServer(app, host="127.0.0.1", port=0))
                await client.start_server()
            ts = f"1700000000.{zlib.crc32(update_id.encode()) % 1_000_000:06d}"
            body = json.dumps(
                sk.event_callback(sk.message_event(f"update {update_id}", ts=ts), event_id=f"Ev{update_id}")
            ).encode()
            stamp = str(int(time.time()))
            secret = sk.SIGNING_SECRET if signed else "forged"
            resp = await client.post(
                f"/gateways/{gateway.name}/events",
                data=body,
                headers={
                    "X-Slack-Request-Timestamp": stamp,
                    "X-Slack-Signature": sign(secret, stamp, body),
                    "Content-Type": "application/json",
                },
            )
            return resp.status

        yield deliver
        for client in clients.values():
            await client.close()

    @pytest.fixture
    def contract_outbound(self):
        msg = Message(id="mesh:m:1", origin=Address("mesh", "m:#ops"), sender="alice", text="hi")
        return Outbound(message=msg, to=Address("slack", "C1"), text="alice: hi")

    @pytest.fixture
    def contract_break_vendor(self, fake_slack):
        def brk(permanent: bool) -> None:
            if permanent:
                fake_slack.fail_error["C1"].extend(["channel_not_found"] * 10)
            else:
                fake_slack.fail_429["C1"].extend([3] * 10)

        return brk
