"""Redis topologies side by side in one run, on 127.0.0.1 and a redis-server of its own.

    python benchmarks/redis_bench.py            # the full run (a few minutes)
    python benchmarks/redis_bench.py --smoke    # seconds; what CI runs
    python benchmarks/redis_bench.py --only runworker --repeat 5   # medians over 5 rounds

Rows: a bare layer round trip without gateway (a client process doing
layer.send and a worker doing receive and the reply send) on stock
channels_redis and on BatchingRedisChannelLayer; a gateway with 1, 2 and 4
`udpgateway worker` processes on our layer and 2 on stock channels_redis;
a gateway with Django's `manage.py runworker` on each (ours with the
example's send_ahead 64 and linger 0.005, and again with send_ahead 0); and `runworker
ceiling`, runworker alone on benchmarks/null_layer.py, a layer that costs
nothing (its receive hands out a fixed message at once, its send returns at
once), which is as fast as runworker goes whatever the layer: Channels'
consumer hops to a thread (close_old_connections) before each message and
runworker handles one message at a time; and `runworker drain`, runworker
alone on our layer answering messages preloaded in Redis: what our layer
costs runworker without a gateway, redis-server and a client on the same
cores. Each UDP row sends 64-byte datagrams with 64 in flight, bounded in
count and time; the ceiling row times 20,000 messages after a warm-up, the
drain row 8,000 (no latencies: p50 and p99 are nan).
The last line holds the headline figures. "CPU us/rt" is the CPU time of every
process of the row (redis-server and the client included) per answered
round trip: it depends less than the rate on what else the machine runs. Every process it started (redis-server
included) is stopped by PID, even when a start fails.
"""

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import clients  # noqa: E402
import servers  # noqa: E402
from servers import BIN, CHILDREN, REPO, stop, stop_children  # noqa: E402

HERE = Path(__file__).resolve().parent
STOCK = "channels_redis.core.RedisChannelLayer"
OURS = "gateway.layers.batching.BatchingRedisChannelLayer"
NULL = "null_layer.NullLayer"  # benchmarks/null_layer.py
CEILING = "runworker ceiling"
AHEAD_0 = "runworker ahead 0"  # our layer with send_ahead 0: every reply waits for Redis
DRAIN = "runworker drain"  # runworker alone on our layer, answering messages preloaded in Redis
DRAIN_REPLIES = "udp.send.drain!x"  # where the drained messages ask for their replies
WARM_UP = 1000  # messages a drain answers before its clock starts (Django's imports, the thread of sync_to_async)
MOONSHOT = 50_000
GATEWAY_READY = r"listener echo \(plain\) on \S+:(\d+)"


def start(argv, pattern, cwd, env=None, ready=None):
    """Start a child (stopped by PID by stop_children whatever happens); (process, port) once ready."""
    server = servers.start(argv, pattern, cwd, env, ready)
    return server.proc, server.port


def start_redis(tmp):
    """A redis-server of our own on 127.0.0.1 and a free port (no persistence)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", tmp]
    return start(argv, r"Ready to accept connections", tmp)[0], port


def _terminated(signum, frame):
    raise SystemExit(128 + signum)  # unwinds through main's `finally`, which stops the children


def rows(smoke):
    """(name, kind, backend, workers) of every measurement, in table order."""
    if smoke:
        return [("bare stock", "bare", STOCK, 1), ("gateway+2 ours", "gateway", OURS, 2),
                ("runworker ours", "runworker", OURS, 1), (CEILING, "ceiling", NULL, 1), (DRAIN, "drain", OURS, 1)]
    return [
        ("bare stock", "bare", STOCK, 1),
        ("bare ours", "bare", OURS, 1),
        ("gateway+1 ours", "gateway", OURS, 1),
        ("gateway+2 ours", "gateway", OURS, 2),
        ("gateway+4 ours", "gateway", OURS, 4),
        ("gateway+2 stock", "gateway", STOCK, 2),
        ("runworker stock", "runworker", STOCK, 1),
        ("runworker ours", "runworker", OURS, 1),
        (AHEAD_0, "runworker", OURS, 1),
        (CEILING, "ceiling", NULL, 1),
        (DRAIN, "drain", OURS, 1),
    ]


def cpu_seconds(pids):
    """User + system CPU seconds used so far by the processes `pids` (Linux /proc)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def environment(redis_port, backend):
    """The variables a row's processes get on top of ours."""
    return dict(REDIS_URL=f"redis://127.0.0.1:{redis_port}/0", UDPGATEWAY_PORT="0",
                CHANNEL_LAYER_BACKEND=backend, UDPGATEWAY_APPLICATION="echo:application")


