"""A throwaway gateway kind (``memory``) for the core's lifecycle and hook tests."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from claudemesh_gateway import (
    Address,
    Capabilities,
    DeliveryError,
    Gateway,
    GatewayConfig,
    Message,
    Outbound,
    SendResult,
    WebhookAuthError,
    hookimpl,
)
from pydantic import SecretStr

JOURNAL: list[str] = []  # lifecycle order across gateways and plugins (cleared per test)
SIG = "memory-signature-0123"


class MemoryConfig(GatewayConfig):
    signature: SecretStr = SecretStr(SIG)
    fail_start: bool = False
    fail_send: str = ""  # "", "permanent", "transient"


class MemoryGateway(Gateway):
    """Inbound: ``POST /gateways/<name>/in`` with header ``X-Sig``; outbound: recorded in ``sent``."""

    kind = "memory"
    Config = MemoryConfig
    capabilities = Capabilities(max_text=1000)

    def __init__(self, name: str, config: MemoryConfig, ctx: Any) -> None:
        super().__init__(name, config, ctx)
        self.sent: list[Outbound] = []
        self._changed = asyncio.Event()
        self.starts = 0
        self.stops = 0

    async def start(self) -> None:
        self.starts += 1
        JOURNAL.append(f"start:{self.name}")
        if self.config.fail_start:
            raise ConnectionError("vendor unreachable")

    async def stop(self) -> None:
        self.stops += 1
        JOURNAL.append(f"stop:{self.name}")

    async def send(self, out: Outbound) -> SendResult:
        if self.config.fail_send:
            raise DeliveryError("memory vendor said no", permanent=self.config.fail_send == "permanent")
        self.sent.append(out)
        self._changed.set()
        return SendResult(native_ids=(f"{self.name}-{len(self.sent)}",))

    async def wait_sent(self, count: int, timeout: float = 5.0) -> list[Outbound]:
        async def _wait() -> None:
            while len(self.sent) < count:
                self._changed.clear()
                await self._changed.wait()
        await asyncio.wait_for(_wait(), timeout)
        return self.sent

    def web_routes(self) -> list[web.RouteDef]:
        return [web.post("/in", self._inbound), web.get("/boom", self._boom)]

    async def _inbound(self, request: web.Request) -> web.Response:
        if request.headers.get("X-Sig") != self.config.signature.get_secret_value():
            raise WebhookAuthError("bad signature")
        body = await request.json()
        msg = Message(
            id=f"memory:{self.name}:{body['id']}", origin=Address(self.name, body.get("chat", "room")),
            sender=body.get("sender", "alice"), sender_id=body.get("sender_id", "u1"), text=body["text"],
            native_id=str(body["id"]),
        )
        result = await self.ctx.submit(msg)
        return web.json_response({"status": result.status})

    async def _boom(self, request: web.Request) -> web.Response:
        raise RuntimeError("internal detail: /secret/path")


class MemoryPlugin:
    @hookimpl
    def register_gateways(self, register: Any) -> None:
        register(MemoryGateway)


async def post_in(client: Any, gateway: str, msg_id: str, text: str, *, sig: str = SIG, **extra: Any) -> Any:
    return await client.post(f"/gateways/{gateway}/in", json={"id": msg_id, "text": text, **extra},
                             headers={"X-Sig": sig})
