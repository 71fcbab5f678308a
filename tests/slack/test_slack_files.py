"""Files both ways: inbound Slack files as ``slackfile:`` references read back by fetch_attachment
(files.info + a download with the bot token), outbound bytes uploaded with files_upload_v2.
Against the fake Slack on loopback (conftest.py), and through the whole app with a tiny
media-capable gateway as the other platform."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, ClassVar

import pytest
from aiohttp import web
from claudemesh_gateway import (
    Address,
    Attachment,
    Capabilities,
    DeliveryError,
    Gateway,
    GatewayConfig,
    GatewayState,
    Message,
    Outbound,
    SendResult,
    hookimpl,
)
from claudemesh_gateway.testing import build_test_app, wait_until

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40  # 10 KiB and a bit


def _out(gw, text: str, chat: str = "C1", *, attachments=(), **kw) -> Outbound:
    message = kw.pop("message", None) or Message(
        id="mesh:m:1", origin=Address("mesh", "m:#ops"), sender="alice", text=text
    )
    return Outbound(
        message=message,
        to=Address(gw.name, chat, kw.pop("thread", None)),
        text=text,
        attachments=tuple(attachments),
        **kw,
    )


def _blob(data: bytes = PNG, name: str = "chart.png") -> Attachment:
    return Attachment(name=name, content_type="image/png", size=len(data), data=data)


def _ref(gw, file_obj: dict[str, Any], size: int | None = None) -> Attachment:
    return Attachment(
        name=file_obj["name"], content_type=file_obj["mimetype"], size=size, url=f"slackfile:{gw.name}:{file_obj['id']}"
    )


@pytest.fixture
async def foreign(aiohttp_server):
    """Another HTTP server on loopback (another port): must never see a request, let alone the token."""
    seen: list[dict[str, Any]] = []

    async def anything(request: web.Request) -> web.Response:
        seen.append({"path": request.path, "authorization": request.headers.get("Authorization")})
        return web.Response(body=b"stolen", content_type="image/png")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/"), seen


# -- inbound -------------------------------------------------------------------------------------


async def test_an_inbound_file_becomes_a_reference_attachment(make_gateway, fake_slack, sk):
    gw = await make_gateway()
    f = fake_slack.add_file(PNG, "chart.png")
    await fake_slack.push(sk.event_callback(sk.message_event("numbers", subtype="file_share", files=[f])))
    [msg] = gw.ctx.submitted
    [att] = msg.attachments
    assert att.url == f"slackfile:slack:{f['id']}"
    assert (att.name, att.content_type, att.size, att.data) == ("chart.png", "image/png", len(PNG), None)
    seen = repr(msg) + str(dict(msg.raw)) + repr([dict(x) for x in msg.raw["files"]])
    assert "files-pri" not in seen and sk.BOT_TOKEN not in seen  # no url_private, no token


async def test_a_deleted_or_external_file_carries_no_reference(make_gateway, fake_slack, sk):
    gw = await make_gateway()
    files = [
        {"id": "F9", "name": "gone.png", "mode": "tombstone"},
        {"id": "F8", "name": "doc", "is_external": True, "url_private": "https://docs.example/d"},
    ]
    await fake_slack.push(sk.event_callback(sk.message_event("x", subtype="file_share", files=files)))
    [msg] = gw.ctx.submitted
    assert [a.url for a in msg.attachments] == [None, None]


# -- fetch_attachment ------------------------------------------------------------------------------


async def test_fetch_returns_the_exact_bytes_and_sends_the_token_only_to_the_fake(make_gateway, fake_slack, sk):
    gw = await make_gateway()
    f = fake_slack.add_file(PNG, "chart.png")
    data = await gw.fetch_attachment(_ref(gw, f), 1_000_000)
    assert data == PNG
    assert [c["file"] for c in fake_slack.methods("files.info")] == [f["id"]]
    [dl] = fake_slack.downloads
    assert dl["authorization"] == f"Bearer {sk.BOT_TOKEN}"
    assert dl["host"] == fake_slack.url.split("://", 1)[1]  # the configured api_base host, nothing else


async def test_fetch_refuses_a_foreign_host_and_a_redirect_to_one(make_gateway, fake_slack, foreign, sk):
    base, seen = foreign
    gw = await make_gateway()
    f = fake_slack.add_file(PNG)
    fake_slack.files[f["id"]]["info"]["url_private_download"] = f"{base}/files-pri/x/download/chart.png"
    with pytest.raises(DeliveryError) as info:
        await gw.fetch_attachment(_ref(gw, f), 1_000_000)
    assert info.value.permanent and "not the vendor's" in str(info.value)
    # a redirect from the right host to a foreign one is not followed with the token either
    g = fake_slack.add_file(PNG)
    fake_slack.download_status.append((302, {"Location": f"{base}/elsewhere"}))
    with pytest.raises(DeliveryError) as info:
        await gw.fetch_attachment(_ref(gw, g), 1_000_000)
    assert info.value.permanent
    assert seen == []  # the foreign server never got a request
    assert len(fake_slack.downloads) == 1  # only the fake's own URL was asked (with the token)


def test_only_slack_hosts_or_the_api_base_host_get_the_token(make_gateway):
    from claudemesh_gateway.plugins.slack.config import SlackConfig
    from claudemesh_gateway.plugins.slack.gateway import SlackGateway

    gw = SlackGateway("slack", SlackConfig(bot_token="xoxb-1"), ctx=_NullCtx())
    ok = gw.files.url_allowed
    assert ok("https://files.slack.com/files-pri/T-F1/download/a.png")
    assert ok("https://slack.com/x") and ok("https://team.enterprise.slack.com/x")
    for bad in (
        "http://files.slack.com/x",  # never in clear text
        "https://slack.com.evil.example/x",
        "https://evilslack.com/x",
        "https://slack.com@evil.example/x",
        "https://files.slack.com:443@evil.example/x",
        "https://evil.example/?u=https://files.slack.com/",
        "ftp://files.slack.com/x",
        "/relative/path",
        "https://[::1/x",
    ):
        assert not ok(bad), bad


class _NullCtx:
    http = None

    def register_secret(self, value: str) -> None:
        pass


async def test_fetch_over_the_cap_is_permanent(make_gateway, fake_slack):
    gw = await make_gateway()
    f = fake_slack.add_file(PNG)
    # size known from the event: no call at all
    with pytest.raises(DeliveryError) as info:
        await gw.fetch_attachment(_ref(gw, f, size=len(PNG)), 1_000)
    assert info.value.permanent and fake_slack.methods("files.info") == []
    # size known from files.info: no download
    with pytest.raises(DeliveryError) as info:
        await gw.fetch_attachment(_ref(gw, f), 1_000)
    assert info.value.permanent and fake_slack.downloads == []
    # files.info understates the size: the download is refused on its Content-Length...
    fake_slack.files[f["id"]]["info"]["size"] = 10
    with pytest.raises(DeliveryError) as info:
        await gw.fetch_attachment(_ref(gw, f), 1_000)
    assert info.value.permanent and len(fake_slack.downloads) == 1
    # ...or, streamed without one, cut at the cap
    fake_slack.download_chunked = True
    with pytest.raises(DeliveryError) as info:
        await gw.fetch_attachment(_ref(gw, f), 1_000)
    assert info.value.permanent and len(fake_slack.downloads) == 2
    assert await gw.fetch_attachment(_ref(gw, f), len(PNG)) == PNG  # exactly the cap is fine


@pytest.mark.parametrize("state", ["deleted", "missing"])
async def test_a_deleted_or_unknown_file_is_permanent(make_gateway, fake_slack, state):
    gw = await make_gateway()
    f = fake_slack.add_file(PNG)
    if state == "deleted":
        fake_slack.files_deleted.add(f["id"])
    else:
        del fake_slack.files[f["id"]]
    with pytest.raises(DeliveryError) as info:
        await gw.fetch_attachment(_ref(gw, f), 1_000_000)
    assert info.value.permanent
    assert ("file_deleted" if state == "deleted" else "file_not_found") in str(info.value)


async def test_missing_files_read_is_permanent_and_names_the_scope(make_gateway, fake_slack, caplog):
    caplog.set_level(logging.WARNING, logger="claudemesh_gateway.plugins.slack")
    gw = await make_gateway()
    f = fake_slack.add_file(PNG)
    fake_slack.files_info_error = "missing_scope"
    for _ in range(2):
        with pytest.raises(DeliveryError) as info:
            await gw.fetch_attachment(_ref(gw, f), 1_000_000)
        assert info.value.permanent and "files:read" in str(info.value)
    warned = [r for r in caplog.records if "files:read" in r.getMessage()]
    assert len(warned) == 1  # once, not per file


async def test_a_login_page_instead_of_the_file_is_permanent(make_gateway, fake_slack):
    gw = await make_gateway()
    f = fake_slack.add_file(PNG)
    fake_slack.download_status.append((200, {"Content-Type": "text/html"}))
    with pytest.raises(DeliveryError) as info:
        await gw.fetch_attachment(_ref(gw, f), 1_000_000)
    assert info.value.permanent and "login page" in str(info.value)


async def test_rate_limits_and_server_errors_are_transient(make_gateway, fake_slack):
    gw = await make_gateway()
    f = fake_slack.add_file(PNG)
    fake_slack.files_info_429.append(7)
    with pytest.raises(DeliveryError) as info:
        await gw.fetch_attachment(_ref(gw, f), 1_000_000)
    assert not info.value.permanent and info.value.retry_after == 7
    fake_slack.download_status.append((429, {"Retry-After": "4"}))
    with pytest.raises(DeliveryError) as info:
        await gw.fetch_attachment(_ref(gw, f), 1_000_000)
    assert not info.value.permanent and info.value.retry_after == 4
    fake_slack.download_status.append((503, {}))
    with pytest.raises(DeliveryError) as info:
        await gw.fetch_attachment(_ref(gw, f), 1_000_000)
    assert not info.value.permanent
    assert await gw.fetch_attachment(_ref(gw, f), 1_000_000) == PNG  # and then it works


async def test_a_network_failure_is_transient(make_gateway, fake_slack, unused_tcp_port):
    gw = await make_gateway()
    f = fake_slack.add_file(PNG)
    # the file lies on a host the token may go to (api_base's), where nothing listens
    host = fake_slack.url.rsplit(":", 1)[0]
    gw.config = gw.config.model_copy(update={"api_base": f"{host}:{unused_tcp_port}/api/"})
    fake_slack.files[f["id"]]["info"]["url_private_download"] = gw.config.api_base.replace("/api/", "/f/x.png")
    with pytest.raises(DeliveryError) as info:
        await gw.fetch_attachment(_ref(gw, f), 1_000_000)
    assert not info.value.permanent and "ClientConnectorError" in str(info.value)


async def test_no_token_or_url_in_any_error_or_log(make_gateway, fake_slack, foreign, sk, caplog):
    caplog.set_level(logging.DEBUG)
    base, _ = foreign
    gw = await make_gateway()
    errors: list[str] = []
    scenarios = [
        lambda f: fake_slack.download_status.append((429, {"Retry-After": "1"})),
        lambda f: fake_slack.download_status.append((500, {})),
        lambda f: fake_slack.download_status.append((403, {})),
        lambda f: fake_slack.download_status.append((302, {"Location": f"{base}/x"})),
        lambda f: fake_slack.files[f["id"]]["info"].update(url_private_download=f"{base}/x"),
        lambda f: fake_slack.files_deleted.add(f["id"]),
    ]
    for arrange in scenarios:
        f = fake_slack.add_file(PNG)
        arrange(f)
        with pytest.raises(DeliveryError) as info:
            await gw.fetch_attachment(_ref(gw, f), 1_000_000)
        errors.append(str(info.value))
    fake_slack.upload_status.append(500)
    with pytest.raises(DeliveryError) as info:
        await gw.send(_out(gw, "x", attachments=[_blob()]))
    errors.append(str(info.value))
    logged = [r.getMessage() for r in caplog.records]
    for text in errors + logged:
        assert sk.BOT_TOKEN not in text
    for text in errors:
        assert "files-pri" not in text and base not in text and "/upload/v1/" not in text, text


# -- outbound ----------------------------------------------------------------------------------------


async def test_bytes_are_uploaded_into_the_channel_with_the_text_as_comment(make_gateway, fake_slack):
    gw = await make_gateway(mode="events")
    res = await gw.send(_out(gw, "alice: the <chart>", attachments=[_blob()]))
    [up] = fake_slack.uploads
    [f] = up["files"]
    assert f["data"] == PNG and f["name"] == "chart.png" and f["title"] == "chart.png"
    assert up["channel"] == "C1" and up["thread_ts"] is None
    assert up["initial_comment"] == "alice: the &lt;chart&gt;"  # escaped like a post
    assert fake_slack.posts["C1"] == []  # one message: the file with its comment
    assert res.native_ids == (up["ts"],)
    # what the SDK sends to the upload URL: the raw bytes, no token
    [post] = fake_slack.upload_posts
    assert post["authorization"] is None and post["content_type"] == "application/octet-stream"
    assert [m for m, _ in fake_slack.calls] == ["auth.test", "files.getUploadURLExternal",
                                                "files.completeUploadExternal"]


async def test_an_upload_goes_into_the_thread(make_gateway, fake_slack):
    gw = await make_gateway(mode="events")
    parent = await gw.send(_out(gw, "question"))
    reply = await gw.send(_out(gw, "a file", thread=parent.native_ids[0], attachments=[_blob()]))
    [up] = fake_slack.uploads
    assert up["thread_ts"] == parent.native_ids[0] and up["channel"] == "C1"
    assert reply.thread == parent.native_ids[0] and reply.native_ids == (up["ts"],)
    # a mesh reply to the file message goes to the thread's parent, as for any thread reply
    again = await gw.send(_out(gw, "more", reply_to=up["ts"]))
    assert fake_slack.posts["C1"][-1]["thread_ts"] == parent.native_ids[0] and again.thread == parent.native_ids[0]


async def test_several_files_share_one_message(make_gateway, fake_slack):
    gw = await make_gateway(mode="events")
    res = await gw.send(_out(gw, "two", attachments=[_blob(b"one", "a.txt"), _blob(b"two", "b.txt")]))
    [up] = fake_slack.uploads
    assert [f["data"] for f in up["files"]] == [b"one", b"two"] and res.native_ids == (up["ts"],)


async def test_a_long_text_is_posted_first_then_the_file(make_gateway, fake_slack):
    gw = await make_gateway(mode="events", upload_comment_max=20)
    text = "alice: " + "words " * 10
    res = await gw.send(_out(gw, text, attachments=[_blob()]))
    [post] = fake_slack.posts["C1"]
    [up] = fake_slack.uploads
    assert post["text"] == text and up["initial_comment"] is None and up["files"][0]["data"] == PNG
    order = [m for m, _ in fake_slack.calls if m != "auth.test"]
    assert order == ["chat.postMessage", "files.getUploadURLExternal", "files.completeUploadExternal"]
    assert res.native_ids == (post["ts"], up["ts"])  # the text first: replies and edits map to it


async def test_a_retry_after_a_failed_upload_does_not_repeat_the_text(make_gateway, fake_slack):
    gw = await make_gateway(mode="events", upload_comment_max=5)
    out = _out(gw, "alice: long enough", attachments=[_blob()], idempotency_key="m1|slack/C1|1")
    fake_slack.upload_status.append(500)
    with pytest.raises(DeliveryError) as info:
        await gw.send(out)
    assert not info.value.permanent  # the core retries
    res = await gw.send(out)
    assert len(fake_slack.posts["C1"]) == 1 and len(fake_slack.uploads) == 1
    assert res.native_ids == (fake_slack.posts["C1"][0]["ts"], fake_slack.uploads[0]["ts"])
    assert await gw.ctx.kv_get("text_first:m1|slack/C1|1") is None  # done: nothing left behind


async def test_the_text_posted_before_a_failed_upload_survives_a_restart(make_gateway, fake_slack):
    gw = await make_gateway(mode="events", upload_comment_max=5)
    out = _out(gw, "alice: long enough", attachments=[_blob()], idempotency_key="m2|slack/C1|1")
    fake_slack.upload_status.append(500)
    with pytest.raises(DeliveryError):
        await gw.send(out)
    await gw.stop()
    again = await make_gateway(mode="events", upload_comment_max=5, ctx=gw.ctx)  # same store
    await again.send(_out(again, "alice: long enough", attachments=[_blob()], idempotency_key="m2|slack/C1|1"))
    assert len(fake_slack.posts["C1"]) == 1 and len(fake_slack.uploads) == 1


async def test_customize_posts_the_text_as_the_sender_then_the_file(make_gateway, fake_slack):
    gw = await make_gateway(mode="events", customize=True)
    await gw.send(_out(gw, "hi", attachments=[_blob()]))
    [post] = fake_slack.posts["C1"]
    assert post["username"] == "alice" and fake_slack.uploads[0]["initial_comment"] is None


async def test_a_url_without_bytes_is_described_with_its_link(make_gateway, fake_slack):
    gw = await make_gateway(mode="events")
    link = Attachment(name="p.png", content_type="image/png", size=2048, url="https://files.example/p.png")
    other = Attachment(name="v.ogg", content_type="audio/ogg", size=10, url="tgfile:bot:ABC")  # nobody fetched it
    await gw.send(_out(gw, "see", attachments=[link, other]))
    [post] = fake_slack.posts["C1"]
    assert post["text"] == "see\n[image p.png, 2 KiB] https://files.example/p.png\n[audio v.ogg, 10 B]"
    assert fake_slack.uploads == []


async def test_upload_bigger_than_upload_max_bytes_is_described(make_gateway, fake_slack):
    gw = await make_gateway(mode="events", upload_max_bytes=100)
    await gw.send(_out(gw, "big", attachments=[_blob()]))
    assert fake_slack.uploads == [] and fake_slack.posts["C1"][0]["text"].startswith("big\n[image chart.png")


@pytest.mark.parametrize(
    ("arrange", "permanent", "needle"),
    [
        (lambda fake: setattr(fake, "upload_url_error", "missing_scope"), True, "files:write"),
        (lambda fake: fake.fail_error["C1"].append("not_in_channel"), True, "not_in_channel"),
        (lambda fake: fake.fail_429["C1"].append(3), False, "rate limited"),
        (lambda fake: fake.upload_status.append(502), False, "HTTP 502"),
    ],
    ids=["missing_scope", "not_in_channel", "429", "upload_5xx"],
)
async def test_upload_errors_map_like_post_errors(make_gateway, fake_slack, sk, arrange, permanent, needle):
    gw = await make_gateway(mode="events")
    arrange(fake_slack)
    with pytest.raises(DeliveryError) as info:
        await gw.send(_out(gw, "x", attachments=[_blob()]))
    assert info.value.permanent is permanent and needle in str(info.value)
    if needle == "rate limited":
        assert info.value.retry_after == 3
    assert sk.BOT_TOKEN not in str(info.value)


@pytest.mark.parametrize("refusal", ["file_type_not_allowed", "file_uploads_disabled", "http 413"])
async def test_a_refused_file_still_delivers_the_message_with_a_description(make_gateway, fake_slack, refusal):
    """The workspace will not take the file: the text must not be dead-lettered with it."""
    gw = await make_gateway(mode="events")
    if refusal == "http 413":
        fake_slack.upload_status.append(413)
    else:
        fake_slack.upload_url_error = refusal
    res = await gw.send(_out(gw, "alice: see this", attachments=[_blob()]))
    [post] = fake_slack.posts["C1"]
    assert post["text"].startswith("alice: see this\n[") and fake_slack.uploads == []
    assert res.native_ids == (post["ts"],)


async def test_a_refused_file_after_the_text_went_first_adds_only_the_description(make_gateway, fake_slack):
    gw = await make_gateway(mode="events", upload_comment_max=5)
    fake_slack.upload_url_error = "file_uploads_disabled"
    res = await gw.send(_out(gw, "alice: long enough", attachments=[_blob()], idempotency_key="m3|slack/C1|1"))
    texts = [p["text"] for p in fake_slack.posts["C1"]]
    assert texts[0] == "alice: long enough" and texts[1].startswith("[") and len(texts) == 2
    assert len(res.native_ids) == 2
    assert await gw.ctx.kv_get("text_first:m3|slack/C1|1") is None  # nothing left behind


async def test_file_ts_from_files_info_when_completion_has_no_shares(make_gateway, fake_slack):
    gw = await make_gateway(mode="events")
    gw.share_waits = (0.01, 0.01)
    fake_slack.complete_shares = False
    res = await gw.send(_out(gw, "x", attachments=[_blob()]))
    assert res.native_ids == (fake_slack.uploads[0]["ts"],)
    assert len(fake_slack.methods("files.info")) == 1
    # not shared yet even after the waits: delivered, without a native id for the file message
    fake_slack.info_shares = False
    res = await gw.send(_out(gw, "y", attachments=[_blob()]))
    assert res.native_ids == () and len(fake_slack.uploads) == 2
    assert len(fake_slack.methods("files.info")) == 3


async def test_an_edit_updates_the_text_and_uploads_nothing(make_gateway, fake_slack):
    gw = await make_gateway(mode="events")
    first = await gw.send(_out(gw, "v1", attachments=[_blob()]))
    await gw.send(_out(gw, "v2", attachments=[_blob()], edit_of=first.native_ids[0]))
    assert len(fake_slack.uploads) == 1
    assert fake_slack.updates == [{"channel": "C1", "ts": first.native_ids[0], "text": "v2"}]


async def test_own_file_share_echo_is_not_relayed(make_gateway, fake_slack):
    fake_slack.echo = True
    gw = await make_gateway(ignore_bots=False)
    await gw.send(_out(gw, "alice: a file", attachments=[_blob()]))
    await wait_until(lambda: len(fake_slack.echoed) == 1)
    await wait_until(lambda: len(fake_slack.acks) >= 1)  # the echo was received and acked...
    await asyncio.sleep(0.2)
    assert gw.ctx.attempts == []  # ...and never submitted


# -- through the whole app ---------------------------------------------------------------------------


class FileSinkGateway(Gateway):
    """Another platform that takes files (bytes) and owns ``sinkfile:<id>`` references."""

    kind: ClassVar[str] = "filesink"
    Config = GatewayConfig
    capabilities = Capabilities(max_text=4000, media=True, max_media_bytes=1_000_000)

    def __init__(self, name: str, config: GatewayConfig, ctx: Any) -> None:
        super().__init__(name, config, ctx)
        self.sent: list[Outbound] = []
        self.files: dict[str, bytes] = {}
        self.fetches: list[tuple[str, int]] = []

    async def start(self) -> None:
        self.set_state(GatewayState.CONNECTED)

    async def stop(self) -> None:
        self.set_state(GatewayState.STOPPED)

    async def send(self, out: Outbound) -> SendResult:
        self.sent.append(out)
        return SendResult(native_ids=(f"sink-{len(self.sent)}",))

    async def fetch_attachment(self, attachment: Attachment, max_bytes: int) -> bytes:
        self.fetches.append((attachment.url or "", max_bytes))
        data = self.files[(attachment.url or "").removeprefix("sinkfile:")]
        if len(data) > max_bytes:
            raise DeliveryError("too large", permanent=True)
        return data


class FileSinkPlugin:
    @hookimpl
    def register_gateways(self, register: Any) -> None:
        register(FileSinkGateway)


@pytest.fixture
async def file_app(tmp_path, fake_slack, sk):
    clients = []

    async def make(**slack_extra: Any):
        fake_slack.channels.setdefault("C2", {"id": "C2", "name": "random"})
        cfg = {
            "gateways": {
                "slack": {
                    "type": "slack",
                    "bot_token": sk.BOT_TOKEN,
                    "app_token": sk.APP_TOKEN,
                    "api_base": f"{fake_slack.url}/api/",
                    **slack_extra,
                },
                "sink": {"type": "filesink"},
            },
            "routes": [
                {
                    "name": "room",
                    "binds": [
                        {"gateway": "slack", "chat": "C1"},
                        {"gateway": "slack", "chat": "C2"},
                        {"gateway": "sink", "chat": "room"},
                    ],
                }
            ],
        }
        client, runtime = await build_test_app(
            cfg, state_dir=tmp_path, plugins=[("filesink", FileSinkPlugin())]
        )
        clients.append(client)
        await fake_slack.wait_socket()
        return runtime, runtime.gateways["sink"]

    yield make
    for c in clients:
        await c.close()


async def test_a_slack_file_reaches_another_platform_as_bytes(file_app, fake_slack, sk):
    _, sink = await file_app()
    f = fake_slack.add_file(PNG, "chart.png")
    await fake_slack.push(sk.event_callback(sk.message_event("numbers", subtype="file_share", files=[f])))
    await wait_until(lambda: sink.sent, 10)
    [out] = sink.sent
    [att] = out.attachments
    assert att.data == PNG and att.name == "chart.png" and att.size == len(PNG)
    assert out.text == "alice: numbers"  # no description: the file itself travelled
    # the other channel of the same workspace gets it re-uploaded: the core read it back (Slack cannot
    # reuse its own file references), inside its byte budget
    await wait_until(lambda: fake_slack.uploads, 10)
    [up] = fake_slack.uploads
    assert up["channel"] == "C2" and up["files"][0]["data"] == PNG
    assert up["initial_comment"] == "alice: numbers"
    # read twice by the core (once for the sink, once for C2), always with the token
    assert [c["file"] for c in fake_slack.methods("files.info")] == [f["id"]] * 2
    assert [d["authorization"] for d in fake_slack.downloads] == [f"Bearer {sk.BOT_TOKEN}"] * 2
    await asyncio.sleep(0.3)
    assert fake_slack.uploads == [up] and fake_slack.posts["C1"] == []  # nothing back into C1


async def test_a_file_of_another_platform_reaches_slack_as_an_upload(file_app, fake_slack):
    fake_slack.echo = True  # and the upload's own file_share echo does not come back
    runtime, sink = await file_app(ignore_bots=False)
    sink.files["doc-7"] = b"%PDF-1.7 report" * 100
    await sink.ctx.submit(
        Message(
            id="filesink:sink:1",
            origin=Address("sink", "room"),
            sender="Sam",
            text="the report",
            attachments=(
                Attachment(name="report.pdf", content_type="application/pdf", size=1500, url="sinkfile:doc-7"),
            ),
        )
    )
    await wait_until(lambda: len(fake_slack.uploads) == 2, 15)
    by_channel = {u["channel"]: u for u in fake_slack.uploads}
    assert set(by_channel) == {"C1", "C2"}
    for up in by_channel.values():
        [f] = up["files"]
        assert f["data"] == b"%PDF-1.7 report" * 100 and f["name"] == "report.pdf"
        assert up["initial_comment"] == "Sam: the report"
    assert sink.fetches == [("sinkfile:doc-7", 20 * 1024 * 1024)] * 2  # core cap < upload_max_bytes
    # the message map knows the file messages: a Slack reply to one goes back as a reply
    ts_c1 = by_channel["C1"]["ts"]
    # (written when the send returns, a moment after the fake recorded the upload)
    async with asyncio.timeout(10):
        while (mapped := await runtime.store.map_get("filesink:sink:1", "slack/C1")) != [ts_c1]:
            await asyncio.sleep(0.02)
    assert mapped == [ts_c1]
    await wait_until(lambda: len(fake_slack.echoed) == 2)
    await asyncio.sleep(0.5)
    assert len(sink.sent) == 0  # the bot's own file shares were not relayed anywhere
    assert len(fake_slack.uploads) == 2 and fake_slack.posts["C1"] == fake_slack.posts["C2"] == []
