"""Everything specific to channels_redis: which classes are its layers, host options, the startup probe, closing pools."""

import asyncio
from typing import Mapping
from urllib.parse import urlsplit

from gateway.layers.errors import LayerUnreachable, error_text

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


def is_core_layer(layer):
    """channels_redis' RedisChannelLayer, or a subclass keeping its receive_single: sorted sets we may pop ourselves."""
    if not from_channels_redis(type(layer), "channels_redis.core"):
        return False
    from channels_redis.core import RedisChannelLayer

    return type(layer).receive_single is RedisChannelLayer.receive_single
