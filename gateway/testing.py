"""UDPCommunicator: unit-test an application without sockets, as Channels' ApplicationCommunicator does."""

import asyncio
import ipaddress
import uuid

from gateway.layers import InMemoryChannelLayer
from gateway.lifespan import Lifespan, LifespanFailure
from gateway.messages import DEFAULT_CHANNEL, SEND_TYPE, build_receive, reply_prefix, validate_send
from gateway.tokens import TokenTable

__all__ = ["UDPCommunicator", "LifespanFailure"]


class _Instance:
    """One application call for one message: the first receive() is the message, the second ends it."""

    def __init__(self, message):
        self.message = message
        self.task = None
        self.delivered = False

    async def receive(self):
        if not self.delivered:
            self.delivered = True
            return self.message
        # As in the gateway: the instance ends here, cleanly (cancelled, not an error).
        self.task.cancel()
        await asyncio.Future()

    async def send(self, layer, reply):
        # As in the gateway: a udp.send through `send` answers this message.
        if not isinstance(reply, dict) or reply.get("type") != SEND_TYPE:
            raise ValueError(f"send() takes udp.send messages, not {reply!r:.80}")
        await layer.send(self.message["reply_channel"], reply)

    def error(self):
        """The exception the call ended with, or None (running, returned, or ended at receive())."""
        if not self.task.done() or self.task.cancelled():
            return None
        return self.task.exception()


class UDPCommunicator:
    """Feeds datagrams to an ASGI application as the gateway would, and collects its replies.

    Each datagram gets its own application instance with the gateway's scope
    and message shape, on a real InMemoryChannelLayer (groups and
    scope["channel_layer"] work). A client keeps its reply channel across
    datagrams, as in the gateway. An application exception is re-raised by
    receive_reply() or wait(); close() (or `async with`) cancels what still runs.
    """

    def __init__(self, application, *, channel=DEFAULT_CHANNEL, layer=None):
        self.application = application
        self.channel = channel
        self.layer = layer if layer is not None else InMemoryChannelLayer()
        self.prefix = reply_prefix(_gateway_id(self.layer))
        self.tokens = TokenTable(max_entries=100000, ttl=3600)
        self.lifespan = None
        self._instances = []
        self._latest = None

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc_info):
        await self.close()

    # -- datagrams ---------------------------------------------------------
    async def send_datagram(self, data, *, client=("192.0.2.7", 40000), server=("192.0.2.1", 9999),
                            listener="test", interface=None, channel=None):
        """Start one application instance for a datagram; returns the `udp.receive` message it gets."""
        token = self.tokens.token_for((listener, tuple(client)), (listener, _version(client[0])))
        message = build_receive(data=data, client=client, server=server, listener=listener,
                                reply_channel=self.prefix + token, interface=interface)
        channel = channel or self.channel
        # Through the layer, as in the gateway: the app gets its own copy of the message.
        await self.layer.send(channel, message)
        received = await self.layer.receive(channel)
        scope = {"type": "channel", "channel": channel, "channel_layer": self.layer}
        instance = _Instance(received)
        instance.task = asyncio.ensure_future(
            self.application(scope, instance.receive, lambda reply: instance.send(self.layer, reply)))
        self._instances.append(instance)
        self._latest = message
        return message

    async def receive_reply(self, timeout=1, *, message=None):
        """The next `udp.send` sent to the reply channel of `message` (default: the latest datagram's).

        Raises asyncio.TimeoutError when none comes within `timeout` seconds, the
        application's exception when a call raised, and BadReply (its `reason`
        names the gateway's drop counter) for a reply the gateway would drop.
        """
        message = message or self._latest
        if message is None:
            raise RuntimeError("receive_reply() before any send_datagram()")
        self._raise_failure()
        reply = await self._receive_or_fail(message["reply_channel"], timeout)
        validate_send(reply, version=_version(message["client"][0]))
        return reply

    async def _receive_or_fail(self, channel, timeout):
        getter = asyncio.ensure_future(self.layer.receive(channel))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while True:
                running = [i.task for i in self._instances if not i.task.done()]
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise asyncio.TimeoutError(f"no reply on {channel} within {timeout}s")
                await asyncio.wait([getter, *running], timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    return getter.result()
                self._raise_failure()
        finally:
            getter.cancel()

    async def wait(self, timeout=1):
        """Wait until every instance ended; re-raise an application exception.

        Instances still running after `timeout` are cancelled and asyncio.TimeoutError is raised.
        """
        running = [i.task for i in self._instances if not i.task.done()]
        if running:
            _done, late = await asyncio.wait(running, timeout=timeout)
            if late:
                await self._cancel(late)
                raise asyncio.TimeoutError(f"{len(late)} application call(s) still running after {timeout}s")
        self._raise_failure()

    def _raise_failure(self):
        """Raise the exception of the first call that failed (each is raised once); forget ended calls."""
        failed = [i for i in self._instances if i.error() is not None]
        self._instances = failed[1:] + [i for i in self._instances if not i.task.done()]
        if failed:
            raise failed[0].error()

    # -- lifespan ----------------------------------------------------------
    async def startup(self, timeout=1):
        """Run lifespan startup, as the gateway does before delivering datagrams.

        Raises LifespanFailure on lifespan.startup.failed. An application that
        does not speak lifespan runs without it (`lifespan_supported` is False).
        """
        self.lifespan = Lifespan(self.application, self.layer)
        await asyncio.wait_for(self.lifespan.startup(), timeout)

    async def shutdown(self, timeout=1):
        """Run lifespan shutdown; raises LifespanFailure when it failed or did not complete."""
        if self.lifespan is None or not self.lifespan.supported:
            return
        event = await self.lifespan.shutdown(timeout)
        if event is None:
            raise LifespanFailure(f"lifespan shutdown did not complete within {timeout}s")
        if event["type"] == "lifespan.shutdown.failed":
            raise LifespanFailure(event.get("message") or "the application's lifespan shutdown failed")

    @property
    def lifespan_supported(self):
        return self.lifespan is not None and self.lifespan.supported

    # -- the end -----------------------------------------------------------
    async def close(self):
        """Cancel every instance still running (and a lifespan task); exceptions are not raised here."""
        tasks = [i.task for i in self._instances if not i.task.done()]
        if self.lifespan is not None and self.lifespan.task is not None and not self.lifespan.task.done():
            tasks.append(self.lifespan.task)
        await self._cancel(tasks)

    @staticmethod
    async def _cancel(tasks):
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)


def _gateway_id(layer):
    """As the gateway picks it: the layer's client_prefix where it has one, else a random id."""
    prefix = getattr(layer, "client_prefix", None)
    return prefix if isinstance(prefix, str) and prefix else uuid.uuid4().hex


def _version(host):
    """4 or 6, from a client host (an IPv6 scope allowed); 4 for anything else."""
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).version
    except ValueError:
        return 4
