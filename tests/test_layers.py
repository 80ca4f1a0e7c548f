"""Tests for gateway.layers: the in-memory layer, LayerClient and the layer helpers."""

import asyncio
import os
import re
import subprocess
import sys
from contextlib import suppress

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from gateway import layers
from gateway.layers import (
    ChannelFull,
    InMemoryChannelLayer,
    LayerClient,
    make_layer,
    redis_channel_layer_config,
)
from gateway.layers.client import gateway_id, has_prefix_receive
from tests.support import DEADLINE, counting

MSG = {"type": "udp.send", "data": b"x"}


def aio(awaitable, timeout=DEADLINE):
    """Run an awaitable as an asyncio task, awaitable from a Deferred-driven test.

    Plain `await` of asyncio futures fails inside pytest_twisted.ensureDeferred;
    the timeout turns a hang into a failure.
    """
    return Deferred.fromFuture(asyncio.ensure_future(asyncio.wait_for(awaitable, timeout)))


async def cancelled(task):
    """Cancel a task and wait until it has ended."""
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task


async def tick():
    """Let every ready task run once or twice."""
    for _ in range(3):
        await asyncio.sleep(0)


async def started(*awaitables):
    """Start each awaitable as a task and let them all reach their wait; returns the tasks."""
    tasks = [asyncio.ensure_future(awaitable) for awaitable in awaitables]
    await tick()
    return tasks


