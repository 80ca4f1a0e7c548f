"""gateway.replies without sockets: replies routed to a recording listener, bad ones dropped and counted."""

import asyncio

from twisted.internet.task import Clock

from gateway.delivery import Delivery, stored_route
from gateway.layers import InMemoryChannelLayer
from gateway.replies import ReplyPump
from gateway.stats import Counters, QuietLog
from gateway.tokens import TokenTable
from listeners.base import BadRoute, Datagram, Route
from tests.support import aio, eventually

PREFIX = "udp.send.test!"


class RecordingListener:
    """Records what the pump asks a listener to write."""

    running = True

    def __init__(self, version=4, name="echo"):
        self.name = name
        self.replies = []
        self.announced = []
        self.version = version
        self.written = asyncio.Event()

    def send_reply(self, route, data, multicast=False):
        if multicast:
            raise BadRoute("bad_message", "not a multicast listener")
        self.replies.append((route, data))
        self.written.set()
        return True

    def announce(self, data):
        self.announced.append(data)
        self.written.set()
        return True

    def send_version(self):
        return self.version


class Setup:
    def __init__(self, layer=None):
        self.clock = Clock()
        self.layer = layer if layer is not None else InMemoryChannelLayer()
        self.tokens = TokenTable(max_entries=10, ttl=60, clock=self.clock)
        self.listener = RecordingListener()
        self.counters = Counters()
        self.pump = ReplyPump(self.layer, PREFIX, self.tokens, {"echo": self.listener},
                              {"echo.out": self.listener}, counters=self.counters, quiet=QuietLog(clock=self.clock))

    def channel_for(self, client=("192.0.2.7", 40312)):
        """The reply channel of a client that sent a datagram (its route is the client address)."""
        route = Route(port=0, address=client)
        datagram = Datagram(listener="echo", data=b"", client=client, server=("127.0.0.1", 9999), interface=None,
                            route=route, version=4)
        return PREFIX + self.tokens.token_for(("echo", client), stored_route(datagram))  # as delivery keeps it



@aio
async def test_reply_goes_to_the_client_that_sent():
    """A udp.send on a live reply channel is written by its listener to that client's route, and counted."""
    s = Setup()
    s.pump.start()
    channel = s.channel_for()
    await s.layer.send(channel, {"type": "udp.send", "data": b"answer"})
    await asyncio.wait_for(s.listener.written.wait(), 5)
    s.pump.stop()
    assert s.listener.replies == [(Route(port=0, address=("192.0.2.7", 40312)), b"answer")]
    assert s.counters.snapshot() == {"replied": 1}


@aio
async def test_one_reply_channel_carries_many_replies():
    """A reply channel can carry any number of replies while it lives."""
    s = Setup()
    s.pump.start()
    channel = s.channel_for()
    for n in range(5):
        await s.layer.send(channel, {"type": "udp.send", "data": b"%d" % n})
    await eventually(lambda: len(s.listener.replies) == 5)
    s.pump.stop()
    assert [data for _, data in s.listener.replies] == [b"0", b"1", b"2", b"3", b"4"]


@aio
async def test_reply_to_an_unknown_token_is_dropped():
    """A reply to a token this gateway never gave out is dropped_unknown_token; the next good reply still goes out."""
    s = Setup()
    s.pump.start()
    good = s.channel_for()
    await s.layer.send(PREFIX + "forged", {"type": "udp.send", "data": b"?"})
    await s.layer.send(good, {"type": "udp.send", "data": b"good"})
    await eventually(lambda: s.listener.replies)
    s.pump.stop()
    assert [data for _, data in s.listener.replies] == [b"good"]
    assert s.counters.snapshot() == {"dropped_unknown_token": 1, "replied": 1}


@aio
async def test_reply_after_reply_ttl_is_dropped():
    """Past reply_ttl the reply channel is unknown: its reply is dropped_unknown_token."""
    s = Setup()
    s.pump.start()
    channel = s.channel_for()
    s.clock.advance(61)
    await s.layer.send(channel, {"type": "udp.send", "data": b"late"})
    await eventually(lambda: s.counters.get("dropped_unknown_token") == 1)
    s.pump.stop()
    assert s.listener.replies == []


