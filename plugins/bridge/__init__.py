"""Mesh-to-mesh bridge gateway plugin. Only the hook implementation lives here."""

from __future__ import annotations

from claudemesh_gateway import hookimpl


@hookimpl
def register_gateways(register):  # type: ignore[no-untyped-def]
    from claudemesh_gateway.plugins.bridge.gateway import BridgeGateway

    register(BridgeGateway)
