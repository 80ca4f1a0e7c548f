"""The UDP ports of listeners: socket options before bind, recvmsg with pktinfo, sends with a source."""

import errno
import socket

from twisted.internet import protocol, udp
from twisted.logger import Logger

from listeners import sockopts
from listeners.packets import Arrival

MAX_PACKET = 65535  # Twisted's default of 8192 silently truncates larger datagrams.
RECEIVE_BUFFER = 4 * 1024 * 1024  # bytes asked for each socket; Linux caps it at net.core.rmem_max
_READ_IGNORE = {errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR, errno.EMSGSIZE, errno.ENOBUFS, errno.ENOMEM}
_READ_REFUSE = {errno.ECONNREFUSED}

log = Logger()


class _PortMixin:
    """Socket options before bind, recvmsg with pktinfo, and sends with a chosen source."""

    reuse_port = False
    pktinfo = False
    multicast_socket = False

    def createInternetSocket(self):
        skt = super().createInternetSocket()
        _raise_receive_buffer(skt)
        if self.addressFamily == socket.AF_INET6:
            skt.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if self.reuse_port:
            skt.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if self.multicast_socket:
            _configure_multicast_socket(skt, self.addressFamily)
        if self.pktinfo:
            self.pktinfo = _request_pktinfo(skt, self.addressFamily)
        return skt

    def doRead(self):
        """Read what is ready; like udp.Port.doRead but keeps scope ids and pktinfo."""
        read = 0
        space = sockopts.ancillary_space()
        while read < self.maxThroughput:
            try:
                if self.pktinfo:
                    data, ancdata, _flags, addr = self.socket.recvmsg(self.maxPacketSize, space)
                else:
                    (data, addr), ancdata = self.socket.recvfrom(self.maxPacketSize), ()
            except OSError as se:
                if se.args[0] in _READ_IGNORE:
                    return
                if se.args[0] in _READ_REFUSE:
                    if self._connectedAddr:
                        self.protocol.connectionRefused()
                    return
                raise
            read += max(len(data), 64)
            arrival = _arrival(addr, ancdata) if ancdata else Arrival(addr)
            try:
                self.protocol.packet_received(data, arrival)
            except Exception:
                log.failure("listener failed to handle a datagram")

    def send_datagram(self, data, address=None, *, source=None, ifindex=0):
        """Send one datagram; pktinfo picks the source address and interface."""
        if self._connectedAddr:
            return self.socket.send(data)
        if source is None and not ifindex:
            return self.socket.sendto(data, address)
        if self.addressFamily == socket.AF_INET6:
            info = (socket.IPPROTO_IPV6, sockopts.IPV6_PKTINFO, sockopts.in6_pktinfo(ifindex, source or "::"))
        else:
            info = (socket.IPPROTO_IP, sockopts.IP_PKTINFO, sockopts.in_pktinfo(ifindex, source or "0.0.0.0"))
        if info[1] is None:
            raise OSError(errno.ENOPROTOOPT, "this platform cannot choose a datagram's source or interface")
        return self.socket.sendmsg([data], [info], 0, address)


def _arrival(addr, ancdata):
    dst, ifindex, spec_dst = sockopts.parse_pktinfo(ancdata)
    return Arrival(addr, dst, ifindex or 0, spec_dst)


def _raise_receive_buffer(skt):
    """Ask for a receive buffer that holds a burst while the reactor is busy elsewhere."""
    # The default (net.core.rmem_default, ~208 KiB) holds a few hundred small
    # datagrams; past it the kernel drops them unseen (socket(7) SO_RCVBUF).
    try:
        if skt.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) < RECEIVE_BUFFER:
            skt.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
    except OSError as exc:  # BSDs refuse sizes above kern.ipc.maxsockbuf instead of capping
        log.info("keeping the default socket receive buffer ({err})", err=exc)


def _request_pktinfo(skt, family):
    """Ask for each datagram's destination and interface; False (logged) where the platform cannot."""
    v6 = family == socket.AF_INET6
    option = sockopts.IPV6_RECVPKTINFO if v6 else sockopts.IP_PKTINFO
    try:
        sockopts.setopt(skt, socket.IPPROTO_IPV6 if v6 else socket.IPPROTO_IP, option, 1)
        return True
    except OSError as exc:
        log.warn("no destination addresses on this platform ({err}): `server` is the bound address or first "
                 "group, and the kernel picks each reply's source", err=exc)
        return False


def _configure_multicast_socket(skt, family):
    """Share the port with SO_REUSEADDR only, and receive only joined groups."""
    # SO_REUSEPORT (set by listenMultiple) makes Linux hand each multicast
    # datagram to ONE socket of the port, chosen by hash: clear it.
    skt.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if hasattr(socket, "SO_REUSEPORT"):
        skt.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 0)
    try:
        # Linux delivers every group joined by anyone on the port unless
        # IP_MULTICAST_ALL / IPV6_MULTICAST_ALL are off (ip(7), ipv6(7)).
        if family == socket.AF_INET6:
            sockopts.setopt(skt, socket.IPPROTO_IPV6, sockopts.IPV6_MULTICAST_ALL, 0)
        else:
            sockopts.setopt(skt, socket.IPPROTO_IP, sockopts.IP_MULTICAST_ALL, 0)
    except OSError as exc:
        if exc.errno not in (errno.ENOPROTOOPT, errno.EINVAL):
            raise
        log.warn("this platform cannot restrict a socket to its own groups ({err})", err=exc)


class GatewayPort(_PortMixin, udp.Port):
    """A unicast UDP port of a listener."""


class GatewayMulticastPort(_PortMixin, udp.MulticastPort):
    """A multicast UDP port of a listener (SO_REUSEADDR without SO_REUSEPORT)."""

    multicast_socket = True
    pktinfo = True


class _PortProtocol(protocol.DatagramProtocol):
    """Hands datagrams of one port to its listener."""

    noisy = False

    def __init__(self, listener, index):
        self._listener = listener
        self._index = index

    def logPrefix(self):
        # Twisted's own lines ("... starting on 9999") then name the listener.
        return f"listener {self._listener.name}"

    def packet_received(self, data, arrival):
        self._listener.packet_received(self._index, data, arrival)

    def datagramReceived(self, data, addr):
        self.packet_received(data, Arrival(addr))

    def connectionRefused(self):
        self._listener.connection_refused()
