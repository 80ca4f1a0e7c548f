"""Reach and close a channel layer's connections, whatever its class, and name its errors."""

import asyncio

from twisted.logger import Logger

log = Logger()
PROBE_TIMEOUT = 5.0
CLOSE_TIMEOUT = 5.0  # seconds a stop waits for the layer's connections to close (a hung Redis)


class LayerUnreachable(Exception):
    """The channel layer's server cannot be reached; the message names it."""


def as_future(deferred):
    """An asyncio future for a Twisted Deferred (await it from asyncio code)."""
    return deferred.asFuture(asyncio.get_event_loop())


def error_text(exc):
    """`Type: message` for a log line; redis-py 8's repr drops the message."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def is_redis_layer(layer):
    """A channels_redis layer, or a subclass of one."""
    from gateway.redislayer import from_channels_redis

    return from_channels_redis(type(layer))


async def check_reachable(layer):
    """Ping each Redis host of a channels_redis layer; other layers are in-process or lazy."""
    if not is_redis_layer(layer):
        return
    from gateway.redislayer import ping_hosts

    await ping_hosts(layer, PROBE_TIMEOUT)


async def close_layer(layer, timeout=CLOSE_TIMEOUT):
    """Close connection pools (channels_redis) or the layer itself, if it can; bounded, so a stop ends."""
    try:
        await asyncio.wait_for(_close(layer), timeout)
    except asyncio.TimeoutError:
        log.warn("closing the channel layer took over {t}s; leaving its connections to the exit", t=timeout)


async def _close(layer):
    if is_redis_layer(layer):
        from gateway.redislayer import close_redis_layer

        await close_redis_layer(layer)
        return
    closer = getattr(layer, "close", None)
    if closer is not None:
        result = closer()
        if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
            await result
