"""The key tables of gateway.yaml: every key, its type, default and check, per listener kind."""

from dataclasses import replace

from gateway.config.model import MEMORY, RECEIVE_BUFFER
from gateway.config.schema import (
    Key,
    application_spec,
    at_least,
    channel_name,
    import_format,
    in_range,
    interface_spec,
    multicast_group,
    network,
    non_empty,
    one_of,
    positive,
    remote_host,
    string_keys,
    unicast,
    valid_address,
)
from gateway.messages import DEFAULT_CHANNEL

KINDS = ("plain", "connected", "multicast")
MAX_BUFFER = 1 << 30  # Linux halves SO_RCVBUF/SO_SNDBUF asks past INT_MAX / 2 anyway

REMOTE = {
    "host": Key(str, required=True, check=remote_host),
    "port": Key(int, required=True, check=in_range(1, 65535)),
}
RATE_LIMIT = {
    "rate": Key(float, required=True, check=positive),
    "burst": Key(int, required=True, check=at_least(1)),
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
# Who may talk, how fast, how much goes back, and the socket's buffers: every kind takes these.
_TRAFFIC = {
    "allow": Key(list, default=(), item=Key(str, check=network),
                 check=lambda value: None if value else "must not be empty (leave allow out to serve every source)"),
    "deny": Key(list, default=(), item=Key(str, check=network)),
    "rate_limit": Key(dict, table=RATE_LIMIT),
    "amplification": Key(float, default=10.0, check=positive, nullable=True),
    "rcvbuf": Key(int, default=RECEIVE_BUFFER, check=in_range(1, MAX_BUFFER)),
    "sndbuf": Key(int, check=in_range(1, MAX_BUFFER)),
}
_SEND_CHANNEL = Key(str, check=channel_name)
TABLES = {
    "plain": {**COMMON, **_SOCKET, **_TRAFFIC},
    "connected": {
        **COMMON,
        **_SOCKET,
        "remote": Key(dict, required=True, table=REMOTE),
        "send_channel": _SEND_CHANNEL,
        **_TRAFFIC,
    },
    "multicast": {
        **COMMON,
        "groups": Key(list, required=True, item=Key(str, check=multicast_group), check=non_empty),
        "sources": Key(list, default=(), item=Key(str, check=unicast)),
        "interfaces": Key(list, default=(), item=Key(str, check=interface_spec)),
        "ttl": Key(int, default=1, check=in_range(0, 255)),
        "loopback": Key(bool, default=True),
        "send_channel": _SEND_CHANNEL,
        **_TRAFFIC,
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
    "max_sources": Key(int, default=100000, check=at_least(1)),
}
METRICS = {
    "bind": Key(str, default="127.0.0.1", check=valid_address),
    "port": Key(int, default=9100, check=in_range(0, 65535)),
}
TOP = {
    "channel_layer": Key(dict, default={}, table=LAYER),
    "application": Key(str, check=application_spec),
    "listeners": Key(list, required=True, check=non_empty),
    "limits": Key(dict, default={}, table=LIMITS),
    "metrics": Key(dict, table=METRICS),
}


def listener_table(raw):
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


def as_floats(table, values):
    """`values` with the numbers of float keys as floats (YAML gives 60 for 60.0)."""
    return {key: float(value) if key in table and table[key].type is float and value is not None else value
            for key, value in values.items()}
