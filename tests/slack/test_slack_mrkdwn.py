"""mrkdwn escaping (outbound) and readable conversion (inbound)."""

from __future__ import annotations

import pytest
from claudemesh_gateway.plugins.slack import mrkdwn

NAMES = {"U1": "alice"}
CHANNELS = {"C1": "general"}


def readable(text: str) -> str:
    return mrkdwn.to_readable(text, NAMES.get, CHANNELS.get)


@pytest.mark.parametrize(
    "raw",
    [
        "<!channel>",
        "<!here>",
        "<!everyone>",
        "<@U123>",
        "<!subteam^S1|@oncall>",
        "<#C1>",
        "a & b < c > d",
        "&lt;!channel&gt;",
        "&amp;lt;",
        "<<!here>>",
        "&",
        "&&lt;",
    ],
)
def test_escape_neutralises_and_is_idempotent(raw):
    once = mrkdwn.escape(raw)
    assert "<" not in once and ">" not in once
    assert mrkdwn.escape(once) == once
    # every & in the output starts an entity: Slack cannot read markup out of it
    assert once.count("&") == once.count("&amp;") + once.count("&lt;") + once.count("&gt;")


def test_escape_plain_text_roundtrip():
    assert mrkdwn.escape("1 < 2 && 3 > 2") == "1 &lt; 2 &amp;&amp; 3 &gt; 2"
    assert mrkdwn.unescape(mrkdwn.escape("1 < 2 && 3 > 2")) == "1 < 2 && 3 > 2"


@pytest.mark.parametrize(
    ("slack", "text"),
    [
        ("hi <@U1>", "hi @alice"),
        ("hi <@U9>", "hi @U9"),
        ("hi <@U9|zed>", "hi @zed"),
        ("in <#C1>", "in #general"),
        ("in <#C2|random>", "in #random"),
        ("in <#C3|>", "in #C3"),
        ("<https://x.org|docs>", "docs (https://x.org)"),
        ("<https://x.org>", "https://x.org"),
        ("<https://x.org|https://x.org>", "https://x.org"),
        ("<mailto:a@b.c|a@b.c>", "a@b.c"),
        ("<!here> <!channel> <!everyone>", "@here @channel @everyone"),
        ("<!here|@here>", "@here"),
        ("<!subteam^S1|@oncall>", "@oncall"),
        ("<!subteam^S1>", "@S1"),
        ("<!date^1392734382^{date_short}|Feb 18, 2014>", "Feb 18, 2014"),
        ("a &lt;b&gt; &amp;amp;", "a <b> &amp;"),
    ],
)
def test_inbound_readable(slack, text):
    assert readable(slack) == text


def test_referenced_ids_only_unlabelled():
    users, channels = mrkdwn.referenced_ids("<@U1> <@U2|bob> <#C1> <#C2|x> <!here> <https://a|b>")
    assert users == {"U1"} and channels == {"C1"}


def test_mass_mentions_enabled_only_for_plain_words():
    assert mrkdwn.enable_mass_mentions("@here x @channel y @everyone") == "<!here> x <!channel> y <!everyone>"
    assert mrkdwn.enable_mass_mentions("a@here.com /@here @heres") == "a@here.com /@here @heres"
    escaped = mrkdwn.escape("<!channel> <!subteam^S1|@ops> <@U1> <https://x|y> <!date^1^x|d>")
    assert mrkdwn.enable_mass_mentions(escaped) == (
        "<!channel> <!subteam^S1|@ops> <@U1> &lt;https://x|y&gt; &lt;!date^1^x|d&gt;"
    )


async def test_resolver_coalesces_and_caches():
    import asyncio

    calls = []

    async def fetch_user(uid):
        calls.append(uid)
        await asyncio.sleep(0.01)
        return {"U1": "alice"}.get(uid)

    async def fetch_channel(cid):
        return None

    r = mrkdwn.NameResolver(fetch_user, fetch_channel)
    await asyncio.gather(*(r.resolve({"U1", "U9"}, set(), 1.0) for _ in range(5)))
    await r.resolve({"U1", "U9"}, set(), 1.0)
    assert sorted(calls) == ["U1", "U9"]  # once each, misses cached too
    assert r.user("U1") == "alice" and r.user("U9") is None


async def test_resolver_timeout_keeps_filling_cache():
    import asyncio

    gate = asyncio.Event()

    async def slow(uid):
        await gate.wait()
        return "late"

    r = mrkdwn.NameResolver(slow, slow)
    await r.resolve({"U1"}, set(), 0.01)
    assert r.user("U1") is None  # the event was not held up
    gate.set()
    for _ in range(50):
        if r.user("U1"):
            break
        await asyncio.sleep(0.01)
    assert r.user("U1") == "late"
    await r.aclose()
