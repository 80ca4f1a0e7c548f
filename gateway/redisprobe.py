"""Probe the Redis servers of a channels_redis layer before anything binds, and close its pools."""

import asyncio
from urllib.parse import urlsplit

from gateway.health import LayerUnreachable, error_text


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
