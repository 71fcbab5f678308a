"""Pure text rules of what is delivered, and their parsers: tags, loop markers, attribution, mention
neutralising, splitting. Routing reads the markers delivery writes, so both sides live here.

No I/O here; every function is deterministic and unit-tested on its own.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

from .addresses import TAG_RE

__all__ = [
    "DEFAULT_ATTRIBUTION",
    "TRUNCATED",
    "ZWSP",
    "attribute",
    "loop_marker",
    "mentions_in",
    "neutralise_mentions",
    "parse_hop_prefix",
    "parse_leading_tags",
    "parse_via",
    "split_text",
    "with_hop_prefix",
    "with_via",
]

log = logging.getLogger(__name__)

ZWSP = "\u200b"  # ZERO WIDTH SPACE: invisible, breaks the mention token so nobody is pinged
TRUNCATED = "… [truncated]"
DEFAULT_ATTRIBUTION = "{sender}: {text}"

# -- tags -----------------------------------------------------------------------------------------------
_LEADING_TAG = re.compile(r"\s*tag:(\S+)(?=\s|$)", re.IGNORECASE)


def parse_leading_tags(text: str) -> tuple[frozenset[str], str]:
    """Leading ``tag:<name>`` tokens of ``text`` -> (tags, text without them).

    Only tokens at the very start count (``tag:a tag:b hello`` -> {a, b}, "hello");
    a token that is not a valid tag name ends the run and stays in the text.
    """
    tags: set[str] = set()
    pos = 0
    while True:
        m = _LEADING_TAG.match(text, pos)
        if not m:
            break
        tag = m.group(1).lower()
        if not TAG_RE.fullmatch(tag):
            break
        tags.add(tag)
        pos = m.end()
    if not tags:
        return frozenset(), text
    return frozenset(tags), text[pos:].lstrip()


# -- loop markers ------------------------------------------------------------------------------------------
_HOP = re.compile(r"^__cmh(\d{1,3}):")
_VIA = re.compile(r"^\[via ([A-Za-z0-9_.\-]{1,64})(?: [^\]]{0,80})?\] ")


def parse_hop_prefix(text: str) -> tuple[int, str]:
    """``__cmh<n>:`` prefix (mesh-protocol A.16.3) -> (n, text without it); no prefix = hop 0."""
    m = _HOP.match(text)
    if not m:
        return 0, text
    return int(m.group(1)), text[m.end():]


def with_hop_prefix(hops: int, text: str) -> str:
    return f"__cmh{hops}:{text}"


def loop_marker(text: str) -> str:
    """The leading loop markers of ``text``: an ``__cmh<n>:`` prefix and/or a ``[via X] `` tag.

    Every part of a split message must carry them, or a part could slip past another
    bridge's loop guard.
    """
    m = _HOP.match(text)
    end = m.end() if m else 0
    v = _VIA.match(text[end:])
    return text[:end + (v.end() if v else 0)]


def parse_via(text: str) -> str | None:
    """The surface named by a leading ``[via <name>]`` marker (A.16.4), or None."""
    m = _VIA.match(text)
    return m.group(1) if m else None


def with_via(gateway: str, text: str) -> str:
    return f"[via {gateway}] {text}"


# -- attribution -------------------------------------------------------------------------------------------
class _Fields(dict[str, str]):
    def __missing__(self, key: str) -> str:  # templates are validated; this is belt and braces
        return ""


def attribute(template: str, fields: Mapping[str, str]) -> str:
    """Fill an attribution template. Values are inserted verbatim (braces in them are not re-parsed)."""
    try:
        return template.format_map(_Fields(fields))
    except (ValueError, IndexError, AttributeError, KeyError) as exc:
        log.warning("bad attribution template %r (%s); using the default", template, exc)
        return f"{fields.get('sender', '')}: {fields.get('text', '')}"


# -- mentions ------------------------------------------------------------------------------------------------
# Mass mentions on the platforms we bridge: Slack <!channel> <!here> <!everyone> <!subteam^ID>,
# and the @everyone/@here/@channel/@all spellings (Slack, Discord-likes, Mattermost, Teams).
_MASS_AT = re.compile(r"(?<!\w)@(everyone|here|channel|all|room)\b", re.IGNORECASE)
_MASS_BANG = re.compile(r"<!(channel|here|everyone|subteam\^)", re.IGNORECASE)


def neutralise_mentions(text: str) -> str:
    """Defang mass mentions with a zero-width space after ``@`` / ``<!``; the text reads the same."""
    text = _MASS_BANG.sub(lambda m: "<!" + ZWSP + m.group(1), text)
    return _MASS_AT.sub(lambda m: "@" + ZWSP + m.group(1), text)


_MENTION = re.compile(r"(?<![\w@])@([A-Za-z0-9][A-Za-z0-9_.\-]{0,63})")


def mentions_in(text: str, limit: int = 16) -> tuple[str, ...]:
    """Lower-cased ``@name`` mentions in ``text`` for a topic post's ``mentions`` field (A.7.1)."""
    out: list[str] = []
    for m in _MENTION.finditer(text):
        name = m.group(1).rstrip(".-").lower()
        if name and name not in out:
            out.append(name)
        if len(out) >= limit:
            break
    return tuple(out)


