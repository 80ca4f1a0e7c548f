"""listeners.sockopts: Linux option numbers, the struct layouts the kernel expects, pktinfo on loopback."""

import json
import socket
import struct
import sys

import pytest

from listeners import sockopts
from tests import apps
from tests.support import DEADLINE, aio, skip_or_fail

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux option numbers and layouts")


def lo_index():
    return socket.if_nametoindex("lo")


@linux
@pytest.mark.parametrize("name, value", [
    ("IP_PKTINFO", 8), ("IP_MULTICAST_ALL", 49), ("IP_ADD_SOURCE_MEMBERSHIP", 39),
    ("MCAST_JOIN_SOURCE_GROUP", 46), ("MCAST_LEAVE_SOURCE_GROUP", 47), ("IPV6_MULTICAST_ALL", 29),
    ("IPV6_RECVPKTINFO", 49), ("IPV6_PKTINFO", 50),
])
def test_option_numbers(name, value):
    """The options Python 3.11 lacks have their <linux/in.h> / <linux/in6.h> numbers."""
    assert getattr(sockopts, name) == value


@linux
def test_group_source_req_ipv4_layout():
    """group_source_req is a 32-bit ifindex, 4 pad bytes, then group and source as 128-byte sockaddr_storage."""
    raw = sockopts.group_source_req(7, "232.1.2.3", "10.0.0.9")
    assert len(raw) == 4 + 4 + 128 + 128
    assert struct.unpack("=I", raw[:4]) == (7,) and raw[4:8] == b"\0" * 4
    group, source = raw[8:136], raw[136:264]
    for storage, address in ((group, "232.1.2.3"), (source, "10.0.0.9")):
        family, port, addr = struct.unpack("=HH4s", storage[:8])
        assert (family, port, addr) == (socket.AF_INET, 0, socket.inet_aton(address))
        assert storage[8:] == b"\0" * 120


@linux
def test_group_source_req_ipv6_layout():
    """For IPv6 the sockaddr_storage members hold sockaddr_in6 (family, port, flowinfo, address, scope)."""
    raw = sockopts.group_source_req(3, "ff3e::1234", "fd00::2%eth0")
    family, port, flowinfo, addr, scope = struct.unpack("=HHI16sI", raw[8:36])
    assert (family, port, flowinfo, scope) == (socket.AF_INET6, 0, 0, 0)
    assert addr == socket.inet_pton(socket.AF_INET6, "ff3e::1234")
    assert raw[136 + 8:136 + 24] == socket.inet_pton(socket.AF_INET6, "fd00::2")


def test_ip_mreqn_layout():
    """ip_mreqn is the group, a zero local address (choose by index) and the interface index."""
    raw = sockopts.ip_mreqn("239.255.255.250", 5)
    assert raw == socket.inet_aton("239.255.255.250") + b"\0" * 4 + struct.pack("=i", 5)


def test_ipv6_mreq_layout():
    """ipv6_mreq is the 16-byte group followed by the interface index."""
    raw = sockopts.ipv6_mreq("ff02::fb", 9)
    assert raw == socket.inet_pton(socket.AF_INET6, "ff02::fb") + struct.pack("=I", 9)


def test_in_pktinfo_layout():
    """in_pktinfo is ifindex, ipi_spec_dst (the source to use), then ipi_addr (unused on send)."""
    raw = sockopts.in_pktinfo(4, "10.0.0.1")
    assert raw == struct.pack("=I", 4) + socket.inet_aton("10.0.0.1") + b"\0" * 4


def test_in6_pktinfo_layout():
    """in6_pktinfo is the 16-byte address followed by the interface index."""
    raw = sockopts.in6_pktinfo(2, "fe80::1%eth0")
    assert raw == socket.inet_pton(socket.AF_INET6, "fe80::1") + struct.pack("=I", 2)


def test_parse_pktinfo_round_trip():
    """parse_pktinfo reads back destination, ifindex and spec_dst of either family; None without pktinfo."""
    v4 = struct.pack("=I4s4s", 3, socket.inet_aton("10.0.0.1"), socket.inet_aton("239.1.2.3"))
    assert sockopts.parse_pktinfo([(socket.IPPROTO_IP, sockopts.IP_PKTINFO, v4)]) == ("239.1.2.3", 3, "10.0.0.1")
    v6 = sockopts.in6_pktinfo(5, "ff02::fb")
    assert sockopts.parse_pktinfo([(socket.IPPROTO_IPV6, sockopts.IPV6_PKTINFO, v6)]) == ("ff02::fb", 5, None)
    assert sockopts.parse_pktinfo([(socket.SOL_SOCKET, 99, b"x")]) == (None, None, None)
    assert sockopts.parse_pktinfo([]) == (None, None, None)


