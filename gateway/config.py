"""gateway.yaml → every problem with its key path, or frozen dataclasses the runtime code reads."""

import socket
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from gateway._imports import MEMORY
from gateway._schema import (
    Key,
    application_spec,
    at_least,
    channel_name,
    import_format,
    in_range,
    interface_spec,
    multicast_group,
    non_empty,
    one_of,
    positive,
    remote_host,
    string_keys,
    unicast,
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
    port: int | None = None  # None only with `fd`: the adopted socket's port
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
    fd: int | None = None  # adopt this already-bound socket instead of binding


@dataclass(frozen=True)
class Limits:
    """Bounds on what one gateway process holds, whatever its clients do."""

    reply_ttl: float = 60.0
    max_reply_channels: int = 100000
    max_concurrency: int = 1000
    max_layer_sends: int = 50
    interface_poll: float = 5.0
    app_timeout: float | None = 60.0  # None: application calls may run for ever


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
    "fd": Key(int, check=at_least(0)),
}
_OPTIONAL_WITH_FD = ("bind", "port")  # an adopted socket is bound already: given, they must match it
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
    "app_timeout": Key(float, default=60.0, check=positive, nullable=True),
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
    if not isinstance(kind, str) or kind not in TABLES:
        merged = {k: replace(s, required=False) for t in TABLES.values() for k, s in t.items()}
        return {**merged, **COMMON}, {}
    foreign = {}
    for table in TABLES.values():
        for key in table.keys() - TABLES[kind].keys():
            owners = " or ".join(k for k in KINDS if key in TABLES[k])
            foreign[key] = FOREIGN.get((kind, key), f"{key} needs a {owners} listener")
    table = TABLES[kind]
    if raw.get("fd") is not None:
        table = {key: replace(spec, required=False) if key in _OPTIONAL_WITH_FD else spec
                 for key, spec in table.items()}
    return table, foreign


def load_config(path, *, host_checks=True, imports=True):
    """(GatewayConfig or None, problems): None when any problem is not a warning. Never raises for user errors.

    host_checks: interfaces and addresses must exist here; imports: import application and backend.
    """
    from gateway._checker import Checker

    try:
        return Checker(path, host_checks=host_checks, imports=imports).run()
    except Exception as exc:  # a case the checks missed still gets one line, not a traceback
        return None, [Problem(path, "", f"cannot check this file ({type(exc).__name__}: {str(exc)[:200]})")]


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
        text = f"{listener.name}: multicast {', '.join(listener.groups)} on {where}{_port_text(listener)}"
        if listener.sources:
            text += f" from {', '.join(listener.sources)}"
    else:
        where = ", ".join(listener.bind)
        if listener.bind_interface and listener.bind != (listener.bind_interface,):
            where = f"{listener.bind_interface} ({where})"
        text = f"{listener.name}: {listener.type}{_adopting(listener)} on {where or 'its socket'}{_port_text(listener)}"
        if listener.remote:
            text += f" to {_host_port(listener.remote.host, listener.remote.port)}"
        if listener.reuse_port:
            text += ", reuse_port"
    if listener.type == "multicast":
        text += _adopting(listener)
    text += f", channel {listener.channel}"
    if listener.send_channel:
        text += f", send_channel {listener.send_channel}"
    return text


def _port_text(listener):
    if listener.port is None:
        return ""  # an adopted socket's, whatever it is
    ephemeral = listener.port == 0 and listener.type != "multicast"
    return f" port {listener.port} (ephemeral)" if ephemeral else f" port {listener.port}"


def _adopting(listener):
    return "" if listener.fd is None else f" adopting fd {listener.fd}"


def _host_port(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
