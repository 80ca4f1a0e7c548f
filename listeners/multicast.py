"""Multicast UDP: one wildcard socket per family, every group joined on every interface by index."""

import contextlib
import errno
import socket

from twisted.internet import task
from twisted.logger import Logger

from gateway import interfaces as ifaces
from listeners import activation, sockopts
from listeners.base import BadRoute, BaseListener
from listeners.ports import MAX_PACKET, GatewayMulticastPort, _PortProtocol

log = Logger()

# What a failed join usually means, as one line an operator can act on.
_JOIN_ERRORS = {
    errno.ENODEV: "the interface no longer exists",
    errno.EADDRNOTAVAIL: "the interface is down or has no address of this family",
    errno.ENOBUFS: "too many memberships: raise the sysctl net.ipv4.igmp_max_memberships (igmp_max_msf for sources)",
    errno.EINVAL: "the kernel refused the group or interface (is multicast enabled on it?)",
    errno.ENOPROTOOPT: "this kernel lacks the socket option (source-specific multicast?)",
    errno.EPERM: "not permitted on this interface",
}
_FAMILIES = {socket.AF_INET: "IPv4", socket.AF_INET6: "IPv6"}
# A leave that fails with these means the interface went away and took its memberships with it.
_LEAVE_GONE = {errno.ENODEV, errno.EADDRNOTAVAIL}
_MAX_LEAVE_LOGGED = 256  # (family, interface) pairs whose failed leave was logged; forgotten all at once past it


