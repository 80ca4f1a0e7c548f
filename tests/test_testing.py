"""gateway.testing.UDPCommunicator: applications tested without sockets, as the gateway would run them."""

import asyncio
import re
from pathlib import Path

import pytest

from examples.echo import application as echo
from gateway.consumer import UDPConsumer
from gateway.layers import InMemoryChannelLayer
from gateway.messages import BadReply
from gateway.testing import LifespanFailure, UDPCommunicator
from tests.apps import Raising
from tests.support import aio

README = Path(__file__).resolve().parent.parent / "README.rst"
REPLY_CHANNEL = re.compile(r"udp\.send\.[0-9a-f]{32}![A-Za-z0-9_\-]+\Z")


@aio
async def test_echo_answers_its_datagram():
    """The shipped echo answers a datagram with its own bytes on that datagram's reply channel."""
    async with UDPCommunicator(echo) as c:
        await c.send_datagram(b"ping", client=("192.0.2.7", 40000), server=("192.0.2.1", 9999), listener="test")
        assert await c.receive_reply(timeout=1) == {"type": "udp.send", "data": b"ping"}
        await c.wait()


@aio
async def test_readme_example_runs():
    """The five-line test of the echo in the README's Applications section passes as written."""
    namespace = {}
    exec(compile(readme_block("from gateway.testing import UDPCommunicator"), str(README), "exec"), namespace)
    await namespace["test_echo"]()


def readme_block(first_line):
    """The README code block that starts with `first_line`, dedented."""
    lines = README.read_text().splitlines()
    start = lines.index(f"    {first_line}")
    block = []
    for line in lines[start:]:
        if line and not line.startswith("    "):
            break
        block.append(line[4:])
    return "\n".join(block)


class Recorder(UDPConsumer):
    """Keeps each scope and message it is given."""

    seen = []

    async def udp_receive(self, message):
        self.seen.append((self.scope, message))


@aio
async def test_message_and_scope_are_the_gateways():
    """The app gets design.md's udp.receive message and channel scope, on a real InMemoryChannelLayer."""
    Recorder.seen = []
    async with UDPCommunicator(Recorder.as_asgi(), channel="dns.receive") as c:
        sent = await c.send_datagram(b"\x00q", client=("2001:db8::7", 5353), server=("ff02::fb", 5353),
                                     listener="mdns", interface="eth0")
        plain = await c.send_datagram(b"", client=("192.0.2.9", 1), server=("192.0.2.1", 53), listener="dns")
        await c.wait()
    (scope, message), (_, second) = Recorder.seen
    assert scope == {"type": "channel", "channel": "dns.receive", "channel_layer": c.layer}
    assert isinstance(c.layer, InMemoryChannelLayer)
    assert message == sent and second == plain
    assert REPLY_CHANNEL.match(message["reply_channel"])
    assert message == {"type": "udp.receive", "reply_channel": message["reply_channel"], "data": b"\x00q",
                       "client": ["2001:db8::7", 5353], "server": ["ff02::fb", 5353], "listener": "mdns",
                       "interface": "eth0"}
    assert "interface" not in second and second["data"] == b""


class Shout(UDPConsumer):
    async def udp_receive(self, message):
        await self.reply(message, message["data"].upper(), multicast=message["listener"] == "ssdp")


@aio
async def test_udp_consumer_subclass_and_multicast_reply():
    """A UDPConsumer subclass's reply(), multicast flag included, is what receive_reply returns."""
    async with UDPCommunicator(Shout.as_asgi()) as c:
        await c.send_datagram(b"m-search", listener="ssdp")
        assert await c.receive_reply() == {"type": "udp.send", "data": b"M-SEARCH", "multicast": True}
        await c.send_datagram(b"hi", listener="plain")
        assert await c.receive_reply() == {"type": "udp.send", "data": b"HI"}
        await c.wait()


async def asgi_send_echo(scope, receive, send):
    message = await receive()
    await send({"type": "udp.send", "data": message["data"][::-1]})
    await receive()


@aio
async def test_reply_through_the_asgi_send_callable():
    """A udp.send through the ASGI `send` callable answers the message, and a second receive() ends the call."""
    async with UDPCommunicator(asgi_send_echo) as c:
        await c.send_datagram(b"abc")
        assert await c.receive_reply() == {"type": "udp.send", "data": b"cba"}
        await c.wait()


async def sends_http(scope, receive, send):
    await receive()
    await send({"type": "http.response.start", "status": 200})


@aio
async def test_send_refuses_other_types():
    """`send` takes only udp.send messages, as in the gateway: anything else raises in the application."""
    async with UDPCommunicator(sends_http) as c:
        await c.send_datagram(b"x")
        with pytest.raises(ValueError, match="udp.send"):
            await c.receive_reply()


@pytest.fixture
def django_layer():
    """Django settings whose CHANNEL_LAYERS default is the gateway's InMemoryChannelLayer; that layer."""
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(INSTALLED_APPS=["channels"], CHANNEL_LAYERS={})
        django.setup()
    from channels.layers import channel_layers, get_channel_layer

    saved = dict(settings.CHANNEL_LAYERS)
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "gateway.layers.InMemoryChannelLayer"}}
    channel_layers.backends.clear()
    try:
        yield get_channel_layer()
    finally:
        settings.CHANNEL_LAYERS = saved
        channel_layers.backends.clear()


