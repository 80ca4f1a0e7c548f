"""What the kernel refuses, for real: ICMP port unreachable, EAGAIN on a full send buffer, oversized
replies, and the receive buffer each listener socket asks for."""

import socket
from pathlib import Path

import pytest

from listeners.ports import RECEIVE_BUFFER
from tests import apps
from tests.processes import GatewayProcess
from tests.scaleout import counters
from tests.support import aio

APP = '''
from gateway.consumer import UDPConsumer


class Misc(UDPConsumer):
    """b"push": one datagram to up.out, then b"pushed"; b"flood": 400 replies of 1,000 bytes;
    digits N: a reply of N bytes."""

    async def udp_receive(self, message):
        data = message["data"]
        if data == b"push":
            await self.send_to("up.out", b"x")
            await self.reply(message, b"pushed")
        elif data == b"flood":
            for _ in range(400):
                await self.reply(message, b"f" * 1000)
        elif data.isdigit():
            await self.reply(message, b"x" * int(data))


application = Misc.as_asgi()
'''


def free_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def udp_socket(host):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    skt = socket.socket(family, socket.SOCK_DGRAM)
    skt.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    skt.bind((host, 0))
    skt.settimeout(30)
    return skt


def start(tmp_path, processes, listeners):
    (tmp_path / "misc.py").write_text(APP)
    path = tmp_path / "gateway.yaml"
    path.write_text("application: misc:application\nlisteners:\n" + "".join(f"  - {l}\n" for l in listeners))
    return processes.start(GatewayProcess(path), timeout=30)


def test_icmp_port_unreachable_counts_connection_refused(tmp_path, processes):
    """A connected listener whose remote port is closed gets ICMP port unreachable: counted as
    connection_refused, logged, and the listener keeps working once the remote listens."""
    remote_port = free_udp_port()
    gateway = start(tmp_path, processes, [
        "{name: echo, type: plain, bind: 127.0.0.1, port: 0}",
        f"{{name: up, type: connected, bind: 127.0.0.1, port: 0, send_channel: up.out, "
        f"remote: {{host: 127.0.0.1, port: {remote_port}}}}}",
    ])
    address = ("127.0.0.1", gateway.port("echo"))
    with udp_socket("127.0.0.1") as client:
        client.sendto(b"push", address)
        assert client.recvfrom(65535)[0] == b"pushed"
        gateway.wait_for("listener up: the peer refused a datagram (ICMP port unreachable)", 30)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as remote:
            remote.bind(("127.0.0.1", remote_port))
            remote.settimeout(30)
            client.sendto(b"push", address)
            assert client.recvfrom(65535)[0] == b"pushed"
            assert remote.recvfrom(100) == (b"x", ("127.0.0.1", gateway.port("up")))
    assert gateway.stop() == 0, gateway.log_text()
    assert counters(gateway)["connection_refused"] == 1


@pytest.mark.parametrize("host, limit", [("127.0.0.1", 65507), ("::1", 65527)])
def test_reply_longer_than_a_datagram_is_dropped_too_large(tmp_path, processes, host, limit):
    """A reply one byte over what a datagram carries (65,507 over IPv4, 65,527 over IPv6) is dropped and
    counted as too_large; a reply of exactly the limit arrives whole."""
    # The app answers a few digits with up to 65,508 bytes: far past the amplification cap, off here.
    gateway = start(tmp_path, processes, [f"{{name: echo, type: plain, bind: '{host}', port: 0, amplification: null}}"])
    with udp_socket(host) as client:
        address = (host, gateway.port("echo"))
        client.sendto(b"%d" % (limit + 1), address)
        client.sendto(b"%d" % limit, address)  # the marker: the first reply to arrive must be this one
        data, _ = client.recvfrom(65535)
    assert len(data) == limit
    assert gateway.stop() == 0, gateway.log_text()
    stats = counters(gateway)
    assert (stats["dropped_too_large"], stats["replied"]) == (1, 1), stats
    assert sum("dropped a reply" in line for line in gateway.lines) == 1


def expected_receive_buffer():
    """What getsockopt(SO_RCVBUF) reports after asking for RECEIVE_BUFFER: Linux caps the request at
    net.core.rmem_max and reports double the value it keeps (socket(7))."""
    rmem_max = int(Path("/proc/sys/net/core/rmem_max").read_text())
    rmem_default = int(Path("/proc/sys/net/core/rmem_default").read_text())
    if rmem_default >= RECEIVE_BUFFER:
        return rmem_default  # already big enough: left alone
    return 2 * min(RECEIVE_BUFFER, rmem_max)


@aio
async def test_each_listener_socket_asks_for_a_4_mib_receive_buffer(gateway, tmp_path):
    """Every socket of a plain or connected listener, IPv4 and IPv6, asked for 4 MiB of receive buffer
    (as far as net.core.rmem_max allows)."""
    assert RECEIVE_BUFFER == 4 * 1024 * 1024
    service = await gateway("channel_layer: {backend: memory}\napplication: tests.apps:raw_echo\nlisteners:\n"
                            "  - {name: four, type: plain, bind: 127.0.0.1, port: 0}\n"
                            "  - {name: six, type: plain, bind: '::1', port: 0}\n"
                            "  - {name: up, type: connected, bind: 127.0.0.1, port: 0, "
                            "remote: {host: 127.0.0.1, port: 9}}\n", app=apps.Echo.as_asgi())
    sockets = [port.socket for listener in service.listeners.values() for port in listener.ports]
    assert len(sockets) == 3
    assert {s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) for s in sockets} == {expected_receive_buffer()}


@pytest.mark.netns
def test_full_send_buffer_counts_dropped_send_failed(pair, run_gateway):
    """Replies that the kernel refuses with EAGAIN (the socket's send buffer is full because the
    interface's queue holds them) are dropped and counted as dropped_send_failed, each one, logged once."""
    # tbf at 8 bit/s: the gateway's outgoing packets wait in the qdisc, still charged to its socket,
    # so after ~200 KiB (net.core.wmem_default) sendto() on the non-blocking socket says EAGAIN.
    pair.sh(pair.gw, "tc", "qdisc", "add", "dev", pair.gw_if, "root", "tbf", "rate", "8bit", "burst", "1600",
            "limit", "100000000")
    gateway = run_gateway("application: misc:application\nlisteners:\n"
                          "  - {name: echo, type: plain, bind: 0.0.0.0, port: 5020, amplification: null}\n",
                          modules={"misc": APP})  # "flood" is answered with far more than 10 x its 5 bytes
    pair.client("--to", pair.gw4, 5020, "--data", "flood", "--timeout", "0.5")
    line = gateway.wait_for("a datagram could not be sent", 30)
    assert "Resource temporarily unavailable" in line
    assert gateway.stop() == 0, gateway.log_text()
    stats = counters(gateway)
    print(f"\nflood of 400 replies into a held queue: {stats}")
    assert stats["dropped_send_failed"] > 0 and stats["replied"] + stats["dropped_send_failed"] == 400, stats
    assert sum("could not be sent" in line for line in gateway.lines) == 1
