"""The UDP ports of listeners: socket options before bind, recvmsg with pktinfo, sends with a source."""

import errno
import socket
import sys

from twisted.internet import address, error, protocol, udp
from twisted.logger import Logger
from twisted.python.failure import Failure

from listeners import sockopts
from listeners.packets import Arrival

MAX_PACKET = 65535  # Twisted's default of 8192 silently truncates larger datagrams.
RECEIVE_BUFFER = 4 * 1024 * 1024  # bytes asked for each socket unless its listener says (config `rcvbuf`)
_BUFFERS = (  # option, its name, and the Linux sysctl that caps what SO_RCVBUF/SO_SNDBUF may ask (socket(7))
    (socket.SO_RCVBUF, "SO_RCVBUF", "net.core.rmem_max"),
    (socket.SO_SNDBUF, "SO_SNDBUF", "net.core.wmem_max"),
)
_LINUX = sys.platform.startswith("linux")
_READ_IGNORE = {errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR, errno.EMSGSIZE, errno.ENOBUFS, errno.ENOMEM}
_READ_REFUSE = {errno.ECONNREFUSED}

log = Logger()


class _PortMixin:
    """Socket options before bind, recvmsg with pktinfo, and sends with a chosen source."""

    reuse_port = False
    pktinfo = False
    multicast_socket = False
    _scoped_host = None  # getHost() of a socket bound to a scoped address, which never changes
    rcvbuf = RECEIVE_BUFFER  # bytes of SO_RCVBUF asked for
    sndbuf = None  # bytes of SO_SNDBUF asked for; None keeps the system's default
    capped = ()  # [(name, got, asked, sysctl)]: buffers the kernel gave less of than asked

    def createInternetSocket(self):
        skt = super().createInternetSocket()
        self.capped = size_buffers(skt, self.rcvbuf, self.sndbuf)
        if self.addressFamily == socket.AF_INET6:
            skt.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if self.reuse_port:
            skt.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if self.multicast_socket:
            _configure_multicast_socket(skt, self.addressFamily)
        if self.pktinfo:
            self.pktinfo = _request_pktinfo(skt, self.addressFamily)
        return skt

    @classmethod
    def adopt(cls, fd, family, protocol, reactor, *, pktinfo=None, rcvbuf=RECEIVE_BUFFER, sndbuf=None):
        """A port on the bound socket `fd`, as reactor.adoptDatagramPort makes one, but of this class.

        It works on a duplicate of `fd` and gets the options that still apply after bind.
        """
        port = cls._fromListeningDescriptor(reactor, fd, family, protocol, MAX_PACKET)
        if pktinfo is not None:
            port.pktinfo = pktinfo
        skt = port._preexistingSocket
        skt.setblocking(False)  # Twisted needs it; systemd passes blocking sockets
        port.rcvbuf, port.sndbuf = rcvbuf, sndbuf
        port.capped = size_buffers(skt, rcvbuf, sndbuf)
        if port.multicast_socket:
            _own_groups_only(skt, family)
        if port.pktinfo:
            port.pktinfo = _request_pktinfo(skt, family)
        return port

    def _bindSocket(self):
        """Bind as udp.Port does, but a scoped address ("fe80::1%eth0") keeps its scope id."""
        # Python drops the scope of a 2-tuple: a link-local bind must be (host, port, 0, ifindex),
        # or the kernel refuses it with EINVAL (ipv6(7)).
        if self._preexistingSocket is None and "%" in self.interface:
            skt = None
            try:
                skt = self.createInternetSocket()
                skt.bind(socket_address(self.interface, self.port))
            except OSError as le:
                if skt is not None:
                    skt.close()
                raise error.CannotListenError(self.interface, self.port, le) from None
            self._preexistingSocket = skt  # udp.Port then adopts it: port number, log line, reading
        super()._bindSocket()

    def getHost(self):
        """udp.Port.getHost, but a link-local address keeps its scope as %name (as `client` does)."""
        if self._scoped_host is not None:
            return self._scoped_host
        if self.addressFamily != socket.AF_INET6:
            return super().getHost()
        host, port, flow, scope = self.socket.getsockname()
        if not scope:
            return address.IPv6Address("UDP", host, port)
        try:
            name = socket.if_indextoname(scope)
        except OSError:
            name = str(scope)
        self._scoped_host = address.IPv6Address("UDP", f"{host.partition('%')[0]}%{name}", port, flow, scope)
        return self._scoped_host

    def connect(self, host, port):
        """Connect as udp.Port does, keeping a scoped remote's scope id."""
        if "%" not in host:
            return super().connect(host, port)
        if self._connectedAddr:
            raise RuntimeError("already connected, reconnecting is not currently supported")
        self._connectedAddr = (host, port)
        self.socket.connect(socket_address(host, port))

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
                if se.errno in _READ_IGNORE:
                    return
                if se.errno in _READ_REFUSE:
                    if self._connectedAddr:
                        self.protocol.connectionRefused()
                    return
                # Raised into Twisted, it would log a traceback and close the port: count it and go on.
                self.protocol.receive_failed(se)
                return
            read += max(len(data), 64)
            arrival = _arrival(addr, ancdata) if ancdata else Arrival(addr)
            try:
                self.protocol.packet_received(data, arrival)
            except Exception:
                self.protocol.handler_failed(Failure())

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


def socket_address(host, port):
    """The tuple to bind or connect to: (host, port), or a 4-tuple with the scope id of "fe80::1%eth0"."""
    if "%" not in host:
        return (host, port)
    flags = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV
    return socket.getaddrinfo(host, port, socket.AF_INET6, socket.SOCK_DGRAM, 0, flags)[0][4]


def size_buffers(skt, rcvbuf, sndbuf):
    """Ask for the socket's buffers (None: leave one as it is); [(name, got, asked, sysctl)] for those capped."""
    # The default (net.core.rmem_default, ~208 KiB) holds a few hundred small
    # datagrams; past it the kernel drops them unseen (socket(7) SO_RCVBUF).
    capped = []
    for (option, name, sysctl), asked in zip(_BUFFERS, (rcvbuf, sndbuf)):
        if asked is None:
            continue
        try:
            skt.setsockopt(socket.SOL_SOCKET, option, asked)
        except OSError as exc:  # BSDs refuse sizes above kern.ipc.maxsockbuf instead of capping
            log.info("keeping the default socket {name} ({err})", name=name, err=exc)
            continue
        # Linux grants min(asked, sysctl) and reports twice that, room for its bookkeeping (socket(7)).
        got = skt.getsockopt(socket.SOL_SOCKET, option) // 2 if _LINUX else asked
        if got < asked:
            capped.append((name, got, asked, sysctl))
    return capped


def capped_message(capped):
    """What a listener logs once when the kernel capped its buffers: what it got and the command to raise it."""
    what = ", ".join(f"{name} capped at {got} bytes (asked {asked})" for name, got, asked, _ in capped)
    command = " ".join(f"{sysctl}={asked}" for _, _, asked, sysctl in capped)
    return f"{what}: raise it with `sysctl -w {command}` (and in /etc/sysctl.d/ to keep it)"


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
    _own_groups_only(skt, family)


def _own_groups_only(skt, family):
    """Receive only the groups this socket joined."""
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

    def receive_failed(self, exc):
        self._listener.receive_failed(exc)

    def handler_failed(self, failure):
        self._listener.handler_failed(failure)
