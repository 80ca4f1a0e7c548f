"""Plain-socket UDP clients for tests against gateway processes: many sockets, bounded sends, replies collected."""

import select
import socket
import time
from dataclasses import dataclass

RECEIVE_BUFFER = 1 << 20  # the default (~208 KiB) holds only a few hundred small datagrams


@dataclass(frozen=True)
class Reply:
    client: int      # index of the socket that got it
    data: bytes
    source: tuple    # (host, port) it came from
    at: float        # time.monotonic() when it was read


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

    def collect(self, expected, timeout=5.0, *, key=lambda data: data.split()[0]):
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

    def drain(self, seconds):
        """Whatever arrives within `seconds` (duplicates, late replies)."""
        new, deadline = [], time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            new.extend(self._read(remaining))
        self.replies.extend(new)
        return new

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

    def exchange(self, data, address, timeout=5.0, client=0):
        """Send one datagram and wait for its reply (the first reply starting with it)."""
        self.send(client, data, address)
        for reply in self.collect([data], timeout):
            if reply.data.split()[0] == data:
                return reply
        raise AssertionError(f"no reply to {data!r} from {address} within {timeout}s")

    def until_answered(self, address, timeout=10.0, interval=0.2, prefix=b"probe"):
        """Send a probe every `interval` until one is answered (a consumer is ready); bounded by `timeout`."""
        deadline = time.monotonic() + timeout
        for i in range(int(timeout / interval) + 1):
            data = b"%s%d" % (prefix, i)
            self.send(0, data, address)
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
