"""Issue 17 item 9: the dashboard and API sent no security headers (CSP, frame-ancestors,
X-Content-Type-Options, Referrer-Policy) and accepted any ``Host``, which exposed the dev sink's
bodies (and, with a token, the API) to DNS rebinding. Through the real app, served as ``run`` serves
it: every response carries the headers, the dashboard's CSP allows only its own script and stylesheet,
and the dashboard, API, static files, dev sink and plugin pages answer only the gateway's own names
(IP addresses, localhost, ``[server] host`` / ``public_url``, ``[server] allowed_hosts``); webhooks
and the probes answer any Host."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jwt
import pytest
from claudemesh_gateway.app import create_app
from claudemesh_gateway.plugin_manager import make_plugin_manager
from claudemesh_gateway.settings import settings_from_dict
from claudemesh_gateway.web.security import HostPolicy, host_name

JWT_SECRET = "defect17-admin-jwt-secret-0123456789abcdef"
STATIC = Path(__file__).resolve().parents[2] / "core" / "web" / "static"


def _app(tmp_path: Path, **server):
    settings = settings_from_dict({
        "server": {"state_dir": str(tmp_path), "shutdown_timeout": 2.0, **server},
        "dev_broker": {"embedded": True},  # mounts /-/dev/sink
        "admin": {"jwt_secret": JWT_SECRET},
        "gateways": {"hooks": {"type": "webhook", "secret": "defect17-webhook-secret-0123456789"}},
        "routes": [{"name": "r", "binds": [{"gateway": "hooks", "chat": "in", "direction": "in"},
                                           {"gateway": "hooks", "chat": "out", "direction": "out"}]}],
    })
    return create_app(settings, make_plugin_manager(entry_points=False, builtins=True))


@pytest.fixture
async def served(tmp_path, raw_http):
    async with raw_http.serve(_app(tmp_path, public_url="https://gw.example.org/base")) as port:
        yield port


@pytest.fixture
async def served_listed(tmp_path, raw_http):
    async with raw_http.serve(_app(tmp_path, public_url="https://gw.example.org/base",
                                   allowed_hosts=["dash.internal", ".corp.example"])) as port:
        yield port


def _auth() -> tuple[str, str]:
    now = int(time.time())
    token = jwt.encode({"sub": "ops", "aud": "claudemesh-gateway", "iat": now, "exp": now + 60}, JWT_SECRET,
                       algorithm="HS256")
    return "Authorization", f"Bearer {token}"


def _assert_common(headers: dict[str, str]) -> None:
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in headers["content-security-policy"]


async def test_defect17_9_dashboard_has_a_strict_csp_and_loads_nothing_inline(served, raw_http):
    status, headers, body = await raw_http.request(served, "GET", "/-/")
    assert status == 200
    _assert_common(headers)
    csp = headers["content-security-policy"]
    for directive in ("default-src 'none'", "script-src 'self'", "style-src 'self'", "connect-src 'self'",
                      "form-action 'none'", "base-uri 'none'"):
        assert directive in csp
    assert "unsafe" not in csp
    html = body.decode()
    assert "<style" not in html and " style=" not in html and "<script>" not in html
    assert 'src="/-/static/dashboard.js"' in html and 'href="/-/static/dashboard.css"' in html
    for asset in ("dashboard.js", "dashboard.css"):
        status, headers, _ = await raw_http.request(served, "GET", f"/-/static/{asset}")
        assert status == 200 and headers["x-content-type-options"] == "nosniff", asset


@pytest.mark.parametrize(("method", "path", "auth", "status"), [
    ("GET", "/-/api/overview", True, 200), ("GET", "/-/api/overview", False, 401), ("GET", "/-/nope", False, 404),
    ("GET", "/-/dev/sink", False, 200), ("GET", "/-/health", False, 200), ("GET", "/-/metrics", False, 200),
    ("POST", "/gateways/hooks/in", False, 401),
])
async def test_defect17_9_every_response_carries_the_headers(served, raw_http, method, path, auth, status):
    got, headers, _ = await raw_http.request(served, method, path, [_auth()] if auth else [])
    assert got == status
    _assert_common(headers)
    assert headers["content-security-policy"].startswith("default-src 'none'")
    if path.startswith("/-/api/"):
        assert headers["cache-control"] == "no-store"


@pytest.mark.parametrize("path", ["/-/", "/-/api/overview", "/-/dev/sink", "/-/static/dashboard.js",
                                  "/-/plugins.json"])
@pytest.mark.parametrize("host", ["evil.example", "evil.example:8080", "gw.example.org.evil.example",
                                  "localhost.evil.example", "corp.example.evil", "bad host"])
async def test_defect17_9_foreign_host_names_are_refused(served, raw_http, path, host):
    status, headers, body = await raw_http.request(served, "GET", path, [("Host", host), _auth()])
    assert status == 403, (host, path, body)
    assert "allowed_hosts" in json.loads(body)["error"]
    _assert_common(headers)


async def test_defect17_9_dev_sink_bodies_do_not_leak_to_a_rebinding_page(served, raw_http):
    status, _, _ = await raw_http.request(served, "POST", "/-/dev/sink", [("Host", "127.0.0.1")], b'{"secret": 1}')
    assert status == 200
    status, _, body = await raw_http.request(served, "GET", "/-/dev/sink", [("Host", "rebind.evil.example:8080")])
    assert status == 403 and b"secret" not in body
    status, _, _ = await raw_http.request(served, "POST", "/-/dev/sink", [("Host", "rebind.evil.example")], b"{}")
    assert status == 403
    _, _, body = await raw_http.request(served, "GET", "/-/dev/sink")
    assert len(json.loads(body)) == 1


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.1:8080", "[::1]:8080", "10.1.2.3", "localhost",
                                  "localhost:8080", "LOCALHOST.", "app.localhost:8080", "gw.example.org",
                                  "gw.example.org:443", "dash.internal", "corp.example", "a.b.corp.example:9"])
async def test_defect17_9_the_gateways_own_names_are_answered(served_listed, raw_http, host):
    status, _, body = await raw_http.request(served_listed, "GET", "/-/api/overview", [("Host", host), _auth()])
    assert status == 200, (host, body)
    status, _, _ = await raw_http.request(served_listed, "GET", "/-/", [("Host", "corp.example.evil")])
    assert status == 403


@pytest.mark.parametrize("path", ["/-/health", "/-/ready", "/-/metrics"])
async def test_defect17_9_probes_and_webhooks_answer_any_host(served, raw_http, path):
    status, _, _ = await raw_http.request(served, "GET", path, [("Host", "k8s-probe.svc.cluster.local")])
    assert status in (200, 503)
    status, _, _ = await raw_http.request(served, "POST", "/gateways/hooks/in", [("Host", "hooks.vendor.example")],
                                          b"{}")
    assert status == 401  # unsigned: refused by the gateway, not by the Host check


async def test_defect17_9_server_host_and_a_wildcard(tmp_path, raw_http):
    async with raw_http.serve(_app(tmp_path, host="gw-box.lan")) as port:
        status, _, _ = await raw_http.request(port, "GET", "/-/", [("Host", "gw-box.lan:8080")])
        assert status == 200
        status, _, _ = await raw_http.request(port, "GET", "/-/", [("Host", "other.lan")])
        assert status == 403
    async with raw_http.serve(_app(tmp_path / "b", allowed_hosts=["*"])) as port:
        status, _, _ = await raw_http.request(port, "GET", "/-/", [("Host", "anything.example")])
        assert status == 200


def test_defect17_9_host_header_parsing():
    assert host_name("Example.ORG.:8080") == "example.org"
    assert host_name("[::1]:80") == "::1" and host_name("[::1]") == "::1"
    for bad in ("", "a:b:c", "[::1", "[::1]x", "a b", "a/b", "user@host", "h\u00e9", "x:port"):
        assert host_name(bad) is None, bad
    policy = HostPolicy(["dash.internal"])
    assert policy.allows(None) and not policy.allows("[::1")