@aio
async def test_channels_async_consumer(django_layer):
    """An unmodified Channels AsyncConsumer answers through its channel_layer and through send()."""
    from channels.consumer import AsyncConsumer

    class Both(AsyncConsumer):
        async def udp_receive(self, message):
            await self.channel_layer.send(message["reply_channel"], {"type": "udp.send", "data": b"layer"})
            await self.send({"type": "udp.send", "data": b"send"})

    async with UDPCommunicator(Both.as_asgi(), layer=django_layer) as c:
        await c.send_datagram(b"q")
        assert [(await c.receive_reply())["data"] for _ in range(2)] == [b"layer", b"send"]
        await c.wait()


class Room(UDPConsumer):
    """b"join" joins the room; anything else goes to everyone in it."""

    async def udp_receive(self, message):
        if message["data"] == b"join":
            await self.channel_layer.group_add("room", message["reply_channel"])
        else:
            await self.channel_layer.group_send("room", {"type": "udp.send", "data": message["data"]})


@aio
async def test_groups_reach_every_member():
    """group_add and group_send on scope["channel_layer"] reach every member's reply channel."""
    alice, bob = ("192.0.2.7", 40000), ("192.0.2.8", 40000)
    async with UDPCommunicator(Room.as_asgi()) as c:
        joined = [await c.send_datagram(b"join", client=who) for who in (alice, bob)]
        await c.wait()
        await c.send_datagram(b"hello", client=("192.0.2.9", 1))
        for message in joined:
            assert (await c.receive_reply(message=message))["data"] == b"hello"
        await c.wait()  # every call ended: nothing more can come
        with pytest.raises(asyncio.TimeoutError):
            await c.receive_reply(timeout=0.05)


@aio
async def test_replies_are_separated_per_client():
    """Concurrent datagrams from different clients get their own reply channels and replies."""
    clients = [(f"192.0.2.{i}", 40000 + i) for i in range(1, 6)]
    async with UDPCommunicator(echo) as c:
        messages = [await c.send_datagram(f"from {i}".encode(), client=who) for i, who in enumerate(clients)]
        assert len({m["reply_channel"] for m in messages}) == len(clients)
        for i, message in reversed(list(enumerate(messages))):
            assert (await c.receive_reply(message=message))["data"] == f"from {i}".encode()
        again = await c.send_datagram(b"again", client=clients[0])
        assert again["reply_channel"] == messages[0]["reply_channel"]
        await c.wait()


@aio
async def test_no_reply_times_out():
    """receive_reply raises asyncio.TimeoutError when the application sent nothing."""
    async with UDPCommunicator(Recorder.as_asgi()) as c:
        await c.send_datagram(b"quiet")
        await c.wait()  # the call ended without a reply: nothing can come
        with pytest.raises(asyncio.TimeoutError):
            await c.receive_reply(timeout=0.1)


async def hangs(scope, receive, send):
    await receive()
    await asyncio.Future()


@aio
async def test_wait_times_out_on_a_call_that_never_ends():
    """wait() cancels a call still running after its timeout and raises asyncio.TimeoutError."""
    async with UDPCommunicator(hangs) as c:
        await c.send_datagram(b"x")
        with pytest.raises(asyncio.TimeoutError):
            await c.wait(timeout=0.05)


@aio
async def test_application_exception_surfaces():
    """An application's exception is raised by receive_reply and by wait, not swallowed."""
    async with UDPCommunicator(Raising.as_asgi()) as c:
        await c.send_datagram(b"boom")
        with pytest.raises(RuntimeError, match="boom from the application"):
            await c.receive_reply(timeout=5)
        await c.send_datagram(b"fine")
        assert (await c.receive_reply())["data"] == b"fine"
        await c.send_datagram(b"boom")
        with pytest.raises(RuntimeError, match="boom from the application"):
            await c.wait()


class Wrong(UDPConsumer):
    async def udp_receive(self, message):
        await self.channel_layer.send(message["reply_channel"], {"type": "udp.send", "data": "text"})


@aio
async def test_reply_the_gateway_would_drop_raises_bad_reply():
    """A reply the gateway would drop raises BadReply naming its drop counter."""
    async with UDPCommunicator(Wrong.as_asgi()) as c:
        await c.send_datagram(b"x")
        with pytest.raises(BadReply) as caught:
            await c.receive_reply()
        assert caught.value.reason == "bad_message"


class Hooks(UDPConsumer):
    events = []

    async def startup(self):
        self.events.append("startup")
        if self.scope.get("fail") == "startup":
            raise RuntimeError("no database")

    async def shutdown(self):
        self.events.append("shutdown")

    async def udp_receive(self, message):
        await self.reply(message, b",".join(e.encode() for e in self.events))


@aio
async def test_lifespan_startup_and_shutdown():
    """startup() and shutdown() run the application's lifespan around its datagrams."""
    Hooks.events = []
    async with UDPCommunicator(Hooks.as_asgi()) as c:
        await c.startup()
        assert c.lifespan_supported
        await c.send_datagram(b"x")
        assert (await c.receive_reply())["data"] == b"startup"
        await c.shutdown()
        await c.wait()
    assert Hooks.events == ["startup", "shutdown"]


@aio
async def test_lifespan_failures_raise():
    """A failed lifespan startup raises LifespanFailure with the application's message."""

    def failing(scope, receive, send):
        return Hooks.as_asgi()({**scope, "fail": "startup"}, receive, send)

    async with UDPCommunicator(failing) as c:
        with pytest.raises(LifespanFailure, match="no database"):
            await c.startup()


@aio
async def test_application_without_lifespan_runs_without_it():
    """An application that raises on the lifespan scope runs without it, as in the gateway."""
    async with UDPCommunicator(asgi_send_echo) as c:
        await c.startup()
        assert not c.lifespan_supported
        await c.shutdown()
        await c.send_datagram(b"ok")
        assert (await c.receive_reply())["data"] == b"ko"
        await c.wait()
