"""Small text helpers for WhatsApp: consent keywords, template variables, log masking.

WhatsApp's light formatting (``*bold*``, ``_italic_``, ``~strike~``, code spans) is
rendered by the app itself, so the gateway sends text as the core gives it: it is
already attributed and split to ``capabilities.max_text`` (1,600) by the core.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from typing import Any

__all__ = [
    "OPT_IN_KEYWORDS",
    "OPT_OUT_KEYWORDS",
    "check_template_variable",
    "consent_keyword",
    "failure_reason",
    "mask_number",
    "normalise_number",
    "render_template_variables",
    "template_value",
]

#: Whole-message keywords (case-insensitive) that opt a number out / back in.
OPT_OUT_KEYWORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"})
OPT_IN_KEYWORDS = frozenset({"START", "YES", "UNSTOP"})

_E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
_SPACES = re.compile(r"[ \t\r\n\f\v]+")

#: Meta/Twilio limit for one template variable value.
TEMPLATE_VALUE_MAX = 1024

_REASONS = {
    "63016": "outside the WhatsApp 24-hour window (a template is required)",
    "21610": "recipient opted out (STOP)",
    "63018": "WhatsApp messaging limit reached",
    "63024": "invalid message recipient",
    "63003": "recipient is not reachable on WhatsApp",
    "63032": "recipient cannot receive this message",
    "30008": "unknown delivery error",
}


def consent_keyword(body: str) -> str | None:
    """``"out"`` / ``"in"`` when the whole message is a consent keyword, else None."""
    word = body.strip().upper()
    if word in OPT_OUT_KEYWORDS:
        return "out"
    if word in OPT_IN_KEYWORDS:
        return "in"
    return None


def normalise_number(value: str) -> str:
    """``+15551234567`` / ``whatsapp:+15551234567`` -> ``whatsapp:+15551234567``.

    Raises ValueError for anything that is not an E.164 number.
    """
    v = value.strip()
    if v.lower().startswith("whatsapp:"):
        v = v[len("whatsapp:"):]
    if not _E164.match(v):
        raise ValueError(f"not a WhatsApp E.164 address: {value!r} (expected whatsapp:+<digits>)")
    return "whatsapp:" + v


def mask_number(address: str) -> str:
    """Phone numbers are personal data: logs get ``whatsapp:+49…4567``."""
    prefix, _, number = address.rpartition(":")
    if len(number) <= 7:
        return address
    return f"{prefix + ':' if prefix else ''}{number[:3]}…{number[-4:]}"


def template_value(text: str) -> str:
    """A WhatsApp template variable may not hold newlines, tabs or runs of spaces: flatten it."""
    flat = _SPACES.sub(" ", text).strip()
    if len(flat) > TEMPLATE_VALUE_MAX:
        flat = flat[: TEMPLATE_VALUE_MAX - 1] + "…"
    return flat or "-"


_WIDTH = re.compile(r"(?<![.\d])(\d+)|\.(\d+)")


def check_template_variable(template: str) -> str:
    """A ``template_variables`` value, checked once at config load: it must parse as a format
    string, with no nested fields in a format spec and no width or precision beyond
    TEMPLATE_VALUE_MAX (``{text:>300000000}`` would build hundreds of megabytes per message only to
    be cut to TEMPLATE_VALUE_MAX). ValueError names the problem."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"{template!r} is not a valid template: {exc}") from None
    for _, name, spec, _ in parsed:
        if name is None or not spec:
            continue
        if "{" in spec or "}" in spec:
            raise ValueError(f"{{{name}}}: a format spec may not contain nested fields")
        for m in _WIDTH.finditer(spec):
            digits = m.group(1) or m.group(2)
            if len(digits) > 6 or int(digits) > TEMPLATE_VALUE_MAX:
                raise ValueError(f"{{{name}}}: width or precision larger than {TEMPLATE_VALUE_MAX}")
    return template


class _Keep(dict):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def render_template_variables(variables: Mapping[str, str], values: Mapping[str, Any]) -> dict[str, str]:
    """``{"1": "{sender}", "2": "{text}"}`` -> ``{"1": "alice", "2": "hello"}``.

    Only the *configured* templates are parsed as format strings; the values
    (mesh text) are inserted verbatim, so braces in a message are never interpreted.
    Unknown placeholders stay as written.
    """
    safe = _Keep({k: str(v) for k, v in values.items()})
    out: dict[str, str] = {}
    for key, tmpl in variables.items():
        try:
            rendered = tmpl.format_map(safe)
        except (ValueError, IndexError, AttributeError):
            rendered = tmpl
        out[str(key)] = template_value(rendered)
    return out


def failure_reason(code: str, message: str = "") -> str:
    """A short human reason for a Twilio error code (for notices and dead letters)."""
    reason = _REASONS.get(code) or message.strip()
    return f"{code} ({reason})" if reason and code else (code or reason or "unknown error")
