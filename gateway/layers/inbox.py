"""At-most-once pops from one channels_redis sorted set on every Redis host, into a small bounded local buffer."""

import asyncio
import functools
from collections import deque


class Inbox:
    """The messages of one Redis key (a channel, or a whole `name!` prefix) popped for receive().

    A receiver waiting on an empty buffer starts one pop round per host,
    `pop(index, count)`: up to `count` members, or when there are none one
    that a blocking pop waited for on the server for a few seconds (so no
    command is cancelled in flight; [] when none came). Rounds are tasks of their own: a receiver cancelled meanwhile
    (its timeout) leaves what they pop here for the next receive. Rounds only
    start on an empty buffer, so at most `batch` × hosts messages wait here.
    Popped means taken: a process that dies loses them, as a datagram may be.
    """

    def __init__(self, pop, hosts, *, batch):
        self.pop = pop          # async (host index, count) -> [serialized message]
        self.hosts = hosts
        self.batch = batch
        self.buffer = deque()   # serialized messages, oldest first
        self._rounds = {}       # host index -> its pop round in flight
        self._waiters = deque()

    async def get(self, batch=None):
        """The next serialized message; waits for pop rounds (of up to `batch`) while the buffer is empty."""
        count = self.batch if batch is None else max(1, min(batch, self.batch))
        while not self.buffer:
            for index in range(self.hosts):
                if index not in self._rounds:
                    self._rounds[index] = asyncio.ensure_future(self._round(index, count))
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        return self.buffer.popleft()

    async def close(self):
        """Stop the rounds in flight (what they would pop stays in Redis or is lost with them)."""
        rounds = list(self._rounds.values())
        for task in rounds:
            task.cancel()
        if rounds:
            await asyncio.wait(rounds)

    async def _round(self, index, count):
        try:
            popped = await self.pop(index, count)
        except Exception as exc:
            self._wake(functools.partial(_fail, exc))
        else:
            self.buffer.extend(popped)
            self._wake(lambda waiter: waiter.set_result(None))  # with nothing popped they start the next round
        finally:
            self._rounds.pop(index, None)

    def _wake(self, settle):
        waiters, self._waiters = self._waiters, deque()
        for waiter in waiters:
            if not waiter.done():
                settle(waiter)


def _fail(exc, waiter):
    waiter.set_exception(exc)


def blocking_pop(layer, key):
    """`pop(index, count)` for an Inbox on a channels_redis layer: one BZPOPMIN through its own pools."""

    async def pop(index, count):
        # The server-side timeout ends a wait without cancelling a command in flight.
        result = await layer.connection(index).bzpopmin(key, timeout=layer.brpop_timeout)
        return [] if result is None else [result[1]]

    return pop
