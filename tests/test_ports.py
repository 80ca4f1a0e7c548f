"""listeners.ports without network traffic: a listener's port over a scripted socket, reading and writing."""

import errno
import socket

from twisted.internet.task import Clock

from gateway.config import ListenerConfig, Remote
from gateway.stats import Counters, QuietLog
from listeners import KINDS, sockopts


class ScriptedSocket:
    """Stands in for a bound UDP socket: reads return scripted datagrams or raise scripted errors."""

    def __init__(self, reads=(), host=("127.0.0.1", 4000), endless=None):
        self.reads = list(reads)
        self.host = host
        self.endless = endless
        self.sent = []

    def _next(self):
        if self.endless is not None:
            return self.endless
        item = self.reads.pop(0) if self.reads else OSError(errno.EAGAIN, "no more")
        if isinstance(item, Exception):
            raise item
        return item

    def recvfrom(self, size):
        data, addr, _ancdata = self._next()
        return data, addr

    def recvmsg(self, size, space):
        data, addr, ancdata = self._next()
        return data, ancdata, 0, addr

    def getsockname(self):
        return self.host

    def connect(self, address):
        self.connected = address

    def sendto(self, data, address):
        self.sent.append(("sendto", data, address))
        return len(data)

    def send(self, data):
        self.sent.append(("send", data))
        return len(data)

    def sendmsg(self, buffers, ancdata, flags, address):
        self.sent.append(("sendmsg", b"".join(buffers), ancdata, address))
        return sum(map(len, buffers))


def listener_with_port(kind="plain", bind="127.0.0.1", reads=(), **overrides):
    """A listener of `kind` whose only port reads from a ScriptedSocket; (listener, port, sink list)."""
    values = dict(name="l", type=kind, port=0, bind=(bind,))
    values.update(overrides)
    received = []
    listener = KINDS[kind](ListenerConfig(**values), sink=received.append, reactor=Clock(),
                           counters=Counters(), quiet=QuietLog(clock=Clock()))
    port = listener.make_port(bind, 0)
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    port.socket = ScriptedSocket(reads, host=(bind, 4000) if family == socket.AF_INET else (bind, 4000, 0, 0))
    port.addressFamily = family
    listener.ports.append(port)
    return listener, port, received


def test_every_ready_datagram_reaches_the_sink_in_order():
    """One read hands every queued datagram to the listener's sink, in order, with sender and server."""
    reads = [(b"one", ("192.0.2.7", 1111), []), (b"", ("192.0.2.8", 2222), []), (b"x" * 65507, ("192.0.2.7", 1111), [])]
    listener, port, received = listener_with_port(reads=reads)
    port.doRead()
    assert [(d.data, d.client) for d in received] == [(b"one", ("192.0.2.7", 1111)), (b"", ("192.0.2.8", 2222)),
                                                      (b"x" * 65507, ("192.0.2.7", 1111))]
    assert {d.server for d in received} == {("127.0.0.1", 4000)}
    assert {(d.listener, d.version) for d in received} == {("l", 4)}


def test_wildcard_port_reports_destination_and_interface_from_pktinfo():
    """On a wildcard port, pktinfo gives each datagram's real destination as `server` and its interface."""
    lo = socket.if_nametoindex("lo")
    info = sockopts.IN_PKTINFO.pack(lo, socket.inet_aton("127.0.0.2"), socket.inet_aton("127.0.0.2"))
    reads = [(b"hi", ("127.0.0.1", 5555), [(socket.IPPROTO_IP, sockopts.IP_PKTINFO, info)])]
    _listener, port, received = listener_with_port(bind="0.0.0.0", reads=reads)
    port.doRead()
    (datagram,) = received
    assert datagram.server == ("127.0.0.2", 4000) and datagram.interface == "lo"


def test_a_read_is_bounded():
    """A socket that always has data does not keep the reactor in one read forever."""
    listener, port, received = listener_with_port()
    port.socket.endless = (b"x" * 1000, ("192.0.2.7", 1), [])
    port.doRead()
    assert 0 < len(received) <= port.maxThroughput // 1000 + 1


