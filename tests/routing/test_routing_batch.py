"""Pipeline.submit_many / on_mesh_inbound_many: a topic poll's rows in one round to the store, with the
same outcomes, events and order as one submit each."""

from __future__ import annotations

import pytest
from claudemesh_gateway.mesh.types import MeshInbound

from .conftest import ALICE, GATEWAY_PK, drain, msg

ROOM = {"name": "room", "mesh": "m", "topic": "general",
        "binds": [{"gateway": "tg", "chat": "c1"}, {"gateway": "sl", "chat": "C1"}]}


def row(text: str, n: int, *, sender: str = ALICE) -> MeshInbound:
    return MeshInbound(kind="topic", mesh="m", mesh_id="mesh-id", id=f"row-{n}", text=text, sender_pubkey=sender,
                       sender_name="alice", topic="general", created_at=1_700_000_000_000 + n)


async def test_a_poll_of_rows_is_enqueued_in_one_round_in_order(make_runtime):
    rt = make_runtime([ROOM])
    assert (await rt.pipeline.on_mesh_inbound(row("before", 2))).status == "queued"
    kicks = rt.kicks
    ops: list[str] = []
    submit = rt.store._submit

    def recording(fn, *args):
        ops.append(fn.__name__)
        return submit(fn, *args)

    rt.store._submit = recording
    rows = [row(f"n{n}", n) for n in range(8)] + [row("mine", 8, sender=GATEWAY_PK), row("again", 3)]
    results = await rt.pipeline.on_mesh_inbound_many(rows)
    assert [r.status for r in results] == ["queued"] * 2 + ["duplicate"] + ["queued"] * 5 + ["dropped", "duplicate"]
    assert results[8].reason == "loop" and results[0].destinations == 2
    assert rt.kicks == kicks + 1  # one kick for the batch
    # the echo's ledger entry, then one operation per row to enqueue, queued together (row-2 too when
    # ``seen`` did not answer for it yet; the ledger then says duplicate); retention runs on its own
    ops = [o for o in ops if o != "_op_prune"]
    assert ops[0] == "_op_accept" and set(ops[1:]) == {"_op_accept_mapped"} and len(ops) - 1 in (8, 9), ops
    delivered = await drain(rt)
    by_lane: dict[str, list[str]] = {}
    for item, outs in delivered:
        by_lane.setdefault(item.lane, []).extend(o.text for o in outs)
    want = ["alice: before"] + [f"alice: n{n}" for n in range(8) if n != 2]
    assert by_lane == {"tg/c1": want, "sl/C1": want}  # outbox order is the rows' order
    names = [e.name for e in rt.events]
    assert names.count("message-queued") == 2 * 8 and names.count("message-received") == 1 + 9
    assert await rt.store.map_reverse("mesh/m:#general", "row-5") == "mesh:m:row-5"  # origin ids recorded


async def test_a_command_in_a_batch_runs_after_the_messages_before_it(make_runtime):
    rt = make_runtime([ROOM])
    rt.states["m"] = ("connected", "", 0.0)
    results = await rt.pipeline.submit_many(
        [msg("first", mid="tg:1"), msg("/status", mid="tg:2", native_id="77"), msg("third", mid="tg:3")])
    assert [r.status for r in results] == ["queued"] * 3
    assert [r.destinations for r in results] == [2, 1, 2]  # the command's reply goes to its chat only
    # /status reads the outbox: the message before it was committed already, the one after not yet
    reply = next(o.text for item, outs in await drain(rt) for o in outs if o.reply_to == "77")
    assert "queued: 2" in reply, reply


async def test_a_failed_write_fails_the_batch_after_recording_the_others(make_runtime):
    rt = make_runtime([ROOM])
    real = rt.store.accept_many

    async def one_fails(entries):
        outcomes = await real(entries)
        outcomes[1] = RuntimeError("disk on fire")  # as a failing operation answers
        return outcomes

    rt.store.accept_many = one_fails
    with pytest.raises(RuntimeError, match="disk on fire"):
        await rt.pipeline.on_mesh_inbound_many([row("a", 1), row("b", 2), row("c", 3)])
    names = [e.name for e in rt.events]
    assert names.count("message-queued") == 2 * 2  # rows 1 and 3 are queued and said so
    assert rt.kicks == 1


async def test_without_accept_many_each_message_is_submitted_alone(make_runtime):
    rt = make_runtime([ROOM])

    class NoBatch:
        def __init__(self, store):
            self._s = store

        def __getattr__(self, name):
            if name == "accept_many":
                raise AttributeError(name)
            return getattr(self._s, name)

    rt.store = NoBatch(rt.store)
    results = await rt.pipeline.on_mesh_inbound_many([row("a", 1), row("b", 2)])
    assert [r.status for r in results] == ["queued", "queued"] and rt.kicks == 2
