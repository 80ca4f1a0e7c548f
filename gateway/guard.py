"""Who may talk and how fast: allow/deny networks and per-source token buckets, checked per datagram."""

import socket
from collections import OrderedDict

from gateway.clock import MONOTONIC

DECISIONS = 4096  # source addresses whose allow/deny decision is remembered; past it the cache starts over
_V4_MAPPED = 0xFFFF << 32  # ::ffff:a.b.c.d (RFC 4291 §2.5.5.2)


def _pairs(networks, version):
    """(network int, mask int) of each network of one IP version."""
    return tuple((int(n.network_address), int(n.netmask)) for n in networks if n.version == version)


def _matches(value, pairs):
    for network, mask in pairs:
        if value & mask == network:
            return True
    return False


class SourceFilter:
    """`allow` and `deny` networks: `deny` wins; with `allow` present only those sources pass.

    A source is parsed once (inet_pton, one int) and compared with (network, mask)
    pairs of its family: about ten times cheaper than `ipaddress` membership. The
    decision is then remembered per source string in a bounded cache. An IPv6 scope
    ("fe80::1%eth0") is ignored; an IPv4-mapped IPv6 source is also matched as its
    IPv4 address, so `deny: [192.0.2.0/24]` catches ::ffff:192.0.2.1 too.
    """

    def __init__(self, allow=(), deny=(), *, cache_size=DECISIONS):
        self.allow_all = not allow
        self._allow = (_pairs(allow, 4), _pairs(allow, 6))
        self._deny = (_pairs(deny, 4), _pairs(deny, 6))
        self._cache_size = cache_size
        self._decisions = {}

    def permits(self, host):
        """Whether datagrams from `host` (a textual address, maybe scoped) are served."""
        decision = self._decisions.get(host)
        if decision is None:
            if len(self._decisions) >= self._cache_size:
                self._decisions.clear()
            decision = self._decisions[host] = self._decide(host)
        return decision

    def _decide(self, host):
        v4, v6 = _parse(host)
        if self._listed(self._deny, v4, v6):
            return False
        return self.allow_all or self._listed(self._allow, v4, v6)

    @staticmethod
    def _listed(pairs, v4, v6):
        return (v4 is not None and _matches(v4, pairs[0])) or (v6 is not None and _matches(v6, pairs[1]))


def _parse(host):
    """(IPv4 int or None, IPv6 int or None) of a textual source address."""
    if ":" not in host:
        return int.from_bytes(socket.inet_pton(socket.AF_INET, host), "big"), None
    v6 = int.from_bytes(socket.inet_pton(socket.AF_INET6, host.partition("%")[0]), "big")
    v4 = v6 & 0xFFFFFFFF if v6 >> 32 == 0xFFFF else None
    return v4, v6


class SourceTable:
    """The sources rate_limit remembers, for every listener of a process: at most `max_sources`.

    An OrderedDict least recently used first (`entries`): a lookup, an update and
    forgetting the oldest are each O(1). Values are plain floats, which the garbage
    collector does not track, so a full table costs collections nothing.
    """

    def __init__(self, max_sources):
        assert max_sources >= 1, "max_sources must be at least 1"
        self.max_sources = max_sources
        self.forgotten = 0
        self.entries = OrderedDict()

    def __len__(self):
        return len(self.entries)

    def add(self, key, value):
        """Remember a new key as the most recently used; forget the least recently used past the cap."""
        self.entries[key] = value
        if len(self.entries) > self.max_sources:
            self.entries.popitem(last=False)
            self.forgotten += 1


class RateLimiter:
    """A token bucket per source address: `rate` datagrams a second, bursts of up to `burst`.

    Kept as GCRA (the generic cell rate algorithm, as nginx's limit_req): one float
    per source, the time its bucket is full again. A datagram passes when that time
    is at most (burst - 1) / rate ahead of now. Equivalent to a bucket of `burst`
    tokens refilled at `rate` a second, with no per-source object.
    """

    def __init__(self, name, rate, burst, *, table, clock=None):
        self.name = name  # keys of this limiter in the shared table: (name, host, scope)
        self.interval = 1.0 / rate
        self.tolerance = (burst - 1) * self.interval
        self.table = table
        self._entries = table.entries
        self._now = (clock if clock is not None else MONOTONIC).seconds

    def allows(self, key):
        """Whether one more datagram from `key` passes now (then it is counted against its bucket)."""
        now = self._now()
        full_at = self._entries.get(key)
        if full_at is None:
            self.table.add(key, now + self.interval)
            return True
        # Still remembered when refused: forgetting a flooder would refill its bucket.
        self._entries.move_to_end(key)
        if full_at < now:
            full_at = now
        elif full_at - now > self.tolerance:
            return False
        self._entries[key] = full_at + self.interval
        return True


class SourceGuard:
    """A listener's checks before any other work on a datagram: allow/deny, then rate_limit.

    `admits(addr)` takes the socket's raw address; a dropped datagram is counted as
    received and as dropped_denied or dropped_rate_limited for the listener. Denied
    datagrams are not logged; rate-limited ones at most one line per interval.
    """

    def __init__(self, name, *, source_filter=None, limiter=None, counters, quiet):
        self.name = name
        self.source_filter = source_filter
        self.limiter = limiter
        self.counters = counters
        self.quiet = quiet

    def admits(self, addr):
        host = addr[0]
        if self.source_filter is not None and not self.source_filter.permits(host):
            self._drop("denied")
            return False
        if self.limiter is not None and not self.limiter.allows((self.name, host, addr[3] if len(addr) > 3 else 0)):
            self._drop("rate_limited")
            self.quiet.warn(f"rate-limited-{self.name}", "listener {name}: dropping datagrams from sources over "
                            "rate_limit (counted as dropped_rate_limited)", name=self.name)
            return False
        return True

    def _drop(self, reason):
        self.counters.incr("received", listener=self.name)
        self.counters.incr(f"dropped_{reason}", listener=self.name)


def make_guard(config, *, table, counters, quiet, clock=None):
    """The SourceGuard of a listener config, or None when it has no allow, deny or rate_limit."""
    source_filter = SourceFilter(config.allow, config.deny) if config.allow or config.deny else None
    limiter = None
    if config.rate_limit is not None:
        limiter = RateLimiter(config.name, config.rate_limit.rate, config.rate_limit.burst, table=table, clock=clock)
    if source_filter is None and limiter is None:
        return None
    return SourceGuard(config.name, source_filter=source_filter, limiter=limiter, counters=counters, quiet=quiet)
