"""claudemesh-gateway-example: a JSON-lines file gateway, the worked third-party plugin.

Only hook implementations live here; the gateway is in :mod:`.gateway`.
"""

from __future__ import annotations

from claudemesh_gateway import hookimpl

from .gateway import JsonlConfig, JsonlGateway

__all__ = ["JsonlConfig", "JsonlGateway", "register_gateways"]


@hookimpl
def register_gateways(register):
    register(JsonlGateway)
