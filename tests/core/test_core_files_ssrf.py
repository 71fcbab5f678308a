"""claudemesh_gateway.files.safe_get / FetchPolicy: the SSRF and credential rules every gateway's file
downloads go through (issue 16). Loopback servers only; DNS answers are played by replacing
``files.resolve_addresses`` (no lookup ever leaves the machine)."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web
from claudemesh_gateway import files
from claudemesh_gateway.errors import DeliveryError
from claudemesh_gateway.files import LOOPBACK_ENV, FetchPolicy, safe_get
from yarl import URL


@pytest.fixture
async def http_session():
    async with aiohttp.ClientSession() as session:
        yield session


VENDOR = FetchPolicy(hosts=("vendor.example", "*.vendor.example"), base="https://api.vendor.example/v1/")


@pytest.mark.parametrize(("url", "reason"), [
    ("https://vendor.example/f", ""),
    ("https://files.vendor.example/f", ""),
    ("https://api.vendor.example/other/path", ""),                  # the base origin, any path
    ("http://files.vendor.example/f", "plain http"),
    ("https://vendor.example.evil.test/f", "not the vendor's"),
    ("https://evilvendor.example/f", "not the vendor's"),
    ("https://vendor.example@evil.test/f", "credentials in it"),
    ("https://evil.test/?u=https://vendor.example/", "not the vendor's"),
    ("https://user:pw@vendor.example/f", "credentials in it"),
    ("ftp://vendor.example/f", "not http(s)"),
    ("file:///etc/passwd", "not http(s)"),
    ("https://api.vendor.example:8443/f", "not the vendor's"),       # another port is another origin
])
def test_policy_hosts_scheme_and_credentials_in_urls(url, reason):
    got = VENDOR.refusal(URL(url), redirect=False)
    assert (reason in got and got) if reason else got == "", (url, got)


def test_redirect_hosts_only_for_redirects_and_never_trusted():
    p = FetchPolicy(hosts=("api.vendor.example",), redirect_hosts=("*.cdn.example",))
    assert p.refusal(URL("https://x.cdn.example/f"), redirect=False)          # not as a first URL
    assert p.refusal(URL("https://x.cdn.example/f"), redirect=True) == ""
    assert not p.trusted(URL("https://x.cdn.example/f"))                      # no credentials there


@pytest.fixture
def dns(monkeypatch):
    answers: dict[str, list[str]] = {}

    async def resolve(host: str, port: int) -> list[str]:
        if host not in answers:
            raise AssertionError(f"unexpected DNS lookup of {host}")
        return answers[host]

    monkeypatch.setattr(files, "resolve_addresses", resolve)
    return answers


@pytest.fixture
async def origin(aiohttp_server):
    """A loopback server: /file answers bytes; /redirect?to=URL redirects; every request is recorded."""
    seen: list[dict[str, str]] = []

    async def file(request: web.Request) -> web.Response:
        seen.append({"path": request.path, "auth": request.headers.get("Authorization", "")})
        return web.Response(body=b"bytes")

    async def redirect(request: web.Request) -> web.Response:
        seen.append({"path": request.path, "auth": request.headers.get("Authorization", "")})
        return web.Response(status=302, headers={"Location": request.query["to"]})

    app = web.Application()
    app.router.add_get("/file", file)
    app.router.add_get("/redirect", redirect)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/"), seen


async def _get(http, url, policy, **kw) -> bytes:
    async with safe_get(http, url, policy=policy, what="test file", **kw) as resp:
        return await resp.read()


@pytest.mark.parametrize("address", ["10.0.0.5", "192.168.1.1", "172.16.0.1", "169.254.169.254", "100.64.0.1",
                                     "fc00::1", "fe80::1", "0.0.0.0", "::ffff:127.0.0.1", "127.0.0.1"])
async def test_vendor_name_resolving_to_a_private_or_loopback_address_is_refused(http_session, dns, address,
                                                                                 monkeypatch):
    monkeypatch.delenv(LOOPBACK_ENV, raising=False)
    dns["files.vendor.example"] = ["93.184.216.34", address]                 # one bad answer is enough
    with pytest.raises(DeliveryError) as info:
        await _get(http_session, "https://files.vendor.example/f", VENDOR)
    assert info.value.permanent and ("private" in str(info.value) or "loopback" in str(info.value))
    assert "files.vendor.example/f" not in str(info.value)                   # never the URL


@pytest.mark.parametrize("literal", ["https://10.0.0.5/f", "https://[::1]/f", "https://169.254.169.254/f"])
async def test_ip_literals_as_the_base_are_checked_too(http_session, literal, monkeypatch):
    monkeypatch.delenv(LOOPBACK_ENV, raising=False)
    with pytest.raises(DeliveryError, match="private|loopback"):
        await _get(http_session, literal, FetchPolicy(base=literal.rsplit("/", 1)[0]))


async def test_loopback_needs_the_test_setting(http_session, origin, monkeypatch):
    base, seen = origin
    policy = FetchPolicy(base=base)
    monkeypatch.delenv(LOOPBACK_ENV, raising=False)
    with pytest.raises(DeliveryError, match=f"loopback address .*{LOOPBACK_ENV}"):
        await _get(http_session, f"{base}/file", policy)
    assert seen == []
    monkeypatch.setenv(LOOPBACK_ENV, "1")
    assert await _get(http_session, f"{base}/file", policy) == b"bytes"


async def test_plain_http_to_a_public_address_is_refused(http_session, dns):
    dns["bot-api.example"] = ["93.184.216.34"]
    with pytest.raises(DeliveryError, match="plain http"):
        await _get(http_session, "http://bot-api.example/f", FetchPolicy(base="http://bot-api.example"))


async def test_redirect_to_another_host_is_not_followed(http_session, origin, aiohttp_server):
    base, seen = origin
    foreign_seen: list[str] = []

    async def steal(request: web.Request) -> web.Response:
        foreign_seen.append(request.headers.get("Authorization", ""))
        return web.Response(body=b"stolen")

    app = web.Application()
    app.router.add_get("/{tail:.*}", steal)
    foreign = str((await aiohttp_server(app)).make_url("")).rstrip("/")  # same IP, another port: another origin
    with pytest.raises(DeliveryError, match="not the vendor's") as info:
        await _get(http_session, f"{base}/redirect?to={foreign}/x", FetchPolicy(base=base),
                   headers={"Authorization": "Bearer secret-token"})
    assert foreign_seen == [] and "secret-token" not in str(info.value)
    assert seen == [{"path": "/redirect", "auth": "Bearer secret-token"}]


async def test_credentials_follow_a_redirect_only_when_the_policy_says_so(http_session, origin):
    base, seen = origin
    for keep in (True, False):
        seen.clear()
        policy = FetchPolicy(base=base, redirect_credentials=keep)
        assert await _get(http_session, f"{base}/redirect?to=/file", policy,
                          headers={"Authorization": "Basic abc"}) == b"bytes"
        assert seen == [{"path": "/redirect", "auth": "Basic abc"},
                        {"path": "/file", "auth": "Basic abc" if keep else ""}]


async def test_too_many_redirects_and_redirects_nowhere(http_session, origin):
    base, _ = origin
    with pytest.raises(DeliveryError, match="too many redirects"):
        await _get(http_session, f"{base}/redirect?to=/redirect%3Fto%3D/file", FetchPolicy(base=base, max_redirects=1))
    with pytest.raises(DeliveryError, match="usable location"):
        await _get(http_session, f"{base}/redirect?to=", FetchPolicy(base=base))


async def test_a_malformed_url_is_a_clean_refusal(http_session):
    with pytest.raises(DeliveryError, match="malformed|not http"):
        await _get(http_session, "https://[::1/x", VENDOR)
