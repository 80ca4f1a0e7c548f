"""UDPConsumer: a Django-free consumer base with Channels' dispatch rule and `reply()`."""

import functools

from gateway.messages import SEND_TYPE


@functools.lru_cache(maxsize=256)  # a handful of message types, looked up per message
def handler_name(message_type):
    """Channels' rule: `udp.receive` is handled by `udp_receive`."""
    name = message_type.replace(".", "_")
    if name.startswith("_"):
        raise ValueError("Malformed type in message (leading underscore)")
    return name


class UDPConsumer:
    """Handles one message per instance; subclasses define `udp_receive` (and any other types).

    Override `startup()` / `shutdown()` to run code through ASGI lifespan.
    """

    def __init__(self, scope):
        self.scope = scope
        self.channel_layer = scope.get("channel_layer")

    @classmethod
    def as_asgi(cls, **initkwargs):
        """An ASGI 3 application that makes one instance per scope."""

        async def app(scope, receive, send):
            instance = cls(scope, **initkwargs)
            if scope["type"] == "lifespan":
                return await instance._lifespan(receive, send)
            return await instance._dispatch_all(receive, send)

        functools.update_wrapper(app, cls, updated=())
        app.consumer_class = cls
        return app

    async def _dispatch_all(self, receive, send):
        self._send = send
        while True:
            message = await receive()
            await self.dispatch(message)

    async def dispatch(self, message):
        handler = getattr(self, handler_name(message["type"]), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def reply(self, message, data, *, multicast=False):
        """Send `data` back to the client of a `udp.receive` message."""
        reply = {"type": SEND_TYPE, "data": data}
        if multicast:
            reply["multicast"] = True
        await self.channel_layer.send(message["reply_channel"], reply)

    async def send_to(self, channel, data):
        """Send `data` to a listener's send_channel (connected remote, or multicast groups)."""
        await self.channel_layer.send(channel, {"type": SEND_TYPE, "data": data})

    async def startup(self):
        """Run once before the first datagram is delivered."""

    async def shutdown(self):
        """Run once at stop, before the ports close."""

    async def _lifespan(self, receive, send):
        while True:
            event = await receive()
            phase = event["type"].rsplit(".", 1)[-1]
            try:
                await (self.startup() if phase == "startup" else self.shutdown())
            except Exception as exc:
                await send({"type": f"lifespan.{phase}.failed", "message": f"{exc!r}"})
                if phase == "startup":
                    return
                continue
            await send({"type": f"lifespan.{phase}.complete"})
            if phase == "shutdown":
                return
