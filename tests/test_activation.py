"""Socket activation: sockets handed over as real file descriptors (`fd`, systemd's LISTEN_FDS), real twistd."""

import os
import shutil
import socket

import pytest

from listeners import activation
from tests.processes import GatewayProcess, child_env, listen_fds_wrapper
from tests.support import DEADLINE, skip_or_fail, wait_until
from tests.test_twistd import udp_exchange, write

ENV_APP = """
import os
from gateway.consumer import UDPConsumer

class Echo(UDPConsumer):
    async def udp_receive(self, message):
        if message["data"] == b"env":  # what a child of the gateway would inherit
            seen = [os.environ.get(k) for k in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")]
            await self.reply(message, repr(seen + [os.get_inheritable(3)]).encode())
        else:
            await self.reply(message, message["data"])

application = Echo.as_asgi()
"""


def bound_udp(host="127.0.0.1", port=0):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.bind((host, port))
    return s


def one_listener(fields, app="envapp:application"):
    return f"application: {app}\nlisteners:\n  - {{{fields}}}\n"


# -- the pieces, on real sockets -------------------------------------------


def test_listen_fds_by_name_and_environment_unset():
    """LISTEN_FDS for this pid maps names to fds from 3 on; the three variables are removed."""
    environ = {"LISTEN_PID": "42", "LISTEN_FDS": "3", "LISTEN_FDNAMES": "echo:dns:echo", "HOME": "/root"}
    fds, note = activation.listen_fds(environ, 42)
    assert (fds, note) == ({"echo": [3, 5], "dns": [4]}, None)
    assert environ == {"HOME": "/root"}


@pytest.mark.parametrize("environ, expected", [
    ({"LISTEN_PID": "41", "LISTEN_FDS": "1"}, "LISTEN_FDS is meant for pid 41, not this process (42)"),
    ({"LISTEN_FDS": "1"}, "LISTEN_PID or LISTEN_FDS is not a number"),
    ({"LISTEN_PID": "42", "LISTEN_FDS": "lots"}, "LISTEN_PID or LISTEN_FDS is not a number"),
    ({"LISTEN_PID": "42", "LISTEN_FDS": "100000"}, "LISTEN_FDS=100000 is not a number of passed sockets"),
])
def test_listen_fds_not_for_us(environ, expected):
    """LISTEN_FDS meant for another process, or garbled, adopts nothing, says why, and is still removed."""
    fds, note = activation.listen_fds(environ, 42)
    assert fds == {} and note.startswith(expected)
    assert environ == {}


def test_listen_fds_deleted_from_the_environment_are_read_from_the_exec_environment():
    """LISTEN_PID and LISTEN_FDS already deleted (by Twisted) are taken, with the names, from the exec'd environment."""
    environ = {"LISTEN_FDNAMES": "echo", "HOME": "/root"}
    exec_environ = {"LISTEN_PID": "42", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "echo"}
    assert activation.listen_fds(environ, 42, exec_environ) == ({"echo": [3]}, None)
    assert environ == {"HOME": "/root"}
    assert activation.listen_fds({}, 43, exec_environ)[1].startswith("LISTEN_FDS is meant for pid 42")


