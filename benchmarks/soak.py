"""Soak: a million datagrams of random sizes from random 127.0.0.x sources through the memory-layer gateway.

    python benchmarks/soak.py              # 1,000,000 datagrams at 3,000/s (about 6 minutes; capped at 15)
    python benchmarks/soak.py --smoke      # seconds; what CI runs

A real `twistd -n udpgateway` runs examples.echo:application on 127.0.0.1.
Datagrams (1..1400 bytes, one in a hundred up to 65,507) leave from a pool
of sockets bound to random 127.0.0.x addresses; every second a few sockets
are retired and replaced, so the gateway keeps meeting new clients. Sending
is paced (--rate) and the whole run is capped (--max-seconds). The gateway's
RSS is read from /proc/PID/status every second. At the end it checks:

- the gateway stayed alive and exited 0 on SIGTERM;
- every datagram is accounted for: sent = replies received + the gateway's
  dropped_* (and app_errors, app_timeouts) counters + kernel drops (the gateway socket's
  and the client sockets' `drops` in /proc/net/udp);
- every reply reached the socket that sent its request, with its bytes;
- RSS after warm-up vs at the end: flat means growth below the stated bound
  (not judged in --smoke, which is too short to warm up).

Traffic stays on 127.0.0.0/8; every loop is bounded in count and time.
SIGTERM (or any failure) stops the gateway it started, by its PID.
"""

import argparse
import os
import random
import re
import resource
import selectors
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
MAX_PAYLOAD = 65507
CONFIG = """\
channel_layer: {{backend: memory}}
application: examples.echo:application
listeners:
  - {{name: soak, type: plain, bind: 127.0.0.1, port: 0}}
limits:
  reply_ttl: {reply_ttl}
"""
# Seconds a retired source keeps receiving before it is closed: a reply that comes later is lost
# uncounted (to a closed port), and on a loaded machine the gateway's backlog can hold one for seconds.
GRACE = 30.0
QUIET = 5.0  # at the end, replies are awaited until none came for this long (at most 60 s)
SEQ = 8      # bytes of sequence number at the start of every datagram that is long enough


# -- the gateway process ---------------------------------------------------------

