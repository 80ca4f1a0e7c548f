"""UDPConsumer: Channels' dispatch rule, reply(), lifespan hooks; no sockets."""

import asyncio

import pytest

from gateway.consumer import UDPConsumer, handler_name
from gateway.layers import InMemoryChannelLayer
from tests.support import DEADLINE, aio


def test_handler_name_follows_channels():
    """udp.receive is handled by udp_receive; a leading underscore is refused."""
    assert handler_name("udp.receive") == "udp_receive"
    with pytest.raises(ValueError):
        handler_name("_private.thing")


class Echo(UDPConsumer):
    async def udp_receive(self, message):
        await self.reply(message, message["data"], multicast=message.get("mc", False))


@aio
async def test_reply_goes_to_the_reply_channel():
    """reply() sends udp.send with the data (and multicast when asked) to the message's reply channel."""
    layer = InMemoryChannelLayer()
    app = Echo.as_asgi()
    for mc in (False, True):
        queue = [{"type": "udp.receive", "data": b"hi", "reply_channel": "udp.send.x!t", "mc": mc}]

        async def receive():
            if queue:
                return queue.pop()
            await asyncio.Future()

        task = asyncio.ensure_future(app({"type": "channel", "channel_layer": layer}, receive, None))
        channel, message = await asyncio.wait_for(layer.receive_single("udp.send.x!"), DEADLINE)
        task.cancel()
        expected = {"type": "udp.send", "data": b"hi", **({"multicast": True} if mc else {})}
        assert (channel, message) == ("udp.send.x!t", expected)


@aio
async def test_unknown_type_raises():
    """A message type without a handler raises, like Channels."""
    consumer = Echo({"type": "channel"})
    with pytest.raises(ValueError):
        await consumer.dispatch({"type": "udp.other"})


class Hooks(UDPConsumer):
    calls = []

    async def startup(self):
        self.calls.append("startup")

    async def shutdown(self):
        self.calls.append("shutdown")


@aio
async def test_lifespan_runs_startup_and_shutdown():
    """as_asgi() answers lifespan events by calling startup() and shutdown()."""
    events = asyncio.Queue()
    sent = []
    for event in ("lifespan.startup", "lifespan.shutdown"):
        events.put_nowait({"type": event})

    async def send(message):
        sent.append(message["type"])

    await asyncio.wait_for(Hooks.as_asgi()({"type": "lifespan"}, events.get, send), DEADLINE)
    assert Hooks.calls == ["startup", "shutdown"]
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
