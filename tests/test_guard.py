"""Tests for gateway.guard: allow/deny matching, per-source token buckets, the bounded source table."""

import ipaddress

import pytest
from twisted.internet.task import Clock

from gateway.config import ListenerConfig, RateLimit
from gateway.guard import RateLimiter, SourceFilter, SourceTable, make_guard
from gateway.stats import Counters, QuietLog


def nets(*specs):
    return tuple(ipaddress.ip_network(spec) for spec in specs)


@pytest.mark.parametrize("allow, deny, host, served", [
    ((), (), "192.0.2.7", True),
    (("192.0.2.0/24",), (), "192.0.2.7", True),
    (("192.0.2.0/24",), (), "192.0.3.7", False),
    (("192.0.2.0/24",), ("192.0.2.66",), "192.0.2.66", False),   # deny wins over allow
    (("192.0.2.0/24",), ("192.0.2.66",), "192.0.2.67", True),
    ((), ("10.0.0.0/8",), "10.255.255.255", False),
    ((), ("10.0.0.0/8",), "11.0.0.0", True),
    (("0.0.0.0/0",), (), "203.0.113.1", True),
    (("192.0.2.0/24",), (), "2001:db8::1", False),                # allow of one family refuses the other
    (("2001:db8::/32",), (), "2001:db8:ffff::1", True),
    (("2001:db8::/32",), (), "2001:db9::1", False),
    ((), ("2001:db8::1",), "2001:db8::1", False),                 # a bare address is a /128
    ((), ("2001:db8::1",), "2001:db8::2", True),
    (("fe80::/10",), (), "fe80::1%eth0", True),                   # a scope is ignored
    (("fe80::/10",), ("fe80::1",), "fe80::1%eth0", False),
    ((), ("192.0.2.0/24",), "::ffff:192.0.2.1", False),           # IPv4-mapped: matched as IPv4 too
    (("192.0.2.0/24",), (), "::ffff:192.0.2.1", True),
    ((), ("::ffff:0:0/96",), "::ffff:192.0.2.1", False),          # ... and as IPv6
    (("::1",), (), "127.0.0.1", False),
    (("127.0.0.1",), (), "::1", False),
])
def test_source_filter(allow, deny, host, served):
    """deny wins; with allow only its networks are served; both families, scopes ignored, v4-mapped as IPv4."""
    assert SourceFilter(nets(*allow), nets(*deny)).permits(host) is served


def test_source_filter_agrees_with_ipaddress():
    """The integer matching decides exactly as ipaddress membership does, over many addresses."""
    allow = nets("10.0.0.0/8", "192.168.0.0/16", "2001:db8::/48", "198.51.100.128/25")
    deny = nets("10.1.0.0/16", "2001:db8:0:1::/64", "198.51.100.200")
    guard = SourceFilter(allow, deny)
    for n in range(0, 1 << 32, 9_973_331):
        host = str(ipaddress.IPv4Address(n))
        ip = ipaddress.ip_address(host)
        expected = not any(ip in d for d in deny) and any(ip in a for a in allow)
        assert guard.permits(host) is expected, host
    for host in ("2001:db8::1", "2001:db8:0:1::5", "2001:db8:1::1", "10.1.2.3", "10.2.3.4", "198.51.100.200",
                 "198.51.100.201", "198.51.100.127"):
        ip = ipaddress.ip_address(host)
        expected = not any(ip.version == d.version and ip in d for d in deny) and any(
            ip.version == a.version and ip in a for a in allow)
        assert guard.permits(host) is expected, host


def test_source_filter_cache_is_bounded():
    """Remembered decisions never exceed the cache size, whatever the number of sources."""
    guard = SourceFilter(nets("10.0.0.0/8"), cache_size=64)
    for n in range(1000):
        assert guard.permits(f"10.0.{n // 256}.{n % 256}")
        assert len(guard._decisions) <= 64


def make_limiter(rate=1.0, burst=3, max_sources=100):
    clock = Clock()
    clock.advance(1000)
    table = SourceTable(max_sources)
    return RateLimiter("echo", rate, burst, table=table, clock=clock), clock, table


def test_bucket_allows_a_burst_then_refuses():
    """A fresh source passes `burst` datagrams at once, then none until the bucket refills."""
    limiter, _clock, _table = make_limiter(rate=1, burst=3)
    assert [limiter.allows("a") for _ in range(5)] == [True, True, True, False, False]


