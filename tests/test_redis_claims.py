"""README claims about the Redis layer, checked with a real redis-server, twistd and `udpgateway worker` processes."""

import socket
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.redisserver import start_redis_server
from tests.scaleout import assert_clean_log, counters, gateway_process, tag, worker_process, write_config
from tests.support import skip_or_fail
from tests.udpclients import Clients, socket_queue

pytestmark = pytest.mark.redis
RECEIVE_KEY = b"asgiudp.receive"  # channels_redis' key of the udp.receive queue (prefix "asgi")

# Applications written beside the config (its directory is first on sys.path).
HOLD_APP = '''
import asyncio
import os
from pathlib import Path

from gateway.consumer import UDPConsumer

HERE = Path(__file__).resolve().parent


class Hold(UDPConsumer):
    """b"hold...": marks HERE/held-<data>, waits for HERE/release, then replies; anything else is echoed."""

    async def udp_receive(self, message):
        data = message["data"]
        if data.startswith(b"hold"):
            (HERE / f"held-{data.decode()}").touch()
            while not (HERE / "release").exists():
                await asyncio.sleep(0.02)
        await self.reply(message, data)


application = Hold.as_asgi()
'''

FANOUT_APP = '''
import asyncio

from gateway.consumer import UDPConsumer


class Fanout(UDPConsumer):
    """Sends 30 messages to the channel "sink" at once, then replies `<data> sent`."""

    async def udp_receive(self, message):
        await asyncio.gather(*(self.channel_layer.send("sink", {"type": "note", "n": n}) for n in range(30)))
        await self.reply(message, message["data"] + b" sent")


application = Fanout.as_asgi()
'''

RECORD_APP = '''
import os
from pathlib import Path

from gateway.consumer import UDPConsumer

HERE = Path(__file__).resolve().parent


class Record(UDPConsumer):
    """Appends each datagram to HERE/got-<pid>, one line each."""

    async def udp_receive(self, message):
        with open(HERE / f"got-{os.getpid()}", "ab") as out:
            out.write(message["data"] + b"\\n")


application = Record.as_asgi()
'''


