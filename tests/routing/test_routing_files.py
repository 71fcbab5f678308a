"""Files between platforms: the core fetches a source gateway's file reference at send time and hands
the bytes to a destination that takes files; what cannot travel is described in the text."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any, ClassVar

from claudemesh_gateway import Attachment, Capabilities, DeliveryError
from claudemesh_gateway.delivery.config import DeliveryConfig

from .conftest import FakeGateway, HtmlGateway, drain, msg

ROOM = {"name": "room", "mesh": "m", "topic": "general", "direction": "both",
        "binds": [{"gateway": "src", "chat": "c1"}, {"gateway": "dst", "chat": "D1"}]}


class SourceGateway(FakeGateway):
    """Owns ``src:<id>`` references; records every fetch."""

    kind: ClassVar[str] = "src"
    capabilities: ClassVar[Capabilities] = Capabilities(max_text=400, media=True, max_media_bytes=10_000)

    def __init__(self, name: str, **kw: Any) -> None:
        super().__init__(name, **kw)
        self.files: dict[str, bytes] = {}
        self.fetches: list[tuple[str, int]] = []
        self.fetch_error: DeliveryError | None = None

    async def fetch_attachment(self, attachment: Attachment, max_bytes: int) -> bytes:
        self.fetches.append((attachment.url or "", max_bytes))
        if self.fetch_error is not None:
            raise self.fetch_error
        data = self.files.get((attachment.url or "").removeprefix("src:"))
        if data is None:
            raise DeliveryError("gone", permanent=True)
        return data


class MediaGateway(FakeGateway):
    kind: ClassVar[str] = "media"
    capabilities: ClassVar[Capabilities] = Capabilities(max_text=400, media=True, max_media_bytes=5_000,
                                                        edits=True)


class HtmlMediaGateway(HtmlGateway):
    capabilities: ClassVar[Capabilities] = Capabilities(max_text=400, media=True, max_media_bytes=5_000,
                                                        formatting="html")


def photo(ref: str = "src:f1", size: int | None = 3, name: str = "cat.jpg") -> Attachment:
    return Attachment(name=name, content_type="image/jpeg", size=size, url=ref, caption="")


def runtime(make_runtime, dst: FakeGateway | None = None, **delivery: Any):
    src = SourceGateway("src")
    src.files["f1"] = b"\xff\xd8\xff"
    gws = {"src": src, "dst": dst or MediaGateway("dst")}
    rt = make_runtime([ROOM], gateways=gws)
    rt.settings.delivery = DeliveryConfig(**delivery)
    return rt, src, gws["dst"]


async def test_a_file_reference_reaches_a_media_destination_as_bytes(make_runtime):
    rt, src, dst = runtime(make_runtime)
    await rt.pipeline.submit(msg("look", gateway="src", chat="c1", mid="src:1", attachments=(photo(),)))
    await drain(rt)
    (out,) = dst.sent
    (att,) = out.attachments
    assert att.data == b"\xff\xd8\xff" and att.name == "cat.jpg" and att.size == 3
    assert out.text == "Ann: look"  # no description: the file itself travels
    assert src.fetches == [("src:f1", 5_000)]  # capped by the destination's max_media_bytes
    # the mesh takes no files: it gets the description, and nothing was fetched for it
    assert rt.meshes["m"].posts[0]["text"] == "[via src] Ann: look\n[image cat.jpg, 3 B]"


async def test_a_file_larger_than_the_cap_is_described_without_fetching(make_runtime):
    rt, src, dst = runtime(make_runtime, attachment_max_bytes=1_000)
    await rt.pipeline.submit(msg("big", gateway="src", chat="c1", mid="src:2",
                                 attachments=(photo(size=2_000, name="huge.jpg"),)))
    await drain(rt)
    (out,) = dst.sent
    assert out.attachments == ()
    assert out.text == "Ann: big\n[image huge.jpg, 2 KiB]"
    assert src.fetches == []


async def test_zero_max_bytes_turns_transfer_off(make_runtime):
    rt, src, dst = runtime(make_runtime, attachment_max_bytes=0)
    await rt.pipeline.submit(msg("", gateway="src", chat="c1", mid="src:3", attachments=(photo(),)))
    await drain(rt)
    (out,) = dst.sent
    assert out.attachments == () and "[image cat.jpg" in out.text and src.fetches == []


async def test_a_file_gone_at_the_source_is_described_in_the_rendered_text(make_runtime):
    rt, src, dst = runtime(make_runtime, dst=HtmlMediaGateway("dst"))
    await rt.pipeline.submit(msg("see <this>", gateway="src", chat="c1", mid="src:4",
                                 attachments=(photo("src:missing", name="a<b>.jpg"),)))
    await drain(rt)
    (out,) = dst.sent
    assert out.attachments == ()
    # the description is rendered by the destination like the rest of the text (HTML-escaped here)
    assert out.text == "Ann: see &lt;this&gt;\n[image a&lt;b&gt;.jpg, 3 B]"
    assert src.fetches == [("src:missing", 5_000)]


async def test_a_transient_fetch_failure_retries_the_delivery(make_runtime):
    rt, src, dst = runtime(make_runtime)
    src.fetch_error = DeliveryError("source API down", retry_after=7.0)
    await rt.pipeline.submit(msg("later", gateway="src", chat="c1", mid="src:5", attachments=(photo(),)))
    item = await rt.store.head("dst/D1")
    outs, _ = await rt.pipeline.render(item)
    try:
        await rt.pipeline.send(outs[0])
    except DeliveryError as exc:
        assert not exc.permanent and exc.retry_after == 7.0 and "source API down" in str(exc)
    else:
        raise AssertionError("a transient fetch failure must fail the send")
    assert dst.sent == []
    src.fetch_error = None
    assert (await rt.pipeline.send(outs[0])).native_ids
    assert dst.sent[0].attachments[0].data == b"\xff\xd8\xff"


async def test_a_gateway_without_fetch_support_gets_its_files_described(make_runtime):
    rt, _src, dst = runtime(make_runtime)
    rt.gateways["src"] = FakeGateway("src")  # the base Gateway.fetch_attachment: Unsupported
    await rt.pipeline.submit(msg("x", gateway="src", chat="c1", mid="src:6", attachments=(photo(),)))
    await drain(rt)
    (out,) = dst.sent
    assert out.attachments == () and out.text == "Ann: x\n[image cat.jpg, 3 B]"


async def test_urls_and_own_references_pass_untouched(make_runtime):
    rt, src, dst = runtime(make_runtime)
    url = Attachment(name="r.pdf", content_type="application/pdf", size=10, url="https://files.example/r.pdf")
    await rt.pipeline.submit(msg("r", gateway="src", chat="c1", mid="src:7", attachments=(url,)))
    await drain(rt)
    assert dst.sent[0].attachments == (url,) and src.fetches == []
    # a reference going back to a chat of its own gateway that can reuse it (a file_id) passes untouched
    reuser = ReusingSourceGateway("src")
    rt2 = make_runtime([OWN_ROOM], gateways={"src": reuser})
    rt2.settings.delivery = DeliveryConfig()
    await rt2.pipeline.submit(msg("o", gateway="src", chat="c1", mid="src:8", attachments=(photo(),)))
    await drain(rt2)
    (out,) = reuser.sent
    assert out.attachments == (photo(),) and reuser.fetches == []


OWN_ROOM = {"name": "own", "mesh": "m", "topic": "t2", "direction": "both",
            "binds": [{"gateway": "src", "chat": "c1"}, {"gateway": "src", "chat": "c2"}]}


class ReusingSourceGateway(SourceGateway):
    capabilities: ClassVar[Capabilities] = dataclasses.replace(SourceGateway.capabilities, reuses_own_files=True)


async def test_own_references_a_gateway_cannot_reuse_are_fetched_by_the_core_within_its_caps(make_runtime):
    """Slack and WhatsApp cannot send their own file references again: the core reads the bytes back
    (fetch_attachment), under attachment_max_bytes and the byte budget, instead of the plugin."""
    src = SourceGateway("src")
    src.files["f1"] = b"\xff\xd8\xff"
    rt = make_runtime([OWN_ROOM], gateways={"src": src})
    rt.settings.delivery = DeliveryConfig(attachment_max_bytes=4_000)
    await rt.pipeline.submit(msg("o", gateway="src", chat="c1", mid="src:8", attachments=(photo(),)))
    await drain(rt)
    (out,) = src.sent
    (att,) = out.attachments
    assert att.data == b"\xff\xd8\xff" and src.fetches == [("src:f1", 4_000)]
    # larger than attachment_max_bytes: described, nothing fetched
    src.sent.clear()
    src.fetches.clear()
    big = photo(ref="src:f2", size=9_000, name="big.jpg")
    await rt.pipeline.submit(msg("b", gateway="src", chat="c1", mid="src:9", attachments=(big,)))
    await drain(rt)
    (out,) = src.sent
    assert out.attachments == () and "big.jpg" in out.text and src.fetches == []


async def test_fetched_bytes_never_reach_the_outbox(make_runtime):
    rt, _src, dst = runtime(make_runtime)
    await rt.pipeline.submit(msg("p", gateway="src", chat="c1", mid="src:9", attachments=(photo(),)))
    item = await rt.store.head("dst/D1")
    assert item.message["attachments"] == [
        {k: v for k, v in dataclasses.asdict(photo()).items() if k != "data"}
    ]
    await drain(rt)
    assert dst.sent[0].attachments[0].data == b"\xff\xd8\xff"
    assert (await rt.store.head("dst/D1")) is None


async def test_an_edit_fetches_no_file_again(make_runtime):
    rt, src, dst = runtime(make_runtime)
    await rt.pipeline.submit(msg("v1", gateway="src", chat="c1", mid="src:10", native_id="n1",
                                 attachments=(photo(),)))
    await drain(rt)
    assert len(src.fetches) == 1
    await rt.pipeline.submit(msg("v2", gateway="src", chat="c1", mid="src:10:e1", native_id="n1",
                                 edit_of="n1", attachments=(photo(),)))
    await drain(rt)
    edit = dst.sent[-1]
    assert edit.edit_of is not None and edit.attachments == () and edit.text == "Ann: v2"
    assert len(src.fetches) == 1  # the edit did not download the file again


async def test_an_edit_sent_as_a_new_message_describes_the_file(make_runtime):
    rt, src, dst = runtime(make_runtime, dst=HtmlMediaGateway("dst"))  # takes files, cannot edit
    await rt.pipeline.submit(msg("v1", gateway="src", chat="c1", mid="src:11", native_id="n2",
                                 attachments=(photo(),)))
    await drain(rt)
    await rt.pipeline.submit(msg("v2", gateway="src", chat="c1", mid="src:11:e1", native_id="n2",
                                 edit_of="n2", attachments=(photo(),)))
    await drain(rt)
    again = dst.sent[-1]
    assert again.edit_of is None and again.attachments == ()
    assert again.text == "(edited) Ann: v2\n[image cat.jpg, 3 B]"
    assert len(src.fetches) == 1


async def test_an_applied_edit_keeps_the_descriptions_of_a_text_only_destination(make_runtime):
    class TextEdits(FakeGateway):
        capabilities: ClassVar[Capabilities] = Capabilities(max_text=400, edits=True)

    rt, src, dst = runtime(make_runtime, dst=TextEdits("dst"))
    await rt.pipeline.submit(msg("v1", gateway="src", chat="c1", mid="src:12", native_id="n3",
                                 attachments=(photo(),)))
    await drain(rt)
    await rt.pipeline.submit(msg("v2", gateway="src", chat="c1", mid="src:12:e1", native_id="n3",
                                 edit_of="n3", attachments=(photo(),)))
    await drain(rt)
    first, edit = dst.sent
    assert first.text == "Ann: v1\n[image cat.jpg, 3 B]"
    assert edit.edit_of is not None and edit.text == "Ann: v2\n[image cat.jpg, 3 B]"
    assert src.fetches == []


async def test_max_files_per_message_and_the_rest_described(make_runtime):
    class OneFile(MediaGateway):
        capabilities: ClassVar[Capabilities] = Capabilities(max_text=400, media=True, max_media_bytes=5_000,
                                                            max_files=1)

    rt, src, dst = runtime(make_runtime, dst=OneFile("dst"))
    src.files["f2"] = b"png"
    await rt.pipeline.submit(msg("two", gateway="src", chat="c1", mid="src:13",
                                 attachments=(photo(), photo("src:f2", name="dog.png"))))
    await drain(rt)
    (out,) = dst.sent
    assert [a.name for a in out.attachments] == ["cat.jpg"] and out.attachments[0].data == b"\xff\xd8\xff"
    assert out.text == "Ann: two\n[image dog.png, 3 B]"
    assert src.fetches == [("src:f1", 5_000)]  # the second file was never downloaded


async def test_fetched_bytes_held_at_once_stay_within_the_budget(make_runtime):
    """attachment_fetches x attachment_max_bytes bounds the bytes held: one message cannot take more
    files than that, and concurrent sends wait for each other's reservations."""
    rt, src, dst = runtime(make_runtime, attachment_fetches=2, attachment_max_bytes=4_000)
    for i in range(5):
        src.files[f"g{i}"] = bytes([i]) * 10
    files = tuple(photo(f"src:g{i}", size=10, name=f"f{i}.jpg") for i in range(5))
    await rt.pipeline.submit(msg("many", gateway="src", chat="c1", mid="src:14", attachments=files))
    await drain(rt)
    (out,) = dst.sent
    assert [a.name for a in out.attachments] == ["f0.jpg", "f1.jpg"]  # 2 x 4,000 bytes of room
    assert out.text.endswith("[image f2.jpg, 10 B]\n[image f3.jpg, 10 B]\n[image f4.jpg, 10 B]")
    assert rt.pipeline.transport._bytes().used == 0  # everything given back after the send