def test_listen_fds_in_the_environment_win_over_the_exec_environment():
    """Variables still in the environment are the ones used; the exec'd environment is only a fallback."""
    environ = {"LISTEN_PID": "42", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b"}
    exec_environ = {"LISTEN_PID": "42", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "c"}
    assert activation.listen_fds(environ, 42, exec_environ) == ({"a": [3], "b": [4]}, None)


def test_exec_environment_keeps_the_listen_variables_of_the_block(tmp_path):
    """A NUL-separated environment block gives its LISTEN_* variables only; an unreadable one gives {}."""
    block = tmp_path / "environ"
    block.write_bytes(b"HOME=/root\0LISTEN_PID=7\0LISTEN_FDS=1\0LISTEN_FDNAMES=a=b:c\0X=LISTEN_FDS=9\0")
    assert activation.exec_environment(str(block)) == {
        "LISTEN_PID": "7", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "a=b:c"}
    assert activation.exec_environment(str(tmp_path / "missing")) == {}


def test_listen_fds_without_names_are_unknown():
    """Without LISTEN_FDNAMES every fd is named "unknown", as systemd names them; no LISTEN_FDS: nothing."""
    assert activation.listen_fds({"LISTEN_PID": "7", "LISTEN_FDS": "2"}, 7) == ({"unknown": [3, 4]}, None)
    assert activation.listen_fds({"HOME": "/"}, 7) == ({}, None)


def test_inspect_a_bound_datagram_socket():
    """A bound UDP socket gives its family and address, and becomes close-on-exec."""
    with bound_udp() as s:
        os.set_inheritable(s.fileno(), True)
        family, (host, port) = activation.inspect(s.fileno())
        assert (family, host, port) == (socket.AF_INET, "127.0.0.1", s.getsockname()[1])
        assert not os.get_inheritable(s.fileno())


def test_inspect_refuses_what_is_not_a_bound_ipv4_or_ipv6_datagram_socket(tmp_path):
    """A stream socket, a Unix socket, an unbound socket, a file and a closed fd: one line each."""
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    unbound = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with tcp, unix, unbound, open(tmp_path / "f", "w") as file:
        cases = {
            tcp.fileno(): "is a SOCK_STREAM socket, not a datagram (SOCK_DGRAM) one",
            unix.fileno(): "is a AF_UNIX socket, not an IPv4 or IPv6 one",
            unbound.fileno(): "is not bound to a port",
            file.fileno(): "is not an open socket (Socket operation on non-socket)",
        }
        for fd, message in cases.items():
            with pytest.raises(activation.AdoptError) as caught:
                activation.inspect(fd)
            assert str(caught.value) == f"fd {fd} {message}"
    closed = os.open(os.devnull, os.O_RDONLY)
    os.close(closed)
    with pytest.raises(activation.AdoptError, match=f"fd {closed} is not an open socket"):
        activation.inspect(closed)


@pytest.mark.parametrize("bind, port, expected", [
    ((), None, None),
    (("127.0.0.1",), 9999, None),
    (("127.0.0.1",), 0, None),
    (("192.0.2.1", "127.0.0.1"), None, None),
    ((), 9998, "fd 3 is bound to 127.0.0.1:9999 but the config says port 9998"),
    (("127.0.0.2",), 9999, "fd 3 is bound to 127.0.0.1:9999 but the config says bind 127.0.0.2 port 9999"),
    (("0.0.0.0",), None, "fd 3 is bound to 127.0.0.1:9999 but the config says bind 0.0.0.0"),
])
def test_mismatch(bind, port, expected):
    """An adopted socket must be where bind and port say, when they are given (port 0: any)."""
    assert activation.mismatch(3, ("127.0.0.1", 9999), bind=bind, port=port) == expected


# -- real twistd with handed-over sockets ------------------------------------


def plugin_cache_rebuild(tmp_path):
    """The environment of a twistd that imports a plugin module without a dropin.cache before any plugin's code runs.

    It imports twisted.internet.endpoints, as twisted_core.py does whenever twistd rebuilds
    Twisted's own missing or stale plugin cache; that import deletes LISTEN_PID and LISTEN_FDS.
    """
    plugins = tmp_path / "plugins_path" / "twisted" / "plugins"
    plugins.mkdir(parents=True)
    (plugins / "uncached.py").write_text("import twisted.internet.endpoints  # as twisted_core.py does\n")
    return {"PYTHONPATH": os.pathsep.join([str(plugins.parent.parent), child_env()["PYTHONPATH"]])}


@pytest.mark.parametrize("rebuild", [False, True], ids=["plugin-cache-fresh", "plugin-cache-rebuilt"])
def test_listen_fdnames_hand_a_bound_socket_to_its_listener(tmp_path, processes, rebuild):
    """A socket passed as LISTEN_FDS with LISTEN_FDNAMES=echo serves listener echo; another listener binds."""
    sock = bound_udp()
    port = sock.getsockname()[1]
    text = ("application: envapp:application\nlisteners:\n"
            f"  - {{name: echo, type: plain, bind: 127.0.0.1, port: {port}}}\n"
            "  - {name: other, type: plain, bind: 127.0.0.1, port: 0}\n")
    config = write(tmp_path, text, envapp=ENV_APP)
    env = plugin_cache_rebuild(tmp_path) if rebuild else None
    try:
        gateway = GatewayProcess(config, env=env, pass_fds=[sock.fileno()],
                                 wrapper=listen_fds_wrapper([sock.fileno()], ["echo"]))
        processes.start(gateway)
    finally:
        sock.close()  # from here on only the gateway holds the socket
    assert gateway.listeners["echo"] == [("127.0.0.1", port)]
    assert udp_exchange(port, b"hello") == (b"hello", ("127.0.0.1", port))
    other = gateway.port("other")
    assert other != port and udp_exchange(other, b"x") == (b"x", ("127.0.0.1", other))
    # Children of the gateway inherit neither the variables nor the socket.
    assert udp_exchange(port, b"env")[0] == b"[None, None, None, False]"
    assert gateway.stop() == 0
    with bound_udp(port=port):
        pass  # the port is free once the gateway has exited


def test_unmatched_listen_fdnames_bind_as_usual(tmp_path, processes):
    """A passed socket whose name is no listener's is left alone (one warning); the listener binds itself."""
    sock = bound_udp()
    config = write(tmp_path, one_listener("name: echo, type: plain, bind: 127.0.0.1, port: 0"), envapp=ENV_APP)
    try:
        gateway = processes.start(GatewayProcess(config, pass_fds=[sock.fileno()],
                                                 wrapper=listen_fds_wrapper([sock.fileno()], ["dns"])))
        port = gateway.port("echo")
        assert port != sock.getsockname()[1]
        assert udp_exchange(port, b"hi") == (b"hi", ("127.0.0.1", port))
        gateway.wait_for("systemd passed fd 3 named dns, which is no listener's name: not used")
    finally:
        sock.close()


def test_fd_key_adopts_the_inherited_socket(tmp_path, processes):
    """`fd: N` without bind or port adopts inherited fd N and serves on its port."""
    sock = bound_udp()
    port, fd = sock.getsockname()[1], sock.fileno()
    config = write(tmp_path, one_listener(f"name: echo, type: plain, fd: {fd}"), envapp=ENV_APP)
    try:
        gateway = processes.start(GatewayProcess(config, pass_fds=[fd]))
    finally:
        sock.close()
    assert gateway.listeners["echo"] == [("127.0.0.1", port)]
    assert udp_exchange(port, b"by fd") == (b"by fd", ("127.0.0.1", port))


def test_fd_key_on_ipv6_wildcard_gives_real_destination(tmp_path, processes):
    """An adopted wildcard socket still learns each datagram's destination (pktinfo) and replies from it."""
    sock = bound_udp("::")
    port, fd = sock.getsockname()[1], sock.fileno()
    config = write(tmp_path, one_listener(f"name: echo, type: plain, fd: {fd}, bind: '::', port: {port}"),
                   envapp=ENV_APP)
    try:
        gateway = processes.start(GatewayProcess(config, pass_fds=[fd]))
    finally:
        sock.close()
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as client:
        client.settimeout(DEADLINE)
        client.sendto(b"six", ("::1", port))
        data, source = client.recvfrom(100)
    assert (data, source[:2]) == (b"six", ("::1", port))


@pytest.mark.parametrize("fields, make, expected", [
    ("bind: 127.0.0.1, port: {other}", lambda: bound_udp(),
     "listener echo: fd {fd} is bound to 127.0.0.1:{port} but the config says bind 127.0.0.1 port {other}"),
    ("bind: 127.0.0.2", lambda: bound_udp(),
     "listener echo: fd {fd} is bound to 127.0.0.1:{port} but the config says bind 127.0.0.2"),
    ("", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM),
     "listener echo: fd {fd} is a SOCK_STREAM socket, not a datagram (SOCK_DGRAM) one"),
    ("", lambda: socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM),
     "listener echo: fd {fd} is a AF_UNIX socket, not an IPv4 or IPv6 one"),
])
def test_unusable_adopted_socket_exits_1_with_one_line(tmp_path, fields, make, expected):
    """A socket elsewhere than bind/port say, or not an IPv4/IPv6 datagram socket: exit 1, one line, no traceback."""
    sock = make()
    fd = sock.fileno()
    port = sock.getsockname()[1] if sock.type == socket.SOCK_DGRAM and sock.family == socket.AF_INET else 0
    other = port + 1 if port < 65535 else port - 1
    text = one_listener(", ".join(filter(None, ["name: echo, type: plain", f"fd: {fd}",
                                                fields.format(other=other)])))
    try:
        gateway = GatewayProcess(write(tmp_path, text, envapp=ENV_APP), pass_fds=[fd])
        assert gateway.start(ready=False).wait_exit(DEADLINE) == 1, gateway.log_text()
    finally:
        sock.close()
    assert [line for line in gateway.errors if line.strip()] == [
        "udpgateway: " + expected.format(fd=fd, port=port, other=other)]
    assert "Traceback" not in gateway.log_text()


