"""Text rules: HTML escaping, the Markdown subset, the plain-text fallback, inbound text links."""

from __future__ import annotations

import random

import pytest
from claudemesh_gateway import Address, Message, Outbound
from claudemesh_gateway.plugins.telegram.format import (
    entities_to_text,
    escape_html,
    html_to_plain,
    markdown_to_html,
    neutralise_mentions,
    truncate_utf16,
    utf16_len,
)
from claudemesh_gateway.plugins.telegram.wire import MessageEntity


def test_escape_only_the_three_characters():
    assert escape_html("a < b > c & \"d\" 'e'") == "a &lt; b &gt; c &amp; \"d\" 'e'"


def test_markdown_subset(tg_fake_module):
    src = 'see **this**, `a<b>` and [docs](https://x.org/?a=1&b=2)\n```python\nif a < b:\n    print("**no**")\n```\nend **open'
    html = markdown_to_html(escape_html(src))
    assert html == (
        'see <b>this</b>, <code>a&lt;b&gt;</code> and <a href="https://x.org/?a=1&amp;b=2">docs</a>\n'
        '<pre><code class="language-python">if a &lt; b:\n    print("**no**")</code></pre>\nend **open')
    assert tg_fake_module.parse_html(html).startswith("see this, a<b> and docs")


def test_markdown_leaves_unsafe_or_unclosed_things_literal():
    for src in ("[x](javascript:alert(1))", "**", "** spaced **", "`unclosed", "```\nno end", "a*b*c"):
        assert markdown_to_html(escape_html(src)) == escape_html(src)


def test_rendered_html_always_parses(tg_fake_module):
    rng = random.Random(1234)
    alphabet = "ab <>&*`[]()_\n:/hts.x\"'"
    for _ in range(2000):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        for extra in ("", "https://e.org", "```py\n", "**"):
            text = s + extra + s
            html = markdown_to_html(escape_html(text))
            tg_fake_module.parse_html(html)  # raises ParseError if Telegram would refuse it


def test_plain_fallback_never_raises_and_decodes():
    assert html_to_plain("<b>bold</b> &amp; <i>more") == "bold & more"
    assert html_to_plain("broken &am") == "broken &am"


def test_neutralise_and_utf16():
    assert neutralise_mentions("hi @alice_bot and mail@host") == "hi @\u2060alice_bot and mail@host"
    assert utf16_len("a😀") == 3
    assert truncate_utf16("😀😀😀", 5) == "😀😀…"


def test_text_links_keep_their_url_with_utf16_offsets():
    text = "😀 read the docs now"
    ents = [MessageEntity(type="text_link", offset=12, length=4, url="https://d.example"),
            MessageEntity(type="bold", offset=0, length=2)]
    assert entities_to_text(text, ents) == "😀 read the docs (https://d.example) now"


@pytest.mark.parametrize(("options", "expected_param"), [
    ({}, '<pre><code class="language-sh">rm -rf &lt;dir&gt;</code></pre>'),
    ({"markdown": False}, "```sh\nrm -rf &lt;dir&gt;\n```"),
])
async def test_code_fences_render_unless_disabled(make_gateway, fake_tg, options, expected_param):
    gw, _ = make_gateway()
    msg = Message(id="m", origin=Address("mesh", "m:#t"), sender="alice", text="x")
    text = "```sh\nrm -rf <dir>\n```"
    rendered = gw.render_text(msg, text, options)
    await gw.send(Outbound(message=msg, to=Address("tg", "-1"), text=rendered, options=options))
    assert fake_tg.method_calls("sendMessage")[0]["text"] == expected_param
    assert "rm -rf <dir>" in fake_tg.texts(-1)[0]


async def test_inbound_text_link_keeps_url(make_gateway, fake_tg, tg_binding):
    gw, ctx = make_gateway(bindings=[tg_binding(3)])
    fake_tg.add_message(3, "see here", entities=[{"type": "text_link", "offset": 4, "length": 4,
                                                  "url": "https://hidden.example/x"}])
    await gw.start()
    [m] = await ctx.wait_for(1)
    assert m.text == "see here (https://hidden.example/x)"
