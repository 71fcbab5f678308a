"""Helpers for HTTP endpoints that read untrusted requests: webhooks, the admin API, the dev sink.

Public for plugin authors (``from claudemesh_gateway.webhooks import ...``); every in-tree gateway
uses them. Hostile input gets a clean 4xx and at most one log line, never a 500 with a traceback:

- :func:`header_value` returns a header only if it is printable ASCII and of bounded length; a
  signature, secret token or timestamp with any other byte cannot be valid, and passing such a value
  on would make ``str.encode`` / ``hmac.compare_digest`` raise (aiohttp hands undecodable bytes over
  as lone surrogates).
- :func:`parse_unix_timestamp` accepts at most 12 ASCII digits, so a 400-digit timestamp never
  reaches float arithmetic (``OverflowError``).
- :func:`read_body` reads a request body up to a size cap (413 above it, before the whole body is
  read) and turns a client that disconnects mid-body into one INFO line and a 400.
- :func:`parse_json` / :func:`parse_json_object` refuse invalid JSON, non-UTF-8 and JSON nested
  deeper than :data:`MAX_JSON_DEPTH` levels (Python's parser would raise ``RecursionError``; code
  further on may recurse too) with a 400 naming the reason; :func:`read_json_object` does both steps.

The body helpers raise aiohttp HTTP exceptions (``web.HTTPBadRequest``, ``web.HTTPRequestEntityTooLarge``)
with a JSON ``{"error": reason}`` body: return them from a handler or let them propagate.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import aiohttp
from aiohttp import web

__all__ = [
    "MAX_HEADER_LENGTH",
    "MAX_JSON_DEPTH",
    "JsonTooDeep",
    "MalformedHeader",
    "bad_request",
    "header_value",
    "json_depth_exceeds",
    "parse_json",
    "parse_json_object",
    "parse_unix_timestamp",
    "read_body",
    "read_json_object",
    "too_large",
]

log = logging.getLogger(__name__)

MAX_HEADER_LENGTH = 1024  # signatures, tokens and timestamps are far shorter
MAX_JSON_DEPTH = 64  # vendor payloads nest about 10 levels deep
MAX_TIMESTAMP_DIGITS = 12  # Unix seconds up to the year 33658
_CHUNK = 64 * 1024


class MalformedHeader(ValueError):
    """A header is present but cannot be a valid credential (not printable ASCII, or too long).

    The message names the header, never its value."""


def header_value(headers: Mapping[str, str], name: str, *, max_length: int = MAX_HEADER_LENGTH) -> str | None:
    """``headers[name]`` stripped, or None when absent. Raises :class:`MalformedHeader` when the
    value holds anything but printable ASCII (or is longer than ``max_length``)."""
    value = headers.get(name)
    if value is None:
        return None
    if len(value) > max_length:
        raise MalformedHeader(f"{name} header is longer than {max_length} characters")
    if not (value.isascii() and value.isprintable()):
        raise MalformedHeader(f"{name} header holds characters other than printable ASCII")
    return value.strip()


def parse_unix_timestamp(value: str) -> int:
    """Unix seconds from a header value: ASCII digits only, at most 12 of them. Raises ValueError."""
    text = value.strip()
    if not text or len(text) > MAX_TIMESTAMP_DIGITS or not (text.isascii() and text.isdigit()):
        raise ValueError("timestamp is not an integer of Unix seconds")
    return int(text)


class JsonTooDeep(web.HTTPBadRequest):
    """400: the body is JSON nested deeper than the limit (raised by :func:`parse_json`)."""


def bad_request(reason: str, cls: type[web.HTTPBadRequest] = web.HTTPBadRequest) -> web.HTTPBadRequest:
    """A 400 with the JSON body ``{"error": reason}``."""
    return cls(text=json.dumps({"error": reason}), content_type="application/json")


def too_large(max_bytes: int) -> web.HTTPRequestEntityTooLarge:
    """A 413 with the JSON body ``{"error": "body is larger than <max_bytes> bytes"}``."""
    return web.HTTPRequestEntityTooLarge(max_size=max_bytes, actual_size=max_bytes + 1, content_type="application/json",
                                         text=json.dumps({"error": f"body is larger than {max_bytes} bytes"}))


async def read_body(request: web.Request, *, max_bytes: int) -> bytes:
    """The whole request body (chunked or not), at most ``max_bytes``.

    A larger ``Content-Length`` is refused before anything is read and a body without one is cut
    off as soon as it goes past the cap: both raise 413. A client that disconnects before the body
    is complete is logged as one INFO line and raises 400 (nobody is left to read it)."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise too_large(max_bytes)
    chunks: list[bytes] = []
    size = 0
    try:
        while True:
            chunk = await request.content.readany()
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > max_bytes:
                raise too_large(max_bytes)
            chunks.append(chunk)
    except (ConnectionError, aiohttp.ClientPayloadError) as exc:
        log.info("%s %s: client went away before the body was complete (%s)", request.method, request.path,
                 type(exc).__name__)
        raise bad_request("request body incomplete") from None


def json_depth_exceeds(value: Any, max_depth: int) -> bool:
    """True if ``value`` (parsed JSON) nests lists/objects deeper than ``max_depth`` levels."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > max_depth:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def parse_json(body: bytes | str, *, max_depth: int = MAX_JSON_DEPTH, what: str = "body") -> Any:
    """``json.loads(body)``, or 400 with the reason: not UTF-8, not JSON, or nested deeper than
    ``max_depth`` levels."""
    try:
        value = json.loads(body)
    except UnicodeDecodeError:
        raise bad_request(f"{what} is not UTF-8 text") from None
    except RecursionError:
        raise bad_request(f"{what} is JSON nested deeper than {max_depth} levels", JsonTooDeep) from None
    except ValueError:
        raise bad_request(f"{what} is not valid JSON") from None
    raw = body.encode() if isinstance(body, str) else body
    if raw.count(b"[") + raw.count(b"{") > max_depth and json_depth_exceeds(value, max_depth):
        raise bad_request(f"{what} is JSON nested deeper than {max_depth} levels", JsonTooDeep)
    return value


def parse_json_object(body: bytes | str, *, max_depth: int = MAX_JSON_DEPTH, what: str = "body") -> dict[str, Any]:
    """:func:`parse_json`, and 400 unless the value is a JSON object."""
    value = parse_json(body, max_depth=max_depth, what=what)
    if not isinstance(value, dict):
        raise bad_request(f"{what} must be a JSON object")
    return value


async def read_json_object(request: web.Request, *, max_bytes: int, max_depth: int = MAX_JSON_DEPTH) -> dict[str, Any]:
    """:func:`read_body` then :func:`parse_json_object`."""
    return parse_json_object(await read_body(request, max_bytes=max_bytes), max_depth=max_depth)