def wait_until(condition, timeout=30.0, what="condition"):
    """Poll `condition` until it is true; fail after a generous `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def zcard(server, key=RECEIVE_KEY):
    answer = server.command(b"ZCARD", key)
    return None if answer is None else int(answer[1:])


def command_calls(server, name):
    """How many times redis-server ran command `name` (INFO commandstats)."""
    stats = server.info(b"commandstats").get(f"cmdstat_{name}", "calls=0")
    return int(stats.split(",")[0].split("=")[1])


def start_with_app(tmp_path, processes, redis_server, module, source, limits=""):
    """A gateway over Redis whose application is `source`, written as module.py beside its config:
    (gateway, its echo address)."""
    (tmp_path / f"{module}.py").write_text(source)
    path = write_config(tmp_path, redis_server.url, application=f"{module}:application", limits=limits)
    gateway = processes.start(gateway_process(path))
    return gateway, ("127.0.0.1", gateway.port("echo"))


def require_rmem_max(size=4 * 1024 * 1024):
    current = int(Path("/proc/sys/net/core/rmem_max").read_text())
    if current < size:
        skip_or_fail(f"net.core.rmem_max is {current}: a burst of 1,000 needs {size} "
                     "(sysctl -w net.core.rmem_max=4194304, as .ci/run does)")


def test_burst_of_1000_through_two_workers_gets_exactly_1000_replies(tmp_path, processes, redis_server, core_backend):
    """1,000 datagrams at once from 100 sockets through a gateway and two workers get exactly 1,000 replies, none twice."""
    require_rmem_max()
    path = write_config(tmp_path, redis_server.url)
    gateway = processes.start(gateway_process(path))
    address = ("127.0.0.1", gateway.port("echo"))
    workers = [processes.start(worker_process(path)) for _ in range(2)]
    with Clients(100) as clients:
        clients.until_answered(address)
        sent = clients.burst(1000, address, prefix=b"b")
        clients.collect(sent, timeout=120)
        kernel_drops = socket_queue(address[1])[1]
        clients.until_answered(address, prefix=b"marker")  # a duplicate still in flight would arrive before this
        replies = [r for r in clients.replies if r.data.startswith(b"b")]
    answered = Counter(tag(r)[0] for r in replies)
    for process in (gateway, *workers):
        assert process.stop() == 0, process.log_text()
    assert_clean_log(gateway, *workers)
    stats = counters(gateway)
    assert kernel_drops == 0, "the kernel dropped datagrams at the gateway's socket"
    assert set(answered) == set(sent), f"{len(answered)} of 1000 answered; gateway {stats}"
    assert set(answered.values()) == {1}, "a datagram was answered twice"
    assert {tag(r)[1] for r in replies} == {w.pid for w in workers}
    assert not [name for name in stats if name.startswith("dropped_")], stats


def test_several_redis_hosts_every_datagram_received_once(tmp_path, processes, core_backend):
    """With two Redis hosts (ring_size 2) the gateway spreads udp.receive over both, and two workers receive
    every datagram exactly once."""
    servers = []
    try:
        servers = [start_redis_server() for _ in range(2)]
        (tmp_path / "recorder.py").write_text(RECORD_APP)
        path = write_config(tmp_path, [s.url for s in servers])
        gateway = processes.start(gateway_process(path))
        address = ("127.0.0.1", gateway.port("echo"))
        workers = [processes.start(worker_process(path, application="recorder:application")) for _ in range(2)]

        def got():
            lines = []
            for worker in workers:
                record = tmp_path / f"got-{worker.pid}"
                lines += record.read_bytes().splitlines() if record.exists() else []
            return lines

        with Clients(20) as clients:
            sent = clients.burst(200, address, prefix=b"h")
        wait_until(lambda: len(got()) >= 200, what="200 datagrams recorded by the workers")
        for process in (gateway, *workers):
            assert process.stop() == 0, process.log_text()
        received = Counter(got())
        assert set(received) == set(sent) and set(received.values()) == {1}, received
        assert all(command_calls(s, "zadd") > 0 for s in servers), "udp.receive went to one host only"
        assert_clean_log(gateway, *workers)
    finally:
        for server in servers:
            server.close()


def test_send_queue_holds_1000_while_redis_does_not_answer(tmp_path, processes, redis_server):
    """With Redis hung and max_layer_sends 1, one send waits, 1,000 datagrams queue for a send and the rest
    are dropped_queue_full; once Redis answers again the 1,001 reach udp.receive."""
    require_rmem_max()
    path = write_config(tmp_path, redis_server.url, limits="  max_layer_sends: 1\n")
    gateway = processes.start(gateway_process(path))  # no worker: what reaches Redis stays there
    port = gateway.port("echo")
    redis_server.pause()
    try:
        with Clients(10) as clients:
            # The first one is read alone, so the single sender takes it before the burst arrives.
            clients.send(0, b"first", ("127.0.0.1", port))
            wait_until(lambda: socket_queue(port)[0] == 0, what="the gateway to read the first datagram")
            clients.burst(1100, ("127.0.0.1", port))
            # Redis is stopped but the gateway is not: it reads (and counts) all of them.
            wait_until(lambda: socket_queue(port)[0] == 0, what="the gateway to read every datagram")
        assert socket_queue(port)[1] == 0, "the kernel dropped datagrams at the gateway's socket"
    finally:
        redis_server.resume()
    wait_until(lambda: zcard(redis_server) == 1001, what="1,001 messages in udp.receive")
    assert gateway.stop() == 0, gateway.log_text()
    stats = counters(gateway)
    # One send in flight, 1,000 waiting for it, 100 dropped.
    assert (stats["received"], stats["dropped_queue_full"]) == (1101, 100), stats
    assert zcard(redis_server) == 1001
    assert sum("the queue of layer sends is full" in line for line in gateway.lines) == 1
    assert_clean_log(gateway)


class RefusingRedis:
    """A TCP server on a dead Redis' port that accepts and at once closes each connection, noting when."""

    def __init__(self, port):
        self.accepted = []
        self._server = socket.create_server(("127.0.0.1", port), reuse_port=False)
        self._server.settimeout(0.2)
        self._running = True
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while self._running:
            try:
                connection, _ = self._server.accept()
            except OSError:
                continue
            self.accepted.append(time.monotonic())
            connection.close()

    def close(self):
        self._running = False
        self._thread.join(5)
        self._server.close()


