"""The dev broker's state rows serialise exactly as ``dataclasses.asdict`` would (the fast path for
flat rows must not change the state file), and a nested row is still deep-copied."""

from __future__ import annotations

import dataclasses

from claudemesh_gateway.devbroker.model import QueueRow, TopicMessage, row_to_dict


def test_flat_rows_serialise_as_asdict() -> None:
    q = QueueRow(id="q1", mesh_id="m", target_spec="#t", priority="now", nonce="n", ciphertext="c",
                 sender_member_id="s", sender_session_pubkey=None, created_at=1.5, client_message_id="x")
    t = TopicMessage(id="t1", mesh_id="m", topic_id="t", sender_member_id="s", sender_session_pubkey="p",
                     nonce="n", ciphertext="c", body_version=2, created_at=2.0)
    for row in (q, t):
        assert row_to_dict(row) == dataclasses.asdict(row)


def test_a_row_with_a_container_is_deep_copied() -> None:
    @dataclasses.dataclass
    class Nested:
        name: str
        caps: list[str]

    row = Nested("a", ["read"])
    out = row_to_dict(row)
    assert out == {"name": "a", "caps": ["read"]}
    out["caps"].append("send")
    assert row.caps == ["read"]
