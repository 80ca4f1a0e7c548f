"""Faults with a real redis-server: unreachable at startup, killed and restarted, dead workers, full channels, bursts."""

import os
import signal
import socket
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.processes import UDPGATEWAY, Process
from tests.redisserver import free_tcp_port
from tests.scaleout import (
    APPLICATION,
    PUBSUB_BACKEND,
    REDIS_BACKEND,
    assert_clean_log,
    counters,
    gateway_process,
    tag,
    worker_process,
    write_config,
)
from tests.udpclients import Clients

pytestmark = pytest.mark.redis
REPO = Path(__file__).resolve().parent.parent
# Makes `import channels_redis` fail in a child process as if the package were not installed.
HIDE_CHANNELS_REDIS = '''
import sys

class _Hide:
    def find_spec(self, name, path=None, target=None):
        if name == "channels_redis" or name.startswith("channels_redis."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _Hide())
'''


def start_gateway(processes, path):
    gateway = processes.start(gateway_process(path))
    return gateway, ("127.0.0.1", gateway.port("echo"))


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def free_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.parametrize("backend", [REDIS_BACKEND, PUBSUB_BACKEND])
def test_redis_unreachable_at_startup_exits_1_and_frees_the_port(tmp_path, processes, backend):
    """With nothing on the Redis port, gateway and worker exit 1 with one line naming host:port; the port is free.

    The gateway binds first (before twistd -u/-g would drop privileges), then reaches the layer.
    """
    redis_port, udp_port = free_tcp_port(), free_udp_port()
    path = write_config(tmp_path, f"redis://127.0.0.1:{redis_port}/0", port=udp_port, backend=backend)
    for process in (gateway_process(path), worker_process(path)):
        processes.start(process, ready=False)
        assert process.wait_exit(20) == 1, process.log_text()
        errors = [line for line in process.errors if line.strip()]
        assert len(errors) == 1 and f"127.0.0.1:{redis_port}" in errors[0], errors
        assert "Traceback" not in "\n".join(process.lines + process.errors)
        assert not any("udpgateway ready" in line for line in process.lines)
        assert port_is_free(udp_port)


