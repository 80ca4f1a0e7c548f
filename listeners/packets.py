"""What one received datagram carries from a port to the gateway, and small bounded per-host caches."""

import ipaddress
import socket
import time
from typing import NamedTuple

CACHE_SIZE = 1024     # entries per cache; past it the cache starts over (the kernel bounds the keys anyway)
IFNAME_REFRESH = 5.0  # seconds an interface name is trusted: interfaces can be renamed or re-created


class Arrival(NamedTuple):
    """Where a datagram came from and arrived: its sender and, with pktinfo, destination and interface."""

    source: tuple
    destination: str | None = None  # the address it was sent to (pktinfo), where known
    ifindex: int = 0                # the interface it arrived on (pktinfo), where known
    spec_dst: str | None = None     # the local address the kernel would answer from (IPv4 pktinfo)


class Route(NamedTuple):
    """How a reply to one client leaves: which port, to where, from where.

    A tuple of plain values, so the garbage collector stops tracking the 100,000
    of them a full token table holds (full collections stay short).
    """

    port: int
    address: tuple
    source: str | None = None
    ifindex: int = 0            # forced outgoing interface (0: the routing table decides)
    group: str | None = None
    arrived_on: int = 0         # the interface the request arrived on, where known


class Datagram:
    """One received datagram, as the listener saw it."""

    __slots__ = ("listener", "data", "client", "server", "interface", "route", "version")

    def __init__(self, *, listener, data, client, server, interface, route, version):
        self.listener = listener
        self.data = data
        self.client = client
        self.server = server
        self.interface = interface
        self.route = route
        self.version = version

    def __repr__(self):
        return f"Datagram(listener={self.listener!r}, client={self.client!r}, {len(self.data)} bytes)"


class _Bounded(dict):
    """A dict that starts over when it reaches CACHE_SIZE entries."""

    def remember(self, key, value):
        if len(self) >= CACHE_SIZE:
            self.clear()
        self[key] = value
        return value


_kinds = _Bounded()    # address -> (is multicast, is IPv6 link-local)
_ifnames = _Bounded()  # ifindex -> (name or None, looked up at)


def address_kind(address):
    """(is multicast, is IPv6 link-local) of a textual address, cached: pktinfo repeats a few addresses."""
    kind = _kinds.get(address)
    if kind is None:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        kind = _kinds.remember(address, (ip.is_multicast, ip.version == 6 and ip.is_link_local))
    return kind


def is_multicast(address):
    return address is not None and address_kind(address)[0]


def interface_name(ifindex, now=time.monotonic):
    """The interface name of an index, or None; looked up again after IFNAME_REFRESH seconds."""
    if not ifindex:
        return None
    cached = _ifnames.get(ifindex)
    if cached is not None and now() - cached[1] < IFNAME_REFRESH:
        return cached[0]
    try:
        name = socket.if_indextoname(ifindex)
    except OSError:
        name = None
    return _ifnames.remember(ifindex, (name, now()))[0]


def display_address(address):
    """(host, port) of a raw socket address, keeping an IPv6 scope as %name."""
    if len(address) == 2:
        return address  # IPv4: already (host, port); shared with the route, not copied
    host, port = address[0], address[1]
    if len(address) > 3 and address[3] and "%" not in host:
        host = f"{host}%{interface_name(address[3]) or address[3]}"
    return (host, port)
