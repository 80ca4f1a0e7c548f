"""Listener units with Twisted's fake transport and a recording sink, plus real-socket basics."""

import asyncio
import errno
import os
import socket
import sys

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, formatEvent

from gateway.config import ListenerConfig, Remote
from gateway.stats import Counters, QuietLog
from listeners import KINDS
from listeners.base import Arrival, Route, display_address
from listeners.ports import (
    GatewayMulticastPort, GatewayPort, _PortProtocol, capped_message, size_buffers, socket_address,
)
from tests.support import aio, eventually


def make(kind="plain", **overrides):
    values = dict(name="l", type=kind, port=0, bind=("127.0.0.1",))
    values.update(overrides)
    received = []
    listener = KINDS[kind](ListenerConfig(**values), sink=received.append, reactor=Clock(),
                           counters=Counters(), quiet=QuietLog(clock=Clock()))
    return listener, received


class FakePort:
    """Just enough of a bound port for packet_received."""

    addressFamily = socket.AF_INET

    def __init__(self, host="127.0.0.1", port=4000):
        self._host = host
        self._port = port

    def getHost(self):
        from twisted.internet.address import IPv4Address

        return IPv4Address("UDP", self._host, self._port)


def test_datagram_handed_to_sink_with_route():
    """A datagram becomes one Datagram with client, server, route and IP version."""
    listener, received = make()
    listener.ports = [FakePort()]
    _PortProtocol(listener, 0).datagramReceived(b"data", ("127.0.0.1", 5555))
    (dg,) = received
    assert (dg.listener, dg.data, dg.client, dg.server, dg.version) == ("l", b"data", ("127.0.0.1", 5555),
                                                                        ("127.0.0.1", 4000), 4)
    assert dg.route == Route(port=0, address=("127.0.0.1", 5555))


def test_wildcard_route_replies_from_request_destination():
    """With pktinfo, the reply source is the address the request was sent to."""
    listener, received = make(bind=("0.0.0.0",))
    listener.ports = [FakePort("0.0.0.0")]
    listener.packet_received(0, b"x", Arrival(("10.0.0.9", 1234), destination="10.0.0.2", ifindex=3,
                                              spec_dst="10.0.0.2"))
    (dg,) = received
    assert dg.server == ("10.0.0.2", 4000)
    assert dg.route.source == "10.0.0.2" and dg.route.ifindex == 0


def test_ipv6_scope_kept_in_client():
    """A link-local sender keeps its scope as %interface in `client`."""
    index = socket.if_nametoindex("lo")
    assert display_address(("fe80::1", 5353, 0, index)) == ("fe80::1%lo", 5353)
    assert display_address(("::1", 53, 0, 0)) == ("::1", 53)


def test_connected_listener_counts_refused():
    """ICMP port unreachable on a connected listener is counted, and the listener keeps working."""
    listener, _ = make("connected", remote=Remote("127.0.0.1", 9))
    _PortProtocol(listener, 0).connectionRefused()
    assert listener.counters.get("connection_refused") == 1


def test_send_failure_is_counted_not_raised():
    """A socket error on write (EAGAIN under load) is counted and dropped."""
    listener, _ = make()

    class Failing:
        _connectedAddr = None

        def send_datagram(self, *args, **kwargs):
            raise BlockingIOError(11, "Resource temporarily unavailable")

    assert listener.write(Failing(), b"x", ("127.0.0.1", 9)) is False
    assert listener.counters.get("dropped_send_failed") == 1


def test_scoped_address_becomes_a_4_tuple():
    """A link-local address binds and connects with its scope id; other addresses stay (host, port)."""
    index = socket.if_nametoindex("lo")
    assert socket_address("fe80::1%lo", 53) == ("fe80::1", 53, 0, index)
    assert socket_address(f"fe80::1%{index}", 53) == ("fe80::1", 53, 0, index)
    assert socket_address("::1", 53) == ("::1", 53)
    assert socket_address("127.0.0.1", 53) == ("127.0.0.1", 53)


def test_read_errors_are_counted_and_rate_limited_per_errno():
    """Read errors count as receive_errors; each errno is logged once per interval, per listener."""
    log_events = []
    listener, _ = make()
    listener.quiet = QuietLog(Logger(observer=log_events.append), clock=Clock())
    protocol = _PortProtocol(listener, 0)
    for code in (errno.EPROTO, errno.EPROTO, errno.ENETUNREACH):
        protocol.receive_failed(OSError(code, os.strerror(code)))
    assert listener.counters.get("receive_errors") == 3
    assert [str(e["err"]) for e in log_events] == ["[Errno 71] Protocol error", "[Errno 101] Network is unreachable"]


