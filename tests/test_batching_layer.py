"""BatchingRedisChannelLayer against a real redis-server: coalesced sends, capacity, bounded receives, interop, groups."""

import asyncio
import threading

import pytest
from channels.exceptions import ChannelFull
from channels_redis.core import RedisChannelLayer

from gateway.layers import make_layer
from gateway.layers.batching import BatchingRedisChannelLayer
from tests.support import DEADLINE, aio

OURS = "gateway.layers.batching.BatchingRedisChannelLayer"
STOCK = "channels_redis.core.RedisChannelLayer"


def _layer(server, backend=OURS, **config):
    return make_layer(backend, {"hosts": [server.url], **config})


class CountingLayer(BatchingRedisChannelLayer):
    """Records the size of every script call it makes."""

    def __init__(self, **config):
        super().__init__(**config)
        self.calls = []

    def _send_script_arguments(self, sends):
        self.calls.append(len(sends))
        return super()._send_script_arguments(sends)


def test_same_config_keys_and_defaults_as_channels_redis():
    """Every keyword of channels_redis' RedisChannelLayer is accepted, with the same default."""
    import inspect

    stock = inspect.signature(RedisChannelLayer.__init__).parameters
    ours = inspect.signature(BatchingRedisChannelLayer.__init__).parameters
    for name, parameter in stock.items():
        assert name in ours and ours[name].default == parameter.default, name
    with pytest.raises(ValueError, match="receive_batch"):
        BatchingRedisChannelLayer(receive_batch=0)


@aio
async def test_sends_of_one_turn_are_one_script_call(redis_server):
    """Sends made in the same event-loop turn reach Redis in one script call, in order."""
    layer = make_layer("x", {"hosts": [redis_server.url], "capacity": 1000}, cls=CountingLayer)
    try:
        await asyncio.gather(*(layer.send("udp.receive", {"type": "t", "n": n}) for n in range(50)))
        assert layer.calls == [50]
        assert [(await layer.receive("udp.receive"))["n"] for _ in range(50)] == list(range(50))
    finally:
        await layer.close_pools()


@aio
async def test_sends_during_a_call_wait_for_the_next_one(redis_server):
    """Sends made while a host's call is in flight go together in the next call."""
    layer = make_layer("x", {"hosts": [redis_server.url], "capacity": 1000}, cls=CountingLayer)
    try:
        first = asyncio.ensure_future(layer.send("udp.receive", {"type": "t", "n": 0}))
        await asyncio.sleep(0)  # the first call is now in flight
        rest = [asyncio.ensure_future(layer.send("udp.receive", {"type": "t", "n": n})) for n in range(1, 30)]
        await asyncio.gather(first, *rest)
        assert layer.calls == [1, 29]
    finally:
        await layer.close_pools()


@aio
async def test_capacity_is_checked_per_message_within_a_batch(redis_server):
    """A batch larger than the room left adds what fits and raises ChannelFull for the rest."""
    layer = _layer(redis_server, capacity=10)
    try:
        await layer.send("full", {"type": "t"})
        results = await asyncio.gather(*(layer.send("full", {"type": "t", "n": n}) for n in range(20)),
                                       return_exceptions=True)
        assert sum(r is None for r in results) == 9
        assert all(isinstance(r, ChannelFull) for r in results if r is not None)
        assert redis_server.command(b"ZCARD", b"asgifull") == b":10"
    finally:
        await layer.close_pools()


@aio
async def test_channel_capacity_patterns_apply(redis_server):
    """channel_capacity globs give a channel its own capacity, as in channels_redis."""
    layer = _layer(redis_server, capacity=1, channel_capacity={"roomy.*": 5})
    try:
        for _ in range(5):
            await layer.send("roomy.a", {"type": "t"})
        with pytest.raises(ChannelFull):
            await layer.send("roomy.a", {"type": "t"})
        await layer.send("tight", {"type": "t"})
        with pytest.raises(ChannelFull):
            await layer.send("tight", {"type": "t"})
    finally:
        await layer.close_pools()


