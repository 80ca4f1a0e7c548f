"""Everything specific to channels_redis: host options, the startup probe, closing pools, at-most-once receive.

Receive: channels_redis' own receive keeps each popped message in a
`<channel>$inflight` backup shared by every consumer of the channel, and
before each receive puts that whole backup back into the queue: with several
workers on `udp.receive`, a message one worker is handling is handed to
another as well (https://github.com/django/channels_redis/issues/163).
Datagrams are at-most-once anyway, so our workers pop directly: one Redis
command instead of four, and no message is delivered twice.
"""

import asyncio
import itertools
from typing import Mapping
from urllib.parse import urlsplit

from gateway.health import LayerUnreachable, error_text

_DEFAULT_HOSTS = [("127.0.0.1", 6379)]


def from_channels_redis(cls, module="channels_redis"):
    """A channels_redis layer class (`module` narrows it, e.g. "channels_redis.pubsub"), or a subclass of one."""
    return any(getattr(base, "__module__", "").startswith(module) for base in getattr(cls, "__mro__", ()))


def redis_channel_layer_config(config):
    """channels_redis kwargs: each host a dict with "address", socket_timeout None, one retry.

    redis-py 8 gives every connection a 5 s socket_timeout, which also bounds the
    blocking BZPOPMIN of an idle receive (channels_redis blocks up to 5 s): the
    receive then fails unless the host sets socket_timeout None. After a Redis
    restart every pooled connection fails once ("Connection closed by server"):
    retrying once on ConnectionError reconnects instead of losing that message.
    """
    config = dict(config)
    hosts = config.get("hosts") or _DEFAULT_HOSTS
    if not isinstance(hosts, (str, bytes)):  # channels_redis explains a bare string
        config["hosts"] = [_redis_host(host) for host in hosts]
    return config


def _redis_host(host):
    """One host as channels_redis' create_pool takes it: a dict with "address"."""
    if isinstance(host, Mapping):
        host = dict(host)
    elif isinstance(host, (tuple, list)):
        address, port = host
        if ":" in address and not address.startswith("["):
            address = f"[{address}]"
        host = {"address": f"redis://{address}:{port}"}
    else:
        host = {"address": host}
    host.setdefault("socket_timeout", None)
    if not {"retry", "retry_on_error", "retry_on_timeout"} & host.keys():
        retry_on = _redis_connection_error()
        if retry_on is not None:
            host["retry_on_error"] = [retry_on]  # redis-py: Retry(NoBackoff(), 1) on these
    return host


def _redis_connection_error():
    """redis-py's ConnectionError (retried once), or None without redis-py."""
    try:
        from redis.exceptions import ConnectionError as RedisConnectionError
    except ImportError:  # pragma: no cover - channels_redis requires redis
        return None
    return RedisConnectionError


def redis_hosts(layer):
    """The layer's hosts as channels_redis' create_pool takes them (core and pub/sub layers)."""
    from channels_redis.utils import decode_hosts

    hosts = vars(layer).get("hosts")  # vars(): the pub/sub layer's __getattr__ needs a loop
    if hosts is None:
        hosts = decode_hosts(vars(layer).get("_kwargs", {}).get("hosts"))
    return hosts


async def ping_hosts(layer, timeout):
    """Raise LayerUnreachable naming the first Redis host that does not answer PING."""
    for host in redis_hosts(layer):
        try:
            await asyncio.wait_for(_ping(host, timeout), timeout)
        except asyncio.TimeoutError:
            raise LayerUnreachable(f"cannot reach the channel layer's Redis at {location(host)}: "
                                   f"no answer within {timeout:g}s") from None
        except Exception as exc:
            raise LayerUnreachable(f"cannot reach the channel layer's Redis at {location(host)}: "
                                   f"{error_text(exc)}") from None


async def _ping(host, timeout):
    import redis.asyncio as aioredis
    from channels_redis.utils import create_pool

    # The host's own options (password, TLS...), without retries and with short timeouts.
    options = {k: v for k, v in host.items() if k not in ("retry", "retry_on_error", "retry_on_timeout")}
    options.update(socket_connect_timeout=timeout, socket_timeout=timeout)
    pool = create_pool(options)
    client = aioredis.Redis(connection_pool=pool)
    try:
        await client.ping()
    finally:
        await client.aclose()
        await pool.disconnect()


