"""Applications used by the end-to-end tests."""

import asyncio
import json

from twisted.logger import Logger

from gateway.consumer import UDPConsumer


def describe(message):
    """The message without its bytes, as JSON bytes (for asserting on fields)."""
    fields = {k: v for k, v in message.items() if k != "data"}
    fields["size"] = len(message["data"])
    return json.dumps(fields, sort_keys=True).encode()


class Echo(UDPConsumer):
    async def udp_receive(self, message):
        await self.reply(message, message["data"])


class Inspect(UDPConsumer):
    """Replies with the received message's fields as JSON."""

    async def udp_receive(self, message):
        await self.reply(message, describe(message))


inspect = Inspect.as_asgi()


class Raising(UDPConsumer):
    """Raises on b'boom', echoes anything else."""

    async def udp_receive(self, message):
        if message["data"] == b"boom":
            raise RuntimeError("boom from the application")
        await self.reply(message, message["data"])


class Slow(UDPConsumer):
    """Holds each call until `release` is set, then echoes."""

    release = None
    active = 0
    peak = 0

    async def udp_receive(self, message):
        cls = type(self)
        cls.active += 1
        cls.peak = max(cls.peak, cls.active)
        try:
            await cls.release.wait()
            await self.reply(message, message["data"])
        finally:
            cls.active -= 1


class Hanging(UDPConsumer):
    """Never returns for datagrams starting with b"hang" (logging "hanging on ..." first); echoes the rest."""

    async def udp_receive(self, message):
        if message["data"].startswith(b"hang"):
            Logger().info("hanging on {data}", data=message["data"].decode("latin-1"))
            await asyncio.Future()
        await self.reply(message, message["data"])


hanging = Hanging.as_asgi()


class Recorder(UDPConsumer):
    """Records lifespan and message events in order (class-level list)."""

    events = []

    async def startup(self):
        type(self).events.append("startup")

    async def shutdown(self):
        type(self).events.append("shutdown")

    async def udp_receive(self, message):
        type(self).events.append(("message", message["data"]))
        await self.reply(message, b"ok:" + message["data"])


class Replies(UDPConsumer):
    """The datagram's text names raw messages to send to the reply channel, in order."""

    async def udp_receive(self, message):
        script = json.loads(message["data"])
        for item in script:
            if item == "GOOD":
                reply = {"type": "udp.send", "data": b"good"}
            elif item == "HUGE":
                reply = {"type": "udp.send", "data": b"x" * 65508}
            elif item == "WRONG_TYPE":
                reply = {"type": "udp.receive", "data": b"x"}
            elif item == "NO_DATA":
                reply = {"type": "udp.send"}
            elif item == "STR_DATA":
                reply = {"type": "udp.send", "data": "text"}
            elif item == "BAD_TOKEN":
                await self.channel_layer.send(message["reply_channel"] + "x", {"type": "udp.send", "data": b"?"})
                continue
            else:
                raise ValueError(item)
            await self.channel_layer.send(message["reply_channel"], reply)


replies = Replies.as_asgi()


async def raw_echo(scope, receive, send):
    """A bare ASGI callable (no lifespan support: it raises on the lifespan scope)."""
    if scope["type"] != "channel":
        raise RuntimeError("no lifespan here")
    message = await receive()
    await send({"type": "udp.send", "data": message["data"]})


class Looping:
    """A Channels-style consumer that loops on receive() forever; counts instances."""

    instances = 0
    handled = []

    def __init__(self, scope):
        self.scope = scope
        type(self).instances += 1
        self.number = type(self).instances  # not id(): a finished instance's id can be reused at once

    @classmethod
    def as_asgi(cls):
        async def app(scope, receive, send):
            if scope["type"] != "channel":
                raise RuntimeError("no lifespan")
            consumer = cls(scope)
            while True:
                message = await receive()
                cls.handled.append((consumer.number, message["data"]))
                await scope["channel_layer"].send(message["reply_channel"], {"type": "udp.send", "data": message["data"]})
        return app


class Burst(UDPConsumer):
    """b"many" gets 1,000 replies through the layer; anything else is echoed once."""

    async def udp_receive(self, message):
        count = 1000 if message["data"] == b"many" else 1
        for _ in range(count):
            await self.reply(message, message["data"])


class Sleepy(UDPConsumer):
    """Each call, and lifespan shutdown, sleep an hour: only a second stop signal ends a stop quickly."""

    async def udp_receive(self, message):
        Logger().info("sleepy: call started")
        await asyncio.sleep(3600)

    async def shutdown(self):
        await asyncio.sleep(3600)


sleepy = Sleepy.as_asgi()


class Amplifier(UDPConsumer):
    """A reflector for the amplification cap: b"flood N SIZE" sends N replies of SIZE bytes to the
    reply channel, b"mflood N SIZE" sends them `multicast: true` (then one unicast b"ok"),
    b"announce N SIZE CHANNEL" sends them to a send_channel; anything else is echoed."""

    async def udp_receive(self, message):
        words = message["data"].split()
        if not words or words[0] not in (b"flood", b"mflood", b"announce"):
            await self.reply(message, message["data"])
            return
        count, size = int(words[1]), int(words[2])
        for n in range(count):
            data = n.to_bytes(4, "big") + b"x" * (size - 4)
            if words[0] == b"announce":
                await self.send_to(words[3].decode(), data)
            else:
                await self.reply(message, data, multicast=words[0] == b"mflood")
        if words[0] == b"mflood":
            await self.reply(message, b"ok")


amplifier = Amplifier.as_asgi()