async def test_a_send_waits_while_another_holds_the_budget(make_runtime):
    gate = asyncio.Event()

    class Slow(MediaGateway):
        async def send(self, out):
            await gate.wait()
            return await super().send(out)

    rt, src, _dst = runtime(make_runtime, dst=Slow("dst"), attachment_fetches=1, attachment_max_bytes=4_000)
    src.files["h2"] = b"2"
    await rt.pipeline.submit(msg("a", gateway="src", chat="c1", mid="src:15", attachments=(photo(),)))
    outs, _ = await rt.pipeline.render(await rt.store.head("dst/D1"))
    first = asyncio.create_task(rt.pipeline.send(outs[0]))
    await asyncio.sleep(0.05)
    assert len(src.fetches) == 1 and rt.pipeline.transport._bytes().used == 4_000
    b_out = dataclasses.replace(outs[0], attachments=(photo("src:h2"),))
    second = asyncio.create_task(rt.pipeline.send(b_out))
    await asyncio.sleep(0.05)
    assert len(src.fetches) == 1  # waiting for the budget: its file is not downloaded yet
    gate.set()
    await asyncio.gather(first, second)
    assert [f for f, _ in src.fetches] == ["src:f1", "src:h2"]
    assert rt.pipeline.transport._bytes().used == 0
