"""What `udpgateway check` prints for a valid config: one line per listener."""

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
