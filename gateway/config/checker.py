"""One config load: read the file, walk the key tables, run host, cross-field and import checks, build."""

import os
import socket

from gateway import interfaces as ifaces
from gateway.config.imports import application_problems, backend_problems, put_first_on_path
from gateway.config.model import (
    MEMORY, GatewayConfig, LayerConfig, Limits, ListenerConfig, Metrics, Problem, RateLimit, Remote, errors,
)
from gateway.config.schema import Walker, clash, ip, ip_network, scoped
from gateway.config.source import Unreadable, load_yaml, read_text, substitute_env
from gateway.config.tables import LIMITS, RATE_LIMIT, TABLES, TOP, as_floats, listener_table

_FAMILIES = {4: socket.AF_INET, 6: socket.AF_INET6}


def load_config(path, *, host_checks=True, imports=True):
    """(GatewayConfig or None, problems): None when any problem is not a warning. Never raises for user errors.

    host_checks: interfaces and addresses must exist here; imports: import application and backend.
    """
    try:
        return Checker(path, host_checks=host_checks, imports=imports).run()
    except Exception as exc:  # a case the checks missed still gets one line, not a traceback
        return None, [Problem(path, "", f"cannot check this file ({type(exc).__name__}: {str(exc)[:200]})")]


class Checker:
    """One load: read, walk the tables, then host, cross-field and import checks, then build."""

    def __init__(self, path, *, host_checks, imports):
        self.path = path
        self.host_checks = host_checks
        self.imports = imports
        self.walker = Walker()
        self.file_problems = []
        self.top, self.listeners = {}, []
        self._host = None

    @property
    def host(self):
        """This host's interfaces, read once per load."""
        if self._host is None:
            self._host = ifaces.list_interfaces()
        return self._host

    def add(self, path, message, *, warning=False):
        self.walker.add(path, message, warning=warning)

    def run(self):
        data = self._read()
        if data is not None:
            self._check(data)
        walked = [Problem(self.path, key, message, warning) for key, message, warning in self.walker.problems]
        problems = self.file_problems + walked
        return (None if data is None or errors(problems) else self._build()), problems

    def _read(self):
        """The parsed YAML ({} for an empty file), or None after file-level problems."""
        try:
            text = read_text(self.path)
        except OSError as exc:
            return self._file_problem("", f"cannot read: {exc.strerror or exc}")
        except Unreadable as exc:
            return self._file_problem("", f"cannot read: {exc}")
        text, unset = substitute_env(text, os.environ)
        for line, message in unset:
            self._file_problem(f":{line}", message)
        if unset:
            return None
        ok, data, problems = load_yaml(text)
        for where, message in problems:
            self._file_problem(f":{where}" if where else "", message)
        return ({} if data is None else data) if ok else None

    def _file_problem(self, where, message):
        self.file_problems.append(Problem(f"{self.path}{where}", "", message))

    def _check(self, data):
        self.top = self.walker.table(TOP, data)
        raw = data["listeners"] if "listeners" in self.top else []
        self.listeners = [self._listener(i, item) for i, item in enumerate(raw)]
        self._duplicate_names()
        self._duplicate_binds()
        self._send_channels()
        if self.top.get("metrics") and "bind" in self.top["metrics"]:
            self._metrics_bind(self.top["metrics"])
        layer = self.top.get("channel_layer")
        if layer is not None and layer.get("backend", MEMORY) == MEMORY and data.get("application") is None:
            self.add(("application",), "required with the memory backend: nobody else could answer")
        if self.imports:
            self._imports(layer)

    def _listener(self, index, raw):
        path = ("listeners", index)
        table, foreign = listener_table(raw)
        values = self.walker.table(table, raw, path, foreign=foreign)
        if "bind" in values and values["bind"] is None:  # optional with fd
            del values["bind"]
        kind = values.get("type")
        if kind in ("plain", "connected") and "bind" in values:
            self._bind(values, path)
        if kind == "connected" and "bind" in values and "remote" in values:
            self._remote_family(values, path)
        if kind == "multicast":
            self._multicast(values, path)
        for key in ("allow", "deny"):
            if key in values:
                values[key] = tuple(ip_network(text) for text in values[key])
        return values

    # plain and connected: bind, remote

    def _bind(self, values, path):
        spec, where = values.pop("bind"), (*path, "bind")
        if ip(spec) is not None and values.get("fd") is not None:
            bind = (str(ip(spec)),)  # only compared with the adopted socket (FreeBind= may bind it early)
        elif ip(spec) is not None:
            bind = self._bind_address(spec, where)
        else:
            values["bind_interface"] = spec
            bind = self._bind_interface(spec, where)
        if bind is not None:
            values["bind"] = bind

    def _bind_address(self, spec, where):
        address = ip(spec)
        if not self.host_checks or address.is_unspecified:
            return (str(address),)
        interface = ifaces.find_interface(spec, self.host)
        if interface is None:
            return self.add(where, f"{spec} is not an address of this host")
        if address.version == 6 and address.is_link_local and not address.scope_id:
            address = ip(f"{address}%{interface.name}")  # a link-local bind needs its scope
        return (str(address),)

    def _metrics_bind(self, metrics):
        bind = self._bind_address(metrics.pop("bind"), ("metrics", "bind"))
        if bind is not None:
            metrics["bind"] = bind[0]

    def _bind_interface(self, name, where):
        if not self.host_checks:
            return (name,)
        interface = self.host.get(name)
        if interface is None:
            return self.add(where, f"unknown interface '{name}'")
        found = interface.ipv4 + tuple(scoped(address, name) for address in interface.ipv6)
        if not found:
            return self.add(where, f"interface '{name}' has no IP address")
        return found

    def _remote_family(self, values, path):
        bind = [ip(address) for address in values["bind"]]
        if None in bind:  # an interface name not resolved (no host checks)
            return
        host = values["remote"]["host"]
        version = ip(host).version
        if version not in {address.version for address in bind}:
            self.add((*path, "remote", "host"), f"{host} is IPv{version} but bind has no IPv{version} address")

    # multicast: groups, sources, interfaces

    def _multicast(self, values, path):
        for key in ("groups", "sources"):
            if key in values:
                values[key] = tuple(str(ip(address)) for address in values[key])
        if "interfaces" in values:
            values["interfaces"] = tuple(values["interfaces"])
        if "groups" in values and "sources" in values:
            versions = {ip(group).version for group in values["groups"]}
            for i, source in enumerate(values["sources"]):
                version = ip(source).version
                if version not in versions:
                    self.add((*path, "sources", i), f"{source} is IPv{version} but no group is IPv{version}")
        if self.host_checks and "interfaces" in values:
            self._multicast_host(values, path)

    def _multicast_host(self, values, path):
        found = [self._find(spec, (*path, "interfaces", i)) for i, spec in enumerate(values["interfaces"])]
        if "groups" not in values or None in found:
            return
        for i, group in enumerate(values["groups"]):
            version = ip(group).version
            family, where = _FAMILIES[version], (*path, "groups", i)
            if found and not any(interface.addresses(family) for interface in found):
                self.add(where, f"{group} is IPv{version} but none of the interfaces has an IPv{version} address")
            elif not found and not ifaces.default_multicast_interfaces(family, self.host):
                message = f"no up multicast interface has an IPv{version} address now; {group} will be joined"
                self.add(where, f"{message} when one appears", warning=True)
        self._igmp_limits(values, path, len({interface.name for interface in found}))

    def _find(self, spec, where):
        interface = ifaces.find_interface(spec, self.host)
        if interface is None:
            unknown = f"no interface of this host has address {spec}" if ip(spec) else f"unknown interface '{spec}'"
            self.add(where, unknown)
        return interface

    def _igmp_limits(self, values, path, interface_count):
        """Warn where Linux would refuse joins: IP_ADD_MEMBERSHIP gives ENOBUFS past these sysctls."""
        groups = [group for group in values["groups"] if ip(group).version == 4]
        sources = [source for source in values.get("sources", ()) if ip(source).version == 4]
        memberships = f"{len(groups)} IPv4 groups x {interface_count} interfaces"
        for name, count, key, what in (
            ("igmp_max_memberships", len(groups) * interface_count, "groups", memberships),
            ("igmp_max_msf", len(sources), "sources", f"{len(sources)} IPv4 sources"),
        ):
            limit = ifaces.read_sysctl(f"net.ipv4.{name}")
            if limit is not None and count > limit:
                raise_it = f"raise it: sysctl -w net.ipv4.{name}={count} (and in /etc/sysctl.d/ to keep it)"
                self.add((*path, key), f"{what} exceed net.ipv4.{name} = {limit}; {raise_it}", warning=True)

    # across listeners

    def _duplicate_names(self):
        first = {}
        for i, values in enumerate(self.listeners):
            name = values.get("name")
            if name in first:
                message = f"duplicate listener name '{name}' (also listeners[{first[name]}])"
                self.add(("listeners", i, "name"), message)
            elif name is not None:
                first[name] = i

    def _duplicate_binds(self):
        """Plain/connected listeners may share a port only with reuse_port on both (port 0 never clashes)."""
        taken = []
        for i, values in enumerate(self.listeners):
            if values.get("type") not in ("plain", "connected") or not values.get("port") or "bind" not in values:
                continue
            mine = [(i, address, values["port"], values.get("reuse_port", False)) for address in values["bind"]]
            message = next((clash(a, b) for a in mine for b in taken if clash(a, b)), None)
            if message:
                self.add(("listeners", i, "bind"), message)
            taken.extend(mine)

    def _send_channels(self):
        receive = {values["channel"] for values in self.listeners if "channel" in values}
        first = {}
        for i, values in enumerate(self.listeners):
            send, where = values.get("send_channel"), ("listeners", i, "send_channel")
            if send in receive:
                self.add(where, f"'{send}' is also a listener's channel")
            elif send in first:
                self.add(where, f"'{send}' is also the send_channel of listeners[{first[send]}]")
            elif send is not None:
                first[send] = i

    # imports

    def _imports(self, layer):
        put_first_on_path(os.path.dirname(os.path.abspath(self.path)))
        if self.top.get("application") is not None:
            for message in application_problems(self.top["application"]):
                self.add(("application",), message)
        if layer is not None:
            for path, message in backend_problems(layer.get("backend", MEMORY), layer.get("config")):
                self.add(("channel_layer", *path), message)

    # the result

    def _build(self):
        layer = self.top["channel_layer"]
        metrics = self.top.get("metrics")
        path = os.path.abspath(self.path)
        return GatewayConfig(
            path=path,
            directory=os.path.dirname(path),
            channel_layer=LayerConfig(layer.get("backend", MEMORY), dict(layer.get("config", {}))),
            application=self.top.get("application"),
            listeners=tuple(_listener_config(values) for values in self.listeners),
            limits=Limits(**as_floats(LIMITS, self.top["limits"])),
            metrics=None if metrics is None else Metrics(**metrics),
        )


def _listener_config(values):
    """The frozen listener from its checked values."""
    fields = as_floats(TABLES[values["type"]], values)
    if fields.get("remote") is not None:
        fields["remote"] = Remote(**fields["remote"])
    if fields.get("rate_limit") is not None:
        fields["rate_limit"] = RateLimit(**as_floats(RATE_LIMIT, fields["rate_limit"]))
    return ListenerConfig(**fields)