class Gateway:
    """`twistd -n udpgateway` on a config of its own; its log kept in memory, read by a thread."""

    def __init__(self, tmp, reply_ttl):
        config = Path(tmp) / "soak.yaml"
        config.write_text(CONFIG.format(reply_ttl=reply_ttl))
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO))
        argv = [str(BIN / "twistd"), "-n", f"--pidfile={tmp}/twistd.pid", "udpgateway", "-c", str(config)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     cwd=tmp, env=env)
        self.lines = []
        self.port = None
        self._ready = threading.Event()
        threading.Thread(target=self._read_log, daemon=True).start()

    def wait_ready(self, timeout=60):
        """Until it logs "udpgateway ready" (its port read from the listener line); RuntimeError if not."""
        if not self._ready.wait(timeout) or self.port is None:
            raise RuntimeError("the gateway did not start:\n" + "".join(self.lines[-20:]))

    def _read_log(self):
        for line in self.proc.stdout:
            self.lines.append(line)
            match = re.search(r"listener soak \(plain\) on \S+:(\d+)", line)
            if match:
                self.port = int(match.group(1))
            if "udpgateway ready" in line:
                self._ready.set()
        self._ready.set()

    def rss_kib(self):
        """VmRSS of the gateway in KiB, or None once it is gone."""
        try:
            with open(f"/proc/{self.proc.pid}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            return None
        return None

    def stop(self, timeout=30):
        """SIGTERM; its exit status (killed and None past `timeout`)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            return None

    def counters(self):
        """The last "counters: a=1 b=2" line of its log, as a dict (counters are cumulative)."""
        found = [line for line in self.lines if "counters: " in line]
        if not found:
            return {}
        text = found[-1].split("counters: ", 1)[1].strip()
        return {} if text == "all zero" else {k: int(v) for k, v in (item.split("=") for item in text.split())}


def udp_drops():
    """{(local hex address, inode): drops} for every UDP socket of this network namespace (/proc/net/udp)."""
    drops = {}
    with open("/proc/net/udp") as table:
        next(table)
        for line in table:
            fields = line.split()
            drops[(fields[1], int(fields[9]))] = int(fields[12])
    return drops


def udp_no_ports():
    """Udp NoPorts of /proc/net/snmp: datagrams to a closed port, host-wide (for a hint only)."""
    with open("/proc/net/snmp") as snmp:
        names, values = [line.split() for line in snmp if line.startswith("Udp:")][:2]
    return int(values[names.index("NoPorts")])


def hex_address(host, port):
    """The local_address column of /proc/net/udp for an IPv4 (host, port)."""
    return f"{socket.htonl(int.from_bytes(socket.inet_aton(host), 'big')):08X}:{port:04X}"


# -- the sources ------------------------------------------------------------------

class Sources:
    """Client sockets on random 127.0.0.x addresses; retired ones receive for GRACE seconds, then close."""

    def __init__(self, size, rng):
        self.rng = rng
        self.selector = selectors.DefaultSelector()
        self.active = []
        self.retiring = []  # (close at, socket)
        self.outstanding = {}  # seq -> (socket, size)
        self.opened = 0
        self.client_drops = 0
        for _ in range(size):
            self.active.append(self._open())

    def _open(self):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((f"127.0.0.{self.rng.randint(2, 254)}", 0))
        sock.setblocking(False)
        self.selector.register(sock, selectors.EVENT_READ)
        self.opened += 1
        return sock

    def churn(self, count, now):
        """Retire `count` random sockets (they stop sending now) and open as many new ones."""
        for _ in range(min(count, len(self.active))):
            sock = self.active.pop(self.rng.randrange(len(self.active)))
            self.retiring.append((now + GRACE, sock))
            self.active.append(self._open())

    def close_due(self, now, force=False):
        """Close retired sockets whose grace is over, counting their kernel drops first."""
        due = [sock for at, sock in self.retiring if force or at <= now]
        if not due:
            return
        self.retiring = [(at, sock) for at, sock in self.retiring if not (force or at <= now)]
        self._close(due)

    def close_all(self):
        """Close every socket, counting kernel drops first; call once, at the end."""
        self.close_due(0, force=True)
        self._close(self.active)
        self.active = []
        self.selector.close()

    def _close(self, sockets):
        self.client_drops += self.drops_of(sockets)
        for sock in sockets:
            self.selector.unregister(sock)
            sock.close()

    @staticmethod
    def drops_of(sockets):
        table = udp_drops()
        wanted = {(hex_address(*s.getsockname()), os.fstat(s.fileno()).st_ino) for s in sockets}
        return sum(drops for key, drops in table.items() if key in wanted)


# -- the run ------------------------------------------------------------------------

class Tally:
    def __init__(self):
        self.sent = self.replies = self.misrouted = self.corrupted = self.large = 0
        self.short = 0  # datagrams too short to carry a sequence number (not matched one by one)
        self.last_reply = time.monotonic()


def payload(seq, size, block):
    if size < SEQ:
        return block[:size]
    return seq.to_bytes(SEQ, "big") + block[: size - SEQ]


def pick_size(rng, large_fraction):
    if rng.random() < large_fraction:
        return rng.randint(1401, MAX_PAYLOAD)
    return rng.randint(1, 1400)


def receive_ready(sources, tally, timeout):
    for key, _ in sources.selector.select(timeout):
        sock = key.fileobj
        for _ in range(64):  # bounded per socket per round
            try:
                data = sock.recv(MAX_PAYLOAD + 1)
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionRefusedError:
                continue
            tally.replies += 1
            tally.last_reply = time.monotonic()
            if len(data) >= SEQ:
                sent_from, size = sources.outstanding.pop(int.from_bytes(data[:SEQ], "big"), (None, None))
                if sent_from is not sock:
                    tally.misrouted += 1
                elif size != len(data):
                    tally.corrupted += 1


def run_traffic(args, gateway, sources, tally, rss):
    """Send args.count datagrams at args.rate (or until args.max_seconds), receiving replies meanwhile."""
    rng, block = sources.rng, os.urandom(MAX_PAYLOAD)
    target = ("127.0.0.1", gateway.port)
    start = time.monotonic()
    deadline = start + args.max_seconds
    next_second = start + 1
    while tally.sent < args.count and time.monotonic() < deadline:
        now = time.monotonic()
        due = min(args.count, int((now - start) * args.rate) + 1) - tally.sent
        for _ in range(min(due, 256)):
            size = pick_size(rng, args.large_fraction)
            sock = sources.active[rng.randrange(len(sources.active))]
            data = payload(tally.sent, size, block)
            try:
                sock.sendto(data, target)
            except (BlockingIOError, InterruptedError):
                break  # not sent: try again next round
            if size >= SEQ:
                sources.outstanding[tally.sent] = (sock, size)
            else:
                tally.short += 1
            tally.large += size > 1400
            tally.sent += 1
        receive_ready(sources, tally, 0.001 if due > 0 else 0.005)
        if now >= next_second:
            next_second += 1
            if gateway.proc.poll() is not None:
                return time.monotonic() - start
            rss.append((now - start, tally.sent, gateway.rss_kib()))
            sources.churn(args.churn, now)
            sources.close_due(now)
            if args.progress:
                print(f"  t={now - start:6.0f}s sent {tally.sent:8d} replies {tally.replies:8d} "
                      f"rss {rss[-1][2] / 1024:7.1f} MiB", flush=True)
    elapsed = time.monotonic() - start
    # Drain: replies still on their way, bounded.
    quiet_deadline = time.monotonic() + 60
    while time.monotonic() < quiet_deadline and time.monotonic() - tally.last_reply < QUIET:
        receive_ready(sources, tally, 0.05)
    rss.append((time.monotonic() - start, tally.sent, gateway.rss_kib()))
    return elapsed


def rss_verdict(rss, warmup, smoke, elapsed):
    """(lines, ok): RSS after warm-up vs end, and whether growth stays under the bound."""
    samples = [(t, kib) for t, _sent, kib in rss if kib]
    if len(samples) < 3:
        return [f"rss: {len(samples)} samples only"], smoke
    after = [kib for t, kib in samples if warmup <= t < warmup + 10]
    label = f"after warm-up ({warmup:.0f}s)" if after else "mid-run (shorter than the warm-up)"
    after = after or [samples[len(samples) // 2][1]]
    end = [kib for t, kib in samples if t >= elapsed - 10] or [samples[-1][1]]
    base, last, peak = statistics.median(after), statistics.median(end), max(kib for _, kib in samples)
    bound = max(16 * 1024, base * 0.10)
    growth = last - base
    flat = growth < bound
    verdict = "not judged (--smoke)" if smoke else ("flat" if flat else "GROWING")
    line = (f"rss: start {samples[0][1] / 1024:.1f} MiB, {label} {base / 1024:.1f} MiB, "
            f"end {last / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB: growth {growth / 1024:+.1f} MiB "
            f"(bound {bound / 1024:.1f} MiB = max(16 MiB, 10%)): {verdict}")
    return [line], smoke or flat


def account(tally, counters, kernel_gateway, kernel_clients):
    """(lines, ok): sent = replies + gateway drops + kernel drops, nothing unaccounted."""
    drops = {k: v for k, v in counters.items() if k.startswith("dropped_") or k in ("app_errors", "app_timeouts")}
    gateway_drops = sum(drops.values())
    kernel = kernel_gateway + kernel_clients
    unaccounted = tally.sent - tally.replies - gateway_drops - kernel
    detail = ", ".join(f"{k}={v}" for k, v in sorted(drops.items())) or "none"
    lines = [
        f"accounting: sent {tally.sent} = replies {tally.replies} + gateway drops {gateway_drops} ({detail}) "
        f"+ kernel drops {kernel} (gateway socket {kernel_gateway}, client sockets {kernel_clients}); "
        f"unaccounted {unaccounted}",
        f"gateway: received {counters.get('received', 0)}, replied {counters.get('replied', 0)}",
        f"routing: replies to the wrong source {tally.misrouted}, with the wrong length {tally.corrupted}",
    ]
    ok = unaccounted == 0 and tally.misrouted == 0 and tally.corrupted == 0
    return lines, ok


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="seconds and a few thousand datagrams (CI)")
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--rate", type=float, default=3000, help="datagrams per second (default 3000)")
    parser.add_argument("--max-seconds", type=float, default=900, help="cap on the sending time")
    parser.add_argument("--sources", type=int, default=200, help="client sockets open at once")
    parser.add_argument("--churn", type=int, default=10, help="sources replaced every second")
    parser.add_argument("--large-fraction", type=float, default=0.01, help="share of datagrams over 1400 bytes")
    parser.add_argument("--reply-ttl", type=float, default=10, help="the gateway's limits.reply_ttl")
    parser.add_argument("--warmup", type=float, default=None, help="seconds (default: 3 x reply_ttl, min 30)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--progress", action="store_true", help="a line every second")
    args = parser.parse_args(argv)
    if args.smoke:
        args.count, args.rate, args.max_seconds = min(args.count, 3000), min(args.rate, 1000), 20
        args.sources, args.churn, args.large_fraction = 32, 4, 0.02
    if args.warmup is None:
        args.warmup = max(30.0, 3 * args.reply_ttl)
    return args


def raise_fd_limit(args):
    """Room for every socket the run may hold open at once (RLIMIT_NOFILE soft limit, up to the hard one)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.sources * 2 + args.churn * int(GRACE + 2) + 64
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))