def test_family_and_packed_drop_scope():
    """Addresses are classified by family and packed without their %scope."""
    assert sockopts.family_of("fe80::1%eth0") == socket.AF_INET6
    assert sockopts.family_of("10.0.0.1") == socket.AF_INET
    assert sockopts.packed("fe80::1%eth0") == socket.inet_pton(socket.AF_INET6, "fe80::1")


def _wildcard_socket(family):
    skt = socket.socket(family, socket.SOCK_DGRAM)
    skt.settimeout(DEADLINE)
    if family == socket.AF_INET6:
        skt.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        skt.setsockopt(socket.IPPROTO_IPV6, sockopts.IPV6_RECVPKTINFO, 1)
        skt.bind(("::", 0))
    else:
        skt.setsockopt(socket.IPPROTO_IP, sockopts.IP_PKTINFO, 1)
        skt.bind(("0.0.0.0", 0))
    return skt


@linux
def test_pktinfo_on_loopback_ipv4():
    """A wildcard-bound socket with IP_PKTINFO learns each datagram's destination and interface,
    and a send with in_pktinfo leaves from the chosen source address."""
    with _wildcard_socket(socket.AF_INET) as server, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(DEADLINE)
        client.bind(("127.0.0.1", 0))
        client.sendto(b"ping", ("127.0.0.2", server.getsockname()[1]))
        data, ancdata, _, addr = server.recvmsg(100, sockopts.ancillary_space())
        assert (data, sockopts.parse_pktinfo(ancdata)) == (b"ping", ("127.0.0.2", lo_index(), "127.0.0.2"))
        info = (socket.IPPROTO_IP, sockopts.IP_PKTINFO, sockopts.in_pktinfo(0, "127.0.0.2"))
        server.sendmsg([b"pong"], [info], 0, addr)
        assert client.recvfrom(100) == (b"pong", ("127.0.0.2", server.getsockname()[1]))


@linux
def test_pktinfo_on_loopback_ipv6():
    """IPV6_RECVPKTINFO gives an IPv6 wildcard socket the destination (::1) and interface of a datagram."""
    if not socket.has_ipv6:
        skip_or_fail("no IPv6 here")
    with _wildcard_socket(socket.AF_INET6) as server, socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as client:
        try:
            client.sendto(b"ping", ("::1", server.getsockname()[1]))
        except OSError as exc:
            skip_or_fail(f"no ::1 here: {exc}")
        data, ancdata, _, _ = server.recvmsg(100, sockopts.ancillary_space())
        assert (data, sockopts.parse_pktinfo(ancdata)) == (b"ping", ("::1", lo_index(), None))


def test_setopt_refuses_a_missing_option():
    """An option the platform lacks (None) raises OSError(ENOPROTOOPT) instead of a TypeError."""
    import errno

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as skt, pytest.raises(OSError) as raised:
        sockopts.setopt(skt, socket.IPPROTO_IP, None, 1)
    assert raised.value.errno == errno.ENOPROTOOPT


@aio
async def test_without_pktinfo_server_falls_back_to_bound_address(gateway, client, monkeypatch):
    """Where IP_PKTINFO is unavailable a wildcard listener still answers; `server` is then the bound address."""
    monkeypatch.setattr(sockopts, "IP_PKTINFO", None)
    text = ("channel_layer: {backend: memory}\napplication: tests.apps:raw_echo\nlisteners:\n"
            "  - {name: p, type: plain, bind: 0.0.0.0, port: 0, amplification: null}\n")  # Inspect: JSON answers
    service = await gateway(text, app=apps.Inspect.as_asgi())
    port = service.listeners["p"].addresses()[0][1]
    c = await client()
    c.send(b"?", ("127.0.0.1", port))
    data, source = await c.receive()
    message = json.loads(data)
    assert (message["server"], "interface" in message) == (["0.0.0.0", port], False)
    assert source == ("127.0.0.1", port)