def test_bucket_refills_at_rate():
    """One datagram more passes every 1/rate seconds; a full bucket holds no more than burst."""
    limiter, clock, _table = make_limiter(rate=2, burst=3)
    assert sum(limiter.allows("a") for _ in range(10)) == 3
    clock.advance(0.49)
    assert not limiter.allows("a")
    clock.advance(0.01)
    assert limiter.allows("a") and not limiter.allows("a")
    clock.advance(3600)
    assert sum(limiter.allows("a") for _ in range(10)) == 3


def test_bucket_over_time_passes_burst_plus_rate_times_elapsed():
    """Sending steadily faster than rate, the passed count is burst + rate x elapsed."""
    limiter, clock, _table = make_limiter(rate=5, burst=4)
    passed = 0
    for _ in range(1000):  # 100 datagrams a second for 10 seconds
        passed += limiter.allows("a")
        clock.advance(0.01)
    assert passed == pytest.approx(4 + 5 * 10, abs=1)


def test_buckets_are_per_source():
    """Each source has its own bucket: one flooder leaves another source's datagrams alone."""
    limiter, _clock, _table = make_limiter(rate=1, burst=2)
    assert [limiter.allows("flood") for _ in range(5)].count(True) == 2
    assert limiter.allows("good") and limiter.allows("good")


def test_source_table_forgets_least_recently_used():
    """Past max_sources the least recently used source is forgotten (and its bucket starts full again)."""
    limiter, _clock, table = make_limiter(rate=1, burst=1, max_sources=2)
    assert limiter.allows("a") and limiter.allows("b")
    assert not limiter.allows("a")  # a is now the most recently used
    assert limiter.allows("c")      # forgets b, the least recently used
    assert len(table) == 2 and table.forgotten == 1
    assert not limiter.allows("a")  # still remembered, still empty
    assert limiter.allows("b")      # forgotten: a full bucket again


def test_source_table_stays_at_its_cap():
    """However many sources send, the table holds at most max_sources entries."""
    limiter, _clock, table = make_limiter(max_sources=50)
    for n in range(1000):
        limiter.allows(n)
    assert len(table) == 50 and table.forgotten == 950


def guard_for(**keys):
    counters = Counters()
    clock = Clock()
    config = ListenerConfig(name="echo", type="plain", port=0, **keys)
    return make_guard(config, table=SourceTable(10), counters=counters, quiet=QuietLog(clock=clock),
                      clock=clock), counters


def test_no_guard_without_allow_deny_or_rate_limit():
    """A listener without allow, deny and rate_limit gets no guard at all: nothing checked per datagram."""
    assert guard_for()[0] is None


def test_guard_counts_denied_datagrams():
    """A denied datagram is counted as received and dropped_denied for its listener."""
    guard, counters = guard_for(deny=nets("192.0.2.0/24"))
    assert not guard.admits(("192.0.2.1", 5000))
    assert guard.admits(("::1", 5000, 0, 0))
    assert counters.get("dropped_denied", listener="echo") == 1
    assert counters.get("received", listener="echo") == 1


def test_guard_rate_limits_per_address_not_per_port():
    """Every port of one address shares its bucket; over it datagrams count as dropped_rate_limited."""
    guard, counters = guard_for(rate_limit=RateLimit(rate=1, burst=2))
    results = [guard.admits(("192.0.2.1", port)) for port in (1000, 1001, 1002, 1003)]
    assert results == [True, True, False, False]
    assert guard.admits(("192.0.2.2", 1000))
    assert counters.get("dropped_rate_limited", listener="echo") == 2


def test_guard_checks_allow_before_rate_limit():
    """A denied source never takes a place in the source table."""
    guard, counters = guard_for(allow=nets("10.0.0.0/8"), rate_limit=RateLimit(rate=1, burst=1))
    assert not guard.admits(("192.0.2.1", 1))
    assert len(guard.limiter.table) == 0
    assert counters.get("dropped_rate_limited", listener="echo") == 0


def test_scoped_sources_have_their_own_bucket():
    """fe80::1 on two interfaces is two sources (the scope id is part of the key)."""
    guard, _counters = guard_for(rate_limit=RateLimit(rate=1, burst=1))
    assert guard.admits(("fe80::1", 1, 0, 2))
    assert not guard.admits(("fe80::1", 1, 0, 2))
    assert guard.admits(("fe80::1", 1, 0, 3))
