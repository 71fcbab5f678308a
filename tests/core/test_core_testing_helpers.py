"""claudemesh_gateway.testing helpers used by plugin tests."""

from __future__ import annotations

import pytest


async def test_recording_context_mesh_handle() -> None:
    import aiohttp
    from claudemesh_gateway import Address, Message
    from claudemesh_gateway.testing import RecordingContext

    async with aiohttp.ClientSession() as http:
        ctx = RecordingContext("br", http)
        with pytest.raises(KeyError, match=r"no \[mesh.far\] table"):
            ctx.mesh("far")
        far = ctx.add_mesh("far")
        seen: list[Message] = []

        async def on_message(m: Message) -> None:
            seen.append(m)

        await ctx.mesh("far").watch_topic("shared", on_message)
        msg = Message(id="x", origin=Address("br", "shared"), sender="alice", text="hi")
        await far.deliver("shared", msg)
        assert seen == [msg]
        assert await ctx.mesh("far").post_topic("shared", "out") == "far-post-1"
        assert far.posts == [("shared", "out", None)]
