"""Datagrams that arrive before lifespan startup completes or while a stop drains: real twistd processes."""

import signal
import time

from tests.processes import GatewayProcess
from tests.scaleout import counters
from tests.udpclients import Clients, socket_queue

APP = '''
import asyncio
from pathlib import Path

from gateway.consumer import UDPConsumer

HERE = Path(__file__).resolve().parent


class Gated(UDPConsumer):
    """Startup announces b"starting" on up.out, then waits for HERE/go. b"hold" waits for HERE/release."""

    async def startup(self):
        await self.send_to("up.out", b"starting")
        while not (HERE / "go").exists():
            await asyncio.sleep(0.02)

    async def udp_receive(self, message):
        if message["data"] == b"hold":
            (HERE / "held").touch()
            while not (HERE / "release").exists():
                await asyncio.sleep(0.02)
        await self.reply(message, message["data"])


application = Gated.as_asgi()
'''
NOT_READY = "dropped a datagram: datagram arrived before startup completed or during stop"


def wait_until(condition, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def write(tmp_path, remote_port):
    (tmp_path / "gated.py").write_text(APP)
    path = tmp_path / "gateway.yaml"
    path.write_text(f"""\
application: gated:application
listeners:
  - {{name: echo, type: plain, bind: 127.0.0.1, port: 0}}
  - {{name: up, type: connected, bind: 127.0.0.1, port: 0, send_channel: up.out,
      remote: {{host: 127.0.0.1, port: {remote_port}}}}}
""")
    return path


def test_datagrams_before_startup_completes_are_dropped_while_send_channels_work(tmp_path, processes):
    """While lifespan startup runs, a send_channel message already goes out and every datagram is
    dropped_not_ready; once startup completes datagrams are answered."""
    with Clients(2) as clients:
        remote = clients.sockets[1].getsockname()
        gateway = processes.start(GatewayProcess(write(tmp_path, remote[1])), ready=False)
        gateway.wait_for("listener echo (plain) on", 30)
        address = ("127.0.0.1", gateway.port("echo"))
        (announcement,) = [r for r in clients.collect([b"starting"], timeout=30, key=lambda d: d) if r.client == 1]
        assert announcement.data == b"starting"
        for n in range(5):
            clients.send(0, b"early%d" % n, address)
        wait_until(lambda: socket_queue(address[1])[0] == 0, what="the gateway to read the early datagrams")
        assert gateway.count("udpgateway ready") == 0  # startup is still waiting for the go file
        (tmp_path / "go").touch()
        gateway.wait_for("udpgateway ready", 30)
        assert clients.exchange(b"marker", address, timeout=30).data == b"marker"
        early = [r for r in clients.replies if r.data.startswith(b"early")]
    assert gateway.stop() == 0, gateway.log_text()
    stats = counters(gateway)
    assert early == []
    assert (stats["received"], stats["dropped_not_ready"]) == (6, 5), stats
    assert gateway.count(NOT_READY) == 1


def test_datagrams_during_a_stop_are_dropped_while_a_slow_call_drains(tmp_path, processes):
    """After SIGTERM, while a slow application call drains, arriving datagrams are dropped_not_ready;
    the slow call still finishes and the gateway exits 0."""
    (tmp_path / "go").touch()
    with Clients(2) as clients:
        gateway = processes.start(GatewayProcess(write(tmp_path, clients.sockets[1].getsockname()[1])), timeout=30)
        address = ("127.0.0.1", gateway.port("echo"))
        clients.until_answered(address)
        clients.send(0, b"hold", address)
        wait_until((tmp_path / "held").exists, what="the slow call")
        gateway.send_signal(signal.SIGTERM)
        gateway.wait_for("received SIGTERM, stopping", 30)
        # Until the stop has begun, a probe is still answered; the first one refused logs one line.
        # The drain gives the slow call 5 s, so this has to be quick.
        probes = unanswered = 0
        while not gateway.count(NOT_READY):
            assert probes < 100, gateway.log_text()
            probe = b"probe%d" % probes
            clients.send(0, probe, address)
            probes += 1
            deadline = time.monotonic() + 0.5  # a later answer only loosens the bound below
            while not gateway.count(NOT_READY) and time.monotonic() < deadline:
                if clients.collect([probe], timeout=0.05):
                    break
            else:
                unanswered += 1
        for n in range(5):
            clients.send(0, b"late%d" % n, address)
        wait_until(lambda: socket_queue(address[1])[0] == 0, what="the gateway to read the late datagrams")
        (tmp_path / "release").touch()
        assert gateway.wait_exit(30) == 0, gateway.log_text()
        clients.collect([], timeout=0)  # the gateway has exited: whatever is queued is all there is
        late = [r for r in clients.replies if r.data.startswith(b"late")]
    stats = counters(gateway)
    assert late == []
    # The probe that logged the line was refused; a probe lost to the stop's first step is counted nowhere.
    assert 5 + 1 <= stats["dropped_not_ready"] <= 5 + unanswered, (stats, probes, unanswered)
