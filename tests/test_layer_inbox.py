"""Inbox without a server: pop rounds per host, a bounded buffer, cancellation and errors; RESP packing."""

import asyncio

import pytest

from gateway.layers.inbox import Inbox
from tests.support import DEADLINE, aio


class FakeHosts:
    """`pop(index, count)` over in-memory queues, one per host; a round waits while its host is empty."""

    def __init__(self, hosts):
        self.queues = [[] for _ in range(hosts)]
        self.rounds = []            # (index, count) of every round started
        self.arrived = asyncio.Event()
        self.error = None

    def put(self, index, *items):
        self.queues[index].extend(items)
        self.arrived.set()

    async def pop(self, index, count):
        self.rounds.append((index, count))
        while not self.queues[index]:
            if self.error is not None:
                raise self.error
            self.arrived.clear()
            await self.arrived.wait()
        taken, self.queues[index][:] = self.queues[index][:count], self.queues[index][count:]
        return taken


@aio
async def test_one_round_per_host_and_a_bounded_buffer():
    """A receive starts one round per host; at most `batch` per host are popped, the rest stay."""
    hosts = FakeHosts(2)
    inbox = Inbox(hosts.pop, 2, batch=3)
    hosts.put(1, *range(10))
    assert await inbox.get() == 0
    assert len(inbox.buffer) == 2 and hosts.queues[1] == list(range(3, 10))
    assert sorted(hosts.rounds) == [(0, 3), (1, 3)]
    assert [await inbox.get() for _ in range(2)] == [1, 2]
    await inbox.close()


@aio
async def test_batch_hint_caps_a_round():
    """get(batch=n) pops no more than n in the rounds it starts (a worker with n free slots)."""
    hosts = FakeHosts(1)
    inbox = Inbox(hosts.pop, 1, batch=64)
    hosts.put(0, *range(10))
    assert await inbox.get(batch=2) == 0
    assert list(inbox.buffer) == [1] and hosts.rounds == [(0, 2)]
    assert await inbox.get(batch=0) == 1  # 0 is treated as 1: a receive always takes something
    assert await inbox.get(batch=0) == 2
    assert hosts.rounds[-1] == (0, 1)
    await inbox.close()


@aio
async def test_cancelled_receive_leaves_the_message_for_the_next():
    """A receive cancelled while a round waits loses nothing: the round's message goes to the next receive."""
    hosts = FakeHosts(1)
    inbox = Inbox(hosts.pop, 1, batch=4)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(inbox.get(), 0.05)
    hosts.put(0, "late")
    await asyncio.sleep(0)
    assert await asyncio.wait_for(inbox.get(), DEADLINE) == "late"
    assert len(hosts.rounds) == 1  # the round started by the cancelled receive delivered it
    await inbox.close()


@aio
async def test_a_failed_round_fails_the_waiting_receives_then_recovers():
    """A round that raises (Redis gone) raises in the receives waiting on it; the next receive starts anew."""
    hosts = FakeHosts(1)
    inbox = Inbox(hosts.pop, 1, batch=4)
    hosts.error = ConnectionError("gone")
    waiting = [asyncio.ensure_future(inbox.get()) for _ in range(2)]
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    hosts.error = None
    hosts.put(0, "back")
    assert await asyncio.wait_for(inbox.get(), DEADLINE) == "back"
    await inbox.close()


@aio
async def test_close_stops_the_rounds():
    """close() cancels the rounds in flight, so nothing keeps a connection busy after a stop."""
    hosts = FakeHosts(2)
    inbox = Inbox(hosts.pop, 2, batch=4)
    receive = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    rounds = list(inbox._rounds.values())
    await inbox.close()
    assert rounds and all(task.cancelled() for task in rounds)
    receive.cancel()


def test_pack_is_resp():
    """Commands are packed as RESP arrays of bulk strings, from bytes, str, int and float arguments."""
    from gateway.layers.wire import pack

    assert pack(b"ZPOPMIN", "k\u00e9", 3) == b"*3\r\n$7\r\nZPOPMIN\r\n$3\r\nk\xc3\xa9\r\n$1\r\n3\r\n"
    assert pack(b"ZADD", b"k", 1.5, b"m") == b"*4\r\n$4\r\nZADD\r\n$1\r\nk\r\n$3\r\n1.5\r\n$1\r\nm\r\n"
