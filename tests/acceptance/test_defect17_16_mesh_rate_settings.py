"""Issue 17 item 16: ``[mesh.<name>] rate_per_minute`` / ``rate_burst`` set the delivery limiter of
every lane into that mesh (the core's own posts and a bridge's, one shared bucket), on the REAL app
built from a config file, and a reload applies new values to the next send."""

from __future__ import annotations

from claudemesh_gateway.app import reload_config

from .conftest import FAST_POLL, WH_SECRET, post_inbound, wait_until

SCOPE = "mesh:dev:member"


def config(rate: float, burst: int) -> dict:
    return {
        "mesh": {"dev": {**FAST_POLL, "rate_per_minute": rate, "rate_burst": burst}},
        "gateways": {"wh": {"type": "webhook", "secret": WH_SECRET}},
        "delivery": {"backoff_base": 0.05, "backoff_cap": 0.2, "poll_interval": 0.5},
        "routes": [{"name": "general", "mesh": "dev", "topic": "general", "direction": "in", "binds": [
            {"gateway": "wh", "chat": "src", "direction": "in"},
        ]}],
    }


async def test_defect17_16_mesh_rate_settings_drive_the_delivery_limiter(file_app, dev_broker):
    dev_broker.set_rate_limit(1000, 600_000)  # the broker itself is not what is measured here
    client, runtime, path = await file_app(config(600.0, 3), broker=dev_broker)
    await runtime.meshes["dev"].wait_connected(10)
    buckets = runtime.delivery.limiter.buckets

    await post_inbound(client, "src", {"id": "r1", "sender": "ann", "text": "first"})
    await wait_until(lambda: SCOPE in buckets and runtime.delivery.stats()["delivered"] >= 1, 20,
                     "the post into the mesh")
    assert (buckets[SCOPE].per_second, buckets[SCOPE].burst) == (10.0, 3.0)  # not the fixed 60/min, burst 10
    # a gateway posting through ctx.mesh() (the bridge) gets the same bucket
    handle = runtime.context_for("wh").mesh("dev")
    assert handle.rate_limit.scope == SCOPE
    assert (handle.rate_limit.per_second, handle.rate_limit.burst) == (10.0, 3.0)

    text = path.read_text()
    assert "rate_per_minute = 600.0" in text and "rate_burst = 3" in text
    path.write_text(text.replace("rate_per_minute = 600.0", "rate_per_minute = 120.0")
                    .replace("rate_burst = 3", "rate_burst = 5"))
    result = await reload_config(runtime, actor="test")
    assert result["ok"], result
    assert result["meshes"]["restarted"] == ["dev"], result
    await runtime.meshes["dev"].wait_connected(10)
    await post_inbound(client, "src", {"id": "r2", "sender": "ann", "text": "second"})
    await wait_until(lambda: runtime.delivery.stats()["delivered"] >= 2, 20, "the post after the reload")
    assert (buckets[SCOPE].per_second, buckets[SCOPE].burst) == (2.0, 5.0)
    assert (handle.rate_limit.per_second, handle.rate_limit.burst) == (2.0, 5.0)
    # the mesh peer's own bucket (in front of its send queue) follows the same table
    assert runtime.meshes["dev"].bucket.burst == 5.0