def start_with(env, argv, pattern, cwd, ready=None):
    return start(argv, pattern, cwd, env, ready)


def start_runworker(env, processes, **output):
    """`manage.py runworker udp.receive` of examples/django_worker, stopped by PID with the others whatever happens."""
    runworker = subprocess.Popen([sys.executable, "manage.py", "runworker", "udp.receive"],
                                 cwd=str(REPO / "examples" / "django_worker"), env=env, **output)
    CHILDREN.append(runworker)
    processes.append(runworker)
    return runworker


def run_udp_row(name, kind, backend, workers, redis_port, tmp, processes, args, redis_pid):
    """Start a gateway (on our layer for runworker rows) and its workers; measure over UDP."""
    config = str(REPO / "examples" / "redis.yaml")
    gateway_env = environment(redis_port, OURS if kind == "runworker" else backend)
    gateway_env.pop("UDPGATEWAY_APPLICATION")
    gateway, port = start_with(gateway_env, [str(BIN / "twistd"), "-n", f"--pidfile={tmp}/twistd-{len(processes)}.pid",
                                             "udpgateway", "-c", config], GATEWAY_READY, tmp, r"udpgateway ready")
    processes.append(gateway)
    env = environment(redis_port, backend)
    if name == AHEAD_0:
        env["SEND_AHEAD"] = "0"  # the example's settings read it
    for _ in range(workers):
        if kind == "runworker":  # it logs nothing when ready: the warm-up below waits for its first answer
            start_runworker(dict(os.environ, **env, PYTHONPATH=str(REPO)), processes, stdout=subprocess.DEVNULL)
        else:
            argv = [str(BIN / "udpgateway"), "worker", "-c", config]
            processes.append(start_with(env, argv, r"udpgateway worker consuming", tmp)[0])
    if not clients.ping(port, 200, args.size, 20.0)[0]:
        raise RuntimeError("no answer within 20 s")
    times = clients.ping(port, args.pings, args.size, args.budget)[0]
    pids = [redis_pid] + [p.pid for p in processes]
    cpu = cpu_seconds(pids) + time.process_time()  # the client is this process
    rate, answered, sent = clients.window(port, args.count, args.size, args.window, 1, args.budget)
    cpu = cpu_seconds(pids) + time.process_time() - cpu
    return times, rate, answered, sent, cpu


def run_bare_row(backend, redis_port, tmp, processes, args, redis_pid):
    """A layer client and a layer worker process, no gateway."""
    url = f"redis://127.0.0.1:{redis_port}/0"
    script = str(HERE / "layer_roundtrip.py")
    processes.append(start([sys.executable, script, "worker", backend, url], r"layer worker ready", tmp)[0])
    pids = [redis_pid, processes[-1].pid]
    cpu = cpu_seconds(pids)
    done = subprocess.run([sys.executable, script, "client", backend, url, str(args.pings), str(args.count),
                           str(args.window), str(args.budget)], capture_output=True, text=True,
                          timeout=3 * args.budget + 30, cwd=tmp)
    line = next((l for l in done.stdout.splitlines() if l.startswith("result")), None)
    if line is None:
        raise RuntimeError(f"layer client failed:\n{done.stdout}{done.stderr}")
    fields = line.split()
    values = dict(zip(fields[1::2], fields[2::2]))
    values["cpu"] = cpu_seconds(pids) - cpu + float(values["cpu"])  # the worker's pings included: a bound
    return None, float(values["rate"]), int(values["answered"]), int(values["sent"]), values


def run_ceiling_row(backend, processes, args):
    """`manage.py runworker` alone on a layer that costs nothing: (rate, messages, CPU seconds) it reports."""
    env = dict(os.environ, CHANNEL_LAYER_BACKEND=backend, PYTHONPATH=os.pathsep.join([str(REPO), str(HERE)]),
               NULL_LAYER_MESSAGES=str(args.ceiling), NULL_LAYER_BUDGET=str(args.budget))
    runworker = start_runworker(env, processes, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    bound = args.budget + 60  # the layer ends the process `budget` s after its first receive; Django starts first
    try:
        out, err = runworker.communicate(timeout=bound)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"runworker on {backend} printed no figure within {bound:.0f} s") from None
    line = next((l for l in out.splitlines() if l.startswith("ceiling ")), None)
    if line is None:
        raise RuntimeError(f"runworker on {backend} printed no figure:\n{out}{err[-4000:]}")
    fields = line.split()
    values = dict(zip(fields[1::2], fields[2::2]))
    messages = int(values["messages"])
    return float(values["rate"]), messages, float(values["cpu_us"]) * messages / 1e6


