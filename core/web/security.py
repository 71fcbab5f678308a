"""The browser-facing hardening of the HTTP surface: security headers and a ``Host`` check.

**Headers** on every response (a handler's own values win): ``X-Content-Type-Options: nosniff``,
``Referrer-Policy: no-referrer``, ``X-Frame-Options: DENY`` and a Content-Security-Policy with
``frame-ancestors 'none'``: the dashboard (``/-/``) may load only its own script and stylesheet and
talk only to its own origin, every other response may load nothing. Under ``/-/`` also
``Cross-Origin-Resource-Policy: same-origin`` (no other site can embed the JSON), and ``Cache-Control:
no-store`` for the admin API.

**Host check.** A page on ``evil.example`` whose DNS name is re-pointed at 127.0.0.1 (DNS rebinding)
is same-origin with whatever it then reaches, so the dashboard, the admin API, the dev sink (which
shows the bodies it received) and plugin pages under ``/-/`` answer only requests whose ``Host`` is
a name of this gateway: an IP address (rebinding needs a name the attacker controls), ``localhost``
and ``*.localhost``, ``[server] host``, the host of ``[server] public_url``, and ``[server]
allowed_hosts`` (``"name"``, ``".example.org"`` for the domain and its subdomains, ``"*"`` for any).
Others get 403. Webhooks (``/gateways/``) and the probes (``/-/health``, ``/-/ready``,
``/-/metrics``) accept any ``Host``: vendors, proxies and scrapers send names of their own.

**Credentials only in the Authorization header.** A request to the dashboard or the admin API with a
credential in its query string (``?token=``, ``?access_token=``, ``?jwt=``...) is refused (400) even
when its header is valid: URLs end up in access logs, proxies and browser history. The access log
masks such values too. Cookies are never read, so there is nothing for a cross-site request to ride.

**Size.** A body announced larger than :data:`MAX_OPS_BODY` on the core's ``/-/`` endpoints is refused
(413) before a byte of it is read; the handlers cap what they read as well, chunked bodies included
(``claudemesh_gateway.webhooks``), and so does every gateway's webhook.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web

__all__ = ["CREDENTIAL_PARAMS", "CSP_DASHBOARD", "CSP_DEFAULT", "MAX_OPS_BODY", "HostPolicy", "host_name",
           "setup_security"]

log = logging.getLogger(__name__)

CSP_DASHBOARD = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
                 "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
CSP_DEFAULT = "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
DASHBOARD_PATH = "/-/"
OPS_PREFIX = "/-/"
PLUGIN_PREFIX = "/-/plugins/"  # plugins' own routes set their own body limits
UNCHECKED = frozenset({"/-/health", "/-/ready", "/-/metrics"})  # probes and scrapers
_WILDCARD_LISTEN = frozenset({"", "0.0.0.0", "::", "*"})
_LOGGED_MAX = 64
MAX_OPS_BODY = 1024 * 1024  # the largest body any /-/ endpoint reads (the dev sink's cap)
#: query parameters that carry credentials; refused on the dashboard and the admin API, masked in logs
CREDENTIAL_PARAMS = frozenset({"token", "access_token", "id_token", "jwt", "bearer", "auth", "authorization"})
_NAMES = "|".join(sorted(CREDENTIAL_PARAMS))
_CREDENTIAL_IN_URL = re.compile(rf"([?&;](?:{_NAMES})=)[^&;\s\"']*", re.IGNORECASE)


def host_name(value: str) -> str | None:
    """The host part of a ``Host`` header (lower case, no port, no trailing dot); None if malformed."""
    value = value.strip()
    if not value or not value.isascii() or not value.isprintable() or len(value) > 300:
        return None
    if value.startswith("["):
        end = value.find("]")
        rest = value[end + 1:] if end > 0 else "?"
        if end < 0 or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
        return value[1:end].lower()
    name, sep, port = value.rpartition(":")
    if sep:
        if not port.isdigit() or ":" in name:
            return None
        value = name
    if not value or any(c in value for c in "/\\@?# "):
        return None
    return value.rstrip(".").lower()


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return False
    return True


class HostPolicy:
    """Which ``Host`` names the browser-facing endpoints answer (see the module docstring)."""

    def __init__(self, names: Iterable[str] = ()) -> None:
        self.any = False
        self.names: set[str] = {"localhost"}
        self.domains: set[str] = set()
        for raw in names:
            entry = raw.strip().rstrip(".").lower()
            if entry == "*":
                self.any = True
            elif entry.startswith("."):
                self.domains.add(entry.lstrip("."))
            elif entry:
                self.names.add(entry)

    @classmethod
    def from_settings(cls, settings: Any) -> HostPolicy:
        server = getattr(settings, "server", None)
        names: list[str] = list(getattr(server, "allowed_hosts", None) or [])
        listen = str(getattr(server, "host", "") or "")
        if listen not in _WILDCARD_LISTEN:
            names.append(listen)
        public = getattr(server, "public_url", None)
        if public:
            parsed = urllib.parse.urlsplit(public).hostname
            if parsed:
                names.append(parsed)
        return cls(names)

    def allows(self, header: str | None) -> bool:
        if self.any or header is None:  # no Host at all: not a browser (HTTP/1.0 tools)
            return True
        name = host_name(header)
        if name is None:
            return False
        if name in self.names or name.endswith(".localhost") or _is_ip(name):
            return True
        return any(name == d or name.endswith("." + d) for d in self.domains)


def _checked(path: str) -> bool:
    return path.startswith(OPS_PREFIX) and path not in UNCHECKED


def _credential_in_query(request: web.Request) -> bool:
    path = request.path
    if path != DASHBOARD_PATH and not path.startswith("/-/api/"):
        return False
    return any(key.lower() in CREDENTIAL_PARAMS for key in request.query)


class _MaskCredentialsInURLs(logging.Filter):
    """On ``aiohttp.access``: ``?token=<value>`` -> ``?token=***`` in the request line."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record is not ours to fix
            return True
        masked = _CREDENTIAL_IN_URL.sub(r"\1***", text)
        if masked != text:
            record.msg, record.args = masked, None
        return True