class FakeClock:
    """A settable replacement for the layer's monotonic clock."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def with_clock(layer):
    clock = layer._now = FakeClock()
    return clock


def msg(n):
    return {"type": "udp.send", "data": b"x", "n": n}


# Plain channels


@pytest_twisted.ensureDeferred
async def test_send_then_receive():
    """A message sent to a channel is received from it, as a copy."""
    layer = InMemoryChannelLayer()
    message = {"type": "udp.receive", "data": b"hi", "client": ["192.0.2.7", 1]}
    await aio(layer.send("udp.receive", message))
    message["client"][1] = 2
    got = await aio(layer.receive("udp.receive"))
    assert got == {"type": "udp.receive", "data": b"hi", "client": ["192.0.2.7", 1]}


@pytest_twisted.ensureDeferred
async def test_receive_waits_for_send():
    """A receive started first gets the next message sent."""
    layer = InMemoryChannelLayer()

    async def scenario():
        [receiving] = await started(layer.receive("in"))
        assert not receiving.done()
        await layer.send("in", msg(1))
        return await receiving

    assert await aio(scenario()) == msg(1)


@pytest_twisted.ensureDeferred
async def test_fifo_order():
    """Messages on one channel arrive in the order sent."""
    layer = InMemoryChannelLayer()
    for n in range(5):
        await aio(layer.send("in", msg(n)))
    assert [(await aio(layer.receive("in")))["n"] for _ in range(5)] == list(range(5))


@pytest_twisted.ensureDeferred
async def test_channel_full():
    """A send past capacity raises ChannelFull and the queued messages stay."""
    layer = InMemoryChannelLayer(capacity=2)
    await aio(layer.send("in", msg(1)))
    await aio(layer.send("in", msg(2)))
    with pytest.raises(ChannelFull):
        await aio(layer.send("in", msg(3)))
    assert (await aio(layer.receive("in")))["n"] == 1
    await aio(layer.send("in", msg(3)))


@pytest_twisted.ensureDeferred
async def test_channel_capacity_patterns():
    """channel_capacity takes globs and compiled regexes; the first match wins."""
    layer = InMemoryChannelLayer(
        capacity=5, channel_capacity={"udp.*": 1, re.compile(r"^big$"): 3}
    )
    assert layer.get_capacity("udp.receive") == 1
    assert layer.get_capacity("big") == 3
    assert layer.get_capacity("other") == 5
    await aio(layer.send("udp.receive", MSG))
    with pytest.raises(ChannelFull):
        await aio(layer.send("udp.receive", MSG))
    closed = InMemoryChannelLayer(channel_capacity={"closed": 0})
    with pytest.raises(ChannelFull):
        await aio(closed.send("closed", MSG))
    assert closed._queues == {}


@pytest_twisted.ensureDeferred
async def test_messages_expire():
    """A message older than expiry is dropped at receive time and frees its place."""
    layer = InMemoryChannelLayer(expiry=60, capacity=1)
    clock = with_clock(layer)
    await aio(layer.send("in", msg(1)))
    clock.now += 60
    await aio(layer.send("in", msg(2)))
    assert (await aio(layer.receive("in")))["n"] == 2
    await aio(layer.send("in", msg(3)))
    clock.now += 59
    assert (await aio(layer.receive("in")))["n"] == 3
    assert layer._queues == {} and not layer._live


@pytest.mark.parametrize(
    "name",
    ["", "a b", "é", "x" * 100, "a!b!c", None, b"bytes"],
)
@pytest_twisted.ensureDeferred
async def test_invalid_channel_names(name):
    """Invalid channel names raise TypeError, as in Channels."""
    layer = InMemoryChannelLayer()
    with pytest.raises(TypeError):
        await aio(layer.send(name, MSG))
    with pytest.raises(TypeError):
        await aio(layer.group_add("g", name))


@pytest_twisted.ensureDeferred
async def test_invalid_group_names_and_messages():
    """Group names may not hold "!", messages must be dicts, and receive_single ends at "!"."""
    layer = InMemoryChannelLayer()
    with pytest.raises(TypeError):
        await aio(layer.group_add("a!b", "in"))
    with pytest.raises(AssertionError):
        await aio(layer.send("in", ["not", "a", "dict"]))
    with pytest.raises(TypeError):
        await aio(layer.receive_single("x.y!z"))
    assert layer.require_valid_channel_name("a" * 99)


@pytest_twisted.ensureDeferred
async def test_new_channel_names():
    """new_channel gives distinct valid "prefix.<client_prefix>!<id>" names."""
    layer = InMemoryChannelLayer()
    first = await aio(layer.new_channel())
    second = await aio(layer.new_channel("udp.send"))
    assert first.startswith(f"specific.{layer.client_prefix}!")
    assert second.startswith(f"udp.send.{layer.client_prefix}!")
    assert first != await aio(layer.new_channel())
    assert layer.require_valid_channel_name(first)
    assert re.fullmatch(r"[0-9a-f]{32}", layer.client_prefix)
    assert layer.client_prefix != InMemoryChannelLayer().client_prefix


def test_extensions():
    """The layer offers the groups and flush extensions."""
    assert InMemoryChannelLayer.extensions == ["groups", "flush"]


# Process-specific "!" channels


@pytest_twisted.ensureDeferred
async def test_receive_single_on_prefix():
    """receive_single("x!") yields (full name, message) for every "x!..." in arrival order."""
    layer = InMemoryChannelLayer()
    prefix = f"udp.send.{layer.client_prefix}!"
    for n, token in enumerate(["b", "a", "b", "c"]):
        await aio(layer.send(prefix + token, msg(n)))
    got = [await aio(layer.receive_single(prefix)) for _ in range(4)]
    assert [(name[len(prefix):], m["n"]) for name, m in got] == [
        ("b", 0), ("a", 1), ("b", 2), ("c", 3)
    ]
    assert layer._queues == {}


@pytest_twisted.ensureDeferred
async def test_receive_single_on_plain_name():
    """receive_single on a plain name returns (name, message)."""
    layer = InMemoryChannelLayer()
    await aio(layer.send("in", MSG))
    assert await aio(layer.receive_single("in")) == ("in", MSG)


@pytest_twisted.ensureDeferred
async def test_receive_single_waits():
    """A waiting receive_single("x!") wakes for a send to any "x!..." name."""
    layer = InMemoryChannelLayer()

    async def scenario():
        [receiving] = await started(layer.receive_single("p.x!"))
        await layer.send("p.x!abc", MSG)
        return await receiving

    assert await aio(scenario()) == ("p.x!abc", MSG)


@pytest_twisted.ensureDeferred
async def test_receive_full_name_takes_only_its_own():
    """receive("x!a") takes a's messages and leaves the others for their receivers."""
    layer = InMemoryChannelLayer()
    await aio(layer.send("p.x!b", msg(0)))
    await aio(layer.send("p.x!a", msg(1)))
    await aio(layer.send("p.x!b", msg(2)))
    assert (await aio(layer.receive("p.x!a")))["n"] == 1
    assert await aio(layer.receive_single("p.x!")) == ("p.x!b", msg(0))
    assert (await aio(layer.receive("p.x!b")))["n"] == 2
    assert layer._queues == {}


