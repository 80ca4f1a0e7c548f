"""The message shapes of design.md: build `udp.receive`, validate `udp.send`."""

RECEIVE_TYPE = "udp.receive"
SEND_TYPE = "udp.send"
DEFAULT_CHANNEL = "udp.receive"
REPLY_PREFIX = "udp.send."

# The largest UDP payload: 65,535 minus the IPv4 (20) or IPv6 (8 of the
# jumbogram-free header counted by the kernel) and UDP (8) headers.
MAX_DATAGRAM = {4: 65507, 6: 65527}


class BadReply(ValueError):
    """A `udp.send` message the gateway refuses; `reason` names the counter."""

    def __init__(self, reason, detail):
        super().__init__(detail)
        self.reason = reason


def reply_prefix(gateway_id):
    """The process-specific reply channel prefix, ending in `!`."""
    return f"{REPLY_PREFIX}{gateway_id}!"


def host_port(address):
    """A JSON-friendly [host, port] list from a socket address tuple."""
    return [address[0], address[1]]


def build_receive(*, data, client, server, listener, reply_channel, interface=None):
    """The `udp.receive` message for one datagram."""
    message = {
        "type": RECEIVE_TYPE,
        "reply_channel": reply_channel,
        "data": data,
        "client": host_port(client),
        "server": host_port(server),
        "listener": listener,
    }
    if interface is not None:
        message["interface"] = interface
    return message


def validate_send(message, *, version):
    """Return (data, multicast) of a valid `udp.send`, or raise BadReply."""
    if not isinstance(message, dict):
        raise BadReply("bad_message", f"message is a {type(message).__name__}, not a dict")
    if message.get("type") != SEND_TYPE:
        raise BadReply("bad_message", f"type {message.get('type')!r} is not {SEND_TYPE!r}")
    data = message.get("data")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        what = "missing" if data is None else f"a {type(data).__name__}"
        raise BadReply("bad_message", f"data is {what}, not bytes")
    data = bytes(data)
    limit = MAX_DATAGRAM[version]
    if len(data) > limit:
        raise BadReply("too_large", f"data is {len(data)} bytes; IPv{version} carries {limit}")
    multicast = message.get("multicast", False)
    if not isinstance(multicast, bool):
        raise BadReply("bad_message", "multicast must be true or false")
    return data, multicast
