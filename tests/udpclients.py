"""Plain-socket UDP clients for tests against gateway processes: many sockets, bounded sends, replies collected."""

import select
import socket
import time
from collections import Counter
from dataclasses import dataclass

from tests.support import DEADLINE

RECEIVE_BUFFER = 1 << 20  # the default (~208 KiB) holds only a few hundred small datagrams


@dataclass(frozen=True)
class Reply:
    client: int      # index of the socket that got it
    data: bytes
    source: tuple    # (host, port) it came from
    at: float        # time.monotonic() when it was read


def udp_socket_stats(address):
    """(bytes waiting, datagrams the kernel dropped) of the local UDP sockets bound to `address`, from /proc/net/udp.

    Summed over every socket on that address (reuse_port). Tells what a server has read and
    what never reached it, per socket, where the system-wide counters mix in everyone else's.
    """
    host, port = address
    wanted = f"{socket.inet_aton(host)[::-1].hex().upper()}:{port:04X}"
    waiting = drops = 0
    with open("/proc/net/udp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[1] == wanted:
                waiting += int(fields[4].split(":")[1], 16)
                drops += int(fields[-1])
    return waiting, drops


class Clients:
    """`count` UDP sockets on 127.0.0.1 with large receive buffers; use as a context manager."""

    def __init__(self, count=1, host="127.0.0.1"):
        self.sockets = []
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            s.bind((host, 0))
            s.setblocking(False)
            self.sockets.append(s)
        self.replies = []
        self.probes = []  # every probe until_answered sent, answered or not (yet)
        self._markers = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        for s in self.sockets:
            s.close()

    def send(self, client, data, address):
        self.sockets[client].sendto(data, address)

    def burst(self, count, address, prefix=b"m"):
        """Send `count` datagrams at once, round robin over the sockets; returns their payloads."""
        sent = []
        for i in range(count):
            data = b"%s%d" % (prefix, i)
            self.sockets[i % len(self.sockets)].sendto(data, address)
            sent.append(data)
        return sent

    def collect(self, expected, timeout=DEADLINE, *, key=lambda data: data.split()[0]):
        """Gather replies until every payload in `expected` was answered or `timeout`.

        Returns the new replies to `expected` (duplicates included); every reply
        read, late ones to earlier sends too, is kept in `self.replies`.
        """
        expected = set(expected)
        wanted, new = set(expected), []
        deadline = time.monotonic() + timeout
        while wanted and (remaining := deadline - time.monotonic()) > 0:
            new.extend(self._read(min(remaining, 0.2)))
            wanted -= {key(r.data) for r in new}
        new.extend(self._read(0))
        self.replies.extend(new)
        return [r for r in new if key(r.data) in expected]

    def answered(self, expected, timeout=DEADLINE, *, copies=1, key=lambda data: data.split()[0]):
        """Read until each payload in `expected` has `copies` replies among all read so far; returns those.

        Unlike `collect`, replies read earlier count too (a probe answered during a previous call).
        A payload listed twice needs twice the replies.
        """
        wanted = Counter({data: n * copies for data, n in Counter(expected).items()})
        deadline = time.monotonic() + timeout
        while True:
            got = Counter(key(r.data) for r in self.replies if key(r.data) in wanted)
            short = {data: n - got[data] for data, n in wanted.items() if got[data] < n}
            if not short:
                return [r for r in self.replies if key(r.data) in wanted]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{len(short)} of {len(wanted)} payloads short of {copies} replies "
                                     f"within {timeout} s, e.g. {sorted(short.items())[:5]}")
            self.replies.extend(self._read(min(remaining, 0.2)))

    def flush(self, address, *, copies=1, client=0):
        """Send a marker and wait for its `copies` replies: whatever was answered before it, has been.

        Returns every reply read so far. Replaces waiting a fixed time for late replies or
        duplicates, which passes whenever the gateway is merely slow.
        """
        self._markers += 1
        marker = b"marker%d" % self._markers
        self.send(client, marker, address)
        self.answered([marker], copies=copies)
        return self.replies

    def _read(self, timeout):
        ready, _, _ = select.select(self.sockets, [], [], timeout)
        got = []
        for s in ready:
            index = self.sockets.index(s)
            while True:
                try:
                    data, source = s.recvfrom(65535)
                except BlockingIOError:
                    break
                got.append(Reply(index, data, source, time.monotonic()))
        return got

    def exchange(self, data, address, timeout=DEADLINE, client=0):
        """Send one datagram and wait for its reply (the first reply starting with it)."""
        self.send(client, data, address)
        for reply in self.collect([data], timeout):
            if reply.data.split()[0] == data:
                return reply
        raise AssertionError(f"no reply to {data!r} from {address} within {timeout}s")

    def until_answered(self, address, timeout=DEADLINE, interval=0.2, prefix=b"probe"):
        """Send a probe every `interval` until one is answered (a consumer is ready); bounded by `timeout`."""
        deadline = time.monotonic() + timeout
        for i in range(int(timeout / interval) + 1):
            data = b"%s%d" % (prefix, i)
            self.send(0, data, address)
            self.probes.append(data)
            if self.collect([data], min(interval, max(0.0, deadline - time.monotonic()))):
                return
            if time.monotonic() > deadline:
                break
        raise AssertionError(f"nothing answered at {address} within {timeout}s")


def socket_queue(port, host="127.0.0.1"):
    """(bytes waiting, datagrams dropped) of the UDP socket bound to host:port, from /proc/net/udp.

    Lets a test wait until a process has read everything sent to it, and see
    whether the kernel dropped any of it for want of receive buffer.
    """
    local = "%s:%04X" % ("".join("%02X" % b for b in reversed(socket.inet_aton(host))), port)
    with open("/proc/net/udp") as table:
        for line in list(table)[1:]:
            fields = line.split()
            if fields[1] == local:
                return int(fields[4].split(":")[1], 16), int(fields[-1])
    raise LookupError(f"no UDP socket bound to {host}:{port}")
