"""Compact JSON for the stores' columns: both backends encode rows the same way."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

__all__ = ["dumps", "loads"]

loads = json.loads


def _make_dumps() -> Callable[[Any], str]:
    """Compact UTF-8 JSON. Reuses one C encoder object (json.dumps builds one per call)."""
    from json import encoder as _enc

    fallback = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    make = getattr(_enc, "c_make_encoder", None)
    if make is None:
        return fallback

    def default(o: Any) -> Any:
        raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")

    markers: dict[int, Any] = {}  # circular-reference detection, emptied again after every call
    c = make(markers, default, _enc.encode_basestring, None, ":", ",", False, False, True)

    def dumps(o: Any) -> str:
        if isinstance(o, str):
            return fallback(o)
        try:
            return "".join(c(o, 0))
        except BaseException:
            markers.clear()  # a failed encode can leave ids behind
            raise

    return dumps


dumps = _make_dumps()
