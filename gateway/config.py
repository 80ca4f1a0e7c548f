"""gateway.yaml → every problem with its key path, or frozen dataclasses the runtime code reads."""

import os
import socket
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from gateway import interfaces as ifaces
from gateway._imports import (
    MEMORY,
    application_problems,
    backend_problems,
    put_first_on_path,
    read_sysctl,
)
from gateway._schema import (
    Key,
    Walker,
    application_spec,
    at_least,
    channel_name,
    clash,
    import_format,
    in_range,
    interface_spec,
    ip,
    multicast_group,
    non_empty,
    one_of,
    positive,
    remote_host,
    scoped,
    string_keys,
    unicast,
)
from gateway._source import (
    load_yaml,
    substitute_env,
)
from gateway.messages import DEFAULT_CHANNEL

KINDS = ("plain", "connected", "multicast")
_FAMILIES = {4: socket.AF_INET, 6: socket.AF_INET6}


@dataclass(frozen=True)
class Problem:
    """One thing wrong (or, with `warning`, doubtful) in a config file, located by file and key path."""

    file: str
    key: str
    message: str
    warning: bool = False

    def __str__(self):
        """`file: key: message`, or `file: message` for file-level problems (callers mark warnings)."""
        return f"{self.file}: {self.key}: {self.message}" if self.key else f"{self.file}: {self.message}"


@dataclass(frozen=True)
class LayerConfig:
    """The channel layer: "memory" or a layer class's dotted path, and its keyword arguments."""

    backend: str = MEMORY
    config: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Remote:
    """The one peer of a connected listener."""

    host: str
    port: int


@dataclass(frozen=True)
class ListenerConfig:
    """One listener; `bind` holds resolved addresses, `interfaces` the specs as written."""

    name: str
    type: str
    port: int
    channel: str = DEFAULT_CHANNEL
    bind: tuple[str, ...] = ()
    bind_interface: str | None = None
    reuse_port: bool = False
    remote: Remote | None = None
    send_channel: str | None = None
    groups: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    interfaces: tuple[str, ...] = ()
    ttl: int = 1
    loopback: bool = True


@dataclass(frozen=True)
class Limits:
    """Bounds on what one gateway process holds, whatever its clients do."""

    reply_ttl: float = 60.0
    max_reply_channels: int = 100000
    max_concurrency: int = 1000
    max_layer_sends: int = 50
    interface_poll: float = 5.0


@dataclass(frozen=True)
class GatewayConfig:
    """A whole valid gateway.yaml."""

    path: str
    directory: str
    channel_layer: LayerConfig
    application: str | None
    listeners: tuple[ListenerConfig, ...]
    limits: Limits


REMOTE = {
    "host": Key(str, required=True, check=remote_host),
    "port": Key(int, required=True, check=in_range(1, 65535)),
}
COMMON = {
    "name": Key(str, required=True, check=non_empty),
    "type": Key(str, required=True, check=one_of(*KINDS)),
    "port": Key(int, required=True, check=in_range(0, 65535)),
    "channel": Key(str, default=DEFAULT_CHANNEL, check=channel_name),
}
_SOCKET = {
    "bind": Key(str, required=True, check=interface_spec),
    "reuse_port": Key(bool, default=False),
}
_SEND_CHANNEL = Key(str, check=channel_name)
TABLES = {
    "plain": {**COMMON, **_SOCKET},
    "connected": {
        **COMMON,
        **_SOCKET,
        "remote": Key(dict, required=True, table=REMOTE),
        "send_channel": _SEND_CHANNEL,
    },
    "multicast": {
        **COMMON,
        "groups": Key(list, required=True, item=Key(str, check=multicast_group), check=non_empty),
        "sources": Key(list, default=(), item=Key(str, check=unicast)),
        "interfaces": Key(list, default=(), item=Key(str, check=interface_spec)),
        "ttl": Key(int, default=1, check=in_range(0, 255)),
        "loopback": Key(bool, default=True),
        "send_channel": _SEND_CHANNEL,
    },
}
# Keys of other kinds whose message says more than "needs a <kind> listener".
_NOT_ON_MULTICAST = "is not allowed on a multicast listener"
FOREIGN = {
    ("multicast", "bind"): f"bind {_NOT_ON_MULTICAST} (it binds the wildcard address; use interfaces)",
    ("multicast", "reuse_port"): f"reuse_port {_NOT_ON_MULTICAST} (multicast ports are always shared)",
}
LAYER = {
    "backend": Key(str, default=MEMORY, check=lambda value: None if value == MEMORY else import_format(value)),
    "config": Key(dict, default={}, check=string_keys),
}
LIMITS = {
    "reply_ttl": Key(float, default=60.0, check=positive),
    "max_reply_channels": Key(int, default=100000, check=at_least(1)),
    "max_concurrency": Key(int, default=1000, check=at_least(1)),
    "max_layer_sends": Key(int, default=50, check=at_least(1)),
    "interface_poll": Key(float, default=5.0, check=positive),
}
TOP = {
    "channel_layer": Key(dict, default={}, table=LAYER),
    "application": Key(str, check=application_spec),
    "listeners": Key(list, required=True, check=non_empty),
    "limits": Key(dict, default={}, table=LIMITS),
}


