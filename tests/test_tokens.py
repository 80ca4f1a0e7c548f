"""Tests for gateway.tokens.TokenTable."""

import re
import time

import pytest
from twisted.internet.task import Clock

from gateway.tokens import TokenTable
from tests.support import counting

CLIENT = ("192.0.2.7", 40312)


def make_table(max_entries=10, ttl=60, **kwargs):
    clock = Clock()
    return TokenTable(max_entries=max_entries, ttl=ttl, clock=clock, **kwargs), clock


def test_same_key_same_token():
    """The same key gets the same token while it lives."""
    table, _ = make_table()
    assert table.token_for(("echo", CLIENT), "r1") == table.token_for(("echo", CLIENT), "r1")
    assert len(table) == 1


def test_listener_is_part_of_the_key():
    """The same address on two listeners gets two tokens."""
    table, _ = make_table()
    assert table.token_for(("echo", CLIENT), "r") != table.token_for(("ssdp", CLIENT), "r")


def test_lookup_returns_the_latest_route():
    """A refresh replaces the stored route, so replies leave from the latest one."""
    table, _ = make_table()
    token = table.token_for(("echo", CLIENT), "via-a")
    table.token_for(("echo", CLIENT), "via-b")
    assert table.lookup(token) == "via-b"


def test_unknown_token():
    """An unknown token looks up as None and forgets without error."""
    table, _ = make_table()
    assert table.lookup("nope") is None
    table.forget("nope")


def test_token_expires_after_ttl():
    """A token is gone ttl seconds after its key's last use, and removed on lookup."""
    table, clock = make_table(ttl=60)
    token = table.token_for(("echo", CLIENT), "r")
    clock.advance(59.9)
    assert table.lookup(token) == "r"
    clock.advance(0.1)
    assert table.lookup(token) is None
    assert len(table) == 0


def test_lookup_does_not_refresh():
    """Looking a token up does not extend its life."""
    table, clock = make_table(ttl=10)
    token = table.token_for(("echo", CLIENT), "r")
    clock.advance(9)
    table.lookup(token)
    clock.advance(1)
    assert table.lookup(token) is None


def test_token_for_refreshes_ttl():
    """Each datagram of a client extends its token's life by ttl."""
    table, clock = make_table(ttl=10)
    token = table.token_for(("echo", CLIENT), "r")
    clock.advance(8)
    assert table.token_for(("echo", CLIENT), "r") == token
    clock.advance(8)
    assert table.lookup(token) == "r"


def test_expired_key_gets_a_new_token():
    """A client returning after its token expired gets a fresh token."""
    table, clock = make_table(ttl=10)
    old = table.token_for(("echo", CLIENT), "r")
    clock.advance(10)
    new = table.token_for(("echo", CLIENT), "r")
    assert new != old
    assert table.lookup(old) is None
    assert table.lookup(new) == "r"


def test_lru_eviction_forgets_least_recently_used():
    """Past max_entries the least recently used entry goes, not the oldest created."""
    table, _ = make_table(max_entries=3)
    first = table.token_for("a", 1)
    second = table.token_for("b", 2)
    table.token_for("c", 3)
    table.token_for("a", 1)  # "a" is now the most recently used
    table.token_for("d", 4)
    assert table.lookup(second) is None
    assert table.lookup(first) == 1
    assert len(table) == 3
    assert table.evicted == 1


def test_forget():
    """A forgotten token no longer looks up, and its key gets a new one."""
    table, _ = make_table()
    token = table.token_for("a", 1)
    table.forget(token)
    assert table.lookup(token) is None
    assert table.token_for("a", 1) != token


def test_prune_removes_only_expired():
    """prune() drops every expired entry and keeps live ones."""
    table, clock = make_table(max_entries=100, ttl=10)
    for i in range(5):
        table.token_for(i, i)
    clock.advance(5)
    live = table.token_for("live", "r")
    clock.advance(5)
    assert table.prune() == 5
    assert len(table) == 1
    assert table.lookup(live) == "r"


def test_token_for_prunes_a_bounded_batch():
    """token_for drops expired entries a few at a time, so no call does unbounded work."""
    table, clock = make_table(max_entries=1000, ttl=10)
    for i in range(100):
        table.token_for(i, i)
    clock.advance(10)
    table.token_for("new", "r")
    assert 1 < len(table) < 100


@pytest.mark.parametrize("how", ["evicted", "expired", "forgotten"])
def test_on_forget_called(how):
    """on_forget hears of every token that is evicted, expired or forgotten."""
    forgotten = []
    table, clock = make_table(max_entries=1, ttl=10, on_forget=forgotten.append)
    token = table.token_for("a", 1)
    if how == "evicted":
        table.token_for("b", 2)
    elif how == "expired":
        clock.advance(10)
        table.prune()
    else:
        table.forget(token)
    assert forgotten == [token]


def test_token_charset():
    """Tokens are distinct, channel-name safe, and carry no address (no dots or colons)."""
    table, _ = make_table(max_entries=1000)
    tokens = {table.token_for(("echo", ("192.0.2.7", port)), "r") for port in range(200)}
    assert len(tokens) == 200
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{16}", token) for token in tokens)


def test_default_clock():
    """Without a clock the table uses a monotonic one."""
    table = TokenTable(max_entries=2, ttl=60)
    token = table.token_for("a", 1)
    assert table.lookup(token) == 1


def test_wall_clock_step_expires_nothing(monkeypatch):
    """A wall-clock step longer than the TTL expires no token: lifetimes follow the monotonic clock."""
    now = {"wall": 1.0e9, "monotonic": 1000.0}
    monkeypatch.setattr(time, "time", lambda: now["wall"])
    monkeypatch.setattr(time, "monotonic", lambda: now["monotonic"])
    table = TokenTable(max_entries=10, ttl=60)
    token = table.token_for(("echo", CLIENT), "r")
    now["wall"] += 3600
    now["monotonic"] += 1
    assert table.lookup(token) == "r"
    now["wall"] -= 7200
    assert table.lookup(token) == "r"
    now["monotonic"] += 60
    assert table.lookup(token) is None


def test_work_per_call_does_not_grow_with_entries():
    """With 100,000 clients a token or a lookup looks at one entry or two, and a prune at each expired one once.

    (How fast that is, is measured by benchmarks/core_bench.py.)
    """
    table, clock = make_table(max_entries=100_000, ttl=60)
    table._entries = counting(table._entries)
    tokens = [table.token_for(("echo", ("10.0.0.1", i)), i) for i in range(100_000)]
    assert all(table.lookup(t) == i for i, t in enumerate(tokens))
    table.token_for("one more", -1)
    assert table.evicted == 1
    assert table._entries.visits <= 2 * (2 * 100_000 + 1), table._entries.visits
    visits = table._entries.visits
    clock.advance(60)
    assert table.prune() == 100_000
    assert table._entries.visits - visits <= 100_000 + 1