@aio
async def test_receive_buffers_at_most_one_batch(redis_server):
    """One receive pops up to receive_batch messages; the rest stay in Redis for other consumers."""
    layer = _layer(redis_server, capacity=1000, receive_batch=8)
    try:
        await asyncio.gather(*(layer.send("work", {"type": "t", "n": n}) for n in range(20)))
        assert (await layer.receive("work"))["n"] == 0
        assert redis_server.command(b"ZCARD", b"asgiwork") == b":12"
        (inbox,) = layer._state().inboxes.values()
        assert len(inbox.buffer) == 7
        assert [(await layer.receive("work"))["n"] for _ in range(19)] == list(range(1, 20))
    finally:
        await layer.close_pools()


@pytest.mark.parametrize("bzmpop", [True, False], ids=["bzmpop", "before-redis-7"])
@aio
async def test_receives_after_full_and_partial_batches(redis_server, bzmpop):
    """Batches pop in order whether the last pop was full (the script) or not (a blocking pop), with or without BZMPOP."""
    layer = _layer(redis_server, capacity=1000, receive_batch=4)
    layer._has_bzmpop = bzmpop
    try:
        got = []
        for burst in (10, 1, 6):
            await asyncio.gather(*(layer.send("b", {"type": "t", "n": len(got) + n}) for n in range(burst)))
            got += [(await asyncio.wait_for(layer.receive("b"), DEADLINE))["n"] for _ in range(burst)]
        assert got == list(range(17))
        assert redis_server.command(b"ZCARD", b"asgib") == b":0"
    finally:
        await layer.close_pools()


@aio
async def test_closing_puts_back_what_was_popped_but_not_received(redis_server):
    """Messages in the local buffer when the pools close go back to Redis, where another consumer gets them."""
    first, second = _layer(redis_server, capacity=1000), _layer(redis_server, capacity=1000)
    try:
        await asyncio.gather(*(first.send("back", {"type": "t", "n": n}) for n in range(10)))
        assert (await first.receive("back"))["n"] == 0
        await first.close_pools()
        assert sorted([(await asyncio.wait_for(second.receive("back"), DEADLINE))["n"]
                       for _ in range(9)]) == list(range(1, 10))
    finally:
        await first.close_pools()
        await second.close_pools()


@aio
async def test_cancelled_receive_loses_nothing(redis_server):
    """A receive cancelled while waiting leaves the next message for the next receive."""
    layer = _layer(redis_server)
    try:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(layer.receive("quiet"), 0.1)
        await layer.send("quiet", {"type": "t", "n": 1})
        assert await asyncio.wait_for(layer.receive("quiet"), DEADLINE) == {"type": "t", "n": 1}
    finally:
        await layer.close_pools()


@pytest.mark.parametrize("config", [{}, {"random_prefix_length": 0}, {"serializer_format": "json"}],
                         ids=["msgpack", "no-prefix", "json"])
def test_messages_are_encoded_as_channels_redis_encodes_them(config):
    """Our short way for msgpack gives channels_redis' bytes (after the random prefix), and each side reads the other's."""
    ours, stock = BatchingRedisChannelLayer(**config), RedisChannelLayer(**config)
    message = {"type": "udp.receive", "data": b"\x00\xff" * 32, "client": ["127.0.0.1", 40000], "n": 1.5}
    if config.get("serializer_format") == "json":
        message["data"] = "text"
    length = config.get("random_prefix_length", 12)
    mine, theirs = ours.serialize(message), stock.serialize(message)
    assert mine[length:] == theirs[length:] and len(mine) == len(theirs)
    assert ours.deserialize(theirs) == stock.deserialize(mine) == message
    assert len({ours.serialize(message)[:length] for _ in range(20)}) == (20 if length else 1)  # prefixes differ


@pytest.mark.parametrize("sender, receiver", [(OURS, STOCK), (STOCK, OURS)], ids=["ours-to-stock", "stock-to-ours"])
@aio
async def test_interop_with_stock_channels_redis(redis_server, sender, receiver):
    """Messages go both ways between our layer and stock channels_redis: normal and process-specific channels."""
    source, sink = _layer(redis_server, sender), _layer(redis_server, receiver)
    try:
        await source.send("udp.receive", {"type": "udp.receive", "data": b"\x00\xff"})
        assert await asyncio.wait_for(sink.receive("udp.receive"), DEADLINE) == {"type": "udp.receive", "data": b"\x00\xff"}
        name = await sink.new_channel("udp.send")
        await source.send(name, {"type": "udp.send", "data": b"r"})
        assert await asyncio.wait_for(sink.receive(name), DEADLINE) == {"type": "udp.send", "data": b"r"}
    finally:
        await source.close_pools()
        await sink.close_pools()


