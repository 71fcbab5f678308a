"""Small helpers: ids, clocks, ISO times, JSON frames, shape checks."""

from __future__ import annotations

import json
import math
import re
import secrets
import string
import time
from datetime import UTC, datetime
from typing import Any

BASE62 = string.digits + string.ascii_letters
HEX64_LOWER = re.compile(r"^[0-9a-f]{64}$")
HEX64_ANY = re.compile(r"^[0-9a-fA-F]{64}$")
HEX128_ANY = re.compile(r"^[0-9a-fA-F]{128}$")


def new_id(length: int = 32) -> str:
    """A random base62 id, the shape of the broker's generated ids."""
    return "".join(secrets.choice(BASE62) for _ in range(length))


def now_ms() -> int:
    return int(time.time() * 1000)


_last_row_time = 0.0


def row_time(unique_ms: bool = True) -> float:
    """A row ``created_at`` in ms, strictly increasing within this process.

    ``unique_ms`` (the default) gives every row its own millisecond, so the ISO ``createdAt`` clients
    see orders rows exactly: on loopback two sends can land in the same millisecond, which over a
    real network they rarely do. Without it the value keeps microsecond precision, like the real
    broker's ``timestamptz``, and rows in the same millisecond differ only below what ISO shows.
    """
    global _last_row_time
    if unique_ms:
        value = float(max(time.time_ns() // 1_000_000, int(_last_row_time) + 1))
    else:
        value = round(time.time_ns() / 1_000_000, 3)
        if value <= _last_row_time:
            value = round(_last_row_time + 0.001, 3)
    _last_row_time = value
    return value


def iso(ms: float | None) -> str | None:
    """JavaScript ``Date.toISOString()`` of a millisecond timestamp."""
    if ms is None:
        return None
    ms = int(ms)
    dt = datetime.fromtimestamp(ms // 1000, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def is_number(value: Any) -> bool:
    """A finite JSON number (``bool`` is not a number)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def js_str(value: Any) -> str:
    """Render a value as a JavaScript template literal would (``${value}``)."""
    if value is None:
        return "undefined"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def js_len(value: Any) -> int:
    """``value?.length ?? 0`` for strings (UTF-16 code units)."""
    if isinstance(value, str):
        return len(value.encode("utf-16-le")) // 2
    return 0


def dumps(frame: dict[str, Any]) -> str:
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":"))
