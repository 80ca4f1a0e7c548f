"""Gateway vs a raw Twisted echo, side by side in one run, on 127.0.0.1 only.

    python benchmarks/echo_bench.py            # the full run (about a minute)
    python benchmarks/echo_bench.py --redis    # also a gateway + 2 workers over a redis-server of its own
    python benchmarks/echo_bench.py --smoke    # seconds; what CI runs

SIGTERM (or any failure) stops every server it started, each by its PID.

For each server it measures request/response latency (one datagram in
flight) and throughput with a window of datagrams in flight, and prints the
gateway's figures as ratios of the raw echo's. Every send loop is bounded in
count and in time.
"""

import argparse
import os
import re
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BIN = Path(sys.executable).parent
GATEWAY_YAML = """\
channel_layer: {backend: memory}
application: examples.echo:application
listeners:
  - {name: bench, type: plain, bind: 127.0.0.1, port: 0}
"""


# Every child we start, at once (before it is ready): `stop_children` stops each by PID, in `finally`
# and on SIGTERM, so a benchmark that is stopped or fails part-way leaves nothing running.
CHILDREN = []


def start(argv, pattern, cwd):
    """Start a server process; (process, port) once a log line matches `pattern` (port: its group, if any)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO))
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd, env=env)
    CHILDREN.append(proc)
    watchdog = threading.Timer(60, proc.kill)  # a server that never logs its port is killed
    watchdog.start()
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            match = re.search(pattern, line)
            if match:
                # Keep draining its log so a full pipe never blocks the server.
                threading.Thread(target=proc.stdout.read, daemon=True).start()
                return proc, int(match.group(1)) if match.re.groups else None
    finally:
        watchdog.cancel()
    proc.kill()
    raise RuntimeError(f"{argv[0]} did not start:\n{''.join(seen[-20:])}")


REDIS_YAML = """\
channel_layer:
  backend: channels_redis.core.RedisChannelLayer
  config:
    hosts: ["redis://127.0.0.1:{port}/0"]
    channel_capacity: {{"udp.receive": 10000, "udp.send.*": 10000}}
application: ${{UDPGATEWAY_APPLICATION:-}}
listeners:
  - {{name: bench, type: plain, bind: 127.0.0.1, port: 0}}
"""


def start_redis(tmp):
    """A redis-server of our own on 127.0.0.1 and a free port (no persistence)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", tmp]
    return start(argv, r"Ready to accept connections", tmp)[0], port


def start_redis_topology(tmp):
    """redis-server, a gateway without application and two workers; returns the gateway's port."""
    _redis, port = start_redis(tmp)
    config = Path(tmp) / "redis.yaml"
    config.write_text(REDIS_YAML.format(port=port))
    _gateway, gateway_port = start([str(BIN / "twistd"), "-n", f"--pidfile={tmp}/twistd-redis.pid", "udpgateway",
                                    "-c", str(config)], r"listener bench \(plain\) on \S+:(\d+)", tmp)
    os.environ["UDPGATEWAY_APPLICATION"] = "echo:application"
    try:
        for _ in range(2):
            start([str(BIN / "udpgateway"), "worker", "-c", str(config)], r"udpgateway worker consuming", tmp)
    finally:
        del os.environ["UDPGATEWAY_APPLICATION"]
    return gateway_port


def stop(proc):
    """SIGTERM one child by its PID and wait; SIGKILL if it does not exit."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def stop_children():
    """Stop every child in reverse order of start (workers before their gateway, Redis last)."""
    while CHILDREN:
        stop(CHILDREN.pop())


def _terminated(signum, frame):
    raise SystemExit(128 + signum)  # unwinds through main's `finally`, which stops the children


def latency(port, count, size, budget):
    """Round-trip times in microseconds, one datagram in flight."""
    payload = os.urandom(size)
    times = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1.0)
        deadline = time.monotonic() + budget
        for _ in range(count):
            if time.monotonic() > deadline:
                break
            t0 = time.perf_counter()
            s.sendto(payload, ("127.0.0.1", port))
            try:
                s.recvfrom(65535)
            except socket.timeout:
                continue
            times.append((time.perf_counter() - t0) * 1e6)
    return times


def throughput(port, count, size, window, budget):
    """(answered per second, answered, sent) with up to `window` datagrams in flight."""
    payload = os.urandom(size)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.setblocking(False)
        sent = answered = 0
        t0 = time.perf_counter()
        deadline = time.monotonic() + budget
        last_progress = time.monotonic()
        while answered < count and time.monotonic() < deadline:
            while sent < count and sent - answered < window:
                try:
                    s.sendto(payload, ("127.0.0.1", port))
                except BlockingIOError:
                    break
                sent += 1
            ready, _, _ = select.select([s], [], [], 0.2)
            while ready:
                try:
                    s.recvfrom(65535)
                except BlockingIOError:
                    break
                answered += 1
                last_progress = time.monotonic()
            if sent > answered and time.monotonic() - last_progress > 0.5:
                sent = answered  # count the rest as lost and refill the window
        elapsed = time.perf_counter() - t0
    return answered / elapsed if elapsed else 0.0, answered, sent


def measure(name, port, args):
    times = latency(port, args.pings, args.size, args.budget)
    rate, answered, sent = throughput(port, args.count, args.size, args.window, args.budget)
    p50 = statistics.median(times) if times else float("nan")
    p99 = sorted(times)[int(len(times) * 0.99) - 1] if len(times) > 1 else float("nan")
    print(f"{name:>8}: p50 {p50:8.0f} us  p99 {p99:8.0f} us  {rate:9.0f} answered/s "
          f"({answered}/{args.count} with {args.window} in flight)", flush=True)
    return {"p50": p50, "p99": p99, "rate": rate, "answered": answered}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few seconds: checks it runs, not a measurement")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--redis", action="store_true", help="also measure gateway + 2 workers over Redis")
    parser.add_argument("--hold", action="store_true",
                        help="once the servers run, wait for a line on stdin before measuring (a test stops it there)")
    args = parser.parse_args(argv)
    args.pings, args.count, args.window, args.budget = (50, 300, 16, 5.0) if args.smoke else (2000, 30000, 64, 30.0)
    signal.signal(signal.SIGTERM, _terminated)
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "bench.yaml"
        config.write_text(GATEWAY_YAML.replace("examples.echo", "echo"))
        (Path(tmp) / "echo.py").write_text((REPO / "examples" / "echo.py").read_text())
        try:
            raw, raw_port = start([sys.executable, str(HERE / "raw_echo.py")], r"raw echo on \S+:(\d+)", tmp)
            gateway, gw_port = start([str(BIN / "twistd"), "-n", f"--pidfile={tmp}/twistd.pid", "udpgateway",
                                       "-c", str(config)], r"listener bench \(plain\) on \S+:(\d+)", tmp)
            print(f"servers started: raw echo (PID {raw.pid}), gateway (PID {gateway.pid})", flush=True)
            if args.hold:
                sys.stdin.readline()
            base = measure("raw", raw_port, args)
            results = {"gateway": measure("gateway", gw_port, args)}
            if args.redis:
                port = start_redis_topology(tmp)
                results["redis"] = measure("redis", port, args)
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
            stop_children()
    for name, ours in results.items():
        print(f"ratios {name}/raw: latency p50 x{ours['p50'] / base['p50']:.2f}, "
              f"p99 x{ours['p99'] / base['p99']:.2f}, throughput x{ours['rate'] / base['rate']:.2f}")
    return 0 if base["answered"] and all(r["answered"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
