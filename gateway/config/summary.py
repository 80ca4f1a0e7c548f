"""What `udpgateway check` prints for a valid config: one line per listener, and the metrics endpoint."""

from gateway.config.model import RECEIVE_BUFFER


def describe(config):
    """One summary line per listener, then one for the metrics endpoint if there is one."""
    found = [_describe_listener(listener) for listener in config.listeners]
    if config.metrics is not None:
        found.append(f"metrics: http://{_host_port(config.metrics.bind, config.metrics.port)}/metrics")
    return found


def _describe_listener(listener):
    """`name: kind where port N[ to remote], channel C[, send_channel S]`, then what differs from defaults."""
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
    return text + "".join(f", {part}" for part in _traffic(listener))


def _traffic(listener):
    """The filters, limits and buffers of a listener that differ from the defaults."""
    if listener.allow:
        yield "allow " + " ".join(map(str, listener.allow))
    if listener.deny:
        yield "deny " + " ".join(map(str, listener.deny))
    if listener.rate_limit:
        yield f"rate_limit {listener.rate_limit.rate:g}/s burst {listener.rate_limit.burst}"
    if listener.amplification is None:
        yield "amplification off"
    elif listener.amplification != 10:
        yield f"amplification {listener.amplification:g}x"
    if listener.rcvbuf != RECEIVE_BUFFER:
        yield f"rcvbuf {listener.rcvbuf}"
    if listener.sndbuf is not None:
        yield f"sndbuf {listener.sndbuf}"


def _port_text(listener):
    if listener.port is None:
        return ""  # an adopted socket's, whatever it is
    ephemeral = listener.port == 0 and listener.type != "multicast"
    return f" port {listener.port} (ephemeral)" if ephemeral else f" port {listener.port}"


def _adopting(listener):
    return "" if listener.fd is None else f" adopting fd {listener.fd}"


def _host_port(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
