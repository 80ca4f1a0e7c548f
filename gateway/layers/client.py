"""LayerClient: the one object the runner, the reply pump, delivery and the worker ask for the channel layer."""

import asyncio
import uuid
import weakref
from collections import deque

from twisted.logger import Logger

from gateway.layers import redis
from gateway.layers.inbox import Inbox, blocking_pop
from gateway.layers.memory import InMemoryChannelLayer

log = Logger()
PROBE_TIMEOUT = 5.0
CLOSE_TIMEOUT = 5.0  # seconds a stop waits for the layer's connections to close (a hung Redis)
_ids = weakref.WeakKeyDictionary()


def make_layer(backend, config, cls=None):
    """The configured layer: "memory", or a Channels layer class called with config."""
    if backend == "memory":
        return InMemoryChannelLayer(**config)
    if cls is None:
        from gateway.importing import import_from_string

        cls = import_from_string(backend)
    if redis.from_channels_redis(cls):
        return cls(**redis.redis_channel_layer_config(config))
    return cls(**config)


class LayerClient:
    """A channel layer as this process uses it: send, receive, prefix receive, reachability, close.

    How each is done is decided here, once per layer class:
    - layers that pop at most once themselves (`pops_at_most_once`, our
      BatchingRedisChannelLayer): their own receive_single, for channels and prefixes;
    - channels_redis' RedisChannelLayer: an Inbox per key reading every host.
      Its own receive re-delivers what another consumer is handling
      (https://github.com/django/channels_redis/issues/163), and its
      receive_single("x!") reads only the prefix's host while its send puts
      "x!y" on the host of the whole name;
    - any other layer: its receive and receive_single.
    Applications get this object as scope["channel_layer"]: every attribute
    of the layer, with send and group_send bounded to `max_sends` in flight.
    """

    def __init__(self, layer, max_sends=None):
        self.inner = layer
        self.max_sends = max_sends
        self._limit = max_sends or 1 << 30
        self._in_flight = 0     # sends and group_sends now
        self._room = deque()    # senders waiting for one of those to end
        self._inboxes = {}  # Redis key -> Inbox (channels_redis' own layer only)
        self._pops_itself = bool(getattr(type(layer), "pops_at_most_once", False))
        self._stock_redis = not self._pops_itself and redis.is_core_layer(layer)

    def __getattr__(self, name):
        if name == "inner":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    # -- what applications see --------------------------------------------
    async def send(self, channel, message):
        await self._bounded(self.inner.send, channel, message)

    async def group_send(self, group, message):
        await self._bounded(self.inner.group_send, group, message)

    async def _bounded(self, send, name, message):
        """`send(name, message)` once fewer than max_sends are in flight."""
        if self._in_flight >= self._limit:
            await self._wait_for_room()
        self._in_flight += 1
        try:
            await send(name, message)
        finally:
            self._done()

    async def _wait_for_room(self):
        """Wait in line until fewer than max_sends are in flight (a plain counter below it: cheaper than a lock)."""
        while self._in_flight >= self._limit:
            waiter = asyncio.get_running_loop().create_future()
            self._room.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._done_wake()  # woken, then cancelled: pass the turn on
                raise

    def _done(self):
        self._in_flight -= 1
        self._done_wake()

    def _done_wake(self):
        while self._room:
            waiter = self._room.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    # -- what the gateway and the worker ask --------------------------------
    @property
    def gateway_id(self):
        """This process's id in reply channels: the layer's client_prefix, or random."""
        return gateway_id(self.inner)

    @property
    def prefix_receive(self):
        """Whether one receive_single("name!") serves every "name!..." channel."""
        return has_prefix_receive(self.inner)

    async def receive(self, channel, timeout=None, *, batch=None):
        """The next message of `channel`; None once `timeout` seconds passed (at most once on Redis).

        `batch`: how many messages this process has room for, so a layer that
        pops several at once takes no more than that from other consumers.
        """
        if "!" in channel or not (self._pops_itself or self._stock_redis):
            return await _waited(self.inner.receive(channel), timeout)
        if self._pops_itself:
            received = await _waited(self.inner.receive_single(channel, batch=batch), timeout)
        else:
            received = await self.receive_prefixed(channel, timeout)
        return None if received is None else received[1]

    async def receive_prefixed(self, prefix, timeout=None):
        """(channel, message) of the next message sent to any `prefix...` channel; None after `timeout`."""
        if not self._stock_redis:
            return await _waited(self.inner.receive_single(prefix), timeout)
        assert self.inner.require_valid_channel_name(prefix, receive=True)
        content = await _waited(self._inbox(prefix).get(), timeout)
        if content is None:
            return None
        message = self.inner.deserialize(content)
        return message.pop("__asgi_channel__", prefix), message

    def _inbox(self, channel):
        key = self.inner.prefix + channel
        inbox = self._inboxes.get(key)
        if inbox is None:
            inbox = self._inboxes[key] = Inbox(blocking_pop(self.inner, key), self.inner.ring_size, batch=1)
        return inbox

    async def check_reachable(self):
        """Ping each Redis host of a channels_redis layer; other layers are in-process or lazy."""
        if redis.from_channels_redis(type(self.inner)):
            await redis.ping_hosts(self.inner, PROBE_TIMEOUT)

    async def close(self, timeout=CLOSE_TIMEOUT):
        """Close connection pools (channels_redis) or the layer itself, if it can; bounded, so a stop ends."""
        try:
            await asyncio.wait_for(self._close(), timeout)
        except asyncio.TimeoutError:
            log.warn("closing the channel layer took over {t}s; leaving its connections to the exit", t=timeout)

    async def _close(self):
        inboxes, self._inboxes = list(self._inboxes.values()), {}
        for inbox in inboxes:
            await inbox.close()
        if redis.from_channels_redis(type(self.inner)):
            await redis.close_redis_layer(self.inner)
            return
        closer = getattr(self.inner, "close", None)
        if closer is not None:
            result = closer()
            if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                await result


def as_client(layer):
    """`layer` if it is a LayerClient already, else a LayerClient around it (sends unbounded)."""
    return layer if isinstance(layer, LayerClient) else LayerClient(layer)


async def _waited(awaitable, timeout):
    """The awaitable's result; with a timeout, None once it passed (cancelled client-side)."""
    if timeout is None:
        return await awaitable
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except asyncio.TimeoutError:
        return None


def gateway_id(layer):
    """A layer's client_prefix, or a random id kept for it."""
    layer = layer.inner if isinstance(layer, LayerClient) else layer
    try:
        prefix = getattr(layer, "client_prefix", None)
    except RuntimeError:  # RedisPubSubChannelLayer's __getattr__ outside a loop
        prefix = None
    if isinstance(prefix, str) and prefix:
        return prefix
    try:
        return _ids.setdefault(layer, uuid.uuid4().hex)
    except TypeError:  # not weakly referenceable or unhashable: keep it on the object
        if not getattr(layer, "_udpgateway_id", None):
            layer._udpgateway_id = uuid.uuid4().hex
        return layer._udpgateway_id


def has_prefix_receive(layer):
    """Whether one receive_single("name!") serves every "name!..." channel.

    Looked up on the class: RedisPubSubChannelLayer's __getattr__ needs a loop.
    """
    layer = layer.inner if isinstance(layer, LayerClient) else layer
    return callable(getattr(type(layer), "receive_single", None))
