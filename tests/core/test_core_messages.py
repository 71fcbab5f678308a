from claudemesh_gateway.messages import Address, Attachment, Message, message_from_dict, message_to_dict


def test_attachment_describe_sizes():
    assert Attachment(name="a.txt", content_type="text/plain", size=300).describe() == "[text a.txt, 300 B]"
    assert Attachment(name="p.jpg", content_type="image/jpeg", size=20480, caption="cat").describe() == \
        "[image p.jpg, 20 KiB]: cat"
    assert Attachment(name="v.mp4", content_type="video/mp4", size=5 * 1024 * 1024).describe() == \
        "[video v.mp4, 5.0 MiB]"
    assert Attachment(name="x").describe() == "[application x]"


def test_message_roundtrip_keeps_everything_but_raw():
    m = Message(id="telegram:t:1:2", origin=Address("telegram", "1", "7"), sender="Ada", sender_id="42",
                text="hi", native_id="2", reply_to="1", tags=frozenset({"ops"}), hops=1, visited=("dev",),
                attachments=(Attachment(name="f", size=3, url="tgfile:t:abc"),), raw={"secret": "x"})
    back = message_from_dict(message_to_dict(m))
    assert back == m
    assert back.raw == {}
    assert "secret" not in str(message_to_dict(m))
