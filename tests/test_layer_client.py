"""LayerClient against real redis-servers: at most once, every host read, stock and batching layers alike."""

import asyncio

import pytest

from gateway.layers import InMemoryChannelLayer, LayerClient, make_layer
from tests.support import DEADLINE, aio, eventually

STOCK = "channels_redis.core.RedisChannelLayer"
BATCHING = "gateway.layers.batching.BatchingRedisChannelLayer"
# Ours again as the Django example sets it: sends return ahead of Redis' answer, busy traffic lingers.
LINGERING = (BATCHING, {"send_ahead": 64, "linger": 0.005})
BACKENDS = pytest.mark.parametrize("backend", [STOCK, BATCHING, LINGERING], ids=["stock", "batching", "lingering"])


def _layer(servers, backend=STOCK, **config):
    """The layer `backend` names (or a (backend, its own keys) pair) on `servers`."""
    backend, own = backend if isinstance(backend, tuple) else (backend, {})
    return make_layer(backend, {"hosts": [server.url for server in servers], **own, **config})


@aio
async def test_other_layers_keep_their_own_receive():
    """Other layers go through their own receive and receive_single, with a client-side timeout."""
    client = LayerClient(InMemoryChannelLayer())
    await client.send("a", {"type": "x"})
    await client.send("udp.send.g!t", {"type": "y"})
    assert await client.receive("a") == {"type": "x"}
    assert await client.receive_prefixed("udp.send.g!") == ("udp.send.g!t", {"type": "y"})
    assert await client.receive("a", timeout=0.05) is None
    assert await client.receive_prefixed("udp.send.g!", timeout=0.05) is None


async def _consume_all(clients, sender, channel, expected):
    """Every "n" that `clients` receive from `channel`: 0 to expected-1, then two markers `sender` sends last."""
    got = []

    async def consume(client):
        while True:
            got.append((await client.receive(channel))["n"])

    consumers = [asyncio.ensure_future(consume(client)) for client in clients]
    try:
        await eventually(lambda: set(got) >= set(range(expected)), what=f"all {expected} messages")
        # Two markers, sent last: a second copy of an earlier message would be popped before them.
        for n in (expected, expected + 1):
            await sender.send(channel, {"type": "udp.receive", "n": n})
        await eventually(lambda: {expected, expected + 1} <= set(got), what="both markers")
    finally:
        for task in consumers:
            task.cancel()
        await asyncio.gather(*consumers, return_exceptions=True)
    return got


@BACKENDS
@aio
async def test_two_receivers_share_a_channel_without_duplicates(redis_server, backend):
    """Two consumers of one channel (two workers) together get each message exactly once."""
    sender, first, second = (LayerClient(_layer([redis_server], backend, capacity=1000), 50) for _ in range(3))
    try:
        await asyncio.gather(*(sender.send("udp.receive", {"type": "udp.receive", "n": n}) for n in range(300)))
        got = await _consume_all([first, second], sender, "udp.receive", 300)
        assert sorted(got) == list(range(302))
    finally:
        for client in (sender, first, second):
            await client.close()


@BACKENDS
@aio
async def test_process_specific_names_and_timeouts(redis_server, backend):
    """A full `!` name goes through the layer's receive; a prefix pops any of its names; timeouts give None."""
    client = LayerClient(_layer([redis_server], backend))
    try:
        name = await client.new_channel("udp.send")
        await client.send(name, {"type": "udp.send", "data": b"x"})
        assert await client.receive(name, timeout=DEADLINE) == {"type": "udp.send", "data": b"x"}
        await client.send(name, {"type": "udp.send", "data": b"y"})
        prefix = name.split("!")[0] + "!"
        assert await client.receive_prefixed(prefix, timeout=DEADLINE) == (name, {"type": "udp.send", "data": b"y"})
        assert await client.receive_prefixed(prefix, timeout=0.05) is None
        assert await client.receive("udp.receive", timeout=0.05) is None
    finally:
        await client.close()


@pytest.mark.parametrize("hosts", [2, 3])
@pytest.mark.parametrize("sender_backend", [STOCK, BATCHING], ids=["stock-sender", "batching-sender"])
@BACKENDS
@aio
async def test_every_reply_arrives_with_several_hosts(redis_trio, hosts, sender_backend, backend):
    """With 2 and 3 Redis hosts, every `udp.send.<id>!<token>` send reaches the gateway's prefix receive.

    channels_redis' send puts such a message on the host of the whole name,
    while its receive_single("udp.send.<id>!") reads only the prefix's host.
    """
    for server in redis_trio:
        server.flushall()
    servers = redis_trio[:hosts]
    gateway = LayerClient(_layer(servers, backend, capacity=1000))
    worker = LayerClient(_layer(servers, sender_backend, capacity=1000), 50)
    try:
        prefix = f"udp.send.{gateway.gateway_id}!"
        names = [f"{prefix}{n:08x}" for n in range(200)]
        await asyncio.gather(*(worker.send(name, {"type": "udp.send", "n": n}) for n, name in enumerate(names)))
        received = {}
        for _ in range(200):
            got = await gateway.receive_prefixed(prefix, timeout=DEADLINE)
            assert got is not None, f"{len(received)} of 200 replies arrived"
            received[got[0]] = got[1]["n"]
        assert received == {name: n for n, name in enumerate(names)}
        assert await gateway.receive_prefixed(prefix, timeout=0.05) is None
    finally:
        await gateway.close()
        await worker.close()


@pytest.mark.parametrize("sender_backend", [STOCK, BATCHING], ids=["stock-sender", "batching-sender"])
@BACKENDS
@aio
async def test_normal_channel_sends_reach_receivers_on_every_host(redis_trio, sender_backend, backend):
    """Sends to udp.receive go round-robin over 3 hosts; a receiver gets each of them once."""
    for server in redis_trio:
        server.flushall()
    sender = LayerClient(_layer(redis_trio, sender_backend, capacity=1000), 50)
    receiver = LayerClient(_layer(redis_trio, backend, capacity=1000))
    try:
        await asyncio.gather(*(sender.send("udp.receive", {"type": "udp.receive", "n": n}) for n in range(90)))
        assert sorted(await _consume_all([receiver], sender, "udp.receive", 90)) == list(range(92))
    finally:
        await sender.close()
        await receiver.close()
