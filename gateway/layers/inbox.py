"""At-most-once pops from one channels_redis sorted set on every Redis host, into a small bounded local buffer."""

import asyncio
from collections import deque

# ZPOPMIN up to ARGV[1] members, returning the members only (half the replies to parse).
_POP_SCRIPT = """
local popped = redis.call('ZPOPMIN', KEYS[1], ARGV[1])
local members = {}
for i = 1, #popped, 2 do
    members[#members + 1] = popped[i]
end
return members
"""


class Inbox:
    """The messages of one Redis key (a channel, or a whole `name!` prefix) popped for receive().

    A receiver waiting on an empty buffer starts one pop round per host:
    ZPOPMIN of up to `batch` members, or when there are none a BZPOPMIN that
    blocks at most `block` seconds on the server (so no command is cancelled
    in flight). Rounds are tasks of their own: a receiver cancelled meanwhile
    (its timeout) leaves what they pop here for the next receive. Rounds only
    start on an empty buffer, so at most `batch` × hosts messages wait here.
    Popped means taken: a process that dies loses them, as a datagram may be.
    """

    def __init__(self, layer, key, *, batch, block):
        self.layer = layer      # a channels_redis core layer: connection(index), ring_size
        self.key = key
        self.batch = batch
        self.block = block
        self.buffer = deque()   # serialized messages, oldest first
        self._rounds = {}       # host index -> its pop round in flight
        self._waiters = deque()
        self._script = None

    async def get(self, batch=None):
        """The next serialized message; waits for pop rounds (of up to `batch`) while the buffer is empty."""
        count = self.batch if batch is None else max(1, min(batch, self.batch))
        while not self.buffer:
            for index in range(self.layer.ring_size):
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
            popped = await self._pop(self.layer.connection(index), count)
        except Exception as exc:
            self._wake(lambda waiter: waiter.set_exception(exc))
        else:
            self.buffer.extend(popped)
            if popped:
                self._wake(lambda waiter: waiter.set_result(None))
            elif self._waiters:
                self._wake(lambda waiter: waiter.set_result(None))  # nothing yet: they start the next round
        finally:
            self._rounds.pop(index, None)

    async def _pop(self, connection, count):
        if count > 1:
            if self._script is None:
                self._script = connection.register_script(_POP_SCRIPT)
            members = await self._script(keys=[self.key], args=[count], client=connection)
            if members:
                return members
        # The server-side timeout ends a wait without cancelling a command in flight.
        result = await connection.bzpopmin(self.key, timeout=self.block)
        return [] if result is None else [result[1]]

    def _wake(self, settle):
        waiters, self._waiters = self._waiters, deque()
        for waiter in waiters:
            if not waiter.done():
                settle(waiter)