class FlakySocket:
    """A real socket whose next reads raise the given OSErrors first (errnos the kernel won't give on demand)."""

    def __init__(self, real, *errnos):
        self._real = real
        self._errors = [OSError(code, os.strerror(code)) for code in errnos]

    def __getattr__(self, name):
        return getattr(self._real, name)

    def _read(self, method, *args):
        if self._errors:
            raise self._errors.pop(0)
        return getattr(self._real, method)(*args)

    def recvfrom(self, *args):
        return self._read("recvfrom", *args)

    def recvmsg(self, *args):
        return self._read("recvmsg", *args)


def _real_listener(sink, bind="127.0.0.1"):
    from twisted.internet import reactor

    log_events = []
    listener = KINDS["plain"](ListenerConfig(name="l", type="plain", port=0, bind=(bind,)), sink=sink,
                              reactor=reactor, counters=Counters(),
                              quiet=QuietLog(Logger(observer=log_events.append)))
    listener.startService()
    return listener, log_events


@pytest.mark.parametrize("bind", ["127.0.0.1", "0.0.0.0"], ids=["recvfrom", "recvmsg-pktinfo"])
@aio
async def test_socket_read_error_is_counted_and_the_port_keeps_reading(bind):
    """An unexpected errno from a socket read is counted as receive_errors and logged once, rate-limited;
    the port stays open and the datagrams waiting behind it are delivered."""
    received = []
    listener, log_events = _real_listener(received.append, bind)
    port = listener.ports[0]
    port.socket = FlakySocket(port.socket, errno.EPROTO, errno.EHOSTUNREACH, errno.EPROTO)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            for data in (b"one", b"two"):
                client.sendto(data, ("127.0.0.1", port.getHost().port))
            await eventually(lambda: len(received) == 2)
        assert [d.data for d in received] == [b"one", b"two"]
        assert listener.counters.get("receive_errors") == 3
        assert [e["log_format"] for e in log_events] == ["listener {name}: reading a datagram failed ({err})"] * 2
        assert port.connected
    finally:
        await Deferred.asFuture(listener.stopService(), asyncio.get_event_loop())


@aio
async def test_handler_exception_is_counted_and_logged_once():
    """A datagram whose hand-off raises is counted as receive_errors; its traceback is logged once per interval."""
    received = []

    def sink(datagram):
        if datagram.data == b"bad":
            raise RuntimeError("bug in the hand-off")
        received.append(datagram)

    listener, log_events = _real_listener(sink)
    port = listener.ports[0]
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            for data in (b"bad", b"bad", b"bad", b"good"):
                client.sendto(data, ("127.0.0.1", port.getHost().port))
            await eventually(lambda: received)
        assert listener.counters.get("receive_errors") == 3
        assert len(log_events) == 1 and log_events[0]["log_failure"].type is RuntimeError
    finally:
        await Deferred.asFuture(listener.stopService(), asyncio.get_event_loop())


class RefusingSocket:
    """setsockopt always fails with one errno."""

    def __init__(self, code):
        self.code = code
        self.calls = 0

    def setsockopt(self, *args):
        self.calls += 1
        raise OSError(self.code, os.strerror(self.code))


@pytest.mark.parametrize("sources", [(), ("192.0.2.9", "192.0.2.10")], ids=["any-source", "source-specific"])
@pytest.mark.parametrize("code, warned", [(errno.ENODEV, False), (errno.EADDRNOTAVAIL, False),
                                          (errno.EPERM, True), (errno.EINVAL, True)])
def test_leave_errors_gone_interface_silent_others_logged_once(monkeypatch, code, warned, sources):
    """Leaving on an interface that is gone (ENODEV, EADDRNOTAVAIL) is silent; any other error is logged
    once per family and interface, not swallowed, and every group and source is still tried."""
    from gateway.interfaces import Interface
    from listeners import multicast

    events = []
    monkeypatch.setattr(multicast, "log", Logger(observer=events.append))
    listener, _ = make("multicast", bind=(), groups=("239.1.2.3", "239.1.2.4"), sources=sources)
    port, eth9 = FakePort(), Interface("eth9", 9, ("192.0.2.2",), (), up=True, multicast=True, loopback=False)
    port.socket = RefusingSocket(code)
    for _ in range(2):
        listener._leave(port, eth9)
    assert port.socket.calls == 2 * 2 * max(1, len(sources))
    failed = [e for e in events if "failed" in e["log_format"]]
    assert len(failed) == (1 if warned else 0)
    if warned:
        assert (failed[0]["iface"], failed[0]["err"].errno) == ("eth9", code)
    assert sum("left" in e["log_format"] for e in events) == 2


def _sysctl(name):
    with open(f"/proc/sys/net/core/{name}") as file:
        return int(file.read())


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux caps buffers at rmem_max")


def _buffers(skt):
    return skt.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF), skt.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)


