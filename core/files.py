"""Small helpers for gateways that download files for the core (``Gateway.fetch_attachment``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import DeliveryError

if TYPE_CHECKING:
    import aiohttp

__all__ = ["read_capped"]

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