@pytest.mark.netns
def test_multicast_listener_joins_on_an_adopted_socket(pair, tmp_path):
    """A multicast listener adopting a passed socket joins its groups on it and answers a group request."""
    from tests.test_multicast_netns import APP, G4, answer, ask

    # APP answers with JSON, past 10 x the request: the amplification cap is off.
    listener = f"name: m, type: multicast, port: 5000, groups: [{G4}], amplification: null"
    config = write(tmp_path, one_listener(listener, "nsapp:application"), nsapp=APP)
    gateway = GatewayProcess(config, ns=pair.gw, wrapper=listen_fds_wrapper(["bind:0.0.0.0:5000"], ["m"]))
    try:
        gateway.start()
        assert gateway.listeners == {"m": [("0.0.0.0", 5000)]}
        gateway.wait_for(f"listener m: {G4} joined on {pair.gw_if}")
        _, message = answer(ask(pair, G4, 5000)[0])
        assert (message["listener"], message["server"]) == ("m", [G4, 5000])
    finally:
        assert gateway.stop() == 0, gateway.log_text()


# -- through systemd's own tool ----------------------------------------------


def _free_udp_port():
    with bound_udp() as s:
        return s.getsockname()[1]


def test_systemd_socket_activate(tmp_path, processes):
    """systemd-socket-activate --datagram binds the port, passes it named echo, and twistd serves on it."""
    tool = shutil.which("systemd-socket-activate")
    if tool is None:
        skip_or_fail("systemd-socket-activate is not installed (apt-get install systemd)")
    port = _free_udp_port()
    config = write(tmp_path, one_listener(f"name: echo, type: plain, bind: 127.0.0.1, port: {port}"), envapp=ENV_APP)
    wrapper = [tool, "--datagram", f"--listen=127.0.0.1:{port}", "--fdname=echo"]
    gateway = processes.start(GatewayProcess(config, wrapper=wrapper), ready=False)
    wait_until(lambda: any(f"Listening on 127.0.0.1:{port}" in line for line in gateway.errors),
               what="systemd-socket-activate listening")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.sendto(b"wake up", ("127.0.0.1", port))  # it starts twistd on the first datagram
        gateway.wait_for("udpgateway ready", DEADLINE)
        assert gateway.listeners["echo"] == [("127.0.0.1", port)]
        client.settimeout(DEADLINE)
        client.sendto(b"served", ("127.0.0.1", port))
        assert client.recvfrom(100) == (b"served", ("127.0.0.1", port))
    assert udp_exchange(port, b"env")[0] == b"[None, None, None, False]"
