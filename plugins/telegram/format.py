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
    "escape_html",
    "html_to_plain",
    "neutralise_mentions",
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
