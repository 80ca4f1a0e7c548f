"""Listener base: the service that binds a listener's ports, hands datagrams on and sends replies."""

import errno
import socket

from twisted.application import service
from twisted.internet import defer, error
from twisted.logger import Logger

from listeners import activation
from listeners.packets import Arrival, Datagram, Route, address_kind, display_address, interface_name, is_multicast
from listeners.ports import MAX_PACKET, GatewayPort, _PortProtocol, capped_message

__all__ = ["Arrival", "BadRoute", "BaseListener", "Datagram", "Route", "display_address", "interface_name",
           "is_multicast"]

log = Logger()


class BadRoute(ValueError):
    """A reply this listener cannot send; `reason` names the drop counter."""

    def __init__(self, reason, detail):
        super().__init__(detail)
        self.reason = reason


class BaseListener(service.Service):
    """One configured listener: binds its ports, hands datagrams to `sink`, sends replies."""

    kind = ""
    port_class = GatewayPort
    fixed_interface = True  # default_interface() of a port never changes while it is bound
    guard = None  # a gateway.guard.SourceGuard (allow/deny, rate_limit): checked before anything else

    def __init__(self, config, *, sink, reactor, counters, quiet, fds=()):
        self.config = config
        self.name = config.name
        self.fds = tuple(fds)  # already-bound sockets to adopt instead of binding (`fd`, systemd)
        self._sink = sink
        self._reactor = reactor
        self.counters = counters
        self.quiet = quiet
        self.ports = []
        self.bound = False
        self._owners = []
        self._port_infos = {}  # port index -> (port, (bound host, port, IP version, default interface))

    # -- lifecycle: bind (privileged), then start, as Twisted's internet.UDPServer --
    def privilegedStartService(self):
        """Bind every port now (twistd calls this before dropping privileges); raises CannotListenError."""
        service.Service.privilegedStartService(self)
        self._bind()

    def startService(self):
        """Serve: bind first if privilegedStartService did not. Subclasses then join groups and the like."""
        if not self.bound:
            self._bind()
        service.Service.startService(self)

    def stopService(self):
        service.Service.stopService(self)
        return self._close_ports()

    def _bind(self):
        self.bound = True
        try:
            for index, where in enumerate(self.fds or self.bind_addresses()):
                if self.fds:
                    port = self.adopt_port(where, index)  # its buffers are sized as it is adopted
                else:
                    port = self.make_port(where, index)
                    port.rcvbuf, port.sndbuf = self.config.rcvbuf, self.config.sndbuf
                port.startListening()
                self.ports.append(port)
                self.port_started(port)
                self.log_port(port)
        except Exception:
            self._close_ports()
            raise
        self._warn_capped_buffers()

    def _warn_capped_buffers(self):
        """One warning for the listener, however many of its sockets the kernel gave smaller buffers."""
        capped = next((port.capped for port in self.ports if port.capped), None)
        if capped:
            log.warn("listener {name}: {capped}", name=self.name, capped=capped_message(capped))

    def _close_ports(self):
        ports, self.ports, self.bound = self.ports, [], False
        return defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in ports])

    def make_port(self, host, index):
        port = self.port_class(self.config.port, _PortProtocol(self, index), host, MAX_PACKET, self._reactor)
        port.reuse_port = self.config.reuse_port
        port.pktinfo = _is_wildcard(host)
        return port

    def adopt_port(self, fd, index):
        """A port on the inherited socket `fd`, which must be where bind and port say; AdoptError if not."""
        family, address = activation.inspect(fd)
        problem = self.adopted_problem(fd, family, address)
        if problem:
            raise activation.AdoptError(problem)
        return self.port_class.adopt(fd, family, _PortProtocol(self, index), self._reactor,
                                     pktinfo=_is_wildcard(address[0]) or None,
                                     rcvbuf=self.config.rcvbuf, sndbuf=self.config.sndbuf)

    def adopted_problem(self, fd, family, address):
        """Why the socket of `fd` cannot be this listener's, or None."""
        return activation.mismatch(fd, address, bind=self.config.bind, port=self.config.port)

    def port_started(self, port):
        """Hook for per-socket setup after bind."""

    def log_port(self, port):
        host = port.getHost()
        log.info(
            "listener {name} ({kind}) on {host}:{port} -> {channel}",
            name=self.name, kind=self.kind, host=_bracket(host.host), port=host.port,
            channel=self.config.channel,
        )

    def bind_addresses(self):
        return list(self.config.bind)

    def addresses(self):
        """The real (host, port) of every bound socket."""
        return [(p.getHost().host, p.getHost().port) for p in self.ports]

    # -- receiving -------------------------------------------------------
    def packet_received(self, index, data, arrival):
        """Hand one datagram to the sink; `arrival` is its sender and, with pktinfo, where it arrived."""
        if self.guard is not None and not self.guard.admits(arrival.source):
            return
        bound_host, bound_port, version, interface = self._port_info(index)
        dst = arrival.destination
        self._sink(Datagram(
            listener=self.name, data=data, client=display_address(arrival.source),
            server=(dst or self.default_server(bound_host), bound_port),
            interface=interface_name(arrival.ifindex) or interface or self.default_interface(index),
            route=self.make_route(index, arrival), version=version,
        ))

    def _port_info(self, index):
        """(bound host, port, IP version, default interface) of a port, cached: getHost() is a system call."""
        port = self.ports[index]
        cached = self._port_infos.get(index)
        if cached is None or cached[0] is not port:
            host = port.getHost()
            version = 6 if port.addressFamily == socket.AF_INET6 else 4
            interface = self.default_interface(index) if self.fixed_interface else None
            cached = self._port_infos[index] = (port, (host.host, host.port, version, interface))
        return cached[1]

    def default_server(self, bound_host):
        return bound_host

    def default_interface(self, index):
        """The interface named by `bind`, or the one owning the bound address."""
        if self.config.bind_interface:
            return self.config.bind_interface
        if not self._owners:
            from gateway.interfaces import find_interface

            found = [find_interface(p.getHost().host) for p in self.ports]
            self._owners = [i.name if i is not None else None for i in found]
        return self._owners[index] if index < len(self._owners) else None

    def make_route(self, index, arrival):
        """Reply from the address the request was sent to (pktinfo), where known."""
        dst = arrival.destination
        if dst is None:
            return Route(port=index, address=arrival.source)
        arrived_on = arrival.ifindex or 0
        multicast, link_local = address_kind(dst)
        if multicast:
            return Route(port=index, address=arrival.source, source=None if ":" in dst else arrival.spec_dst,
                         ifindex=arrived_on, group=dst, arrived_on=arrived_on)
        if ":" not in dst:
            return Route(port=index, address=arrival.source, source=arrival.spec_dst, arrived_on=arrived_on)
        return Route(port=index, address=arrival.source, source=dst, ifindex=arrived_on if link_local else 0,
                     arrived_on=arrived_on)

    def connection_refused(self):
        self.counters.incr("connection_refused", listener=self.name)
        self.quiet.warn("refused", "listener {name}: the peer refused a datagram (ICMP port unreachable)", name=self.name)

    def receive_failed(self, exc):
        """A socket read failed with an errno not known to be harmless: counted, logged rate-limited."""
        self.counters.incr("receive_errors", listener=self.name)
        code = errno.errorcode.get(exc.errno, str(exc.errno))
        self.quiet.warn(f"recv-{self.name}-{code}", "listener {name}: reading a datagram failed ({err})",
                        name=self.name, err=exc)

    def handler_failed(self, failure):
        """Handing a datagram on raised (a bug): counted, its traceback logged at most once per interval."""
        self.counters.incr("receive_errors", listener=self.name)
        self.quiet.failure(f"recv-{self.name}-{failure.type.__name__}", "listener {name} failed to handle a datagram",
                           failure, name=self.name)

    # -- sending ---------------------------------------------------------
    def send_reply(self, route, data, multicast=False):
        """Write a reply to the client of `route`; False if it could not leave."""
        if multicast:
            raise BadRoute("bad_message", f"listener {self.name} ({self.kind}) cannot send multicast replies")
        if route.port >= len(self.ports):
            raise BadRoute("unknown_token", "the listener's port is closed")
        return self.write(self.ports[route.port], data, route.address, source=route.source, ifindex=route.ifindex)

    def send_version(self):
        """The IP version whose size limit applies to send_channel messages."""
        return 4 if any(p.addressFamily == socket.AF_INET for p in self.ports) else 6

    def announce(self, data):
        """Write a send_channel message (connected and multicast listeners)."""
        raise BadRoute("bad_message", f"listener {self.name} has no send_channel target")

    def write(self, port, data, address, *, source=None, ifindex=0):
        try:
            port.send_datagram(data, address, source=source, ifindex=ifindex)
            return True
        except OSError as exc:
            if exc.errno == errno.ECONNREFUSED and port._connectedAddr:
                self.connection_refused()
                return False
            name = errno.errorcode.get(exc.errno, str(exc.errno))
            self.counters.incr("dropped_send_failed", listener=self.name)
            self.quiet.warn(f"send-{name}", "listener {name}: a datagram could not be sent ({err})",
                            name=self.name, err=exc)
            return False
        except error.MessageLengthError:
            self.counters.incr("dropped_too_large", listener=self.name)
            return False


def _is_wildcard(host):
    return host in ("", "0.0.0.0", "::")


def _bracket(host):
    return f"[{host}]" if ":" in host else host