@pytest.mark.parametrize("command", ["check", "worker", "twistd"])
def test_missing_channels_redis_is_a_config_error(tmp_path, processes, command):
    """Without the channels_redis package, check, worker and twistd exit 2 naming the extra, no traceback."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(HIDE_CHANNELS_REDIS)
    path = write_config(tmp_path, "redis://127.0.0.1:1/0", application=APPLICATION)
    env = {"PYTHONPATH": os.pathsep.join([str(hide), str(REPO)])}  # REPO: the tests package
    if command == "twistd":
        process = gateway_process(path, env)
    else:
        process = Process([UDPGATEWAY, command, "-c", path], env=env)
    processes.start(process, ready=False)
    assert process.wait_exit(20) == 2, process.log_text()
    errors = [line for line in process.errors if line.strip()]
    assert errors == [f"{path}: channel_layer.backend: channels_redis is not installed "
                      "(pip install 'udpgateway[redis]')"], errors
    assert not process.lines or "Traceback" not in "\n".join(process.lines)


def test_unknown_backend_module_is_a_config_error(tmp_path, processes):
    """A backend whose module does not exist makes `worker` exit 2 with one line, before anything starts."""
    path = write_config(tmp_path, "redis://127.0.0.1:1/0", backend="nosuchpackage.layers.Layer",
                        application=APPLICATION)
    process = processes.start(worker_process(path), ready=False)
    assert process.wait_exit(20) == 2
    errors = [line for line in process.errors if line.strip()]
    assert len(errors) == 1 and "channel_layer.backend" in errors[0] and "nosuchpackage" in errors[0], errors


def test_redis_killed_and_restarted(tmp_path, processes, redis_server):
    """Redis dies mid-stream: the gateway keeps running, drops and counts quietly, bounded, and recovers by itself."""
    path = write_config(tmp_path, redis_server.url)
    gateway, address = start_gateway(processes, path)
    workers = [processes.start(worker_process(path)) for _ in range(2)]
    with Clients(20) as clients:
        clients.until_answered(address)
        rss_before = rss_kib(gateway.pid)
        down = []
        for round_ in range(35):  # 3.5 s at 1,000 datagrams a second; Redis dies after 0.5 s
            if round_ == 5:
                redis_server.kill()
            sent = clients.burst(100, address, prefix=b"r%d-" % round_)
            if round_ >= 5:
                down += sent
            time.sleep(0.1)
        clients.drain(0.5)
        rss_down = rss_kib(gateway.pid)
        assert gateway.proc.poll() is None and all(w.proc.poll() is None for w in workers)

        redis_server.restart()
        back_at = time.monotonic()
        sent = clients.burst(200, address, prefix=b"after")
        replies = [r for r in clients.collect(sent, timeout=10) if r.data.startswith(b"after")]
        # A quick restart with no traffic meanwhile: every pooled connection is stale now.
        redis_server.restart()
        again = clients.burst(200, address, prefix=b"again")
        replies_again = [r for r in clients.collect(again, timeout=10) if r.data.startswith(b"again")]
    answered_after = {tag(r)[0] for r in replies}
    answered_again = {tag(r)[0] for r in replies_again}
    recovery = min(r.at for r in replies) - back_at if replies else None
    for process in (gateway, *workers):
        assert process.stop() == 0, process.log_text()
    stats = counters(gateway)
    print(f"\nafter the Redis restart: {len(answered_after)} of {len(sent)} answered, the first after "
          f"{recovery:.2f} s; after a quick second restart {len(answered_again)} of {len(again)}; gateway RSS "
          f"{rss_before} KiB before, {rss_down} KiB after {len(down)} datagrams into a dead Redis; gateway {stats}")
    assert len(answered_after) >= 0.95 * len(sent), f"{len(answered_after)} of {len(sent)} after the restart"
    assert len(answered_again) >= 0.95 * len(again), f"{len(answered_again)} of {len(again)} after a quick restart"
    assert recovery < 3.0
    assert stats["dropped_layer_error"] >= 0.9 * len(down), stats
    warnings = [line for line in gateway.lines if "dropped a datagram" in line]
    assert 1 <= len(warnings) <= 2, warnings  # rate-limited: at most one line per 10 s
    assert rss_down - rss_before < 20 * 1024, (rss_before, rss_down)


def test_worker_killed_mid_stream(tmp_path, processes, redis_server):
    """A worker killed with SIGKILL mid-stream: the remaining worker keeps answering."""
    path = write_config(tmp_path, redis_server.url)
    gateway, address = start_gateway(processes, path)
    victim, survivor = (processes.start(worker_process(path)) for _ in range(2))
    with Clients(10) as clients:
        clients.until_answered(address)
        sent = []
        for round_ in range(20):  # 2 s at 500 datagrams a second
            sent += clients.burst(50, address, prefix=b"r%d-" % round_)
            if round_ == 5:
                victim.send_signal(signal.SIGKILL)
            time.sleep(0.1)
        # Calls the victim had taken are lost with it: don't wait for them for long.
        replies = clients.collect(sent, timeout=4)
    assert victim.wait_exit(10) == -signal.SIGKILL
    answered = {tag(r)[0] for r in replies}
    late = [d for d in sent if int(d[1:].split(b"-")[0]) >= 8]  # sent well after the kill
    assert set(late) <= answered
    assert {tag(r)[1] for r in replies if tag(r)[0] in late} == {survivor.pid}
    assert len(answered) >= 0.95 * len(sent), f"{len(answered)} of {len(sent)}"
    for process in (gateway, survivor):
        assert process.stop() == 0, process.log_text()
    assert_clean_log(gateway, survivor)


def test_channel_full_drops_and_counts(tmp_path, processes, redis_server):
    """Past udp.receive's capacity the gateway drops and counts (dropped_channel_full), logging once."""
    path = write_config(tmp_path, redis_server.url, layer_config="    capacity: 10\n")
    gateway, address = start_gateway(processes, path)
    with Clients(5) as clients:  # no worker: everything stays in Redis
        clients.burst(10, address, prefix=b"fill")
        _wait_for(lambda: redis_server.command(b"ZCARD", b"asgiudp.receive") == b":10")
        # channels_redis counts before it adds, so concurrent sends can overshoot a
        # capacity by up to max_layer_sends; once it is reached every send is refused.
        clients.burst(40, address, prefix=b"over")
        time.sleep(0.5)
        assert redis_server.command(b"ZCARD", b"asgiudp.receive") == b":10"
    assert gateway.stop() == 0
    stats = counters(gateway)
    assert stats["received"] == 50 and stats["dropped_channel_full"] == 40, stats
    assert sum("dropped a datagram" in line for line in gateway.lines) == 1, gateway.log_text()
    assert_clean_log(gateway)


def _wait_for(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_burst_of_1000_from_100_sockets(tmp_path, processes, redis_server):
    """1,000 datagrams at once from 100 sockets through a gateway and two workers: >= 95% answered, no errors."""
    path = write_config(tmp_path, redis_server.url)
    gateway, address = start_gateway(processes, path)
    workers = [processes.start(worker_process(path)) for _ in range(2)]
    with Clients(100) as clients:
        clients.until_answered(address)
        started = time.monotonic()
        sent = clients.burst(1000, address)
        replies = clients.collect(sent, timeout=15)
        elapsed = time.monotonic() - started
        replies += clients.drain(0.5)
    answered = {tag(r)[0] for r in replies} & set(sent)
    by_worker = Counter(tag(r)[1] for r in replies)
    for process in (gateway, *workers):
        assert process.stop() == 0, process.log_text()
    assert_clean_log(gateway, *workers)
    print(f"\nburst: {len(answered)} of {len(sent)} answered in {elapsed:.2f} s "
          f"({len(replies)} replies; per worker {dict(by_worker)}); gateway {counters(gateway)}")
    # The gateway asks for a 4 MiB socket receive buffer; Linux caps it at net.core.rmem_max.
    rmem_max = Path("/proc/sys/net/core/rmem_max").read_text().strip()
    assert len(answered) >= 950, f"{len(answered)} of 1000 answered (net.core.rmem_max={rmem_max})"
    assert len(replies) == len(answered), "a datagram was answered twice (delivered to both workers)"
