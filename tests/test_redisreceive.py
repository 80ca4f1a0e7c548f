"""At-most-once receive from channels_redis against a real redis-server: no message twice, none lost."""

import asyncio

from gateway import redislayer
from gateway.layers import BoundedLayer, InMemoryChannelLayer, make_layer
from tests.support import DEADLINE, aio, eventually


@aio
async def test_other_layers_keep_their_own_receive():
    """Other layers go through their own receive and receive_single, with a client-side timeout."""
    layer = InMemoryChannelLayer()
    assert not redislayer.supports(layer)
    receive, receive_single = redislayer.receiver(layer), redislayer.prefix_receiver(layer)
    await layer.send("a", {"type": "x"})
    await layer.send("udp.send.g!t", {"type": "y"})
    assert await receive("a") == {"type": "x"}
    assert await receive_single("udp.send.g!") == ("udp.send.g!t", {"type": "y"})
    assert await receive("a", timeout=0.05) is None
    assert await receive_single("udp.send.g!", timeout=0.05) is None


def _layer(url, **config):
    return make_layer("channels_redis.core.RedisChannelLayer", {"hosts": [url], **config})


@aio
async def test_two_receivers_share_a_channel_without_duplicates(redis_server):
    """Two consumers of one channel (two workers) together get each message exactly once."""
    sender, first, second = (_layer(redis_server.url, capacity=1000) for _ in range(3))
    try:
        got = []

        async def consume(layer):
            receive = redislayer.receiver(layer)
            while True:
                got.append((await receive("udp.receive"))["n"])

        consumers = [asyncio.ensure_future(consume(layer)) for layer in (first, second)]
        bounded = BoundedLayer(sender, 50)  # as the gateway sends: 50 at once
        await asyncio.gather(*(bounded.send("udp.receive", {"type": "udp.receive", "n": n}) for n in range(300)))
        await eventually(lambda: set(got) >= set(range(300)), what="all 300 messages")
        # Two markers, sent last: a second copy of an earlier message would be popped before them.
        for n in (300, 301):
            await sender.send("udp.receive", {"type": "udp.receive", "n": n})
        await eventually(lambda: {300, 301} <= set(got), what="both markers")
        for task in consumers:
            task.cancel()
        await asyncio.gather(*consumers, return_exceptions=True)
        assert sorted(got) == list(range(302))
    finally:
        for layer in (sender, first, second):
            await layer.close_pools()


@aio
async def test_process_specific_names_and_timeouts(redis_server):
    """A full `!` name goes through channels_redis' receive; a prefix pops any of its names; timeouts give None."""
    layer = _layer(redis_server.url)
    try:
        name = await layer.new_channel("udp.send")
        await layer.send(name, {"type": "udp.send", "data": b"x"})
        message = await asyncio.wait_for(redislayer.receiver(layer)(name), DEADLINE)
        assert message == {"type": "udp.send", "data": b"x"}
        await layer.send(name, {"type": "udp.send", "data": b"y"})
        prefix = name.split("!")[0] + "!"
        received = await asyncio.wait_for(redislayer.prefix_receiver(layer)(prefix), DEADLINE)
        assert received == (name, {"type": "udp.send", "data": b"y"})
        assert await redislayer.prefix_receiver(layer)(prefix, timeout=0.05) is None
        assert await redislayer.receiver(layer)("udp.receive", timeout=0.05) is None
    finally:
        await layer.close_pools()