def _listener_table(raw):
    """(table, foreign-key messages) for a listener; every kind's keys when its type is unknown."""
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind not in TABLES:
        merged = {k: replace(s, required=False) for t in TABLES.values() for k, s in t.items()}
        return {**merged, **COMMON}, {}
    foreign = {}
    for table in TABLES.values():
        for key in table.keys() - TABLES[kind].keys():
            owners = " or ".join(k for k in KINDS if key in TABLES[k])
            foreign[key] = FOREIGN.get((kind, key), f"{key} needs a {owners} listener")
    return TABLES[kind], foreign


def load_config(path, *, host_checks=True, imports=True):
    """(GatewayConfig or None, problems): None when any problem is not a warning. Never raises for user errors.

    host_checks: interfaces and addresses must exist here; imports: import application and backend.
    """
    return _Checker(path, host_checks=host_checks, imports=imports).run()


class _Checker:
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
            with open(self.path, encoding="utf-8") as file:
                text = file.read()
        except OSError as exc:
            return self._file_problem("", f"cannot read: {exc.strerror or exc}")
        except UnicodeDecodeError as exc:
            return self._file_problem("", f"cannot read: not UTF-8 ({exc.reason} at byte {exc.start})")
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
        layer = self.top.get("channel_layer")
        if layer is not None and layer.get("backend", MEMORY) == MEMORY and data.get("application") is None:
            self.add(("application",), "required with the memory backend: nobody else could answer")
        if self.imports:
            self._imports(layer)

    def _listener(self, index, raw):
        path = ("listeners", index)
        table, foreign = _listener_table(raw)
        values = self.walker.table(table, raw, path, foreign=foreign)
        kind = values.get("type")
        if kind in ("plain", "connected") and "bind" in values:
            self._bind(values, path)
        if kind == "connected" and "bind" in values and "remote" in values:
            self._remote_family(values, path)
        if kind == "multicast":
            self._multicast(values, path)
        return values

    # plain and connected: bind, remote

    def _bind(self, values, path):
        spec, where = values.pop("bind"), (*path, "bind")
        if ip(spec) is not None:
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
            limit = read_sysctl(name)
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
        limits = {key: float(v) if LIMITS[key].type is float else v for key, v in self.top["limits"].items()}
        path = os.path.abspath(self.path)
        return GatewayConfig(
            path=path,
            directory=os.path.dirname(path),
            channel_layer=LayerConfig(layer.get("backend", MEMORY), dict(layer.get("config", {}))),
            application=self.top.get("application"),
            listeners=tuple(_listener_config(values) for values in self.listeners),
            limits=Limits(**limits),
        )


def _listener_config(values):
    """The frozen listener from its checked values."""
    fields = {key: value for key, value in values.items() if value is not None}
    if "remote" in fields:
        fields["remote"] = Remote(**fields["remote"])
    return ListenerConfig(**fields)


def errors(problems):
    """The problems that are not warnings."""
    return [problem for problem in problems if not problem.warning]


def describe(config):
    """One summary line per listener, for `udpgateway check`."""
    return [_describe_listener(listener) for listener in config.listeners]


def _describe_listener(listener):
    """`name: kind where port N[ to remote], channel C[, send_channel S]`."""
    if listener.type == "multicast":
        where = ", ".join(listener.interfaces) or "all multicast interfaces"
        text = f"{listener.name}: multicast {', '.join(listener.groups)} on {where} port {listener.port}"
        if listener.sources:
            text += f" from {', '.join(listener.sources)}"
    else:
        where = ", ".join(listener.bind)
        if listener.bind_interface and listener.bind != (listener.bind_interface,):
            where = f"{listener.bind_interface} ({where})"
        port = f"{listener.port} (ephemeral)" if listener.port == 0 else str(listener.port)
        text = f"{listener.name}: {listener.type} on {where} port {port}"
        if listener.remote:
            text += f" to {_host_port(listener.remote.host, listener.remote.port)}"
        if listener.reuse_port:
            text += ", reuse_port"
    text += f", channel {listener.channel}"
    if listener.send_channel:
        text += f", send_channel {listener.send_channel}"
    return text


def _host_port(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
