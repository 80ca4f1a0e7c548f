"""Faults with a real redis-server: unreachable at startup, killed and restarted, dead workers, full channels, bursts."""

import os
import re
import signal
import socket
from collections import Counter
from datetime import datetime
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
from tests.support import wait_until
from tests.udpclients import Clients, udp_socket_stats

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


def warning_times(process, text="dropped a datagram"):
    """The log times of a process's lines containing `text` (twistd stamps each line to the second)."""
    return [datetime.fromisoformat(match[1]) for line in process.lines if text in line
            and (match := re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)", line))]


def test_redis_killed_and_restarted(tmp_path, processes, redis_server):
    """Redis dies mid-stream: the gateway keeps running, drops and counts quietly, bounded, and recovers by itself."""
    path = write_config(tmp_path, redis_server.url)
    gateway, address = start_gateway(processes, path)
    workers = [processes.start(worker_process(path)) for _ in range(2)]
    with Clients(20) as clients:
        clients.until_answered(address)
        rss_before = rss_kib(gateway.pid)
        redis_server.kill()
        down = []
        for round_ in range(10):  # 1,000 datagrams into a dead Redis, each round read by the gateway before the next
            down += clients.burst(100, address, prefix=b"d%d-" % round_)
            wait_until(lambda: udp_socket_stats(address)[0] == 0, what="the gateway to read its socket")
        _, kernel_drops = udp_socket_stats(address)
        rss_down = rss_kib(gateway.pid)
        assert gateway.proc.poll() is None and all(w.proc.poll() is None for w in workers)

        redis_server.restart()
        clients.until_answered(address, prefix=b"back")  # recovers by itself: the receive loops retry
        sent = clients.burst(200, address, prefix=b"after")
        replies = clients.collect(sent)
        # A quick restart with no traffic meanwhile: every pooled connection is stale now.
        redis_server.restart()
        again = clients.burst(200, address, prefix=b"again")
        replies_again = clients.collect(again)
    answered_after = {tag(r)[0] for r in replies}
    answered_again = {tag(r)[0] for r in replies_again}
    for process in (gateway, *workers):
        assert process.stop() == 0, process.log_text()
    stats = counters(gateway)
    print(f"\nafter the Redis restart: {len(answered_after)} of {len(sent)} answered; after a quick second restart "
          f"{len(answered_again)} of {len(again)}; gateway RSS {rss_before} KiB before, {rss_down} KiB after "
          f"{len(down)} datagrams into a dead Redis; gateway {stats}")
    assert answered_after == set(sent)
    assert answered_again == set(again)
    assert kernel_drops == 0
    # Every datagram sent into the dead Redis was dropped and counted, but for any whose send was
    # still being retried when Redis came back: those were answered.
    answered_down = {tag(r)[0] for r in clients.replies} & set(down)
    assert stats["dropped_layer_error"] + stats.get("dropped_queue_full", 0) >= len(down) - len(answered_down), stats
    times = warning_times(gateway)
    assert times, gateway.log_text()
    # Rate-limited: at most one line per 10 s (log times are whole seconds).
    assert all((later - earlier).total_seconds() >= 9 for earlier, later in zip(times, times[1:])), times
    assert rss_down - rss_before < 20 * 1024, (rss_before, rss_down)


def test_worker_killed_mid_stream(tmp_path, processes, redis_server):
    """A worker killed with SIGKILL mid-stream: the remaining worker answers everything sent after,
    and only calls the dead worker had taken are lost."""
    path = write_config(tmp_path, redis_server.url)
    gateway, address = start_gateway(processes, path)
    victim, survivor = (processes.start(worker_process(path)) for _ in range(2))
    with Clients(10) as clients:
        clients.until_answered(address)
        before = []
        for round_ in range(6):
            before += clients.burst(50, address, prefix=b"b%d-" % round_)
        victim.send_signal(signal.SIGKILL)
        assert victim.wait_exit() == -signal.SIGKILL
        after = []
        for round_ in range(14):
            after += clients.burst(50, address, prefix=b"a%d-" % round_)
        replies = clients.collect(after)
        replies += clients.flush(address)  # whatever of `before` the survivor took is answered by now
    answered = {tag(r)[0] for r in replies}
    assert set(after) <= answered
    assert {tag(r)[1] for r in replies if tag(r)[0] in after} == {survivor.pid}
    lost = set(before) - answered
    print(f"\n{len(lost)} of {len(before)} datagrams sent before the kill were lost with the killed worker")
    for process in (gateway, survivor):
        assert process.stop() == 0, process.log_text()
    assert_clean_log(gateway, survivor)


def test_channel_full_drops_and_counts(tmp_path, processes, redis_server):
    """Past udp.receive's capacity the gateway drops and counts (dropped_channel_full), logging once."""
    path = write_config(tmp_path, redis_server.url, layer_config="    capacity: 10\n")
    gateway, address = start_gateway(processes, path)
    with Clients(5) as clients:  # no worker: everything stays in Redis
        clients.burst(10, address, prefix=b"fill")
        wait_until(lambda: redis_server.command(b"ZCARD", b"asgiudp.receive") == b":10", what="10 queued")
        # channels_redis counts before it adds, so concurrent sends can overshoot a
        # capacity by up to max_layer_sends; once it is reached every send is refused.
        clients.burst(40, address, prefix=b"over")
        # Each send asks ZCOUNT first and is refused on its answer: 50 ZCOUNTs, 50 sends decided.
        wait_until(lambda: zcount_calls(redis_server) >= 50, what="50 sends to Redis")
        assert redis_server.command(b"ZCARD", b"asgiudp.receive") == b":10"
    assert gateway.stop() == 0
    stats = counters(gateway)
    assert stats["received"] == 50 and stats["dropped_channel_full"] == 40, stats
    assert sum("dropped a datagram" in line for line in gateway.lines) == 1, gateway.log_text()
    assert_clean_log(gateway)


def zcount_calls(redis_server):
    stats = redis_server.info(b"commandstats").get("cmdstat_zcount", "calls=0")
    return int(re.match(r"calls=(\d+)", stats)[1])


def test_burst_of_1000_from_100_sockets(tmp_path, processes, redis_server):
    """1,000 datagrams at once from 100 sockets through a gateway and two workers: each one that reached
    the gateway's socket is answered exactly once (all 1,000 with the 4 MiB buffer it asks for)."""
    path = write_config(tmp_path, redis_server.url)
    gateway, address = start_gateway(processes, path)
    workers = [processes.start(worker_process(path)) for _ in range(2)]
    with Clients(100) as clients:
        clients.until_answered(address)
        sent = clients.burst(1000, address)
        clients.collect(sent)
        _, kernel_drops = udp_socket_stats(address)
        expected = set(sent)
        replies = [r for r in clients.flush(address) if tag(r)[0] in expected]  # duplicates would be in by now
    answered = {tag(r)[0] for r in replies}
    by_worker = Counter(tag(r)[1] for r in replies)
    for process in (gateway, *workers):
        assert process.stop() == 0, process.log_text()
    assert_clean_log(gateway, *workers)
    stats = counters(gateway)
    print(f"\nburst: {len(answered)} of {len(sent)} answered ({len(replies)} replies; per worker "
          f"{dict(by_worker)}); {kernel_drops} dropped by the kernel; gateway {stats}")
    assert len(replies) == len(answered), "a datagram was answered twice (delivered to both workers)"
    assert len(answered) == len(sent) - kernel_drops, stats
    assert not [name for name in stats if name.startswith("dropped_")], stats
    # The gateway asks for a 4 MiB socket receive buffer; Linux caps it at net.core.rmem_max.
    rmem_max = int(Path("/proc/sys/net/core/rmem_max").read_text())
    if rmem_max >= 4 << 20:
        assert kernel_drops == 0, f"{kernel_drops} of 1000 dropped by the kernel (net.core.rmem_max={rmem_max})"
