"""gateway.delivery without sockets: readiness, the bounded queue of layer sends, admission, layer failures."""

import asyncio

from twisted.internet.task import Clock

from gateway.admission import Admission
from gateway.delivery import SEND_QUEUE, Delivery
from gateway.layers import ChannelFull, InMemoryChannelLayer, LayerClient
from gateway.replies import ReplyPump
from gateway.runner import AppRunner
from gateway.stats import Counters, QuietLog
from gateway.tokens import TokenTable
from listeners.base import Datagram, Route
from tests.support import aio, eventually

PREFIX = "udp.send.test!"


def datagram(data=b"x", client=("192.0.2.7", 40312)):
    return Datagram(listener="echo", data=data, client=client, server=("127.0.0.1", 9999), interface="lo",
                    route=Route(port=0, address=client), version=4)


def make(layer=None, *, senders=4, runner=None):
    layer = layer if layer is not None else InMemoryChannelLayer(capacity=10000)
    counters = Counters()
    delivery = Delivery(layer, TokenTable(max_entries=100, ttl=60, clock=Clock()), PREFIX, {"echo": "udp.receive"},
                        senders=senders, counters=counters, quiet=QuietLog(clock=Clock()), runner=runner,
                        admission=None if runner is None else runner.admission)
    return delivery, layer, counters


def memory_runner(app, layer, limit):
    """The memory-layer gateway's runner: delivery takes an Admission slot, then hands the message over."""
    return AppRunner(app, layer, ["udp.receive"], admission=Admission(limit), counters=Counters(),
                     quiet=QuietLog(clock=Clock()), wait_before_receive=False)


class HeldLayer:
    """A layer whose sends wait until `release` is set (a Redis that does not answer)."""

    def __init__(self):
        self.release = asyncio.Event()
        self.sent = []
        self.waiting = 0

    async def send(self, channel, message):
        self.waiting += 1
        await self.release.wait()
        self.waiting -= 1
        self.sent.append((channel, message))


class PubSubLikeLayer:
    """Like RedisPubSubChannelLayer: a receive subscribes its channel before it first waits, and a message
    sent to a channel nobody subscribed to is lost; sends answer at once. No receive_single (no prefix receive)."""

    def __init__(self):
        self.subscribed = set()
        self.sent = []  # (reply channel, whether it was subscribed when its datagram was sent)

    async def receive(self, channel):
        self.subscribed.add(channel)
        await asyncio.get_running_loop().create_future()  # no reply ever comes in this test

    async def send(self, channel, message):
        self.sent.append((message["reply_channel"], message["reply_channel"] in self.subscribed))


class FailingLayer:
    """A layer whose every send raises `error`."""

    def __init__(self, error):
        self.error = error

    async def send(self, channel, message):
        raise self.error



@aio
async def test_datagram_before_ready_is_dropped_not_ready():
    """Until the gateway is ready a datagram is counted as received and dropped_not_ready, and never sent."""
    delivery, layer, counters = make()
    delivery.start()
    delivery(datagram(b"early"))
    assert counters.snapshot() == {"received": 1, "dropped_not_ready": 1}
    delivery.ready = True
    delivery(datagram(b"marker"))
    first = await asyncio.wait_for(layer.receive("udp.receive"), 5)
    await delivery.flush()
    delivery.stop()
    assert first["data"] == b"marker"


@aio
async def test_ready_datagram_becomes_udp_receive_with_a_reply_channel():
    """A datagram becomes one udp.receive message on its listener's channel with a reply channel under the prefix."""
    delivery, layer, counters = make()
    delivery.start()
    delivery.ready = True
    delivery(datagram(b"hello"))
    message = await asyncio.wait_for(layer.receive("udp.receive"), 5)
    await delivery.flush()
    delivery.stop()
    assert message["type"] == "udp.receive" and message["data"] == b"hello"
    assert message["client"] == ["192.0.2.7", 40312] and message["server"] == ["127.0.0.1", 9999]
    assert (message["listener"], message["interface"]) == ("echo", "lo")
    assert message["reply_channel"].startswith(PREFIX) and len(message["reply_channel"]) > len(PREFIX)
    assert counters.snapshot() == {"received": 1}


