"""Pure text rules: tags, loop markers, attribution, mention neutralising, splitting."""

from __future__ import annotations

import random
import re

import pytest
from claudemesh_gateway.delivery.text import (
    TRUNCATED,
    ZWSP,
    attribute,
    mentions_in,
    neutralise_mentions,
    parse_hop_prefix,
    parse_leading_tags,
    parse_via,
    split_text,
    with_hop_prefix,
    with_via,
)


@pytest.mark.parametrize(("text", "tags", "rest"), [
    ("tag:ops deploy done", {"ops"}, "deploy done"),
    ("tag:Ops  TAG:repo:billing   hi", {"ops", "repo:billing"}, "hi"),
    ("tag:a tag:b", {"a", "b"}, ""),
    ("hello tag:ops", set(), "hello tag:ops"),  # only leading tokens count
    ("tag: spaced", set(), "tag: spaced"),  # empty tag is not a tag
    ("tag:ok tag:!bad text", {"ok"}, "tag:!bad text"),  # an invalid token ends the run, stays
    ("tag:ops\nmulti\nline", {"ops"}, "multi\nline"),
    ("", set(), ""),
])
def test_leading_tags(text, tags, rest):
    got_tags, got_rest = parse_leading_tags(text)
    assert got_tags == tags
    assert got_rest == rest


def test_hop_prefix_round_trip():
    assert parse_hop_prefix("__cmh2:hello") == (2, "hello")
    assert parse_hop_prefix("hello") == (0, "hello")
    assert parse_hop_prefix(" __cmh1:x") == (0, " __cmh1:x")  # must be at the very start
    assert parse_hop_prefix(with_hop_prefix(3, "a: b")) == (3, "a: b")


def test_via_marker():
    assert parse_via(with_via("telegram", "ann: hi")) == "telegram"
    assert parse_via("[via Slack #C123] bob: hi") == "Slack"
    assert parse_via("no marker [via x] here") is None


def test_attribution_fills_fields_verbatim():
    out = attribute("[{gateway}/{chat}] {sender}: {text}",
                    {"sender": "ann", "text": "use {x} and {}", "gateway": "tg", "chat": "c1", "mesh": "", "topic": ""})
    assert out == "[tg/c1] ann: use {x} and {}"


@pytest.mark.parametrize("raw", ["@everyone look", "hey @here", "@channel!", "<!channel> now", "<!here>", "@ALL",
                                 "<!subteam^S123> ping"])
def test_mass_mentions_are_defanged(raw):
    out = neutralise_mentions(raw)
    assert out != raw
    assert out.replace(ZWSP, "") == raw  # reads the same
    assert not re.search(r"(?<!\w)@(everyone|here|channel|all)\b", out, re.IGNORECASE)
    assert "<!channel>" not in out and "<!here>" not in out


def test_ordinary_mentions_and_emails_untouched():
    for raw in ("@alice hi", "mail me at ops@here.example", "hereby", "@channels-team"):
        assert neutralise_mentions(raw) == raw


def test_mentions_for_topic_posts():
    assert mentions_in("hi @Alice and @bob.smith, also @alice again; mail x@y.z") == ("alice", "bob.smith")


def _fences_balanced(part: str) -> bool:
    """CommonMark: a fence opens with ``` (+ info); it closes on a ``` line with nothing after it."""
    open_ = False
    for line in part.split("\n"):
        m = re.match(r"^[ \t]{0,3}(`{3,})([^`]*)$", line)
        if not m:
            continue
        if not open_:
            open_ = True
        elif m.group(2).strip() == "":
            open_ = False
    return not open_


def test_split_short_text_is_one_part():
    assert split_text("hello", 10) == ["hello"]


def test_split_prefers_paragraphs_and_numbers_parts():
    text = ("alpha " * 10).strip() + "\n\n" + ("beta " * 10).strip() + "\n\n" + ("gamma " * 10).strip()
    parts = split_text(text, 80)
    assert len(parts) == 3
    assert parts[0].startswith("alpha") and parts[0].endswith("(1/3)")
    assert parts[1].startswith("beta") and parts[2].endswith("(3/3)")
    assert all(len(p) <= 80 for p in parts)


def test_split_never_breaks_code_blocks():
    code = "\n".join(f"    value_{i} = compute({i})" for i in range(60))
    text = "intro line\n\n```python\n" + code + "\n```\n\nafter the block"
    parts = split_text(text, 300, 50)
    assert len(parts) > 3
    for p in parts:
        assert len(p) <= 300
        assert _fences_balanced(p), p
    inner = [p for p in parts[1:-1]]
    assert all("```python" in p for p in inner)  # reopened with the same info string
    # nothing lost: every line of the code is in some part
    joined = "\n".join(parts)
    for i in range(60):
        assert f"value_{i} = compute({i})" in joined


def test_split_caps_parts_and_marks_truncation():
    parts = split_text("word " * 1000, 100, max_parts=3)
    assert len(parts) == 3
    assert TRUNCATED in parts[-1]
    assert all(len(p) <= 100 for p in parts)


def test_split_random_inputs_respect_limit_and_keep_words():
    rng = random.Random(7)
    words = ["lorem", "ipsum", "```", "```js", "x" * 30, "\n", "\n\n", "dolor", "sit", "amet"]
    for _ in range(200):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 300)))
        limit = rng.randint(40, 400)
        parts = split_text(text, limit, max_parts=1000)
        assert all(len(p) <= limit for p in parts), (limit, parts)
        if len(parts) > 1:
            assert all(_fences_balanced(p) for p in parts)
        joined = " ".join(parts)
        for w in ("lorem", "ipsum", "dolor", "amet"):
            assert text.count(w) <= joined.count(w)


def test_split_long_unbreakable_word_is_hard_cut():
    parts = split_text("y" * 250, 100)
    assert all(len(p) <= 100 for p in parts)
    assert "".join(re.sub(r" \(\d+/\d+\)$", "", p) for p in parts) == "y" * 250
