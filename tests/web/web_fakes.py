"""Fakes shared by the /-/ endpoint tests: a runtime with just what the handlers read."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pluggy
from claudemesh_gateway import hookspecs
from claudemesh_gateway.events import GatewayState
from claudemesh_gateway.store.base import DeadLetter, OutboxItem

SECRET = "s3cret-s3cret-s3cret-s3cret-s3cret!"
AUD = "claudemesh-gateway"


class FakeStore:
    """Just enough of the Store protocol for the admin handlers."""

    def __init__(self):
        item = OutboxItem(lane="webhook/sink", route="r1", destination={"gateway": "webhook", "chat": "sink"},
                          message={"id": "m1", "sender": "alice", "text": "secret body"}, id=7, attempts=3)
        self.dead = {7: DeadLetter(id=7, item=item, reason="HTTP 400 from sink", failed_at=time.time())}
        self.retried: list = []
        self.audits: list = []

    async def outbox_depths(self):
        return {"webhook/sink": (2, time.time() - 5)}

    async def ready_lanes(self, now):
        return []

    async def dlq_list(self, limit=100):
        return list(self.dead.values())[:limit]

    async def dlq_count(self):
        return len(self.dead)

    async def dlq_retry(self, ids=None):
        ids = list(self.dead) if ids is None else [i for i in ids if i in self.dead]
        for i in ids:
            self.retried.append(self.dead.pop(i))
        return len(ids)

    async def dlq_drop(self, ids=None):
        ids = list(self.dead) if ids is None else [i for i in ids if i in self.dead]
        for i in ids:
            self.dead.pop(i)
        return len(ids)

    async def audit(self, actor, action, detail):
        self.audits.append((actor, action, detail))

    async def audit_list(self, limit=100):
        return [{"actor": a, "action": b, "detail": c} for a, b, c in self.audits][:limit]


def make_runtime(admin: dict):
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    kicks = []
    routes = SimpleNamespace(describe=lambda: [{"name": "r1", "mesh": "dev", "topic": "general",
                                                "binds": [{"gateway": "webhook", "chat": "sink"}]}])
    return SimpleNamespace(
        settings=SimpleNamespace(admin=admin, health=None), pm=pm, store=FakeStore(), meshes={},
        gateways={"webhook": object()}, routes=routes, draining=False, started_at=time.time(),
        states={"webhook": (GatewayState.CONNECTED, "", time.time())},
        delivery=SimpleNamespace(kick=lambda: kicks.append(1), stats=dict), kicks=kicks,
    )

