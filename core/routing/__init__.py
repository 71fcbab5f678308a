"""Route table, tag routing, loop guard, dispatch pipeline.

- :mod:`.config`   ``[[routes]]`` models (``RouteConfig``, ``BindingConfig``)
- :mod:`.table`    ``RouteTable``: compiled routes, resolution, describe, per-topic encryption
- :mod:`.text`     pure text rules: tags, loop markers, attribution, mentions, splitting
- :mod:`.commands` in-chat ``/help /topics /peers /status /dm``
- :mod:`.pipeline` ``Pipeline``: submit / on_mesh_inbound, and the DeliveryEngine transport (it
  delegates render / send / record to :mod:`claudemesh_gateway.delivery.transport`)
"""

from __future__ import annotations

from .config import BindingConfig, RouteConfig
from .pipeline import Pipeline
from .table import Destination, Resolution, RouteTable

__all__ = ["BindingConfig", "Destination", "Pipeline", "Resolution", "RouteConfig", "RouteTable"]
