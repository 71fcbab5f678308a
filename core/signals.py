"""Unix signal handlers on the running loop, where the platform has them (not on Windows, not
outside the main thread): installing one answers whether it took."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable

__all__ = ["add_signal_handler", "remove_signal_handler"]


def _signal(name: str) -> signal.Signals | None:
    return None if sys.platform == "win32" else getattr(signal, name, None)


def add_signal_handler(loop: asyncio.AbstractEventLoop, name: str, callback: Callable[[], object]) -> bool:
    """``loop.add_signal_handler`` for the signal called ``name`` (``"SIGHUP"``); False when unavailable."""
    sig = _signal(name)
    if sig is None:
        return False
    try:
        loop.add_signal_handler(sig, callback)
    except RuntimeError:  # not the main thread (an app embedded in a worker thread)
        return False
    return True


def remove_signal_handler(loop: asyncio.AbstractEventLoop, name: str) -> None:
    sig = _signal(name)
    if sig is not None:
        loop.remove_signal_handler(sig)