class MulticastListener(BaseListener):
    """Joins its groups on each interface, follows interfaces that come and go, sends to groups."""

    kind = "multicast"
    fixed_interface = False  # joins follow interfaces that come and go
    port_class = GatewayMulticastPort

    def __init__(self, config, *, sink, reactor, counters, quiet, poll_interval=5.0, fds=()):
        super().__init__(config, sink=sink, reactor=reactor, counters=counters, quiet=quiet, fds=fds)
        self._groups = {f: [g for g in config.groups if sockopts.family_of(g) == f] for f in _FAMILIES}
        self._sources = {f: [s for s in config.sources if sockopts.family_of(s) == f] for f in _FAMILIES}
        self._joined = {f: {} for f in _FAMILIES}  # family -> {ifindex: Interface}
        self._refused = {f: set() for f in _FAMILIES}  # family -> ifindexes whose refusal was logged
        self._leave_logged = set()  # (family, interface name) whose failed leave was logged
        self._poll_interval = poll_interval
        self._poller = None

    # -- sockets ---------------------------------------------------------
    def bind_addresses(self):
        return [host for host, f in (("0.0.0.0", socket.AF_INET), ("::", socket.AF_INET6)) if self._groups[f]]

    def make_port(self, host, index):
        proto = _PortProtocol(self, index)
        return GatewayMulticastPort(self.config.port, proto, host, MAX_PACKET, self._reactor, listenMultiple=True)

    def adopted_problem(self, fd, family, address):
        if not self._groups[family]:
            name = activation.family_name(family)
            return f"fd {fd} is an {name} socket but the listener has no {name} group"
        if any(p.addressFamily == family for p in self.ports):
            return f"fd {fd} is a second {activation.family_name(family)} socket (one per family)"
        return activation.mismatch(fd, address, port=self.config.port)

    def port_started(self, port):
        skt, ttl, loop = port.socket, self.config.ttl, int(self.config.loopback)
        if port.addressFamily == socket.AF_INET6:
            skt.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, ttl)
            skt.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, max(ttl, 1))
            skt.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, loop)
        else:
            skt.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
            skt.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, max(ttl, 1))
            skt.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, loop)

    def startService(self):
        super().startService()
        try:
            self.sync_memberships(initial=True)
        except Exception:
            self._close_ports()
            raise
        self._poller = task.LoopingCall(self._poll)
        self._poller.clock = self._reactor
        self._poller.start(self._poll_interval, now=False)

    def stopService(self):
        if self._poller is not None and self._poller.running:
            self._poller.stop()
        self._poller = None
        return super().stopService()

    def set_poll_interval(self, seconds):
        """limits.interface_poll changed on reload: the next check comes `seconds` from now."""
        self._poll_interval = seconds
        if self._poller is not None and self._poller.running:
            self._poller.stop()
            self._poller.start(seconds, now=False)

    def _port_of(self, family):
        for port in self.ports:
            if port.addressFamily == family:
                return port
        return None

    # -- memberships -----------------------------------------------------
    def wanted_interfaces(self, family):
        """{ifindex: Interface} this listener should be joined on now, for one family."""
        found = ifaces.list_interfaces()
        if not self.config.interfaces:
            chosen = ifaces.default_multicast_interfaces(family, found)
        else:
            chosen = [ifaces.find_interface(spec, found) for spec in self.config.interfaces]
            attr = "ipv6" if family == socket.AF_INET6 else "ipv4"
            chosen = [i for i in chosen if i is not None and getattr(i, attr)]
        return {i.index: i for i in chosen}

    def sync_memberships(self, initial=False):
        """Join on interfaces that appeared (or got a new index), forget those that left."""
        tried = set()
        for family, groups in self._groups.items():
            port = self._port_of(family)
            if not groups or port is None:
                continue
            wanted, joined = self.wanted_interfaces(family), self._joined[family]
            for index in [i for i in joined if i not in wanted]:
                self._leave(port, joined.pop(index))
            self._refused[family] &= set(wanted)
            for index, iface in wanted.items():
                if index not in joined and self._join(port, iface, quiet=initial):
                    joined[index] = iface
            tried.update(i.name for i in wanted.values())
        if initial:
            self._log_joins(tried)

    def _poll(self):
        try:
            self.sync_memberships()
        except Exception:
            log.failure("listener {name}: checking interfaces failed", name=self.name)

    def _log_joins(self, tried):
        if not any(self._joined.values()):
            if not tried:
                raise RuntimeError("no up multicast interface has an address of its groups' family")
            raise RuntimeError(f"joined none of its groups on {', '.join(sorted(tried))}")
        for family, joined in self._joined.items():
            if self._groups[family]:
                names = ", ".join(f"{i.name} (index {i.index})" for i in joined.values()) or "no interface"
                log.info("listener {name}: {groups} joined on {names}", name=self.name,
                         groups=" ".join(self._groups[family]), names=names)

    def _join(self, port, iface, *, quiet=False):
        """Join every group of the port's family on one interface; False if none joined.

        A refusal is logged once per interface index; later polls retry silently.
        """
        family, ok = port.addressFamily, False
        for group in self._groups[family]:
            try:
                self._membership(port.socket, family, group, iface.index, join=True)
                ok = True
            except OSError as exc:
                ok = ok or exc.errno == errno.EADDRINUSE  # already a member
                if exc.errno != errno.EADDRINUSE:
                    self._refuse(family, group, iface, exc)
        if ok:
            self._refused[family].discard(iface.index)
            if not quiet:
                log.info("listener {name}: joined {fam} groups on {iface} (index {index})", name=self.name,
                         fam=_FAMILIES[family], iface=iface.name, index=iface.index)
        return ok

    def _refuse(self, family, group, iface, exc):
        hint = _JOIN_ERRORS.get(exc.errno)
        if hint is None:
            raise exc
        if iface.index in self._refused[family]:
            return
        self._refused[family].add(iface.index)
        log.warn("listener {name}: cannot join {group} on {iface}: {hint} ({err}); skipped", name=self.name,
                 group=group, iface=iface.name, hint=hint, err=exc.strerror)

    def _leave(self, port, iface):
        for group in self._groups[port.addressFamily]:
            try:
                self._membership(port.socket, port.addressFamily, group, iface.index, join=False)
            except OSError as exc:
                if exc.errno not in _LEAVE_GONE:  # the kernel drops a destroyed device's memberships itself
                    self._leave_failed(port.addressFamily, group, iface, exc)
        log.info("listener {name}: left {fam} groups on {iface} (index {index}): gone, down or without an "
                 "{fam} address", name=self.name, fam=_FAMILIES[port.addressFamily], iface=iface.name,
                 index=iface.index)

    def _leave_failed(self, family, group, iface, exc):
        """An unexpected error on leave: logged once per family and interface, never swallowed."""
        key = (family, iface.name)
        if key in self._leave_logged:
            return
        if len(self._leave_logged) >= _MAX_LEAVE_LOGGED:
            self._leave_logged.clear()
        self._leave_logged.add(key)
        log.warn("listener {name}: leaving {group} on {iface} (index {index}) failed: {err}", name=self.name,
                 group=group, iface=iface.name, index=iface.index, err=exc)

    def _membership(self, skt, family, group, ifindex, *, join):
        sources = self._sources[family]
        level = socket.IPPROTO_IPV6 if family == socket.AF_INET6 else socket.IPPROTO_IP
        if sources:
            self._source_membership(skt, level, group, ifindex, sources, join=join)
        elif family == socket.AF_INET6:
            option = socket.IPV6_JOIN_GROUP if join else socket.IPV6_LEAVE_GROUP
            skt.setsockopt(level, option, sockopts.ipv6_mreq(group, ifindex))
        else:
            option = socket.IP_ADD_MEMBERSHIP if join else socket.IP_DROP_MEMBERSHIP
            skt.setsockopt(level, option, sockopts.ip_mreqn(group, ifindex))

    def _source_membership(self, skt, level, group, ifindex, sources, *, join):
        """Join (or leave) a group for each source; a join that fails midway is undone."""
        option = sockopts.MCAST_JOIN_SOURCE_GROUP if join else sockopts.MCAST_LEAVE_SOURCE_GROUP
        failed = None
        for count, source in enumerate(sources):
            try:
                sockopts.setopt(skt, level, option, sockopts.group_source_req(ifindex, group, source))
            except OSError as exc:
                if not join:
                    failed = failed or exc  # still leave the other sources, then report the first error
                    continue
                if count:  # e.g. ENOBUFS past igmp_max_msf: leave no partial filter behind
                    with contextlib.suppress(OSError):
                        self._source_membership(skt, level, group, ifindex, sources[:count], join=False)
                raise
        if failed is not None:
            raise failed

    def joined_interfaces(self):
        """{family: [interface names]} currently joined."""
        return {f: sorted(i.name for i in j.values()) for f, j in self._joined.items()}

    # -- receiving and sending -------------------------------------------
    def default_server(self, bound_host):
        family = sockopts.family_of(bound_host)
        return self._groups[family][0]

    def default_interface(self, index):
        joined = [i for j in self._joined.values() for i in j.values()]
        return joined[0].name if len({i.name for i in joined}) == 1 else None

    def _group_port(self):
        return self.config.port or (self.ports[0].getHost().port if self.ports else 0)

    def send_reply(self, route, data, multicast=False):
        if not multicast:
            return super().send_reply(route, data)
        if route.port >= len(self.ports):
            raise BadRoute("unknown_token", "the listener's port is closed")
        port = self.ports[route.port]
        groups = [route.group] if route.group else self._groups[port.addressFamily]
        ifindex = route.ifindex or route.arrived_on
        if not ifindex:
            raise BadRoute("bad_message", "the request's interface is unknown: cannot reply by multicast")
        sent = False
        for group in groups:
            sent = self.write(port, data, self._group_address(port, group, ifindex), ifindex=ifindex) or sent
        return sent

    def announce(self, data):
        """Send to every group on every joined interface."""
        sent = False
        for port in list(self.ports):
            for index in list(self._joined[port.addressFamily]):
                for group in self._groups[port.addressFamily]:
                    sent = self.write(port, data, self._group_address(port, group, index), ifindex=index) or sent
        return sent

    def _group_address(self, port, group, ifindex):
        if port.addressFamily == socket.AF_INET6:
            return (group, self._group_port(), 0, ifindex)
        return (group, self._group_port())