@pytest_twisted.ensureDeferred
async def test_waiting_full_name_receivers():
    """Receivers waiting on several "x!..." names each get their own messages."""
    layer = InMemoryChannelLayer()

    async def scenario():
        a, b = await started(layer.receive("p.x!a"), layer.receive("p.x!b"))
        await layer.send("p.x!b", msg(1))
        await layer.send("p.x!a", msg(2))
        return await a, await b

    assert await aio(scenario()) == (msg(2), msg(1))


@pytest_twisted.ensureDeferred
async def test_prefix_capacity_is_shared():
    """All channels of one "x!" prefix share one capacity, as in channels_redis."""
    layer = InMemoryChannelLayer(capacity=2)
    await aio(layer.send("p.x!a", MSG))
    await aio(layer.send("p.x!b", MSG))
    with pytest.raises(ChannelFull):
        await aio(layer.send("p.x!c", MSG))
    await aio(layer.send("p.y!c", MSG))


@pytest_twisted.ensureDeferred
async def test_prefix_messages_expire():
    """Expired "x!..." messages are dropped for receive_single and receive alike."""
    layer = InMemoryChannelLayer(expiry=10)
    clock = with_clock(layer)
    await aio(layer.send("p.x!a", msg(1)))
    await aio(layer.send("p.x!b", msg(2)))
    clock.now += 5
    await aio(layer.send("p.x!a", msg(3)))
    clock.now += 5
    assert (await aio(layer.receive("p.x!a")))["n"] == 3
    assert layer._queues == {}


# Cancellation


@pytest.mark.parametrize("channel", ["in", "p.x!a"])
@pytest_twisted.ensureDeferred
async def test_cancelled_receive_loses_nothing(channel):
    """A receive cancelled right after its wake-up leaves the message for the next one."""
    layer = InMemoryChannelLayer()

    async def scenario():
        [first] = await started(layer.receive(channel))
        await layer.send(channel, MSG)
        await cancelled(first)
        return await layer.receive(channel)

    assert await aio(scenario()) == MSG


