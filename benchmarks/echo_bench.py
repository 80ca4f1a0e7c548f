"""Gateway vs a raw Twisted echo, side by side in one run, on 127.0.0.0/8 only.

    python benchmarks/echo_bench.py            # the full run (a few minutes)
    python benchmarks/echo_bench.py --redis    # also a gateway + 2 workers over a redis-server of its own
    python benchmarks/echo_bench.py --smoke    # seconds; what CI runs

Covers window 1 (with p50/p99) and 64, 64 and 1,400 bytes, 1 and 10,000
clients, a 100,000-source flood to an application that never answers them
(gateway RSS, reply-channel table) and a 5,000 datagrams/s flood from
100,000 sources to the echo while a normal client measures its p99. Prints a
table; the last line holds the headline ratios. Every loop is bounded in
count and time; it stops only the processes it started, by PID, also when
it fails or gets SIGTERM.
"""

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import clients
import servers

GATEWAY_YAML = """\
channel_layer: {{backend: memory}}
application: {app}
listeners:
  - {{name: bench, type: plain, bind: 127.0.0.1, port: 0}}
limits: {{reply_ttl: {ttl}}}
"""
QUIET_APP = '''\
"""Answers only datagrams starting with b"ping": the flood's sources are never answered."""
from gateway.consumer import UDPConsumer


class Quiet(UDPConsumer):
    async def udp_receive(self, message):
        if message["data"].startswith(b"ping"):
            await self.reply(message, message["data"])


application = Quiet.as_asgi()
'''
# The quiet flood's reply_ttl is short (15 s instead of 60) so its reply channels expire within the run;
# long enough that its 100,000 sources (10 s at 10,000/s) are all held at once: the table reaches its cap.
FULL = dict(pings=3000, count=40000, many=10000, rounds=3, budget=20.0, sources=100000, flood_rate=10000,
            echo_rate=5000, ttl=15)
SMOKE = dict(pings=50, count=300, many=50, rounds=1, budget=5.0, sources=500, flood_rate=2000,
             echo_rate=500, ttl=1)


def settings(p):
    """(label, measure(server) -> result dict) of the side-by-side settings."""
    return [
        ("window 1, 64 B", lambda port: _ping(port, p["pings"], 64, p["budget"])),
        ("window 1, 1400 B", lambda port: _ping(port, p["pings"], 1400, p["budget"])),
        ("window 64, 64 B, 1 client", lambda port: _window(port, p["count"], 64, 1, p["budget"])),
        ("window 64, 1400 B, 1 client", lambda port: _window(port, p["count"], 1400, 1, p["budget"])),
        (f"window 64, 64 B, {p['many']:,} clients", lambda port: _window(port, p["count"], 64, p["many"],
                                                                           p["budget"])),
    ]


def _ping(port, count, size, budget):
    times, sent, rate = clients.ping(port, count, size, budget)
    return dict(clients.summary(times), rate=rate, times=times, sent=sent, matched=len(times))


def _window(port, count, size, many, budget):
    rate, matched, sent = clients.window(port, count, size, 64, many, budget)
    return dict(rate=rate, sent=sent, matched=matched)


def side_by_side(raw, gateway, p):
    """{label: {"raw": best-of-rounds result, "gateway": ...}}, the two servers alternating."""
    results = {}
    for label, measure in settings(p):
        rounds = {"raw": [], "gateway": []}
        for n in range(p["rounds"]):
            order = [("raw", raw), ("gateway", gateway)]
            for name, server in order if n % 2 == 0 else reversed(order):
                cpu = server.cpu_seconds()
                result = measure(server.port)
                result["cpu_us"] = (server.cpu_seconds() - cpu) / max(1, result["matched"]) * 1e6
                rounds[name].append(result)
        results[label] = {name: _median(runs) for name, runs in rounds.items()}
        print(f"  {label}: raw {results[label]['raw']['rate']:,.0f}/s, gateway "
              f"{results[label]['gateway']['rate']:,.0f}/s", file=sys.stderr, flush=True)
    return results