@aio
async def test_groups(redis_server):
    """group_add, group_send and group_discard work as channels_redis' do, across both layers."""
    ours, stock = _layer(redis_server), _layer(redis_server, STOCK)
    try:
        mine, theirs = await ours.new_channel(), await stock.new_channel()
        await ours.group_add("room", mine)
        await stock.group_add("room", theirs)
        await ours.group_send("room", {"type": "hello"})
        assert await asyncio.wait_for(ours.receive(mine), DEADLINE) == {"type": "hello"}
        assert await asyncio.wait_for(stock.receive(theirs), DEADLINE) == {"type": "hello"}
        await ours.group_discard("room", theirs)
        await stock.group_send("room", {"type": "again"})
        assert await asyncio.wait_for(ours.receive(mine), DEADLINE) == {"type": "again"}
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(stock.receive(theirs), 0.2)
    finally:
        await ours.close_pools()
        await stock.close_pools()


@aio
async def test_flush_and_close(redis_server):
    """flush() deletes every key of the prefix and the local buffer; close_pools() sends what was queued."""
    layer = _layer(redis_server, receive_batch=4)
    try:
        await asyncio.gather(*(layer.send("f", {"type": "t"}) for _ in range(6)))
        await layer.receive("f")
        await layer.flush()
        assert redis_server.command(b"EXISTS", b"asgif") == b":0"
        assert all(not inbox.buffer for inbox in layer._state().inboxes.values())
        pending = asyncio.ensure_future(layer.send("g", {"type": "t"}))
        await asyncio.sleep(0)
        await layer.close_pools()
        await pending
        assert redis_server.command(b"ZCARD", b"asgig") == b":1"
    finally:
        await layer.close_pools()


def test_async_to_sync_sends_leave_no_connection_open(redis_server):
    """Sends through async_to_sync (a Django view) run in loops of their own, which close our connections."""
    from asgiref.sync import async_to_sync

    layer = _layer(redis_server)
    errors = []

    def view():
        try:
            for n in range(3):
                async_to_sync(layer.send)("sync", {"type": "t", "n": n})
        except Exception as exc:  # reported below, with the assertion
            errors.append(exc)

    thread = threading.Thread(target=view)  # async_to_sync refuses a thread running an event loop
    thread.start()
    thread.join(30)
    assert not errors and not thread.is_alive()
    assert redis_server.command(b"ZCARD", b"asgisync") == b":3"
    assert redis_server.info(b"clients")["connected_clients"] == "1"  # only this INFO's own connection


def test_send_ahead_is_validated():
    """send_ahead is a count of 0 or more (0, the default, makes every send wait for Redis' answer)."""
    assert BatchingRedisChannelLayer().send_ahead == 0
    for bad in (-1, True, 1.5, "8"):
        with pytest.raises(ValueError, match="send_ahead"):
            BatchingRedisChannelLayer(send_ahead=bad)


@aio
async def test_sends_ahead_return_before_redis_answers_and_keep_their_order(redis_server):
    """With send_ahead, one task's sends in a row return at once and go to Redis together, in order."""
    layer = make_layer("x", {"hosts": [redis_server.url], "capacity": 1000, "send_ahead": 8}, cls=CountingLayer)
    try:
        for n in range(40):
            await layer.send("ahead", {"type": "t", "n": n})
        assert len(layer.calls) < 40 and max(layer.calls) > 1, layer.calls
        assert [(await layer.receive("ahead"))["n"] for _ in range(40)] == list(range(40))
        assert layer.sent_ahead_lost == 0
    finally:
        await layer.close_pools()


@aio
async def test_sends_ahead_overshoot_capacity_by_at_most_send_ahead_then_raise(redis_server):
    """Near capacity sends wait for Redis again: ChannelFull comes, and the channel never holds more than
    capacity + send_ahead messages, none lost."""
    layer = _layer(redis_server, capacity=10, send_ahead=4)
    stock = _layer(redis_server, STOCK)
    try:
        with pytest.raises(ChannelFull):
            for n in range(30):
                await layer.send("small", {"type": "t", "n": n})
        await asyncio.sleep(0)
        held = int(redis_server.command(b"ZCARD", b"asgismall")[1:])
        assert 10 <= held <= 14 and layer.sent_ahead_lost == 0
        assert [(await stock.receive("small"))["n"] for _ in range(held)] == list(range(held))
    finally:
        await layer.close_pools()
        await stock.close_pools()


