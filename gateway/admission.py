"""Admission: the one count of application calls in flight, bounded by `max_concurrency`."""

import asyncio
from collections import deque
from contextlib import suppress


class Admission:
    """Up to `limit` application calls at once, in one of design.md's two modes.

    Memory layer, in process (`try_acquire`): a datagram that finds every slot
    taken is dropped at once and counted as dropped_concurrency by the caller,
    so nothing queues in front of the application. Shared layer, or a worker
    (`acquire`): a receive loop waits for a slot before it takes the next
    message, so a busy process stops receiving and the layer keeps the
    message for other workers. Both modes may share one object; every slot
    taken either way is given back with `release`.
    """

    def __init__(self, limit):
        assert limit >= 1, "max_concurrency must be at least 1"
        self.limit = limit
        self.in_use = 0
        self._waiters = deque()  # futures of acquire() calls waiting for a slot, oldest first

    def try_acquire(self):
        """Take a slot if one is free now; False when the limit is reached (drop the datagram)."""
        if self.in_use >= self.limit or self._waiters:
            return False
        self.in_use += 1
        return True

    async def acquire(self):
        """Take a slot, waiting for one to be released when the limit is reached."""
        if self.in_use < self.limit and not self._waiters:
            self.in_use += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # release() hands its slot over: in_use stays counted
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot just as it was cancelled: pass it on
            else:
                with suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def release(self):
        """Give a slot back: to the oldest waiting acquire(), else to the pool."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.in_use = max(0, self.in_use - 1)
