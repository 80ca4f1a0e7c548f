"""Listener units with Twisted's fake transport and a recording sink, plus real-socket basics."""

import socket

from twisted.internet.task import Clock

from gateway.config import ListenerConfig, Remote
from gateway.stats import Counters, QuietLog
from listeners import KINDS
from listeners.base import Arrival, Route, display_address
from listeners.ports import _PortProtocol


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