def soak(args, seed):
    """Run the gateway and the traffic; every figure the report needs, in one namespace."""
    run = argparse.Namespace(tally=Tally(), rss=[], elapsed=0.0, alive=False, status=None, kernel_gateway=0,
                             no_ports=udp_no_ports())
    with tempfile.TemporaryDirectory() as tmp:
        gateway, sources = Gateway(tmp, args.reply_ttl), None
        try:
            sources = Sources(args.sources, random.Random(seed))
            gateway.wait_ready()
            print(f"gateway started (PID {gateway.proc.pid}) on 127.0.0.1:{gateway.port}", flush=True)
            run.elapsed = run_traffic(args, gateway, sources, run.tally, run.rss)
            run.alive = gateway.proc.poll() is None
            key = hex_address("127.0.0.1", gateway.port)
            run.kernel_gateway = sum(d for (address, _inode), d in udp_drops().items() if address == key)
        finally:
            if sources is not None:
                sources.close_all()  # counts the clients' kernel drops before closing them
            run.status = gateway.stop()
            run.no_ports = udp_no_ports() - run.no_ports
    run.counters, run.log, run.sources, run.client_drops = gateway.counters(), gateway.lines, sources.opened, \
        sources.client_drops
    return run


def report(args, seed, run):
    """Print the figures and the verdict; 0 when every check passed."""
    tally, elapsed = run.tally, run.elapsed
    print(f"soak: sent {tally.sent} datagrams ({tally.large} over 1400 bytes, up to {MAX_PAYLOAD}) from "
          f"{run.sources} sources on 127.0.0.x in {elapsed:.0f}s ({tally.sent / max(elapsed, 1e-9):.0f}/s), "
          f"seed {seed}")
    rss_lines, rss_ok = rss_verdict(run.rss, args.warmup, args.smoke, elapsed)
    account_lines, account_ok = account(tally, run.counters, run.kernel_gateway, run.client_drops)
    if not account_ok:
        account_lines.append(f"hint: host-wide Udp NoPorts rose by {run.no_ports} during the run (replies that "
                             f"came to a closed source, or anything else on this host)")
    for line in rss_lines + account_lines:
        print(line)
    print(f"gateway: {'alive throughout' if run.alive else 'DIED during the run'}, "
          f"exit status {run.status} on SIGTERM")
    print("gateway counters: " + (" ".join(f"{k}={v}" for k, v in sorted(run.counters.items())) or "none logged"))
    checks = {"rss": rss_ok, "accounting": account_ok, "alive": run.alive, "exit 0": run.status == 0,
              "all sent": tally.sent == args.count}
    failed = [name for name, ok in checks.items() if not ok]
    print("result: " + ("PASS" if not failed else "FAIL (" + ", ".join(failed) + ")"))
    if failed:
        print("gateway log (last lines):\n" + "".join(run.log[-30:]))
    return 0 if not failed else 1


def _terminated(signum, frame):
    raise SystemExit(128 + signum)  # unwinds through soak()'s `finally`, which stops the gateway


def main(argv=None):
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminated)
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    raise_fd_limit(args)
    return report(args, seed, soak(args, seed))


if __name__ == "__main__":
    sys.exit(main())