def run_drain_row(backend, redis_port, processes, args, redis_pid):
    """`manage.py runworker` alone on `backend`, answering messages preloaded in Redis: (rate, answered,
    CPU seconds of runworker and redis-server) from its WARM_UP-th answer to its last."""
    url = f"redis://127.0.0.1:{redis_port}/0"
    total = WARM_UP + args.drain  # below the example's channel_capacity (10,000) for the replies
    done = subprocess.run([sys.executable, str(HERE / "layer_roundtrip.py"), "preload", backend, url, str(total),
                           DRAIN_REPLIES], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"preloading {total} messages failed:\n{done.stdout}{done.stderr[-4000:]}")
    env = dict(os.environ, **environment(redis_port, backend), PYTHONPATH=str(REPO))
    runworker = start_runworker(env, processes, stdout=subprocess.DEVNULL)
    pids = [redis_pid, runworker.pid]
    key = b"asgi" + DRAIN_REPLIES.split("!")[0].encode() + b"!"  # channels_redis' key of every `udp.send.drain!` channel
    deadline = time.monotonic() + args.budget + 60  # Django starts first
    start = None
    answered = 0
    with socket.create_connection(("127.0.0.1", redis_port), timeout=5) as redis, redis.makefile("rb") as replies:
        while time.monotonic() < deadline and runworker.poll() is None:
            redis.sendall(b"ZCARD " + key + b"\r\n")  # an inline command; the answer is ":N\r\n"
            answered = int(replies.readline()[1:])
            if start is None and answered >= WARM_UP:
                start = (time.perf_counter(), cpu_seconds(pids), answered)
            if answered >= total:
                break
            time.sleep(0.005)
    if start is None or answered < total:
        raise RuntimeError(f"runworker answered {answered} of {total} preloaded messages in time")
    elapsed, cpu = time.perf_counter() - start[0], cpu_seconds(pids) - start[1]
    return (answered - start[2]) / elapsed, answered - start[2], cpu