@pytest.mark.parametrize(
    "method, name, channel, expected",
    [
        pytest.param("receive", "in", "in", MSG, id="in"),
        pytest.param("receive", "p.x!a", "p.x!a", MSG, id="p.x!a"),
        pytest.param("receive_single", "p.x!", "p.x!a", ("p.x!a", MSG), id="receive_single"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_cancelled_receive_passes_wake_up_on(method, name, channel, expected):
    """When a woken receive or receive_single("x!") is cancelled, another waiting one gets the message."""
    layer = InMemoryChannelLayer()
    receive = getattr(layer, method)

    async def scenario():
        first, second = await started(receive(name), receive(name))
        await layer.send(channel, MSG)
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        return await asyncio.wait_for(second, DEADLINE)

    assert await aio(scenario()) == expected


@pytest_twisted.ensureDeferred
async def test_cancelled_waiters_leave_no_state():
    """Receives cancelled while waiting leave no queue or waiter behind."""
    layer = InMemoryChannelLayer()

    async def scenario():
        tasks = await started(
            *(layer.receive(f"p.x!{i}") for i in range(10)),
            layer.receive_single("p.x!"),
            *(layer.receive(f"in{i}") for i in range(10)),
        )
        for task in tasks:
            await cancelled(task)

    await aio(scenario())
    assert layer._queues == {}


@pytest_twisted.ensureDeferred
async def test_prefix_and_name_receivers_share_messages():
    """receive_single("x!") and receive("x!a") waiting together split a's messages."""
    layer = InMemoryChannelLayer()

    async def scenario():
        single, named = await started(layer.receive_single("p.x!"), layer.receive("p.x!a"))
        await layer.send("p.x!a", msg(1))
        await tick()
        assert single.done() != named.done()
        await layer.send("p.x!a", msg(2))
        got = [await single, await named]
        return sorted(m["n"] for m in [got[0][1], got[1]])

    assert await aio(scenario()) == [1, 2]


# Groups and flush


@pytest_twisted.ensureDeferred
async def test_group_send():
    """group_send reaches each member; discarded members get nothing."""
    layer = InMemoryChannelLayer()
    await aio(layer.group_add("g", "a"))
    await aio(layer.group_add("g", "p.x!b"))
    await aio(layer.group_add("g", "c"))
    await aio(layer.group_discard("g", "c"))
    await aio(layer.group_send("g", MSG))
    assert await aio(layer.receive("a")) == MSG
    assert await aio(layer.receive("p.x!b")) == MSG
    assert "c" not in layer._queues
    await aio(layer.group_discard("g", "a"))
    await aio(layer.group_discard("g", "p.x!b"))
    assert layer._groups == {}


@pytest_twisted.ensureDeferred
async def test_group_send_skips_full_channels():
    """A full member does not stop group_send from reaching the others."""
    layer = InMemoryChannelLayer(capacity=1)
    await aio(layer.send("full", MSG))
    await aio(layer.group_add("g", "full"))
    await aio(layer.group_add("g", "ok"))
    await aio(layer.group_send("g", msg(2)))
    assert (await aio(layer.receive("ok")))["n"] == 2


@pytest_twisted.ensureDeferred
async def test_group_membership_expires():
    """Members older than group_expiry are dropped at group_send."""
    layer = InMemoryChannelLayer(group_expiry=100)
    clock = with_clock(layer)
    await aio(layer.group_add("g", "old"))
    clock.now += 50
    await aio(layer.group_add("g", "new"))
    clock.now += 60
    await aio(layer.group_send("g", MSG))
    assert layer._groups == {"g": {"new": clock.now - 60}}
    assert "old" not in layer._queues


@pytest_twisted.ensureDeferred
async def test_flush():
    """flush drops messages and groups; a receiver already waiting still gets later ones."""
    layer = InMemoryChannelLayer()

    async def scenario():
        [waiting] = await started(layer.receive("in"))
        await layer.send("other", msg(1))
        await layer.group_add("g", "other")
        await layer.flush()
        assert layer._groups == {} and "other" not in layer._queues
        await layer.send("in", msg(2))
        return await waiting

    assert (await aio(scenario()))["n"] == 2
    await aio(layer.close())
    assert layer._queues == {}


@pytest_twisted.ensureDeferred
async def test_cost_does_not_grow_with_channels():
    """With 20,000 channels holding messages, a send or receive looks at no more than two of them.

    (How fast that is, is measured by benchmarks/core_bench.py.)
    """
    layer = InMemoryChannelLayer()

    async def fill():
        for i in range(20_000):
            await layer.send(f"c{i}", MSG)

    async def traffic():
        for _ in range(20_000):
            await layer.send("hot", MSG)
            await layer.receive("hot")
            await layer.send("p.x!hot", MSG)
            await layer.receive_single("p.x!")

    await aio(fill())
    layer._queues, layer._live = counting(layer._queues), counting(layer._live)
    await aio(traffic())
    assert len(layer._queues) == 20_000
    calls = 4 * 20_000
    assert layer._queues.visits + layer._live.visits <= 2 * calls, (layer._queues.visits, layer._live.visits)


# LayerClient and helpers


class SlowLayer:
    """A layer whose sends wait until released, recording how many run at once."""

    client_prefix = "slowprefix"

    def __init__(self):
        self.in_flight = 0
        self.most = 0
        self.release = None

    async def send(self, channel, message):
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        await self.release.wait()
        self.in_flight -= 1

    async def group_send(self, group, message):
        await self.send(group, message)


@pytest_twisted.ensureDeferred
async def test_bounded_layer_limits_sends():
    """Past max_sends, send and group_send wait for a slot."""
    inner = SlowLayer()
    bounded = LayerClient(inner, 2)

    async def scenario():
        inner.release = asyncio.Event()
        sends = await started(*(bounded.send("c", MSG) for _ in range(3)), bounded.group_send("g", MSG))
        assert inner.in_flight == 2
        inner.release.set()
        await asyncio.gather(*sends)

    await aio(scenario())
    assert inner.most == 2 and inner.in_flight == 0


@pytest_twisted.ensureDeferred
async def test_bounded_layer_passes_through():
    """LayerClient exposes the wrapped layer as .inner and everything else unchanged."""
    inner = InMemoryChannelLayer()
    bounded = LayerClient(inner, 5)
    assert bounded.inner is inner
    assert bounded.client_prefix == inner.client_prefix
    assert bounded.extensions == ["groups", "flush"]
    await aio(bounded.send("in", MSG))
    assert await aio(bounded.receive("in")) == MSG
    with pytest.raises(AttributeError):
        bounded.no_such_attribute


class PlainLayer:
    """A layer with neither client_prefix nor receive_single."""


def test_gateway_id_uses_client_prefix():
    """The gateway id is the layer's client_prefix, through a LayerClient too."""
    layer = InMemoryChannelLayer()
    assert gateway_id(layer) == layer.client_prefix
    assert LayerClient(layer, 1).gateway_id == layer.client_prefix


def test_gateway_id_random_and_stable():
    """Without a client_prefix the id is random per layer and stable for each."""
    first, second = PlainLayer(), PlainLayer()
    assert gateway_id(first) == gateway_id(first) == LayerClient(first, 1).gateway_id
    assert gateway_id(first) != gateway_id(second)
    assert re.fullmatch(r"[0-9a-f]{32}", gateway_id(first))
    empty = PlainLayer()
    empty.client_prefix = ""
    assert gateway_id(empty) == gateway_id(empty) != ""


def test_gateway_id_unhashable_layer():
    """A layer that cannot key a WeakKeyDictionary keeps its id on itself."""

    class Unhashable:
        __hash__ = None

    layer = Unhashable()
    assert gateway_id(layer) == gateway_id(layer)


def test_has_prefix_receive():
    """Prefix receive is known by receive_single, looking through LayerClient."""
    from channels_redis.core import RedisChannelLayer

    assert has_prefix_receive(InMemoryChannelLayer())
    assert LayerClient(InMemoryChannelLayer(), 1).prefix_receive
    assert has_prefix_receive(RedisChannelLayer())
    assert not has_prefix_receive(PlainLayer())


def test_pubsub_layer_has_no_prefix_receive():
    """RedisPubSubChannelLayer has no prefix receive, and gets a random gateway id."""
    from channels_redis.pubsub import RedisPubSubChannelLayer

    layer = RedisPubSubChannelLayer()
    assert not has_prefix_receive(layer)
    assert gateway_id(layer) == gateway_id(layer)


def test_channels_in_memory_layer_has_no_prefix_receive():
    """Channels' own InMemoryChannelLayer has no receive_single."""
    from channels.layers import InMemoryChannelLayer as ChannelsInMemoryChannelLayer

    assert not has_prefix_receive(ChannelsInMemoryChannelLayer())


def test_module_does_not_import_django():
    """Importing gateway.layers does not import Django."""
    code = "import sys, gateway.layers; assert 'django' not in sys.modules"
    root = os.path.dirname(os.path.dirname(os.path.abspath(layers.__file__)))
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True)


# make_layer and Redis host normalisation


def test_make_layer_memory():
    """"memory" gives our in-memory layer with config as keyword arguments."""
    layer = make_layer("memory", {"capacity": 7, "expiry": 5})
    assert isinstance(layer, InMemoryChannelLayer)
    assert (layer.capacity, layer.expiry) == (7, 5)


def test_make_layer_given_class():
    """A given class is called with config; non-Redis configs pass unchanged."""
    made = make_layer("anything.Layer", {"hosts": ["x"]}, cls=dict)
    assert made == {"hosts": ["x"]}


def test_make_layer_imports_backend():
    """Without a class, the backend's dotted path is imported."""
    layer = make_layer("gateway.layers.InMemoryChannelLayer", {"capacity": 3})
    assert isinstance(layer, InMemoryChannelLayer) and layer.capacity == 3


def _redis_defaults(**host):
    """A host dict as normalised: socket_timeout None and one retry on redis-py's ConnectionError."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    return {**host, "socket_timeout": None, "retry_on_error": [RedisConnectionError], **host}


def test_make_layer_redis_hosts_normalised():
    """A channels_redis layer gets dict hosts with socket_timeout None and a retry, accepted by create_pool."""
    from channels_redis.core import RedisChannelLayer
    from channels_redis.utils import create_pool
    from redis.exceptions import ConnectionError as RedisConnectionError

    layer = make_layer(
        "channels_redis.core.RedisChannelLayer",
        {"hosts": [("10.1.2.3", 6380)], "prefix": "gw"},
        cls=RedisChannelLayer,
    )
    assert layer.prefix == "gw"
    assert layer.hosts == [_redis_defaults(address="redis://10.1.2.3:6380")]
    pool = create_pool(layer.hosts[0])  # builds the pool without connecting
    kwargs = pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["socket_timeout"]) == ("10.1.2.3", 6380, None)
    connection = pool.make_connection()  # not connected yet
    assert connection.retry.get_retries() == 1
    assert RedisConnectionError in connection.retry._supported_errors


def test_make_layer_redis_subclass_and_pubsub():
    """Subclasses of channels_redis layers and the pub/sub layer are normalised too."""
    from channels_redis.core import RedisChannelLayer
    from channels_redis.pubsub import RedisPubSubChannelLayer

    class Mine(RedisChannelLayer):
        pass

    assert make_layer("x.Mine", {}, cls=Mine).hosts == [_redis_defaults(address="redis://127.0.0.1:6379")]
    pubsub = make_layer("p", {"hosts": ["redis://h:1/2"]}, cls=RedisPubSubChannelLayer)
    assert pubsub._kwargs["hosts"] == [_redis_defaults(address="redis://h:1/2")]


@pytest.mark.parametrize(
    "hosts, expected",
    [
        (None, [{"address": "redis://127.0.0.1:6379"}]),
        ([], [{"address": "redis://127.0.0.1:6379"}]),
        (["redis://r:6379/0"], [{"address": "redis://r:6379/0"}]),
        ([("r", 7000)], [{"address": "redis://r:7000"}]),
        ([["r", 7000]], [{"address": "redis://r:7000"}]),
        ([("::1", 6379)], [{"address": "redis://[::1]:6379"}]),
        (
            [{"address": "rediss://r:6380", "ssl_cert_reqs": None}],
            [{"address": "rediss://r:6380", "ssl_cert_reqs": None}],
        ),
        (
            [{"address": "redis://r", "socket_timeout": 30}],
            [{"address": "redis://r", "socket_timeout": 30}],
        ),
        (
            [{"master_name": "m", "sentinels": [("s", 26379)]}],
            [{"master_name": "m", "sentinels": [("s", 26379)]}],
        ),
        ("redis://r", "redis://r"),
    ],
)
def test_redis_channel_layer_config(hosts, expected):
    """Each host becomes a dict with an address, socket_timeout None unless set, and one retry."""
    config = {"capacity": 10} if hosts is None else {"hosts": hosts, "capacity": 10}
    if not isinstance(expected, str):
        expected = [_redis_defaults(**host) for host in expected]
    assert redis_channel_layer_config(config) == {"hosts": expected, "capacity": 10}


@pytest.mark.parametrize("key, value", [("retry_on_error", []), ("retry_on_timeout", True), ("retry", None)])
def test_redis_channel_layer_config_keeps_own_retry(key, value):
    """A host that chooses its own retry policy gets none added."""
    (host,) = redis_channel_layer_config({"hosts": [{"address": "redis://r", key: value}]})["hosts"]
    assert host == {"address": "redis://r", key: value, "socket_timeout": None}


def test_redis_channel_layer_config_copies():
    """The caller's config and host dicts are not changed."""
    host = {"address": "redis://r"}
    config = {"hosts": [host]}
    redis_channel_layer_config(config)
    assert config == {"hosts": [{"address": "redis://r"}]}