@linux_only
def test_size_buffers_under_the_caps_are_granted():
    """Sizes under rmem_max/wmem_max are granted (Linux reads back twice the size) and nothing is capped."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as skt:
        assert size_buffers(skt, 65536, 32768) == []
        assert _buffers(skt) == (131072, 65536)


@linux_only
def test_size_buffers_leaves_sndbuf_alone_when_not_asked():
    """sndbuf None keeps the system's default send buffer."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as fresh, socket.socket(socket.AF_INET6,
                                                                                   socket.SOCK_DGRAM) as skt:
        assert size_buffers(skt, 65536, None) == []
        assert _buffers(skt) == (131072, _buffers(fresh)[1])


@linux_only
def test_size_buffers_reports_what_the_kernel_capped():
    """Past net.core.rmem_max/wmem_max the kernel grants the cap; each capped buffer is reported with its sysctl."""
    rmem_max, wmem_max = _sysctl("rmem_max"), _sysctl("wmem_max")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as skt:
        capped = size_buffers(skt, rmem_max + 4096, wmem_max + 8192)
        assert _buffers(skt) == (2 * rmem_max, 2 * wmem_max)
    assert capped == [("SO_RCVBUF", rmem_max, rmem_max + 4096, "net.core.rmem_max"),
                      ("SO_SNDBUF", wmem_max, wmem_max + 8192, "net.core.wmem_max")]
    assert capped_message(capped[:1]) == (
        f"SO_RCVBUF capped at {rmem_max} bytes (asked {rmem_max + 4096}): raise it with "
        f"`sysctl -w net.core.rmem_max={rmem_max + 4096}` (and in /etc/sysctl.d/ to keep it)")
    assert capped_message(capped).endswith(
        f"raise it with `sysctl -w net.core.rmem_max={rmem_max + 4096} net.core.wmem_max={wmem_max + 8192}` "
        "(and in /etc/sysctl.d/ to keep it)")


@linux_only
@pytest.mark.parametrize("port_class", [GatewayPort, GatewayMulticastPort])
def test_port_sockets_get_the_buffers_asked(port_class):
    """Both kinds of port create their socket with the rcvbuf and sndbuf set on them (4 MiB receive by default)."""
    port = port_class(0, _PortProtocol(make()[0], 0), "127.0.0.1")
    with port.createInternetSocket() as skt:
        assert _buffers(skt)[0] == 2 * min(4 * 1024 * 1024, _sysctl("rmem_max"))
    port.rcvbuf, port.sndbuf = 65536, 16384
    with port.createInternetSocket() as skt:
        assert _buffers(skt) == (131072, 32768)
        assert port.capped == []


@linux_only
@aio
async def test_capped_buffers_give_one_warning_per_listener(monkeypatch):
    """A listener whose sockets the kernel capped logs one warning with the sysctl command, however many sockets;
    its sockets hold what the kernel granted and the listener still serves."""
    from twisted.internet import reactor

    from listeners import base

    events = []
    monkeypatch.setattr(base, "log", Logger(observer=events.append))
    rmem_max = _sysctl("rmem_max")
    asked = min(rmem_max * 2, 1 << 30)
    received = []
    config = ListenerConfig(name="echo", type="plain", port=0, bind=("127.0.0.1", "::1"), rcvbuf=asked)
    listener = KINDS["plain"](config, sink=received.append, reactor=reactor, counters=Counters(),
                              quiet=QuietLog(clock=Clock()))
    listener.startService()
    try:
        assert [_buffers(port.socket)[0] for port in listener.ports] == [2 * rmem_max] * 2
        warnings = [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]
        assert warnings == [
            f"listener echo: SO_RCVBUF capped at {rmem_max} bytes (asked {asked}): raise it with "
            f"`sysctl -w net.core.rmem_max={asked}` (and in /etc/sysctl.d/ to keep it)"
        ]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.sendto(b"still served", listener.addresses()[0])
            await eventually(lambda: received, what="the datagram")
        assert received[0].data == b"still served"
    finally:
        await Deferred.asFuture(listener.stopService(), asyncio.get_event_loop())


@linux_only
@aio
async def test_buffers_within_the_caps_give_no_warning(monkeypatch):
    """A listener granted what it asked logs no warning, and its socket reads back the sizes asked."""
    from twisted.internet import reactor

    from listeners import base

    events = []
    monkeypatch.setattr(base, "log", Logger(observer=events.append))
    config = ListenerConfig(name="l", type="plain", port=0, bind=("127.0.0.1",), rcvbuf=131072, sndbuf=65536)
    listener = KINDS["plain"](config, sink=lambda datagram: None, reactor=reactor, counters=Counters(),
                              quiet=QuietLog(clock=Clock()))
    listener.startService()
    try:
        assert _buffers(listener.ports[0].socket) == (262144, 131072)
        assert [e for e in events if e["log_level"] == LogLevel.warn] == []
    finally:
        await Deferred.asFuture(listener.stopService(), asyncio.get_event_loop())
