"""A webhook receiver for tests: what your HTTP endpoint sees when a ``webhook`` gateway delivers.

::

    from claudemesh_gateway.plugins.webhook.testing import WebhookSink

    @pytest.fixture
    async def sink(aiohttp_server):
        s = WebhookSink(secret="the-gateway-secret")
        s.base = str((await aiohttp_server(s.app())).make_url("/sink"))
        return s

Point a binding at ``sink.url("ops")``; every request's signature is checked against
``secret`` (a bad one is answered 401 and counted), bodies are recorded per chat, and
``script[chat] = fn(body, attempt) -> (status, headers)`` makes a chat fail on purpose.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
from collections.abc import Callable
from typing import Any

from aiohttp import web
from claudemesh_gateway.plugins.webhook.signature import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SignatureError,
    signature_headers,
    verify,
)

__all__ = ["WebhookSink", "signed_post"]

Script = Callable[[dict[str, Any], int], tuple[int, dict[str, str]]]


class WebhookSink:
    """Loopback receiver for ``POST <base>/<chat>`` that verifies signatures and records bodies."""

    def __init__(self, secret: str, *, tolerance_s: int = 30) -> None:
        self.secret = secret
        self.tolerance_s = tolerance_s
        self.received: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)  # answered 200
        self.attempts: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)  # every signed request
        self.events: list[tuple[str, str, int]] = []  # (chat, message id, status) in arrival order
        self.bad_signatures = 0
        self.script: dict[str, Script] = {}
        self.delay_s = 0.0  # slows every answer (in-flight work at a restart or reload)
        self.base = ""
        self._ids = itertools.count(1)

    def app(self, prefix: str = "/sink") -> web.Application:
        app = web.Application()
        app.router.add_post(prefix + "/{chat}", self.handle)
        return app

    def url(self, chat: str) -> str:
        return f"{self.base}/{chat}"

    def texts(self, chat: str) -> list[str]:
        return [b["text"] for b in self.received[chat]]

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            verify(self.secret, request.headers.get(TIMESTAMP_HEADER), request.headers.get(SIGNATURE_HEADER), raw,
                   tolerance_s=self.tolerance_s)
        except SignatureError:
            self.bad_signatures += 1
            return web.Response(status=401)
        chat = request.match_info["chat"]
        body = json.loads(raw)
        self.attempts[chat].append(body)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        fn = self.script.get(chat)
        status, headers = fn(body, len(self.attempts[chat])) if fn else (200, {})
        self.events.append((chat, str(body.get("id")), status))
        if status != 200:
            return web.Response(status=status, headers=headers)
        self.received[chat].append(body)
        return web.json_response({"id": f"sink-{next(self._ids)}"})


def signed_post(payload: dict[str, Any], secret: str) -> tuple[bytes, dict[str, str]]:
    """Body and headers of a signed inbound webhook (``POST /gateways/<name>/<chat>``)."""
    body = json.dumps(payload).encode()
    return body, {**signature_headers(secret, body), "Content-Type": "application/json"}
