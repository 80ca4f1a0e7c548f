"""Layer health helpers without a server: error lines, Redis host names, bounded closing."""

import asyncio

import pytest

from gateway import health
from gateway.layers import InMemoryChannelLayer, make_layer
from gateway.redislayer import location, redis_hosts
from tests.support import DEADLINE, aio


@pytest.mark.parametrize(
    "exc, line",
    [
        (ValueError("bad"), "ValueError: bad"),
        (asyncio.TimeoutError(), "TimeoutError"),
    ],
)
def test_error_text(exc, line):
    """An error is shown as `Type: message`, or the type alone."""
    assert health.error_text(exc) == line


def test_error_text_keeps_redis_messages():
    """redis-py 8 errors keep their message (their repr drops it)."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    exc = RedisConnectionError("Connection closed by server.")
    assert health.error_text(exc) == "ConnectionError: Connection closed by server."


@pytest.mark.parametrize(
    "host, shown",
    [
        ({"address": "redis://10.0.0.5:6380/1"}, "10.0.0.5:6380"),
        ({"address": "redis://r"}, "r:6379"),
        ({"address": "rediss://[::1]:7000"}, "[::1]:7000"),
        ({"address": "unix:///run/redis.sock"}, "/run/redis.sock"),
        ({"host": "r", "port": 7001}, "r:7001"),
        ({"master_name": "m", "sentinels": [("s", 26379)]}, "sentinel master m"),
    ],
)
def test_location(host, shown):
    """Each kind of channels_redis host is named the way an operator would look it up."""
    assert location(host) == shown


def test_redis_hosts_of_core_and_pubsub_layers():
    """The hosts to probe come from the core layer and from the pub/sub layer's arguments alike."""
    from channels_redis.core import RedisChannelLayer
    from channels_redis.pubsub import RedisPubSubChannelLayer

    for cls in (RedisChannelLayer, RedisPubSubChannelLayer):
        layer = make_layer("x", {"hosts": ["redis://h:1/0"]}, cls=cls)
        assert [h["address"] for h in redis_hosts(layer)] == ["redis://h:1/0"]
        assert health.is_redis_layer(layer)
    assert not health.is_redis_layer(InMemoryChannelLayer())


class _HangingLayer:
    """A layer whose close() never finishes unless cancelled (a hung Redis)."""

    cancelled = False

    async def close(self):
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise


@aio
async def test_close_layer_is_bounded():
    """A layer that never finishes closing (a hung Redis) is given up on after the timeout: a stop goes on."""
    layer = _HangingLayer()
    await asyncio.wait_for(health.close_layer(layer, timeout=0.1), DEADLINE)
    assert layer.cancelled


@aio
async def test_close_layer_calls_close():
    """Layers with a close() coroutine are closed."""
    closed = []

    class Layer:
        async def close(self):
            closed.append(True)

    await health.close_layer(Layer())
    assert closed == [True]
