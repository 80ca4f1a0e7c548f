"""TokenTable: opaque reply tokens for (listener, client) keys, with a cap and a TTL."""

import secrets
from collections import OrderedDict

from gateway.clock import MONOTONIC

PRUNE_BATCH = 16


class _Index(dict):
    """key -> token. A dict subclass, so the collector tracks it from birth and never untracks it.

    The gateway's gc.freeze() after startup then moves it, like the OrderedDict
    of entries, out of every later collection: a full collection never walks
    the 100,000 keys of a full table (a plain dict is tracked only once a
    key arrives, after the freeze, and cost about 20 ms per full collection).
    """

    __slots__ = ()


class TokenTable:
    """Opaque tokens, each standing for one key's latest route for `ttl` seconds.

    Entries are kept least recently used first. Every use moves an entry to the end
    and the TTL is constant, so expired entries are at the front too: each operation
    is O(1), and pruning is amortised O(1). An entry is a tuple (key, route,
    expires_at) of plain values, which the garbage collector stops tracking.
    """

    def __init__(self, *, max_entries, ttl, clock=None, on_forget=None):
        assert max_entries >= 1, "max_entries must be at least 1"
        self.max_entries = max_entries
        self.ttl = ttl
        self.clock = clock if clock is not None else MONOTONIC
        self.on_forget = on_forget  # called with each token evicted, expired or forgotten
        self.evicted = 0
        self._entries = OrderedDict()  # token -> (key, route, expires_at), least recently used first
        self._tokens = _Index()  # key -> token

    def __len__(self):
        return len(self._entries)

    def token_for(self, key, route):
        """The token of key, new or refreshed; replies to it now take `route`."""
        now = self.clock.seconds()
        self._prune(now, PRUNE_BATCH)
        token = self._tokens.get(key)
        if token is not None and self._entries[token][2] <= now:
            self._remove(token)
            token = None
        if token is None:
            return self._add(key, route, now)
        self._entries[token] = (key, route, now + self.ttl)
        self._entries.move_to_end(token)
        return token

    def lookup(self, token):
        """The route of a live token, or None; a lookup does not extend its life."""
        entry = self._entries.get(token)
        if entry is None:
            return None
        if entry[2] <= self.clock.seconds():
            self._remove(token)
            return None
        return entry[1]

    def forget(self, token):
        """Drop a token now, if it is known."""
        if token in self._entries:
            self._remove(token)

    def forget_if(self, predicate):
        """Drop every token whose key matches `predicate` (a reload closed its listener); O(n), returns how many."""
        doomed = [token for token, entry in self._entries.items() if predicate(entry[0])]
        for token in doomed:
            self._remove(token)
        return len(doomed)

    def prune(self):
        """Drop every expired token; returns how many."""
        return self._prune(self.clock.seconds(), None)

    def _prune(self, now, limit):
        removed = 0
        while self._entries and (limit is None or removed < limit):
            token = next(iter(self._entries))
            if self._entries[token][2] > now:
                break
            self._remove(token)
            removed += 1
        return removed

    def _add(self, key, route, now):
        token = secrets.token_urlsafe(12)  # 96 bits in [A-Za-z0-9_-], channel-safe
        while token in self._entries:  # pragma: no cover - never, in practice
            token = secrets.token_urlsafe(12)
        self._entries[token] = (key, route, now + self.ttl)
        self._tokens[key] = token
        if len(self._entries) > self.max_entries:
            self.evicted += 1
            self._remove(next(iter(self._entries)))
        return token

    def _remove(self, token):
        key, _route, _expires_at = self._entries.pop(token)
        del self._tokens[key]
        if self.on_forget is not None:
            self.on_forget(token)