@aio
async def test_one_client_keeps_one_reply_channel():
    """Later datagrams from the same client carry the same reply channel; another client gets another."""
    delivery, layer, _ = make()
    delivery.start()
    delivery.ready = True
    for client in (("192.0.2.7", 1), ("192.0.2.7", 1), ("192.0.2.8", 1)):
        delivery(datagram(client=client))
    channels = [(await asyncio.wait_for(layer.receive("udp.receive"), 5))["reply_channel"] for _ in range(3)]
    await delivery.flush()
    delivery.stop()
    assert channels[0] == channels[1] != channels[2]


@aio
async def test_send_queue_holds_1000_datagrams_then_drops_the_arriving_one():
    """While the layer does not answer, 1,000 datagrams wait for a send; the next ones are dropped_queue_full."""
    layer = HeldLayer()
    delivery, _, counters = make(layer, senders=1)
    delivery.start()
    delivery.ready = True
    delivery(datagram(b"in flight"))
    await eventually(lambda: layer.waiting == 1)
    for n in range(SEND_QUEUE + 5):
        delivery(datagram(b"%d" % n))
    assert SEND_QUEUE == 1000
    assert counters.get("dropped_queue_full") == 5
    layer.release.set()
    await eventually(lambda: len(layer.sent) == 1 + SEND_QUEUE)
    await delivery.flush()
    delivery.stop()
    assert [m["data"] for _, m in layer.sent[:2]] == [b"in flight", b"0"]
    assert layer.sent[-1][1]["data"] == b"%d" % (SEND_QUEUE - 1)
    assert counters.snapshot() == {"received": SEND_QUEUE + 6, "dropped_queue_full": 5}


@aio
async def test_layer_sends_in_flight_bounded_by_the_layer():
    """With a LayerClient, no more than max_layer_sends sends are in flight, whatever the number of senders."""
    held = HeldLayer()
    delivery, _, _ = make(LayerClient(held, 3), senders=10)
    delivery.start()
    delivery.ready = True
    for n in range(10):
        delivery(datagram(b"%d" % n))
    await eventually(lambda: held.waiting == 3)
    for _ in range(20):
        await asyncio.sleep(0)
    assert held.waiting == 3
    held.release.set()
    await eventually(lambda: len(held.sent) == 10)
    await delivery.flush()
    delivery.stop()


@aio
async def test_layer_failures_are_counted_by_kind():
    """A send refused as ChannelFull counts dropped_channel_full; any other failure dropped_layer_error."""
    for error, counter in ((ChannelFull("udp.receive"), "dropped_channel_full"),
                           (ConnectionError("Redis went away"), "dropped_layer_error")):
        delivery, _, counters = make(FailingLayer(error))
        delivery.start()
        delivery.ready = True
        delivery(datagram())
        delivery(datagram())
        await eventually(lambda: counters.get(counter) == 2)
        await delivery.flush()
        delivery.stop()
        assert counters.snapshot() == {"received": 2, counter: 2}


@aio
async def test_memory_mode_admission_drops_past_max_concurrency():
    """In memory mode a datagram needs a free application slot; past max_concurrency it is dropped_concurrency."""
    layer, release, received = InMemoryChannelLayer(capacity=100), asyncio.Event(), []

    async def holding_app(scope, receive, send):
        received.append(await receive())
        await release.wait()

    delivery, _, counters = make(layer, runner=memory_runner(holding_app, layer, 2))
    delivery.start()
    delivery.ready = True
    for n in range(3):
        delivery(datagram(b"%d" % n))
    await eventually(lambda: len(received) == 2)
    release.set()
    await delivery.flush()
    delivery.stop()
    assert [m["data"] for m in received] == [b"0", b"1"]
    assert counters.snapshot() == {"received": 3, "dropped_concurrency": 1}


