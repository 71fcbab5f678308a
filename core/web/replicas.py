"""The dashboard's "leases and replicas" panel (``GET /-/api/replicas``, and ``replicas`` in the overview).

With a store several replicas share (PostgreSQL): this replica's id, the leases it holds (delivery
lanes, mesh topic pollers, a gateway's ingress such as Telegram getUpdates or Slack Socket Mode)
and the other replicas that hold leases now, read from the store's lease table. Otherwise (SQLite,
one process by construction) one line says so.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..runtime import Runtime

__all__ = ["lease_view", "replicas_view"]

#: seconds the lease listing may take before the panel says it could not be read
LIST_TIMEOUT_S = 5.0
_INGRESS = {"poll": "polling", "socket": "socket"}


def lease_view(name: str) -> dict[str, str]:
    """``lane:tg/-100`` -> ``{"name", "kind": "lane", "what": "tg/-100"}``; kinds: lane, topic
    (``mesh #topic``), gateway (``name polling|socket``), other."""
    kind, _, rest = name.partition(":")
    if kind == "lane" and rest:
        return {"name": name, "kind": "lane", "what": rest}
    if kind == "topic" and ":" in rest:
        mesh, _, topic = rest.partition(":")
        return {"name": name, "kind": "topic", "what": f"{mesh} #{topic}"}
    if kind == "gateway" and ":" in rest:
        gw, _, what = rest.rpartition(":")
        return {"name": name, "kind": "gateway", "what": f"{gw} {_INGRESS.get(what, what)}"}
    return {"name": name, "kind": "other", "what": name}


async def replicas_view(runtime: Runtime) -> dict[str, Any]:
    """``{"shared": False, "mode": ...}`` for a single process; with shared leases ``{"shared": True,
    "replica", "owner", "ttl_s", "leases": [...], "others": [{"replica", "owner", "leases"}],
    "others_error", "acquired", "lost", "renew_errors"}``."""
    leases = getattr(runtime, "leases", None)
    store_cfg = getattr(getattr(runtime, "settings", None), "store", None)
    backend = getattr(store_cfg, "backend", "sqlite")
    if leases is None or not leases.shared:
        mode = "single process (SQLite)" if backend == "sqlite" else "single process"
        return {"shared": False, "backend": backend, "mode": mode,
                "replica": getattr(leases, "replica", None)}
    d = leases.describe()
    now = time.time()
    mine = [{**lease_view(n), "valid_s": left, "held_s": round(now - d["since"].get(n, now), 1)}
            for n, left in d["leases"].items()]
    others: dict[str, dict[str, Any]] = {}
    error = None
    try:
        rows = await asyncio.wait_for(runtime.store.lease_list(), LIST_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - the database is down or slow: the panel says so
        rows, error = [], f"could not list the leases ({type(exc).__name__})"
    for r in rows:
        owner = str(r.get("owner", ""))
        if owner == leases.owner:
            continue
        entry = others.setdefault(owner, {"replica": owner.split("/", 1)[0], "owner": owner, "leases": []})
        entry["leases"].append({**lease_view(str(r.get("name", ""))), "expires_in_s": r.get("expires_in_s")})
    return {"shared": True, "backend": backend, "replica": d["replica"], "owner": d["owner"], "ttl_s": d["ttl_s"],
            "leases": mine, "others": sorted(others.values(), key=lambda o: o["owner"]), "others_error": error,
            "acquired": d["acquired"], "lost": d["lost"], "renew_errors": d["renew_errors"]}