_ACCESS_FILTER = _MaskCredentialsInURLs()


def host_middleware(policy: HostPolicy) -> Callable[..., Awaitable[web.StreamResponse]]:
    logged: set[str] = set()

    @web.middleware
    async def check_host(request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        if request.path.startswith(OPS_PREFIX) and not request.path.startswith(PLUGIN_PREFIX):
            if request.content_length is not None and request.content_length > MAX_OPS_BODY:
                return web.json_response({"error": f"body is larger than {MAX_OPS_BODY} bytes"}, status=413)
            if _credential_in_query(request):
                return web.json_response({"error": "credentials go in the Authorization header, never in the URL"},
                                         status=400)
        if _checked(request.path):
            header = request.headers.get("Host")
            if not policy.allows(header):
                shown = (header or "")[:100]
                if shown not in logged and len(logged) < _LOGGED_MAX:
                    logged.add(shown)
                    log.warning("refused %s %s for Host %r: not a name of this gateway (add it to [server] "
                                "allowed_hosts if it is; repeats are not logged)", request.method, request.path,
                                shown)
                return web.json_response({"error": "this Host is not a name of this gateway ([server] allowed_hosts)"},
                                         status=403)
        return await handler(request)

    return check_host


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    headers = response.headers
    path = request.path
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "no-referrer")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Content-Security-Policy", CSP_DASHBOARD if path == DASHBOARD_PATH else CSP_DEFAULT)
    if path.startswith(OPS_PREFIX):
        headers.setdefault("Cross-Origin-Resource-Policy", "same-origin")
        if path.startswith("/-/api/"):
            headers.setdefault("Cache-Control", "no-store")


def setup_security(app: web.Application, settings: Any) -> HostPolicy:
    """Install the header hook and, outermost, the Host check on ``app`` (before it freezes)."""
    policy = HostPolicy.from_settings(settings)
    app.middlewares.insert(0, host_middleware(policy))
    app.on_response_prepare.append(_security_headers)
    access = logging.getLogger("aiohttp.access")
    if _ACCESS_FILTER not in access.filters:
        access.addFilter(_ACCESS_FILTER)
    return policy