# -- splitting -----------------------------------------------------------------------------------------------
# CommonMark fences: ``` (info string without backticks) or ~~~ (any info string)
_FENCE = re.compile(r"^[ \t]{0,3}(?:(`{3,})([^`]*)|(~{3,})(.*))$")


def _fence(line: str) -> tuple[str, str] | None:
    """(marker, info) if ``line`` is a fence line."""
    m = _FENCE.match(line)
    if not m:
        return None
    return (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))


def _fence_state(chunk: str, opener: str | None) -> str | None:
    """Scan ``chunk`` line by line from fence state ``opener`` (the open fence line, or None)."""
    for line in chunk.split("\n"):
        f = _fence(line)
        if f is None:
            continue
        if opener is None:
            opener = line.strip()
        else:
            o = _fence(opener)
            assert o is not None
            marker = o[0]
            if f[0].startswith(marker[0] * len(marker)) and f[1].strip() == "":
                opener = None
    return opener


def _cut(text: str, room: int) -> tuple[str, str]:
    """Split ``text`` (longer than ``room``) at the best boundary within ``room`` characters."""
    floor = max(1, room // 2)  # never make absurdly short parts just to hit a boundary
    for sep in ("\n\n", "\n", " "):
        i = text.rfind(sep, 0, room + len(sep))
        if i >= floor:
            return text[:i].rstrip(), text[i + len(sep):].lstrip("\n")
    return text[:room], text[room:]


def split_text(text: str, limit: int, max_parts: int = 10, *, number: bool = True) -> list[str]:
    """Split ``text`` into parts of at most ``limit`` characters.

    Prefers paragraph, then line, then word boundaries. A part that ends inside a
    fenced code block closes the fence and the next part reopens it (same info
    string), so every part renders on its own. Parts are numbered `` (i/n)`` and
    capped at ``max_parts``; the last kept part then ends with ``… [truncated]``.
    """
    if limit <= 0:
        raise ValueError("limit must be positive")
    if len(text) <= limit:
        return [text]
    max_parts = max(1, max_parts)
    suffix_room = len(f"\n({max_parts}/{max_parts})") if number and max_parts > 1 else 0
    fence_len = max((len(f[0]) for f in map(_fence, text.split("\n")) if f), default=0)
    parts: list[str] = []
    rest = text
    opener: str | None = None
    while rest:
        head = (opener + "\n") if opener else ""
        budget = limit - suffix_room
        last_allowed = len(parts) == max_parts - 1
        if len(head) + len(rest) <= budget and _fence_state(head + rest, None) is None:
            parts.append(head + rest)
            break
        reserve_close = fence_len + 1 if fence_len else 0
        reserve_trunc = (len(TRUNCATED) + 1) if last_allowed else 0
        room = budget - len(head) - reserve_close - reserve_trunc
        if room < 1:  # limit too small for markers: plain hard cuts, no fences/numbers
            return _hard_split(text, limit, max_parts)
        if len(rest) <= room:
            chunk, rest = rest, ""
        else:
            chunk, rest = _cut(rest, room)
        body = head + chunk
        opener_after = _fence_state(body, None)
        if opener_after is not None:
            fence = _fence(opener_after)
            assert fence is not None
            body += "\n" + fence[0]
            if len(opener_after) > max(8, limit // 4):  # a very long info string: reopen bare
                opener_after = fence[0]
        opener = opener_after
        if last_allowed and rest:
            body += "\n" + TRUNCATED
            parts.append(body)
            break
        parts.append(body)
    if number and len(parts) > 1:
        n = len(parts)
        parts = [p + (f"\n({i}/{n})" if p.endswith(("```", "~~~")) else f" ({i}/{n})") for i, p in enumerate(parts, 1)]
    return parts


def _hard_split(text: str, limit: int, max_parts: int) -> list[str]:
    parts = [text[i:i + limit] for i in range(0, len(text), limit)]
    return parts[:max_parts]
