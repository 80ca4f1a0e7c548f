"""Probe the Redis servers of a channels_redis layer before anything binds."""

import asyncio


async def ping_hosts(layer, timeout):
    """Raise LayerUnreachable naming the first Redis host that does not answer PING."""
    import redis.asyncio as aioredis

    from gateway.health import LayerUnreachable

    for host in getattr(layer, "hosts", None) or []:
        address = host.get("address") if isinstance(host, dict) else None
        if address is None:
            continue
        client = aioredis.Redis.from_url(address, socket_connect_timeout=timeout)
        try:
            await asyncio.wait_for(client.ping(), timeout)
        except Exception as exc:
            raise LayerUnreachable(f"cannot reach the channel layer's Redis at {_location(address)}: "
                                   f"{exc.__class__.__name__}: {exc}") from None
        finally:
            await client.aclose()


def _location(address):
    from urllib.parse import urlsplit

    parts = urlsplit(address)
    return f"{parts.hostname}:{parts.port or 6379}" if parts.hostname else address
