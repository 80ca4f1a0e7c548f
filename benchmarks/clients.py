"""The benchmark's clients: one datagram in flight, a window over many sources, and floods; 127.0.0.0/8 only.

Every loop is bounded in count and in time. Sources other than 127.0.0.1
are other loopback addresses (Linux answers on all of 127.0.0.0/8), so N
clients are N distinct (address, port) pairs without touching any network.
"""

import collections
import os
import resource
import selectors
import socket
import statistics
import time

RECV = 65535


def raise_nofile():
    """Raise RLIMIT_NOFILE to its hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def source_address(n, block=2):
    """The n-th loopback source address from 127.<block>.0.1 on, each distinct, never 127.0.0.1."""
    n, y = divmod(n, 254)
    n, x = divmod(n, 256)
    return f"127.{block + n}.{x}.{y + 1}"


def udp_socket(host="127.0.0.1", rcvbuf=None):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.bind((host, 0))
    return s


def percentile(values, q):
    """The q-quantile (0..1) of values, nearest rank; nan when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q * len(ordered))) - 1))]


def ping(port, count, size, budget, timeout=1.0):
    """Window 1: (round-trip times in us, sent, matched replies per second)."""
    times, sent = [], 0
    with udp_socket() as s:
        s.settimeout(timeout)
        deadline = time.monotonic() + budget
        started = time.perf_counter()
        for n in range(count):
            if time.monotonic() > deadline:
                break
            payload = n.to_bytes(8, "big") + os.urandom(max(0, size - 8))
            t0 = time.perf_counter()
            s.sendto(payload, ("127.0.0.1", port))
            sent += 1
            if _await_reply(s, payload):
                times.append((time.perf_counter() - t0) * 1e6)
        elapsed = time.perf_counter() - started
    return times, sent, len(times) / elapsed if elapsed else 0.0


def ping_prefixed(port, count, timeout=1.0):
    """`count` pings whose data starts with b"ping" (answered by the quiet app too): (times, sent, rate)."""
    times = []
    with udp_socket() as s:
        s.settimeout(timeout)
        for n in range(count):
            payload = b"ping%d" % n
            t0 = time.perf_counter()
            s.sendto(payload, ("127.0.0.1", port))
            if _await_reply(s, payload):
                times.append((time.perf_counter() - t0) * 1e6)
    return times, count, 0.0


def ping_while(port, running, budget, gap=0.005, timeout=1.0):
    """Ping every `gap` s while running() is true (at most `budget` s): (times in us, sent)."""
    times, sent = [], 0
    deadline = time.monotonic() + budget
    with udp_socket() as s:
        s.settimeout(timeout)
        while running() and time.monotonic() < deadline:
            payload = b"ping%d" % sent
            t0 = time.perf_counter()
            s.sendto(payload, ("127.0.0.1", port))
            sent += 1
            if _await_reply(s, payload):
                times.append((time.perf_counter() - t0) * 1e6)
            time.sleep(gap)
    return times, sent


def _await_reply(s, payload):
    """Wait for the reply to payload, skipping late replies to earlier ones; False on timeout."""
    while True:
        try:
            data, _ = s.recvfrom(RECV)
        except socket.timeout:
            return False
        if data == payload:
            return True


def window(port, count, size, depth, clients, budget):
    """Up to `depth` datagrams in flight spread over `clients` sources: (replies/s, matched, sent)."""
    sockets = [udp_socket(source_address(n) if clients > 1 else "127.0.0.1", rcvbuf=None if clients > 1 else 4 << 20)
               for n in range(clients)]
    selector = selectors.DefaultSelector()
    try:
        for s in sockets:
            s.setblocking(False)
            selector.register(s, selectors.EVENT_READ)
        return _run_window(sockets, selector, port, count, size, depth, budget)
    finally:
        selector.close()
        for s in sockets:
            s.close()


def _run_window(sockets, selector, port, count, size, depth, budget):
    payload = os.urandom(size)
    sent = matched = 0
    t0 = time.perf_counter()
    deadline = last_progress = time.monotonic()
    deadline += budget
    while matched < count and time.monotonic() < deadline:
        while sent < count and sent - matched < depth:
            try:
                sockets[sent % len(sockets)].sendto(payload, ("127.0.0.1", port))
            except BlockingIOError:
                break
            sent += 1
        for key, _ in selector.select(0.2):
            matched += _drain(key.fileobj, payload)
            last_progress = time.monotonic()
        if sent > matched and time.monotonic() - last_progress > 0.5:
            sent = matched  # count the rest as lost and refill the window
    elapsed = time.perf_counter() - t0
    return matched / elapsed if elapsed else 0.0, matched, sent


def _drain(s, payload):
    got = 0
    while True:
        try:
            data = s.recv(RECV)
        except BlockingIOError:
            return got
        got += data == payload


def flood_once(port, sources, rate, size, *, on_tick=None, budget=60.0, block=3):
    """Each of `sources` distinct sources sends one datagram, about `rate` a second; returns how many were sent."""
    payload = os.urandom(size)
    sent, started = 0, time.monotonic()
    while sent < sources and time.monotonic() - started < budget:
        due = min(sources, int((time.monotonic() - started) * rate) + 1)
        while sent < due:
            with udp_socket(source_address(sent, block)) as s:
                s.sendto(payload, ("127.0.0.1", port))
            sent += 1
        if on_tick is not None:
            on_tick(sent)
        time.sleep(0.005)
    return sent


def flood_answered(port, sources, rate, size, budget, linger=0.5):
    """Like flood_once, but each source waits `linger` s for its echo: (sent, answered)."""
    payload = os.urandom(size)
    waiting = collections.deque()  # (sent at, socket), oldest first
    sent = answered = 0
    started = time.monotonic()
    try:
        while (sent < sources or waiting) and time.monotonic() - started < budget:
            due = min(sources, int((time.monotonic() - started) * rate) + 1)
            while sent < due:
                s = udp_socket(source_address(sent, 100))
                s.setblocking(False)
                s.sendto(payload, ("127.0.0.1", port))
                waiting.append((time.monotonic(), s))
                sent += 1
            while waiting and time.monotonic() - waiting[0][0] > linger:
                _at, s = waiting.popleft()
                answered += _drain(s, payload)
                s.close()
            time.sleep(0.002)
    finally:
        for _at, s in waiting:
            s.close()
    return sent, answered


def summary(times):
    return {"p50": statistics.median(times) if times else float("nan"), "p99": percentile(times, 0.99)}