def test_transient_read_errors_end_the_read_quietly():
    """EAGAIN, EINTR, ENOBUFS, ENOMEM and EMSGSIZE end one read; nothing is counted and later reads work."""
    for code in (errno.EAGAIN, errno.EINTR, errno.ENOBUFS, errno.ENOMEM, errno.EMSGSIZE):
        listener, port, received = listener_with_port(reads=[OSError(code, "x"), (b"later", ("192.0.2.7", 1), [])])
        port.doRead()
        assert received == [] and listener.counters.snapshot() == {}
        port.doRead()
        assert [d.data for d in received] == [b"later"]


def test_refused_on_a_connected_port_is_counted():
    """ECONNREFUSED (ICMP port unreachable) on a connected port counts connection_refused; reading goes on."""
    reads = [OSError(errno.ECONNREFUSED, "refused"), (b"back", ("127.0.0.1", 9), [])]
    listener, port, received = listener_with_port("connected", reads=reads, remote=Remote("127.0.0.1", 9))
    port.connect("127.0.0.1", 9)
    port.doRead()
    assert listener.counters.snapshot() == {"connection_refused": 1}
    port.doRead()
    assert [d.data for d in received] == [b"back"]


def test_refused_on_an_unconnected_port_is_ignored():
    """ECONNREFUSED on a plain (unconnected) port is not about any peer of ours: nothing is counted."""
    listener, port, _ = listener_with_port(reads=[OSError(errno.ECONNREFUSED, "refused")])
    port.doRead()
    assert listener.counters.snapshot() == {}


def test_send_without_source_goes_to_the_address():
    """A reply with no chosen source is one sendto to the client."""
    _listener, port, _ = listener_with_port()
    port.send_datagram(b"r", ("192.0.2.7", 1111))
    assert port.socket.sent == [("sendto", b"r", ("192.0.2.7", 1111))]


def test_send_on_a_connected_port_goes_to_the_remote():
    """On a connected port a datagram is sent to the remote, whatever address is given."""
    _listener, port, _ = listener_with_port("connected", remote=Remote("127.0.0.1", 9))
    port.connect("127.0.0.1", 9)
    port.send_datagram(b"r", None)
    assert port.socket.sent == [("send", b"r")]


def test_send_with_a_source_carries_pktinfo():
    """A reply from a chosen source address and interface carries IP_PKTINFO / IPV6_PKTINFO with them."""
    _listener, port, _ = listener_with_port(bind="0.0.0.0")
    port.send_datagram(b"r", ("192.0.2.7", 1), source="10.0.0.2", ifindex=3)
    (kind, data, ancdata, address), = port.socket.sent
    assert (kind, data, address) == ("sendmsg", b"r", ("192.0.2.7", 1))
    assert ancdata == [(socket.IPPROTO_IP, sockopts.IP_PKTINFO, sockopts.in_pktinfo(3, "10.0.0.2"))]
    _listener, port6, _ = listener_with_port(bind="::")
    port6.send_datagram(b"r6", ("fe80::1", 1, 0, 2), source="fe80::2", ifindex=2)
    (_, _, ancdata, _), = port6.socket.sent
    assert ancdata == [(socket.IPPROTO_IPV6, sockopts.IPV6_PKTINFO, sockopts.in6_pktinfo(2, "fe80::2"))]


class RefusingSocket(ScriptedSocket):
    def __init__(self, code, **kwargs):
        super().__init__(**kwargs)
        self.code = code

    def sendto(self, data, address):
        raise OSError(self.code, errno.errorcode[self.code])

    send = lambda self, data: self.sendto(data, None)  # noqa: E731


def test_refused_writes_are_counted_by_kind():
    """A write the socket refuses is dropped and counted: EAGAIN as dropped_send_failed, ECONNREFUSED
    on a connected port as connection_refused; neither raises."""
    listener, port, _ = listener_with_port()
    port.socket = RefusingSocket(errno.EAGAIN)
    assert listener.write(port, b"x", ("192.0.2.7", 1)) is False
    assert listener.counters.snapshot() == {"dropped_send_failed": 1}
    listener, port, _ = listener_with_port("connected", remote=Remote("127.0.0.1", 9))
    port.socket = RefusingSocket(errno.ECONNREFUSED)
    port.connect("127.0.0.1", 9)
    assert listener.announce(b"x") is False
    assert listener.counters.snapshot() == {"connection_refused": 1}
