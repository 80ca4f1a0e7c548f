"""Reach and close a channel layer's connections, whatever its class."""

import asyncio

PROBE_TIMEOUT = 5.0


class LayerUnreachable(Exception):
    """The channel layer's server cannot be reached; the message names it."""


def as_future(deferred):
    """An asyncio future for a Twisted Deferred (await it from asyncio code)."""
    return deferred.asFuture(asyncio.get_event_loop())


def _redis_addresses(layer):
    hosts = getattr(layer, "hosts", None) or getattr(layer, "_shards", None) or []
    for index, host in enumerate(hosts):
        if isinstance(host, dict):
            yield index, host.get("address") or f"{host.get('host')}:{host.get('port')}"
        else:
            yield index, str(host)


async def check_reachable(layer):
    """Ping each Redis host of a channels_redis layer; other layers are in-process or lazy."""
    if not type(layer).__module__.startswith("channels_redis"):
        return
    from gateway.redisprobe import ping_hosts

    await ping_hosts(layer, PROBE_TIMEOUT)


async def close_layer(layer):
    """Close connection pools (channels_redis) or the layer itself, if it can."""
    for name in ("close_pools", "close"):
        closer = getattr(layer, name, None)
        if closer is not None:
            result = closer()
            if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                await result
            return