def location(host):
    """host:port (or the socket path, or the sentinel master) of one host dict, for a log line."""
    if "address" in host:
        parts = urlsplit(str(host["address"]))
        if parts.scheme == "unix":
            return parts.path
        if not parts.hostname:
            return str(host["address"])
        name = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        return f"{name}:{parts.port or 6379}"
    if "master_name" in host:
        return f"sentinel master {host['master_name']}"
    return f"{host.get('host', 'localhost')}:{host.get('port', 6379)}"


async def close_redis_layer(layer):
    """Close every connection pool of a channels_redis layer, so nothing is left unclosed."""
    close_pools = getattr(type(layer), "close_pools", None)
    if close_pools is not None:
        await close_pools(layer)
        return
    # RedisPubSubChannelLayer: one inner layer per event loop. Its flush() only
    # drops local subscriptions and closes connections: pub/sub stores nothing in Redis.
    loop_layers = vars(layer).get("_layers", {})
    for loop_layer in list(loop_layers.values()):
        await loop_layer.flush()
    loop_layers.clear()


_ATTRIBUTES = ("connection", "prefix", "deserialize", "_receive_index_generator", "ring_size")


def supports(layer):
    """True for channels_redis' RedisChannelLayer (the sorted-set layout this module reads)."""
    return type(layer).__module__ == "channels_redis.core" and all(hasattr(layer, a) for a in _ATTRIBUTES)


def receiver(layer):
    """`async receive(channel, timeout=None)` -> message, or None once `timeout` passed.

    At most once for normal channels of a channels_redis layer; the layer's own receive otherwise.
    """
    inner = getattr(layer, "inner", layer)
    redis = supports(inner)

    async def receive(channel, timeout=None):
        if redis and "!" not in channel:
            return await receive_once(inner, channel, timeout)
        return await _waited(layer.receive(channel), timeout)

    return receive


async def receive_once(layer, channel, timeout=None):
    """The next message of a normal channel, popped atomically; None after `timeout` seconds."""
    assert layer.require_valid_channel_name(channel)
    key = layer.prefix + channel
    # With one host, block for channels_redis' usual timeout; with several, look
    # at each in turn, since sends to a normal channel go round-robin over hosts.
    wait = timeout or (layer.brpop_timeout if layer.ring_size == 1 else 1)
    for _ in itertools.count() if timeout is None else range(layer.ring_size):  # with a timeout: each host once
        connection = layer.connection(next(layer._receive_index_generator))
        # The server-side timeout ends a wait without cancelling a command in flight.
        result = await connection.bzpopmin(key, timeout=wait)
        if result is not None:
            return layer.deserialize(result[1])
    return None


def prefix_receiver(layer):
    """`async receive(prefix, timeout=None)` -> (channel, message), or None once `timeout` passed.

    For channels_redis one BZPOPMIN on the prefix's queue (at most once: only this
    gateway reads its `udp.send.<id>!` queue); for other layers their receive_single.
    """
    inner = getattr(layer, "inner", layer)
    if supports(inner):
        return lambda prefix, timeout=None: receive_prefixed(inner, prefix, timeout)
    return lambda prefix, timeout=None: _waited(layer.receive_single(prefix), timeout)


async def _waited(awaitable, timeout):
    """The awaitable's result; with a timeout, None once it passed (other layers: cancelled client-side)."""
    if timeout is None:
        return await awaitable
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except asyncio.TimeoutError:
        return None


async def receive_prefixed(layer, prefix, timeout=None):
    """The next message sent to any `prefix...` channel, popped atomically; None after `timeout` seconds."""
    key = layer.prefix + prefix
    connection = layer.connection(layer.consistent_hash(prefix))  # where channels_redis' receive_single looks
    while True:
        # The server-side timeout ends a wait without cancelling a command in flight.
        result = await connection.bzpopmin(key, timeout=timeout or layer.brpop_timeout)
        if result is not None:
            message = layer.deserialize(result[1])
            return message.pop("__asgi_channel__", prefix), message
        if timeout:
            return None
