"""Found by tests/fuzz (issue 16): a ``topic_history`` row whose ``senderPubkey`` is not a string (a list,
an object) raised TypeError (unhashable) in the poller: "handling a row failed; will retry" with a
traceback on every poll, and the topic stalled behind it. Now such a field counts as absent: the row is
handled (or skipped) like any other and the rows after it flow."""

from __future__ import annotations

import importlib.util
import logging
import sys
import time
from pathlib import Path
from typing import Any

import pytest

_NAME = "defect16_hostile_broker"
if _NAME not in sys.modules:
    _spec = importlib.util.spec_from_file_location(_NAME, Path(__file__).with_name("test_hostile_broker.py"))
    assert _spec is not None and _spec.loader is not None
    sys.modules[_NAME] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules[_NAME])
hb = sys.modules[_NAME]
hostile = hb.hostile  # the hostile broker's fixture


@pytest.mark.parametrize("pubkey", [[], {}, ["ab" * 32], {"k": 1}, 7, None])
async def test_defect16_row_with_a_non_string_sender_pubkey_does_not_stall_the_topic(hostile, caplog, pubkey):
    caplog.set_level(logging.INFO, logger="claudemesh_gateway.mesh")
    got: list[Any] = []

    async def on_message(item: Any) -> None:
        got.append(item)

    async def script(h: Any, ws: Any, n: int) -> None:
        await h.ack(ws, n)

    broker, peer = await hostile(script, on_message=on_message)
    await peer.watch_topic("general", timeout=5)
    now = int(time.time() * 1000)

    def row(rid: str, text: str, t: int, **over: Any) -> dict[str, Any]:
        return {"id": rid + "x" * (32 - len(rid)), "senderPubkey": hb.ALICE, "senderMemberId": "alice",
                "senderName": "alice", "nonce": hb.b64("n" * 24), "ciphertext": hb.b64(text), "bodyVersion": 1,
                "createdAt": hb.iso(t), **over}

    broker.rows += [row("odd", "odd sender key", now + 10, senderPubkey=pubkey), row("after", "after it", now + 20)]
    await hb.until(lambda: any(i.text == "after it" for i in got), 10)
    odd = [i for i in got if i.text == "odd sender key"]
    assert len(odd) == 1 and odd[0].sender_pubkey == ""
    assert not [r for r in caplog.records if r.exc_info or "failed; will retry" in r.getMessage()]