@aio
async def test_bad_replies_are_dropped_by_reason():
    """Wrong type, missing or non-bytes data and multicast on a unicast listener are bad_message;
    data over 65,507 bytes (IPv4) is too_large; a good reply after them still goes out."""
    s = Setup()
    s.pump.start()
    channel = s.channel_for()
    bad = [{"type": "udp.receive", "data": b"x"}, {"type": "udp.send"}, {"type": "udp.send", "data": "text"},
           {"type": "udp.send", "data": b"x", "multicast": True}, {"type": "udp.send", "data": b"x" * 65508}]
    for reply in bad + [{"type": "udp.send", "data": b"x" * 65507}]:
        await s.layer.send(channel, reply)
    await eventually(lambda: s.listener.replies)
    s.pump.stop()
    assert [len(data) for _, data in s.listener.replies] == [65507]
    assert s.counters.snapshot() == {"dropped_bad_message": 4, "dropped_too_large": 1, "replied": 1}


@aio
async def test_send_channel_message_is_announced():
    """A message on a listener's send_channel is written by that listener (to its remote or groups)."""
    s = Setup()
    s.pump.start()
    await s.layer.send("echo.out", {"type": "udp.send", "data": b"NOTIFY"})
    await asyncio.wait_for(s.listener.written.wait(), 5)
    s.pump.stop()
    assert s.listener.announced == [b"NOTIFY"]


@aio
async def test_send_channel_works_before_the_gateway_is_ready():
    """During lifespan startup (datagrams still dropped_not_ready) a send_channel message is already written."""
    s = Setup()
    delivery = Delivery(s.layer, s.tokens, PREFIX, {"echo": "udp.receive"}, senders=1, counters=s.counters,
                        quiet=QuietLog(clock=s.clock))
    s.pump.start()
    delivery.start()
    await s.layer.send("echo.out", {"type": "udp.send", "data": b"alive"})
    delivery(Datagram(listener="echo", data=b"early", client=("192.0.2.7", 1), server=("127.0.0.1", 9),
                      interface=None, route=Route(port=0, address=("192.0.2.7", 1)), version=4))
    await asyncio.wait_for(s.listener.written.wait(), 5)
    await delivery.flush()
    delivery.stop()
    s.pump.stop()
    assert s.listener.announced == [b"alive"]
    assert s.counters.get("dropped_not_ready") == 1


@aio
async def test_flush_writes_what_is_still_queued():
    """At stop, flush() writes replies and send_channel messages still queued (an SSDP byebye)."""
    s = Setup()
    channel = s.channel_for()
    await s.layer.send("echo.out", {"type": "udp.send", "data": b"byebye"})
    await s.layer.send(channel, {"type": "udp.send", "data": b"last"})
    await s.pump.flush()
    assert s.listener.announced == [b"byebye"]
    assert [data for _, data in s.listener.replies] == [b"last"]


class NoPrefixLayer(InMemoryChannelLayer):
    """A layer without receive_single (like Channels' own in-memory layer)."""

    receive_single = None


@aio
async def test_layer_without_prefix_receive_gets_one_receive_per_reply_channel():
    """A layer that cannot receive a whole prefix still routes replies, through one receive per live reply channel."""
    s = Setup(NoPrefixLayer())
    s.pump.start()
    channel = s.channel_for()
    s.pump.watch(channel[len(PREFIX):])
    await s.layer.send(channel, {"type": "udp.send", "data": b"per channel"})
    await asyncio.wait_for(s.listener.written.wait(), 5)
    s.pump.stop()
    assert [data for _, data in s.listener.replies] == [b"per channel"]


class FailingReceiveLayer(InMemoryChannelLayer):
    """receive_single fails the first time (Redis down), then works."""

    def __init__(self):
        super().__init__()
        self.attempts = []

    async def receive_single(self, channel):
        self.attempts.append(asyncio.get_event_loop().time())
        if len(self.attempts) == 1:
            raise ConnectionError("Connection refused")
        return await super().receive_single(channel)


@aio
async def test_failed_reply_receive_counts_layer_errors_and_retries():
    """A failing reply receive counts layer_errors and is retried a second later; replies then flow."""
    s = Setup(FailingReceiveLayer())
    s.pump.start()
    channel = s.channel_for()
    await s.layer.send(channel, {"type": "udp.send", "data": b"after"})
    await asyncio.wait_for(s.listener.written.wait(), 10)
    s.pump.stop()
    assert s.counters.get("layer_errors") == 1
    assert s.layer.attempts[1] - s.layer.attempts[0] >= 0.9