@aio
async def test_a_send_ahead_lost_with_redis_is_counted_and_the_next_send_raises(redis_server):
    """Sends that returned before Redis died are counted lost (send_ahead of them at most), and a send
    after them waits and raises."""
    from redis.exceptions import RedisError

    layer = _layer(redis_server, capacity=1000, send_ahead=4)
    try:
        await layer.send("gone", {"type": "t"})  # its answer shows room: the next send goes ahead
        redis_server.kill()
        with pytest.raises((RedisError, OSError)):
            for _ in range(4 + 2):
                await layer.send("gone", {"type": "t"})
        assert 1 <= layer.sent_ahead_lost <= 4
    finally:
        await layer.close_pools()


async def _sending_ahead(server, linger, channel):
    """A CountingLayer with send_ahead 64 and `linger`, after a send to `channel` (n -1) whose answer showed room."""
    layer = make_layer("x", {"hosts": [server.url], "capacity": 1000, "send_ahead": 64, "linger": linger},
                       cls=CountingLayer)
    await layer.send(channel, {"type": "t", "n": -1})  # waits: its answer shows room for the next ones
    return layer


async def _goes_at_once(layer, channel, n):
    """Send `n` ahead to `channel` and check that its script call is written in the next loop turn."""
    calls = len(layer.calls)
    await layer.send(channel, {"type": "t", "n": n})
    await asyncio.sleep(0)
    assert len(layer.calls) == calls + 1


@aio
async def test_busy_sends_ahead_linger_to_share_calls_and_an_idle_one_goes_at_once(redis_server, monkeypatch):
    """Sends ahead closer together than the linger share script calls; one after a pause is written in the
    next loop turn."""
    from gateway.layers import batching

    # Busy below 50 ms apart, and a linger as long: well above the gaps below, however busy the machine.
    monkeypatch.setattr(batching, "BUSY", 0.05)
    layer = await _sending_ahead(redis_server, 0.05, "linger")
    try:
        for n in range(40):
            await layer.send("linger", {"type": "t", "n": n})
            await asyncio.sleep(0.002)  # time for Redis to answer: without the linger each send is its own call
        assert len(layer.calls) < 20, layer.calls
        assert [(await layer.receive("linger"))["n"] for _ in range(41)] == list(range(-1, 40))
        await asyncio.sleep(0.3)  # idle, no send for longer than OWED_FOR lingers (the receives owe 41 answers)
        await _goes_at_once(layer, "linger", 40)
    finally:
        await layer.close_pools()


class PopCountingLayer(BatchingRedisChannelLayer):
    """Records how many messages each blocking pop brought."""

    def __init__(self, **config):
        super().__init__(**config)
        self.pops = []

    async def _blocking_pop(self, wire, key, count):
        members = await super()._blocking_pop(wire, key, count)
        self.pops.append(len(members))
        return members


def test_linger_is_validated():
    """linger is a number of seconds from 0 (the default: nothing waits for more) to 1."""
    assert BatchingRedisChannelLayer().linger == 0
    assert BatchingRedisChannelLayer(linger=1).linger == 1
    for bad in (-0.001, 1.5, True, "0.002", float("nan"), None):
        with pytest.raises(ValueError, match="linger"):
            BatchingRedisChannelLayer(linger=bad)


async def _receive_trickle(redis_server, linger):
    """A receiver taking 20 messages that come one by one 10 ms apart: its pop round trips, in order."""
    receiver = make_layer("x", {"hosts": [redis_server.url], "capacity": 1000, "receive_batch": 1000,
                                "linger": linger}, cls=PopCountingLayer)
    sender = _layer(redis_server, capacity=1000)

    async def trickle():
        for n in range(20):
            await sender.send("trickle", {"type": "t", "n": n})
            await asyncio.sleep(0.01)

    try:
        sending = asyncio.ensure_future(trickle())
        assert [(await receiver.receive("trickle"))["n"] for _ in range(20)] == list(range(20))
        await sending
        await asyncio.sleep(0.6)  # idle for longer than the linger: the next message comes at once
        started = asyncio.get_running_loop().time()
        receiving = asyncio.ensure_future(receiver.receive("trickle"))
        await sender.send("trickle", {"type": "t", "n": 20})
        assert (await receiving)["n"] == 20
        return receiver.pops, asyncio.get_running_loop().time() - started
    finally:
        await receiver.close_pools()
        await sender.close_pools()