@aio
async def test_a_failed_send_gives_its_slot_back():
    """In memory mode a datagram whose application call failed frees its slot for the next one.

    (Memory-mode datagrams no longer cross a layer send that could fail: the call is what can.)
    """
    async def failing_app(scope, receive, send):
        await receive()
        raise ConnectionError("down")

    runner = memory_runner(failing_app, InMemoryChannelLayer(), 1)
    delivery, _, counters = make(FailingLayer(ConnectionError("down")), runner=runner)
    delivery.start()
    delivery.ready = True
    for n in range(3):
        delivery(datagram())
        await eventually(lambda: runner.counters.get("app_errors") == n + 1)
    await delivery.flush()
    delivery.stop()
    assert "dropped_concurrency" not in counters.snapshot()


@aio
async def test_stop_flushes_queued_sends_then_refuses_datagrams():
    """stop() lets queued messages reach the layer; datagrams arriving after it are dropped_not_ready."""
    delivery, layer, counters = make(senders=1)
    delivery.start()
    delivery.ready = True
    for n in range(5):
        delivery(datagram(b"%d" % n))
    await delivery.flush()
    delivery.stop()
    delivery(datagram(b"late"))
    got = [(await asyncio.wait_for(layer.receive("udp.receive"), 5))["data"] for _ in range(5)]
    assert got == [b"0", b"1", b"2", b"3", b"4"]
    assert counters.snapshot() == {"received": 6, "dropped_not_ready": 1}


@aio
async def test_a_new_clients_datagram_is_sent_after_its_reply_channel_is_subscribed():
    """Without prefix receive, the pump subscribes each new reply channel before its first datagram goes out,
    even when one sender takes several new clients' datagrams in a row (a pub/sub reply would otherwise be lost)."""
    layer = PubSubLikeLayer()
    tokens = TokenTable(max_entries=100, ttl=60, clock=Clock())
    pump = ReplyPump(layer, PREFIX, tokens, {}, {}, counters=Counters(), quiet=QuietLog(clock=Clock()))
    delivery = Delivery(layer, tokens, PREFIX, {"echo": "udp.receive"}, senders=1, counters=Counters(),
                        quiet=QuietLog(clock=Clock()), on_token=pump.watch)
    pump.start()
    delivery.start()
    delivery.ready = True
    for port in range(40000, 40005):  # five new clients in one turn, then one of them again
        delivery(datagram(b"first", client=("192.0.2.7", port)))
    delivery(datagram(b"again", client=("192.0.2.7", 40000)))
    await delivery.flush()
    delivery.stop()
    pump.stop()
    assert len(layer.sent) == 6 and len({channel for channel, _ in layer.sent}) == 5
    assert all(subscribed for _, subscribed in layer.sent), layer.sent


@aio
async def test_a_watch_cancelled_before_it_ran_does_not_hold_the_datagram():
    """A reply channel forgotten (its receive cancelled) before the receive began: the datagram is still sent."""
    layer = PubSubLikeLayer()
    tokens = TokenTable(max_entries=100, ttl=60, clock=Clock())
    pump = ReplyPump(layer, PREFIX, tokens, {}, {}, counters=Counters(), quiet=QuietLog(clock=Clock()))

    def watch_then_forget(token):
        begun = pump.watch(token)
        pump.unwatch(token)
        return begun

    delivery = Delivery(layer, tokens, PREFIX, {"echo": "udp.receive"}, senders=1, counters=Counters(),
                        quiet=QuietLog(clock=Clock()), on_token=watch_then_forget)
    delivery.start()
    delivery.ready = True
    delivery(datagram(b"forgotten"))
    await delivery.flush()
    delivery.stop()
    assert [subscribed for _, subscribed in layer.sent] == [False]
