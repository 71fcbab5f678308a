"""Telegram text formatting: HTML escaping, the fallback to plain text, mention helpers.

Telegram's HTML parse mode needs only ``<``, ``>`` and ``&`` escaped
(https://core.telegram.org/bots/api#html-style); every other character is
literal. Mesh text is never trusted as markup: the gateway escapes all of it,
so a mesh peer can't inject tags or break the parser.
"""

from __future__ import annotations

import html
import re

__all__ = [
    "ALLOWED_TAGS",
    "entities_to_text",
    "escape_html",
    "html_to_plain",
    "markdown_to_html",
    "markup",
    "neutralise_mentions",
    "render",
    "shown",
    "truncate_utf16",
    "utf16_len",
]

# Tags Telegram accepts in parse_mode=HTML (tg-emoji needs emoji-id; a href needs a URL).
ALLOWED_TAGS = frozenset({
    "b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "span", "tg-spoiler",
    "a", "tg-emoji", "code", "pre", "blockquote",
})

_TAG = re.compile(r"</?[a-zA-Z][a-zA-Z0-9-]*(?:\s[^<>]*)?/?>")
_MENTION = re.compile(r"(?<![\w@])@(?=[A-Za-z0-9_]{4,})")
_WORD_JOINER = "\u2060"


def escape_html(text: str) -> str:
    """Escape ``text`` for ``parse_mode=HTML``: only ``&``, ``<`` and ``>`` (quotes stay literal)."""
    return html.escape(text, quote=False)


def html_to_plain(text: str) -> str:
    """What a reader should see when an HTML part is re-sent as plain text after a parse error:
    tags dropped, entities decoded. Works on broken fragments too (never raises)."""
    return html.unescape(_TAG.sub("", text))


def shown(text: str, html: bool) -> str:
    """What a reader sees of ``text``: ``html_to_plain`` when it is HTML, else the text itself."""
    return html_to_plain(text) if html else text


def markup(text: str, html: bool) -> str:
    """Plain ``text`` as it is sent: escaped when the message is HTML."""
    return escape_html(text) if html else text


def neutralise_mentions(text: str) -> str:
    """Make ``@username`` inert (a word joiner after the ``@``) so mesh text can't ping people."""
    return _MENTION.sub("@" + _WORD_JOINER, text)


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units, the unit of Telegram's entity offsets and limits."""
    return len(text.encode("utf-16-le")) // 2


def truncate_utf16(text: str, limit: int, marker: str = "…") -> str:
    """Cut ``text`` to at most ``limit`` UTF-16 code units, ending with ``marker`` when cut."""
    if utf16_len(text) <= limit:
        return text
    budget = limit - utf16_len(marker)
    out: list[str] = []
    used = 0
    for ch in text:
        n = 2 if ord(ch) > 0xFFFF else 1
        if used + n > budget:
            break
        out.append(ch)
        used += n
    return "".join(out) + marker


# -- a safe Markdown subset -> Telegram HTML ------------------------------------------------------
# Runs on text that is ALREADY escaped (escape_html), so it can only add the tags below, always
# balanced; anything it does not recognise stays literal. Agents write Markdown; Telegram shows it.
_FENCE = re.compile(r"```([A-Za-z0-9_+\-]*)\n(.*?)\n?```", re.DOTALL)
_INLINE_CODE = re.compile(r"`([^`\n]+)`")
_BOLD = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*")
_LINK = re.compile(r"\[([^\]\n]+)\]\((https?://[^\s)]+)\)")


def _inline(segment: str) -> str:
    out: list[str] = []
    pos = 0
    for m in _INLINE_CODE.finditer(segment):
        out.append(_spans(segment[pos:m.start()]))
        out.append(f"<code>{m.group(1)}</code>")
        pos = m.end()
    out.append(_spans(segment[pos:]))
    return "".join(out)


def _spans(segment: str) -> str:
    segment = _LINK.sub(lambda m: f'<a href="{m.group(2).replace(chr(34), "&quot;")}">{m.group(1)}</a>', segment)
    return _BOLD.sub(lambda m: f"<b>{m.group(1)}</b>", segment)


def markdown_to_html(escaped: str) -> str:
    """Render fenced code blocks, inline code, ``**bold**`` and ``[label](https://url)`` of an
    already HTML-escaped text as Telegram HTML. Unclosed markers stay literal."""
    out: list[str] = []
    pos = 0
    for m in _FENCE.finditer(escaped):
        out.append(_inline(escaped[pos:m.start()]))
        lang, body = m.group(1), m.group(2)
        cls = f' class="language-{lang}"' if lang else ""
        out.append(f"<pre><code{cls}>{body}</code></pre>")
        pos = m.end()
    out.append(_inline(escaped[pos:]))
    return "".join(out)


def entities_to_text(text: str, entities: list) -> str:
    """Inbound: keep what plain text would lose. ``text_link`` entities (a label hiding a URL)
    become ``label (url)``. Offsets are UTF-16 code units, as Telegram counts them."""
    links = sorted((e for e in entities if getattr(e, "type", None) == "text_link" and getattr(e, "url", None)),
                   key=lambda e: e.offset, reverse=True)
    if not links:
        return text
    units = text.encode("utf-16-le")
    for e in links:
        start, end = e.offset * 2, (e.offset + e.length) * 2
        if end > len(units) or start >= end:
            continue
        units = units[:end] + f" ({e.url})".encode("utf-16-le") + units[end:]
    return units.decode("utf-16-le", errors="replace")


def render(text: str, *, html: bool, markdown: bool, neutralise: bool) -> str:
    """Attributed plain text -> what is posted. HTML: everything escaped (mesh text is never markup),
    then, with ``markdown``, the safe Markdown subset turned into Telegram tags. ``neutralise``
    makes mentions inert first."""
    if neutralise:
        text = neutralise_mentions(text)
    if not html:
        return text
    escaped = escape_html(text)
    return markdown_to_html(escaped) if markdown else escaped