def measure(row, redis, redis_pid, tmp, args):
    name, kind, backend, workers = row
    processes = []
    try:
        if kind == "bare":
            _, rate, answered, sent, values = run_bare_row(backend, redis, tmp, processes, args, redis_pid)
            p50, p99, cpu = float(values["p50"]), float(values["p99"]), values["cpu"]
        elif kind == "ceiling":
            rate, answered, cpu = run_ceiling_row(backend, processes, args)
            sent, p50, p99 = answered, float("nan"), float("nan")  # every message it handed out is answered
        elif kind == "drain":
            rate, answered, cpu = run_drain_row(backend, redis, processes, args, redis_pid)
            sent, p50, p99 = answered, float("nan"), float("nan")
        else:
            times, rate, answered, sent, cpu = run_udp_row(name, kind, backend, workers, redis, tmp, processes, args,
                                                           redis_pid)
            times.sort()
            p50 = times[len(times) // 2] if times else float("nan")
            p99 = times[int(len(times) * 0.99) - 1] if len(times) > 1 else float("nan")
    finally:
        for proc in reversed(processes):
            stop(proc)
    cpu_us = 1e6 * cpu / answered if answered else float("nan")
    result = {"name": name, "p50": p50, "p99": p99, "rate": rate, "answered": answered, "sent": sent, "cpu": cpu_us}
    print(f"{name:<18} {p50:>9.0f} {p99:>9.0f} {rate:>13.0f} {cpu_us:>10.0f} {answered:>9}/{sent:<9}", flush=True)
    return result


def flushall(port):
    subprocess.run(["redis-cli", "-p", str(port), "FLUSHALL"], capture_output=True, timeout=10)


def ceiling_part(by_name):
    """How fast runworker goes on a layer that costs nothing, against runworker on stock channels_redis."""
    ceiling, stock = by_name[CEILING], by_name.get("runworker stock")
    part = f"runworker ceiling (a layer that costs nothing) {ceiling:,.0f}/s"
    if stock:
        part += f" = {ceiling / stock:.1f} x stock runworker"
    if by_name.get("runworker ours"):
        part += f", ours at {100 * by_name['runworker ours'] / ceiling:.0f}% of it"
    if by_name.get(DRAIN):
        part += f", ours alone draining Redis {by_name[DRAIN]:,.0f}/s = {100 * by_name[DRAIN] / ceiling:.0f}% of it"
    return part


def headline(results):
    by_name = {r["name"]: r["rate"] for r in results}
    parts = []
    ours2 = by_name.get("gateway+2 ours")
    if ours2 is not None:
        stock2 = by_name.get("gateway+2 stock")
        parts.append(f"gateway+2 workers on our layer {ours2:,.0f}/s"
                     + (f" (x{ours2 / stock2:.1f} stock)" if stock2 else ""))
    if by_name.get("runworker stock") and "runworker ours" in by_name:
        parts.append(f"runworker ours/stock x{by_name['runworker ours'] / by_name['runworker stock']:.1f}"
                     + (f" (send_ahead 0: x{by_name[AHEAD_0] / by_name['runworker stock']:.1f})"
                        if by_name.get(AHEAD_0) else ""))
    if by_name.get(CEILING):
        parts.append(ceiling_part(by_name))
    elif by_name.get(DRAIN):
        parts.append(f"runworker alone on our layer draining Redis {by_name[DRAIN]:,.0f}/s")
    if "bare stock" in by_name:
        parts.append(f"bare stock round trip {by_name['bare stock']:,.0f}/s")
    cores = os.cpu_count() or 1
    ours2_cpu = next((r["cpu"] for r in results if r["name"] == "gateway+2 ours"), None)
    if ours2_cpu:
        parts.append(f"gateway+2 ours costs {ours2_cpu:.0f} us CPU per round trip = {cores * 1e6 / ours2_cpu:,.0f}/s "
                     f"on {cores} idle cores")
    round_trips = [r["rate"] for r in results if r["name"] not in (CEILING, DRAIN)]  # no UDP round trip in those
    if round_trips:
        best = max(round_trips)
        parts.append(f"moonshot {MOONSHOT:,}/s: best {best:,.0f}/s = {100 * best / MOONSHOT:.0f}%")
    return "headline: " + "; ".join(parts)


def medians(rounds):
    """One line: each row's median rate over the rounds, and runworker ours/stock in each round and their median."""
    parts = []
    for name in [r["name"] for r in rounds[0]]:
        rates = [r["rate"] for results in rounds for r in results if r["name"] == name]
        parts.append(f"{name} {statistics.median(rates):,.0f}/s")
    ratios = []
    for results in rounds:
        by_name = {r["name"]: r["rate"] for r in results}
        if by_name.get("runworker stock") and "runworker ours" in by_name:
            ratios.append(by_name["runworker ours"] / by_name["runworker stock"])
    if ratios:
        parts.append("runworker ours/stock " + ", ".join(f"x{ratio:.1f}" for ratio in ratios)
                     + f" (median x{statistics.median(ratios):.1f})")
    return f"medians over {len(rounds)} rounds: " + "; ".join(parts)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few seconds: checks it runs, not a measurement")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--only", help="run only the rows whose name contains this text")
    parser.add_argument("--repeat", type=int, default=1, choices=range(1, 101), metavar="N",
                        help="run the rows N times over (1 to 100), a headline each time, then the medians")
    args = parser.parse_args(argv)
    args.pings, args.count, args.window, args.budget = (20, 200, 16, 5.0) if args.smoke else (500, 40000, 64, 20.0)
    args.ceiling = 2000 if args.smoke else 20000  # messages the ceiling row times, after its warm-up
    args.drain = 1000 if args.smoke else 8000  # messages the drain row times, after WARM_UP
    selected = [r for r in rows(args.smoke) if not args.only or args.only in r[0]]
    rounds = []
    signal.signal(signal.SIGTERM, _terminated)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            redis, port = start_redis(tmp)
            for _ in range(args.repeat):
                print(f"{'row':<18} {'p50 us':>9} {'p99 us':>9} {'round trips/s':>13} {'CPU us/rt':>10} "
                      f"{'answered/sent':>19}", flush=True)
                results = []
                for row in selected:
                    flushall(port)
                    results.append(measure(row, port, redis.pid, tmp, args))
                rounds.append(results)
                print(headline(results), flush=True)
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
            stop_children()  # each child by PID, redis-server last
    if len(rounds) > 1:
        print(medians(rounds), flush=True)
    return 0 if all(r["answered"] for results in rounds for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
