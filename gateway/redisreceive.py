"""At-most-once receive of a normal channel from channels_redis: one BZPOPMIN, no in-flight backup.

channels_redis' own receive keeps each popped message in a `<channel>$inflight`
backup shared by every consumer of the channel, and before each receive puts
that whole backup back into the queue: with several workers on `udp.receive`,
a message one worker is handling is handed to another as well
(https://github.com/django/channels_redis/issues/163). Datagrams are
at-most-once anyway, so our workers pop directly: one Redis command instead of
four, and no message is delivered twice.
"""

_ATTRIBUTES = ("connection", "prefix", "deserialize", "_receive_index_generator", "ring_size")


def supports(layer):
    """True for channels_redis' RedisChannelLayer (the sorted-set layout this module reads)."""
    return type(layer).__module__ == "channels_redis.core" and all(hasattr(layer, a) for a in _ATTRIBUTES)


def receiver(layer):
    """`async receive(channel)`: at-most-once for normal channels of a channels_redis layer, else the layer's own."""
    inner = getattr(layer, "inner", layer)
    if not supports(inner):
        return layer.receive

    async def receive(channel):
        if "!" in channel:
            return await layer.receive(channel)
        return await receive_once(inner, channel)

    return receive


async def receive_once(layer, channel):
    """The next message of a normal channel, popped atomically; waits, cycling through the hosts."""
    assert layer.require_valid_channel_name(channel)
    key = layer.prefix + channel
    # With one host, block for channels_redis' usual timeout; with several, look
    # at each in turn, since sends to a normal channel go round-robin over hosts.
    timeout = layer.brpop_timeout if layer.ring_size == 1 else 1
    while True:
        connection = layer.connection(next(layer._receive_index_generator))
        result = await connection.bzpopmin(key, timeout=timeout)
        if result is not None:
            return layer.deserialize(result[1])
