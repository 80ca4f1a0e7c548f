"""Sockets bound by someone else: systemd's LISTEN_FDS hand-over, and checking an inherited datagram socket."""

import ipaddress
import os
import socket

SD_LISTEN_FDS_START = 3  # sd_listen_fds(3): the first passed fd
MAX_LISTEN_FDS = 1024    # more than any .socket unit passes; a larger LISTEN_FDS is not systemd's
_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
_FAMILIES = {socket.AF_INET: "IPv4", socket.AF_INET6: "IPv6"}


class AdoptError(Exception):
    """An fd that cannot serve a listener; the message is the one line to show."""


def listen_fds(environ, pid, exec_environ=None):
    """({name: [fd, ...]}, note or None): the sockets systemd passed to process `pid`.

    As sd_listen_fds(unset_environment=1): LISTEN_PID, LISTEN_FDS and
    LISTEN_FDNAMES are removed from `environ` whatever they say, so children
    do not inherit them, and the passed fds get FD_CLOEXEC. An fd without a
    name is named "unknown", as systemd does. When LISTEN_FDS is gone from
    `environ`, the three are read from `exec_environ` (see exec_environment).
    """
    values = {name: environ.pop(name, None) for name in _VARIABLES}
    if values["LISTEN_FDS"] is None and exec_environ:
        values = {name: exec_environ.get(name) for name in _VARIABLES}
    if values["LISTEN_FDS"] is None:
        return {}, None
    try:
        listen_pid, count = int(values["LISTEN_PID"] or ""), int(values["LISTEN_FDS"])
    except ValueError:
        return {}, "LISTEN_PID or LISTEN_FDS is not a number: no sockets adopted from them"
    if listen_pid != pid:
        return {}, f"LISTEN_FDS is meant for pid {listen_pid}, not this process ({pid}): no sockets adopted from it"
    if not 0 <= count <= MAX_LISTEN_FDS:
        return {}, f"LISTEN_FDS={count} is not a number of passed sockets: none adopted"
    names = values["LISTEN_FDNAMES"].split(":") if values["LISTEN_FDNAMES"] else []
    fds = {}
    for offset in range(count):
        fd = SD_LISTEN_FDS_START + offset
        fds.setdefault(names[offset] if offset < len(names) else "unknown", []).append(fd)
    return fds, None


def exec_environment(path="/proc/self/environ"):
    """The LISTEN_* variables this process was exec'd with, as the kernel still holds them; {} if unreadable.

    Importing twisted.internet.endpoints deletes LISTEN_PID and LISTEN_FDS from
    os.environ (twisted.python.systemd.ListenFDs.fromEnvironment), and twistd
    imports it before any plugin's code runs whenever it rebuilds a missing or
    stale plugin cache (twisted/plugins/dropin.cache: a fresh install, or one
    it cannot write). unsetenv() leaves the exec'd environment block intact.
    """
    try:
        with open(path, "rb") as file:
            block = file.read()
    except OSError:
        return {}
    pairs = (os.fsdecode(entry).partition("=") for entry in block.split(b"\0") if entry)
    return {name: value for name, _, value in pairs if name in _VARIABLES}


def inspect(fd):
    """(family, (host, port)) of the bound IPv4/IPv6 datagram socket `fd`; AdoptError otherwise.

    The fd itself stays open (the listener's port works on a duplicate) and
    is marked close-on-exec.
    """
    try:
        skt = socket.socket(fileno=os.dup(fd))  # the family and type are read from the fd (SO_DOMAIN, SO_TYPE)
    except OSError as exc:
        raise AdoptError(f"fd {fd} is not an open socket ({exc.strerror})") from None
    with skt:
        if skt.family not in _FAMILIES:
            raise AdoptError(f"fd {fd} is a {skt.family.name} socket, not an IPv4 or IPv6 one")
        if skt.type != socket.SOCK_DGRAM:
            raise AdoptError(f"fd {fd} is a {skt.type.name} socket, not a datagram (SOCK_DGRAM) one")
        address = skt.getsockname()
    if not address[1]:
        raise AdoptError(f"fd {fd} is not bound to a port")
    os.set_inheritable(fd, False)
    return skt.family, (address[0], address[1])


def family_name(family):
    return _FAMILIES.get(family, str(family))


def mismatch(fd, address, *, bind=(), port=None):
    """The line saying an adopted socket is not where the config says, or None.

    `bind` (addresses) and `port` are what the listener gives; absent or
    port 0 (ephemeral) accept any.
    """
    host, bound_port = address
    wrong_host = bind and not any(_same_address(host, b) for b in bind)
    if not wrong_host and not (port and port != bound_port):
        return None
    said = [f"bind {', '.join(bind)}"] if bind else []
    said += [f"port {port}"] if port is not None else []
    shown = f"[{host}]" if ":" in host else host
    return f"fd {fd} is bound to {shown}:{bound_port} but the config says {' '.join(said)}"


def _same_address(a, b):
    """Equal addresses, scopes ignored ("fe80::1%eth0" is fe80::1)."""
    try:
        return ipaddress.ip_address(a.split("%", 1)[0]) == ipaddress.ip_address(b.split("%", 1)[0])
    except ValueError:
        return a == b
