"""Small file helpers: capped downloads for gateways (``Gateway.fetch_attachment``) and private
directories and files for state (the store, the session identity, key files: 0600 in 0700)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import DeliveryError

if TYPE_CHECKING:
    import aiohttp

__all__ = ["make_private_dir", "read_capped"]

CHUNK = 64 * 1024


async def read_capped(resp: aiohttp.ClientResponse, max_bytes: int, what: str) -> bytes:
    """The body of ``resp``, at most ``max_bytes``: a larger ``Content-Length`` is refused before
    anything is read, and a body without one is cut off as soon as it goes past the cap. Both raise
    a permanent :class:`DeliveryError` naming ``what`` (never a URL)."""
    too_large = f"{what} is larger than {max_bytes} bytes"
    if resp.content_length is not None and resp.content_length > max_bytes:
        raise DeliveryError(too_large, permanent=True)
    chunks: list[bytes] = []
    total = 0
    async for chunk in resp.content.iter_chunked(CHUNK):
        total += len(chunk)
        if total > max_bytes:
            raise DeliveryError(too_large, permanent=True)
        chunks.append(chunk)
    return b"".join(chunks)


def make_private_dir(path: str | os.PathLike[str]) -> Path:
    """Create directory ``path`` and every missing parent with mode 0700 (owner only, whatever the
    umask). Directories that already exist are left as they are. Returns ``path``."""
    path = Path(path).expanduser()
    missing: list[Path] = []
    probe = path
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:  # created meanwhile by someone else: theirs to keep
            continue
        os.chmod(directory, 0o700)
    path.mkdir(mode=0o700, exist_ok=True)  # raises if path is a file
    return path