@pytest.mark.parametrize("role", ["gateway", "worker"])
def test_receive_loops_retry_every_second_while_redis_is_down(tmp_path, processes, redis_server, role):
    """With Redis gone, a gateway's reply loop and a worker's receive loop count layer_errors and try again
    about every second (not in a tight loop), and serve again once Redis is back."""
    path = write_config(tmp_path, redis_server.url)
    gateway = processes.start(gateway_process(path))
    address = ("127.0.0.1", gateway.port("echo"))
    worker = processes.start(worker_process(path))
    with Clients(1) as clients:
        clients.until_answered(address)
        watched = gateway if role == "gateway" else worker
        other = worker if role == "gateway" else gateway
        assert other.stop() == 0  # only the watched process talks to the port below
        redis_server.kill()
        refusing = RefusingRedis(redis_server.port)
        try:
            wait_until(lambda: len(refusing.accepted) >= 8, timeout=60, what="8 connection attempts")
            started, attempts = refusing.accepted[0], list(refusing.accepted)
        finally:
            refusing.close()
        # Each attempt is a connect plus redis-py's one retry; the loop then sleeps one second.
        span = attempts[-1] - started
        assert len(attempts) <= 2 * (span / 0.95 + 1), (len(attempts), span)
        redis_server.start()
        restarted = processes.start(worker_process(path) if role == "gateway" else gateway_process(path))
        if role == "worker":
            address = ("127.0.0.1", restarted.port("echo"))
        clients.until_answered(address, timeout=30, prefix=b"back")
    assert watched.stop() == 0 and restarted.stop() == 0
    stats = counters(watched)
    assert stats["layer_errors"] >= len(attempts) // 2, stats
    failed = [line for line in watched.lines if "failed: ConnectionError" in line]
    assert 1 <= len(failed) <= 1 + span // 10 + 1, failed  # one line per 10 s at most


def test_reply_failing_because_redis_died_counts_app_errors(tmp_path, processes, redis_server):
    """An application whose own reply fails because Redis died under it raises: counted as app_errors;
    the gateway serves again once Redis is back."""
    gateway, address = start_with_app(tmp_path, processes, redis_server, "holdapp", HOLD_APP)
    with Clients(1) as clients:
        clients.until_answered(address)
        clients.send(0, b"hold1", address)
        wait_until((tmp_path / "held-hold1").exists, what="the application to hold the datagram")
        redis_server.kill()
        (tmp_path / "release").touch()
        gateway.wait_for("application raised on a message from listener echo", 30)
        redis_server.start()
        clients.until_answered(address, timeout=30, prefix=b"back")
    assert gateway.stop() == 0, gateway.log_text()
    assert counters(gateway)["app_errors"] == 1, gateway.log_text()


def test_max_layer_sends_includes_the_applications_own_sends(tmp_path, processes, redis_server):
    """An application's own layer sends share max_layer_sends: 30 sends at once open no more than
    max_layer_sends Redis connections beside the two blocking receives, and all 30 arrive."""
    gateway, address = start_with_app(tmp_path, processes, redis_server, "fanout", FANOUT_APP,
                                      limits="  max_layer_sends: 2\n")
    with Clients(1) as clients:
        assert clients.exchange(b"go", address, timeout=30).data == b"go sent"
        assert zcard(redis_server, b"asgisink") == 30
        # redis-py keeps each connection it opened in its pool: their number is the most commands at once.
        clients_now = int(redis_server.info(b"clients")["connected_clients"]) - 1  # INFO's own connection
    assert gateway.stop() == 0, gateway.log_text()
    # The reply pump's and the application runner's blocking receives, plus at most 2 sends at once.
    assert clients_now <= 2 + 2, clients_now


def test_gateway_with_application_on_redis_stops_receiving_at_max_concurrency(tmp_path, processes, redis_server):
    """A gateway running its application over Redis takes no more than max_concurrency messages:
    the rest wait in Redis (ZCARD of udp.receive) until a call finishes, then all are answered."""
    gateway, address = start_with_app(tmp_path, processes, redis_server, "holdapp", HOLD_APP,
                                      limits="  max_concurrency: 2\n")
    with Clients(1) as clients:
        clients.until_answered(address)
        sent = [b"hold%d" % n for n in range(6)]
        for data in sent:
            clients.send(0, data, address)
        wait_until(lambda: len(list(tmp_path.glob("held-*"))) == 2, what="two held calls")
        wait_until(lambda: zcard(redis_server) == 4, what="four messages waiting in Redis")
        clients.send(0, b"hold-more", address)  # still delivered to Redis, still not taken
        wait_until(lambda: zcard(redis_server) == 5, what="five messages waiting in Redis")
        assert len(list(tmp_path.glob("held-*"))) == 2
        (tmp_path / "release").touch()
        replies = clients.collect(sent + [b"hold-more"], timeout=30)
    assert gateway.stop() == 0, gateway.log_text()
    assert {r.data for r in replies} == set(sent) | {b"hold-more"}
    assert zcard(redis_server) == 0
