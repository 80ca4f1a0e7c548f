"""The spec's message shapes: udp.receive built, udp.send validated."""

import pytest

from gateway.messages import BadReply, build_receive, reply_prefix, validate_send


def test_receive_message_shape():
    """udp.receive carries exactly the keys of design.md, interface only when known."""
    message = build_receive(data=b"x", client=("192.0.2.7", 40312), server=("239.255.255.250", 1900),
                            listener="ssdp", reply_channel="udp.send.abc!t")
    assert message == {"type": "udp.receive", "reply_channel": "udp.send.abc!t", "data": b"x",
                       "client": ["192.0.2.7", 40312], "server": ["239.255.255.250", 1900], "listener": "ssdp"}
    with_iface = build_receive(data=b"", client=("fe80::1%eth0", 5353), server=("ff02::fb", 5353),
                               listener="m", reply_channel="r", interface="eth0")
    assert with_iface["interface"] == "eth0" and with_iface["client"] == ["fe80::1%eth0", 5353]


def test_reply_prefix_is_process_specific():
    """Reply channels are udp.send.<gateway-id>!, the Channels form for process-specific names."""
    assert reply_prefix("abc123") == "udp.send.abc123!"


@pytest.mark.parametrize("message, version, result", [
    ({"type": "udp.send", "data": b"ok"}, 4, (b"ok", False)),
    ({"type": "udp.send", "data": b""}, 4, (b"", False)),
    ({"type": "udp.send", "data": bytearray(b"ba")}, 4, (b"ba", False)),
    ({"type": "udp.send", "data": b"m", "multicast": True}, 6, (b"m", True)),
    ({"type": "udp.send", "data": b"x" * 65507}, 4, (b"x" * 65507, False)),
    ({"type": "udp.send", "data": b"x" * 65527}, 6, (b"x" * 65527, False)),
])
def test_valid_send(message, version, result):
    """Valid udp.send messages give their bytes and multicast flag."""
    assert validate_send(message, version=version) == result


@pytest.mark.parametrize("message, version, reason", [
    ({"type": "udp.receive", "data": b"x"}, 4, "bad_message"),
    ({"data": b"x"}, 4, "bad_message"),
    ({"type": "udp.send"}, 4, "bad_message"),
    ({"type": "udp.send", "data": "text"}, 4, "bad_message"),
    ({"type": "udp.send", "data": None}, 4, "bad_message"),
    ({"type": "udp.send", "data": b"x", "multicast": "yes"}, 4, "bad_message"),
    ({"type": "udp.send", "data": b"x" * 65508}, 4, "too_large"),
    ({"type": "udp.send", "data": b"x" * 65528}, 6, "too_large"),
    ("not a dict", 4, "bad_message"),
])
def test_bad_send_is_refused_with_a_reason(message, version, reason):
    """Each bad reply names the counter it is dropped under."""
    with pytest.raises(BadReply) as caught:
        validate_send(message, version=version)
    assert caught.value.reason == reason