@aio
async def test_busy_receives_linger_to_share_round_trips_and_an_idle_one_pops_at_once(redis_server, monkeypatch):
    """With linger, messages coming one by one while traffic is busy are popped several per round
    trip, all of them, in order; a receive after a pause longer than the linger pops at once."""
    from gateway.layers import batching

    monkeypatch.setattr(batching, "BUSY", 0.05)  # 10 ms apart is busy, however slow the machine
    pops, idle = await _receive_trickle(redis_server, 0)
    assert len(pops) >= 10, pops  # without the linger: about one round trip per message
    pops, idle = await _receive_trickle(redis_server, 0.5)
    assert sum(pops) == 21 and len(pops) <= 6, pops  # the linger: 0.5 s covers the rest of the trickle
    assert idle < 0.25


@aio
async def test_sends_ahead_lingering_behind_a_slow_call_keep_their_order(redis_server, monkeypatch):
    """While the host's call hangs (Redis paused), sends ahead keep lingering and queueing behind it; once Redis
    answers, every one arrives, in order, in fewer calls than sends, none lost."""
    from gateway.layers import batching

    monkeypatch.setattr(batching, "BUSY", 0.05)
    layer = await _sending_ahead(redis_server, 0.02, "slow")
    try:
        redis_server.pause()
        try:
            for n in range(30):
                await layer.send("slow", {"type": "t", "n": n})  # returns at once: sent ahead
                await asyncio.sleep(0.005)
        finally:
            redis_server.resume()
        received = [await asyncio.wait_for(layer.receive("slow"), DEADLINE) for _ in range(31)]
        assert [message["n"] for message in received] == list(range(-1, 30))
        assert layer.sent_ahead_lost == 0 and len(layer.calls) < 10, layer.calls
    finally:
        await layer.close_pools()


@aio
async def test_a_consumer_with_a_backlog_shares_calls_however_slow_and_answers_a_lone_message_at_once(redis_server):
    """Replies sent ahead by a consumer that holds messages it popped and has not answered yet share
    script calls even when they come ten times BUSY apart (Channels' runworker on a slow machine), and
    for as long as it answers, longer than OWED_FOR lingers; once it has answered all it popped, its
    next reply is written in the next loop turn."""
    layer = await _sending_ahead(redis_server, 0.02, "answers")  # 20 answers 5 ms apart: 5 lingers
    feeder = _layer(redis_server, capacity=1000)  # sends the work and reads the answers
    try:
        for n in range(20):
            await feeder.send("work", {"type": "t", "n": n})
        calls = len(layer.calls)
        for _ in range(20):
            message = await layer.receive("work")  # the first receive pops all 20
            await asyncio.sleep(0.005)  # handling it: the replies come 5 ms apart, ten times BUSY
            await layer.send("answers", {"type": "t", "n": message["n"]})
        await asyncio.sleep(0.15)  # the linger ends
        assert len(layer.calls) - calls <= 8, layer.calls  # about 5; without the backlog rule 20
        received = [await asyncio.wait_for(feeder.receive("answers"), DEADLINE) for _ in range(21)]
        assert [message["n"] for message in received] == list(range(-1, 20))
        assert layer.sent_ahead_lost == 0
        # Everything received is answered: a lone message's reply goes at once.
        await feeder.send("work", {"type": "t", "n": 20})
        message = await asyncio.wait_for(layer.receive("work"), DEADLINE)
        await _goes_at_once(layer, "answers", message["n"])
    finally:
        await layer.close_pools()
        await feeder.close_pools()


@aio
async def test_messages_received_but_never_answered_stop_holding_sends_back(redis_server):
    """A process that popped messages it does not answer (not a consumer of requests) sends at once
    after a pause of OWED_FOR lingers in its sends."""
    layer = await _sending_ahead(redis_server, 0.05, "events")
    try:
        for n in range(10):
            await layer.send("events", {"type": "t", "n": n})
        for n in range(-1, 10):
            assert (await asyncio.wait_for(layer.receive("events"), DEADLINE))["n"] == n  # 11 received, none answered
        await asyncio.sleep(0.3)  # no send for longer than OWED_FOR (4) lingers of 50 ms
        await _goes_at_once(layer, "events", 10)
    finally:
        await layer.close_pools()
