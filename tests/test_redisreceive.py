"""At-most-once receive from channels_redis against a real redis-server: no message twice, none lost."""

import asyncio

from gateway import redislayer
from gateway.layers import BoundedLayer, InMemoryChannelLayer, make_layer
from tests.support import aio


def test_only_channels_redis_core_layer_is_supported():
    """Other layers keep their own receive."""
    layer = InMemoryChannelLayer()
    assert not redislayer.supports(layer)
    assert redislayer.receiver(layer) == layer.receive


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
        for _ in range(200):
            if len(got) >= 300:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
        for task in consumers:
            task.cancel()
        await asyncio.gather(*consumers, return_exceptions=True)
        assert sorted(got) == list(range(300))
    finally:
        for layer in (sender, first, second):
            await layer.close_pools()


@aio
async def test_process_specific_names_use_the_layer_receive(redis_server):
    """`!` channels still go through channels_redis' own receive (its client prefix rules)."""
    layer = _layer(redis_server.url)
    try:
        name = await layer.new_channel("udp.send")
        await layer.send(name, {"type": "udp.send", "data": b"x"})
        message = await asyncio.wait_for(redislayer.receiver(layer)(name), 5)
        assert message == {"type": "udp.send", "data": b"x"}
    finally:
        await layer.close_pools()