def _median(runs):
    """The round with the median rate; latency percentiles over every round's samples."""
    chosen = dict(sorted(runs, key=lambda r: r["rate"])[len(runs) // 2])
    if "times" in chosen:
        times = [t for r in runs for t in r["times"]]
        chosen.update(clients.summary(times), matched=sum(r["matched"] for r in runs),
                      sent=sum(r["sent"] for r in runs))
    return chosen


def quiet_flood(tmp, p):
    """The never-answered flood, twice: RSS, reply-channel table and a normal client."""
    (Path(tmp) / "quiet.py").write_text(QUIET_APP)
    gateway = servers.start_gateway(tmp, "quiet", GATEWAY_YAML.format(app="quiet:application", ttl=p["ttl"]))
    try:
        out = {"rss_before": gateway.rss_mb()}
        for n in (1, 2):
            out.update({f"{k}{n}": v for k, v in _one_quiet_flood(gateway, p).items()})
            if n == 1:
                time.sleep(p["ttl"] + 1.5)  # every reply channel of the flood expires
                out["rss_after_ttl"] = gateway.rss_mb()
        out["after"] = _normal_answered(gateway.port, 20)
        out["counters"] = gateway.counters()
        return out
    finally:
        gateway.stop()


def _one_quiet_flood(gateway, p):
    peak, asked, answered = [gateway.rss_mb()], [0, 0], [0]
    step = max(1, p["sources"] // 50)

    def tick(sent):
        if sent // step > asked[1]:
            asked[0], asked[1] = asked[0] + 1, sent // step
            answered[0] += _normal_answered(gateway.port, 1)
            peak.append(gateway.rss_mb())

    sent = clients.flood_once(gateway.port, p["sources"], p["flood_rate"], 64, on_tick=tick, budget=60)
    peak.append(gateway.rss_mb())
    table = gateway.counters().get("reply_channels", -1)
    return {"sent": sent, "peak": max(peak), "during": (answered[0], asked[0]), "table": table}


def _normal_answered(port, count):
    """How many of `count` pings from 127.0.0.1 are answered (1 s each)."""
    times, _sent, _rate = clients.ping_prefixed(port, count)
    return len(times)


def echo_flood(tmp, gateway, p):
    """A normal client's latency while `echo_rate` datagrams/s from many sources hit the echo."""
    budget = p["sources"] / p["echo_rate"] + 10
    flood = subprocess.Popen([sys.executable, str(Path(__file__).with_name("flood.py")), str(gateway.port),
                              str(p["sources"]), str(p["echo_rate"]), "64", str(budget)],
                             stdout=subprocess.PIPE, text=True, cwd=tmp)
    servers.CHILDREN.append(flood)
    try:
        times, pinged = clients.ping_while(gateway.port, lambda: flood.poll() is None, budget + 5)
        out, _ = flood.communicate(timeout=budget + 10)
    finally:
        servers.stop(flood)
    sent, answered = (int(w) for w in out.split()[1::2])
    return dict(clients.summary(times), pings=pinged, answered_pings=len(times), sent=sent,
                dropped=1 - answered / sent if sent else 1, counters=gateway.counters())


def table(results, quiet, flood, p):
    """The rows of the printed table: (setting, raw, gateway, gateway/raw)."""
    rows = []
    for label, pair in results.items():
        raw, gw = pair["raw"], pair["gateway"]
        rows.append((f"{label}: replies/s", f"{raw['rate']:,.0f}", f"{gw['rate']:,.0f}",
                     f"x{gw['rate'] / raw['rate']:.2f}"))
        rows.append((f"{label}: server CPU us/datagram", f"{raw['cpu_us']:.0f}", f"{gw['cpu_us']:.0f}",
                     f"x{gw['cpu_us'] / raw['cpu_us']:.2f}" if raw["cpu_us"] else ""))
        if "p50" in raw:
            for q in ("p50", "p99"):
                rows.append((f"{label}: {q} latency (us)", f"{raw[q]:,.0f}", f"{gw[q]:,.0f}", f"x{gw[q] / raw[q]:.2f}"))
    one, many = results["window 64, 64 B, 1 client"], results[f"window 64, 64 B, {p['many']:,} clients"]
    rows.append((f"{p['many']:,} clients vs 1 client", f"x{many['raw']['rate'] / one['raw']['rate']:.2f}",
                 f"x{many['gateway']['rate'] / one['gateway']['rate']:.2f}", ""))
    growth = quiet["peak1"] - quiet["rss_before"]
    rows += [
        (f"quiet flood {p['sources']:,} sources: RSS before / peak (MB)", "",
         f"{quiet['rss_before']:.0f} / {quiet['peak1']:.0f}", f"+{growth:.0f} MB"),
        (f"  after reply_ttl ({p['ttl']} s) / second flood peak (MB)", "",
         f"{quiet['rss_after_ttl']:.0f} / {quiet['peak2']:.0f}", f"+{_second(quiet):.0%} of the first"),
        ("  reply channels after each flood (cap 100,000)", "", f"{_n(quiet['table1'])} / {_n(quiet['table2'])}", ""),
        ("  normal client answered during / after", "",
         f"{quiet['during1'][0]}/{quiet['during1'][1]}, {quiet['during2'][0]}/{quiet['during2'][1]} / "
         f"{quiet['after']}/20", ""),
        (f"echo flood {p['echo_rate']:,}/s from {p['sources']:,} sources: normal p50 / p99 (ms)", "",
         f"{flood['p50'] / 1000:.2f} / {flood['p99'] / 1000:.2f}", f"{flood['answered_pings']}/{flood['pings']} "
         "answered"),
        ("  flood datagrams not answered", "", f"{flood['dropped']:.1%} of {flood['sent']:,}", ""),
        ("  gateway full GCs so far / longest (ms)", "", _gc(flood["counters"]), ""),
    ]
    return rows


def _gc(counters):
    return f"{counters['gc_full']} / {counters['gc_longest_ms']}" if "gc_full" in counters else "n/a"


def _n(value):
    return f"{value:,}" if value >= 0 else "n/a"


def _second(quiet):
    first = quiet["peak1"] - quiet["rss_before"]
    return (quiet["peak2"] - quiet["peak1"]) / first if first > 0 else 0.0


def headline(results, quiet, flood, p):
    w1, w64 = results["window 1, 64 B"], results["window 64, 64 B, 1 client"]
    many = results[f"window 64, 64 B, {p['many']:,} clients"]["gateway"]["rate"] / w64["gateway"]["rate"]
    ratio = lambda pair, key="rate": pair["gateway"][key] / pair["raw"][key]  # noqa: E731
    return (f"ratios gateway/raw: window 1 x{ratio(w1):.2f}, window 64 x{ratio(w64):.2f}, "
            f"p99 at window 1 x{ratio(w1, 'p99'):.2f}; {p['many']:,}/1 clients x{many:.2f}; "
            f"quiet flood +{quiet['peak1'] - quiet['rss_before']:.0f} MB, second +{_second(quiet):.0%}; "
            f"echo flood p99 {flood['p99'] / 1000:.1f} ms, {flood['dropped']:.1%} unanswered")


def print_table(rows):
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    header = ("setting", "raw echo", "gateway", "gateway/raw")
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print(f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]}", flush=True)


def lossless(results, quiet, flood):
    """Smoke's check: every window-1 ping matched, and the normal client always answered."""
    pings = all(pair[n]["matched"] == pair[n]["sent"] for pair in results.values() for n in pair if "p50" in pair[n])
    normal = quiet["during1"][0] == quiet["during1"][1] and quiet["after"] == 20
    return pings and normal and flood["answered_pings"] == flood["pings"] > 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="seconds, tiny counts: checks it runs, not a measurement")
    parser.add_argument("--redis", action="store_true", help="also measure gateway + 2 workers over Redis")
    parser.add_argument("--hold", action="store_true",
                        help="once the servers run, wait for a line on stdin before measuring (a test stops it there)")
    args = parser.parse_args(argv)
    p = SMOKE if args.smoke else FULL
    clients.raise_nofile()
    signal.signal(signal.SIGTERM, _terminated)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "echo.py").write_text((servers.REPO / "examples" / "echo.py").read_text())
        try:
            raw = servers.start_raw(tmp)
            gateway = servers.start_gateway(tmp, "echo", GATEWAY_YAML.format(app="echo:application", ttl=60))
            print(f"servers started: raw echo (PID {raw.proc.pid}), gateway (PID {gateway.proc.pid})", flush=True)
            if args.hold:
                sys.stdin.readline()
            results = side_by_side(raw, gateway, p)
            quiet = quiet_flood(tmp, p)
            flood = echo_flood(tmp, gateway, p)
            redis = _redis(tmp, p) if args.redis else None
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
            servers.stop_children()
    print_table(table(results, quiet, flood, p))
    if redis is not None:
        print(f"ratios redis/raw: window 1 x{redis['w1'] / results['window 1, 64 B']['raw']['rate']:.2f}, "
              f"window 64 x{redis['w64'] / results['window 64, 64 B, 1 client']['raw']['rate']:.2f}")
    print(headline(results, quiet, flood, p), flush=True)
    return 0 if not args.smoke or lossless(results, quiet, flood) else 1


def _terminated(signum, frame):
    raise SystemExit(128 + signum)  # unwinds through main's `finally`, which stops the children


def _redis(tmp, p):
    gateway = servers.start_redis_topology(tmp)
    return {"w1": _ping(gateway.port, p["pings"] // 4, 64, p["budget"])["rate"],
            "w64": _window(gateway.port, p["count"] // 4, 64, 1, p["budget"])["rate"]}


if __name__ == "__main__":
    sys.exit(main())
