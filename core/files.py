"""Small file helpers: downloads for gateways (``Gateway.fetch_attachment``) and private directories
and files for state (the store, the session identity, key files: 0600 in 0700).

- :func:`read_capped`: a response body, cut at a byte cap.
- :func:`make_private_dir`: a directory (and its missing parents) created 0700.
- :func:`safe_get` with a :class:`FetchPolicy`: the one way a gateway downloads a file whose URL came
  from a vendor payload or API answer (Slack ``url_private``, Twilio ``MediaUrl<n>``, a Telegram file
  path), so the rules against SSRF and credential leaks hold for every plugin alike:

  1. only the vendor's own hosts (``FetchPolicy.hosts``) or the origin of the configured API base
     (``FetchPolicy.base``) are requested; every redirect hop is checked again before it is followed,
     and a redirect elsewhere is refused (``redirect_hosts`` names any further hosts, such as a media CDN);
  2. HTTPS only — plain ``http`` only to a loopback address while loopback is allowed (below);
  3. no private, link-local, reserved or multicast address, whether written as an IP or resolved from
     a name; loopback only when the environment sets ``CLAUDEMESH_FETCH_ALLOW_LOOPBACK=1`` (the test
     suite's fake vendors listen on 127.0.0.1; a production gateway never needs it);
  4. credentials (``headers``) go only to ``hosts`` / the base origin, and never past a redirect when
     ``redirect_credentials`` is False; an error never carries the URL (it may hold a token).

  The address check resolves the name before the request; the HTTP client resolves it again when it
  connects, so a name that changes its answer between the two (DNS rebinding) is not caught.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import os
import socket
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from yarl import URL

from .errors import DeliveryError

if TYPE_CHECKING:
    import aiohttp

__all__ = [
    "LOOPBACK_ENV",
    "FetchPolicy",
    "loopback_allowed",
    "make_private_dir",
    "read_capped",
    "resolve_addresses",
    "safe_get",
]

CHUNK = 64 * 1024
#: set to ``1`` to let downloads reach loopback addresses (tests and their fake vendors only)
LOOPBACK_ENV = "CLAUDEMESH_FETCH_ALLOW_LOOPBACK"
REDIRECTS = frozenset({301, 302, 303, 307, 308})


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


def loopback_allowed() -> bool:
    """True when ``CLAUDEMESH_FETCH_ALLOW_LOOPBACK`` is set to 1/true/yes (read on every call)."""
    return os.environ.get(LOOPBACK_ENV, "").strip().lower() in ("1", "true", "yes")


async def resolve_addresses(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to (the seam tests replace to play a hostile DNS answer)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def _host_matches(host: str, patterns: tuple[str, ...]) -> bool:
    for pattern in patterns:
        pattern = pattern.lower()
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                return True
        elif host == pattern:
            return True
    return False


def _origin(url: URL) -> tuple[str, str, int | None]:
    return (url.scheme.lower(), (url.host or "").lower(), url.port)


@dataclasses.dataclass(frozen=True, slots=True)
class FetchPolicy:
    """Where a gateway may download files from (see the module docstring for the rules).

    ``hosts``: the vendor's host names, ``"*.example.com"`` for any subdomain. ``base``: the configured
    API base URL (a self-hosted or fake API): its origin (scheme, host, port) is allowed as well.
    ``redirect_hosts``: hosts a redirect may lead to besides those (a media CDN); credentials are never
    sent there. ``redirect_credentials``: whether credentials follow a redirect to ``hosts``/``base``.
    """

    hosts: tuple[str, ...] = ()
    base: str | None = None
    redirect_hosts: tuple[str, ...] = ()
    redirect_credentials: bool = True
    max_redirects: int = 3

    def _on_base(self, url: URL) -> bool:
        if not self.base:
            return False
        try:
            base = URL(self.base)
        except ValueError:
            return False
        return bool(base.host) and _origin(url) == _origin(base)

    def trusted(self, url: URL) -> bool:
        """``url`` is on the vendor's hosts or the base origin (credentials may go there)."""
        host = (url.host or "").lower()
        return (url.scheme == "https" and url.port == 443 and _host_matches(host, self.hosts)) or self._on_base(url)

    def refusal(self, url: URL, *, redirect: bool) -> str:
        """Why ``url`` may not be requested ("" when it may), before its address is looked at."""
        if url.scheme not in ("https", "http") or not url.host:
            return "a URL that is not http(s)"
        if url.user is not None or url.password is not None:
            return "a URL with credentials in it"
        if self._on_base(url):
            return ""
        host = url.host.lower()
        listed = _host_matches(host, self.hosts) or (redirect and _host_matches(host, self.redirect_hosts))
        if not listed or url.port not in (443, 80):  # a vendor host on its standard port only
            return f"host {host}, which is not the vendor's"
        if url.scheme != "https":
            return "plain http (files are fetched over https only)"
        return ""


async def _address_refusal(url: URL) -> str:
    host = (url.host or "").strip("[]")
    try:
        addresses = [host] if _is_ip(host) else await resolve_addresses(host, url.port or 443)
    except OSError:
        return ""  # the request itself fails with a clean, transient error
    loopback = False
    for text in addresses:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip.is_loopback:
            loopback = True
            if not loopback_allowed():
                return f"a loopback address (set {LOOPBACK_ENV}=1 only for tests)"
        elif not ip.is_global:
            return "a private or reserved address"
    if url.scheme == "http" and not loopback:
        return "plain http (files are fetched over https only)"
    return ""


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


@contextlib.asynccontextmanager
async def safe_get(
    http: aiohttp.ClientSession,
    url: str | URL,
    *,
    policy: FetchPolicy,
    what: str,
    headers: Mapping[str, str] | None = None,
    timeout: aiohttp.ClientTimeout | None = None,
) -> AsyncIterator[aiohttp.ClientResponse]:
    """GET ``url`` under ``policy`` and yield the final (non-redirect) response.

    Redirects are followed here, never by the client, each hop checked before it is requested.
    A refused URL, a redirect without a usable ``Location`` or too many redirects raise a permanent
    :class:`DeliveryError` naming ``what`` and the reason (a host name at most, never the URL)."""
    try:
        target = url if isinstance(url, URL) else URL(url, encoded=True)
    except ValueError:
        raise DeliveryError(f"{what}: refused to fetch a malformed URL", permanent=True) from None
    send = dict(headers or {})
    for hop in range(policy.max_redirects + 1):
        reason = policy.refusal(target, redirect=hop > 0) or await _address_refusal(target)
        if reason:
            raise DeliveryError(f"{what}: refused to fetch from {reason}", permanent=True)
        hop_headers = send if policy.trusted(target) and (hop == 0 or policy.redirect_credentials) else {}
        kwargs = {"timeout": timeout} if timeout is not None else {}
        async with http.get(target, headers=hop_headers, allow_redirects=False, **kwargs) as resp:
            if resp.status not in REDIRECTS:
                yield resp
                return
            location = resp.headers.get("Location", "")
        try:
            target = target.join(URL(location, encoded=True)) if location else None
        except ValueError:
            target = None
        if target is None or not target.host:
            raise DeliveryError(f"{what}: redirect without a usable location", permanent=True)
    raise DeliveryError(f"{what}: too many redirects", permanent=True)
