"""The checked config as frozen dataclasses, and Problem: what runtime code and `check` read."""

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Mapping

from gateway.messages import DEFAULT_CHANNEL

MEMORY = "memory"  # the built-in channel layer's backend name
RECEIVE_BUFFER = 4 * 1024 * 1024  # SO_RCVBUF asked for when `rcvbuf` is not given
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Problem:
    """One thing wrong (or, with `warning`, doubtful) in a config file, located by file and key path."""

    file: str
    key: str
    message: str
    warning: bool = False

    def __str__(self):
        """`file: key: message`, or `file: message` for file-level problems (callers mark warnings)."""
        text = f"{self.file}: {self.key}: {self.message}" if self.key else f"{self.file}: {self.message}"
        return text if text.isprintable() else _one_line(text)


def _one_line(text):
    """Control characters and line breaks written as escapes: a key or value from the file may hold them,
    and a problem is one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def errors(problems):
    """The problems that are not warnings."""
    return [problem for problem in problems if not problem.warning]


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
class RateLimit:
    """A token bucket per source address: `rate` datagrams a second, bursts of up to `burst`."""

    rate: float
    burst: int


@dataclass(frozen=True)
class ListenerConfig:
    """One listener; `bind` holds resolved addresses, `interfaces` the specs as written.

    `allow`/`deny` hold networks (a bare address is a /32 or /128); `amplification` None is no cap,
    `sndbuf` None the system's default.
    """

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
    allow: tuple[Network, ...] = ()
    deny: tuple[Network, ...] = ()
    rate_limit: RateLimit | None = None
    amplification: float | None = 10.0
    rcvbuf: int = RECEIVE_BUFFER
    sndbuf: int | None = None
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
    max_sources: int = 100000


@dataclass(frozen=True)
class Metrics:
    """Where the Prometheus endpoint listens (HTTP)."""

    bind: str = "127.0.0.1"
    port: int = 9100


@dataclass(frozen=True)
class GatewayConfig:
    """A whole valid gateway.yaml; `metrics` is None when the file has none."""

    path: str
    directory: str
    channel_layer: LayerConfig
    application: str | None
    listeners: tuple[ListenerConfig, ...]
    limits: Limits
    metrics: Metrics | None = None
