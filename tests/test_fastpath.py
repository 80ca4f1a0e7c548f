"""The memory layer's fast path: eager instances, their clean end, own replies written at once, bounded caches."""

import asyncio
import contextvars
import gc

import pytest
from twisted.internet.task import Clock

from gateway.admission import Admission
from gateway.eager import start_task
from gateway.layers import InMemoryChannelLayer
from gateway.replies import DirectReplies
from gateway.runner import AppRunner, InstanceEnded
from gateway.stats import Counters, QuietLog
from gateway.tokens import TokenTable
from listeners import packets
from tests import apps
from tests.support import aio, listener_address

MESSAGE = {"type": "udp.receive", "reply_channel": "udp.send.x!t", "data": b"hi", "listener": "l"}


def outside_task(function):
    """Run `function` from a plain loop callback, with no current task, as a datagram's delivery runs."""
    loop = asyncio.get_event_loop()
    future = loop.create_future()

    def call():
        try:
            future.set_result(function())
        except BaseException as exc:  # noqa: B902 - handed to the test
            future.set_exception(exc)

    loop.call_soon(call)
    return future


class SentLayer:
    """A layer that records sends and never has anything to receive."""

    def __init__(self):
        self.sent = []

    async def send(self, channel, message):
        self.sent.append((channel, message))

    async def receive(self, channel):
        await asyncio.Future()


def runner(app, limit=10):
    admission = Admission(limit)
    return AppRunner(app, SentLayer(), ["udp.receive"], admission=admission, counters=Counters(),
                     quiet=QuietLog(clock=Clock()), wait_before_receive=False)


def looping_app(seen):
    async def app(scope, receive, send):
        while True:
            try:
                message = await receive()
            except BaseException as exc:
                seen.append(type(exc))
                raise
            await send({"type": "udp.send", "data": message["data"]})
    return app


@aio
async def test_second_receive_ends_the_instance_without_a_cancel():
    """A consumer looping on receive() ends at its second receive() with InstanceEnded, never CancelledError."""
    seen = []
    r = runner(looping_app(seen))
    r.admission.try_acquire()
    await outside_task(lambda: r.run("udp.receive", dict(MESSAGE)))
    assert seen == [InstanceEnded]
    assert not issubclass(InstanceEnded, Exception)
    assert (r.active, r.admission.in_use, r.counters.get("app_errors")) == (0, 0, 0)
    assert r.layer.sent == [("udp.send.x!t", {"type": "udp.send", "data": b"hi"})]


@aio
async def test_instance_runs_eagerly_as_a_real_task():
    """run() steps the instance until it first waits, inside a real Task; it finishes later on its own."""
    release, tasks = asyncio.Event(), []

    async def app(scope, receive, send):
        tasks.append(asyncio.current_task())
        await release.wait()
        await send({"type": "udp.send", "data": (await receive())["data"]})

    r = runner(app)
    r.admission.try_acquire()
    await outside_task(lambda: r.run("udp.receive", dict(MESSAGE)))
    assert len(tasks) == 1 and tasks[0] is not None and r.active == 1
    release.set()
    await asyncio.wait_for(tasks[0], 5)
    assert (r.active, r.admission.in_use, len(r.layer.sent)) == (0, 0, 1)


@aio
async def test_application_error_is_counted_and_frees_its_slot():
    """An application that raises is counted as app_errors and gives its slot back."""
    async def app(scope, receive, send):
        raise RuntimeError("boom")

    r = runner(app)
    r.admission.try_acquire()
    await outside_task(lambda: r.run("udp.receive", dict(MESSAGE)))
    assert (r.counters.get("app_errors"), r.admission.in_use) == (1, 0)


@aio
async def test_messages_leave_no_reference_cycles():
    """Running 200 messages through the echo consumer leaves nothing for the cycle collector."""
    r = runner(apps.Echo.as_asgi(), limit=1000)
    r.app_layer = r.layer

    def burst():
        gc.collect()
        gc.disable()
        try:
            for n in range(200):
                r.admission.try_acquire()
                r.run("udp.receive", dict(MESSAGE, data=b"%d" % n))
            return gc.collect()
        finally:
            gc.enable()

    assert await outside_task(burst) == 0
    assert len(r.layer.sent) == 200


@aio
async def test_eager_task_keeps_context_variables_to_itself():
    """A context variable set inside an eagerly started task does not leak into the caller's context."""
    var = contextvars.ContextVar("var", default="outside")

    async def sets():
        var.set("inside")
        return var.get()

    task = await outside_task(lambda: start_task(sets()))
    assert task.done() and task.result() == "inside"
    assert var.get() == "outside"


class FakePump:
    prefix = "udp.send.me!"

    def __init__(self):
        self.handled = []

    def handle(self, channel, message):
        self.handled.append((channel, message))


@aio
async def test_own_replies_are_handed_to_the_pump_at_once():
    """A send to this process's reply channel reaches the pump before send() returns, and never queues."""
    layer, pump = InMemoryChannelLayer(), FakePump()
    direct = DirectReplies(layer, pump)
    await direct.send("udp.send.me!abc", {"type": "udp.send", "data": b"x"})
    assert pump.handled == [("udp.send.me!abc", {"type": "udp.send", "data": b"x"})]
    assert not layer._queues
    await direct.send("other", {"type": "x"})
    assert (await layer.receive("other")) == {"type": "x"}
    with pytest.raises(TypeError):
        await direct.send("udp.send.me!bad name", {"type": "udp.send", "data": b"x"})


@aio
async def test_one_calls_many_replies_never_fail_another_clients(gateway, client):
    """1,000 replies from one call are all written, and the next client's reply is not refused (no ChannelFull)."""
    # 1,000 replies to 4 bytes: far past the amplification cap, off here.
    service = await gateway("channel_layer: {backend: memory}\napplication: tests.apps:raw_echo\nlisteners:\n"
                            "  - {name: echo, type: plain, bind: 127.0.0.1, port: 0, amplification: null}\n",
                            app=apps.Burst.as_asgi())
    first, second = await client(), await client()
    address = listener_address(service, "echo")
    first.send(b"many", address)
    await first.receive(5)
    second.send(b"next", address)
    assert (await second.receive(5))[0] == b"next"
    counts = service.counters.snapshot()
    assert counts.get("replied") == 1001
    assert not counts.get("app_errors") and not counts.get("dropped_channel_full")


def test_address_cache_is_bounded():
    """The per-address cache starts over at CACHE_SIZE entries, whatever addresses arrive."""
    for n in range(packets.CACHE_SIZE + 10):
        assert packets.address_kind(f"10.{n >> 8 & 255}.{n & 255}.1") == (False, False)
    assert len(packets._kinds) <= packets.CACHE_SIZE
    assert packets.address_kind("ff02::fb") == (True, False)
    assert packets.address_kind("fe80::1%lo") == (False, True)


def test_interface_names_are_cached_then_looked_up_again():
    """An interface name is reused for IFNAME_REFRESH seconds, then looked up again (renames are seen)."""
    import socket

    index = socket.if_nametoindex("lo")
    packets._ifnames[index] = ("stale", 0.0)
    assert packets.interface_name(index, now=lambda: 1.0) == "stale"
    assert packets.interface_name(index, now=lambda: packets.IFNAME_REFRESH + 1) == "lo"
    assert packets.interface_name(0) is None


def test_token_entries_leave_the_collectors_view():
    """A token table's entries hold plain values only: after a few collections the GC stops tracking them."""
    table = TokenTable(max_entries=10, ttl=60, clock=Clock())
    route = ("l", 4, 0, ("127.0.0.1", 5000), "10.0.0.1", 3, None, 3)  # as delivery.stored_route keeps it
    token = table.token_for(("l", ("127.0.0.1", 5000)), route)
    for _ in range(3):  # one level of nested tuples is untracked per collection at worst
        gc.collect()
    assert not gc.is_tracked(table._entries[token])


def test_gc_watch_counts_full_collections():
    """GcWatch counts full collections and their longest pause, and stops listening when stopped."""
    from gateway.gcwatch import GcWatch

    watch = GcWatch()
    watch.start()
    try:
        gc.collect()
        assert watch.full >= 1 and watch.longest_ms >= 0
    finally:
        watch.stop()
    seen = watch.full
    gc.collect()
    assert watch.full == seen and watch._callback not in gc.callbacks


def test_stored_route_round_trip():
    """A route kept in the token table comes back equal, with or without pktinfo fields."""
    from gateway.delivery import stored_route

    plain = packets.Route(port=1, address=("127.0.0.1", 5000))
    full = packets.Route(port=0, address=("10.0.0.9", 9), source="10.0.0.2", ifindex=3, group="239.1.1.1",
                         arrived_on=3)
    for route in (plain, full):
        datagram = packets.Datagram(listener="l", data=b"", client=route.address, server=("10.0.0.2", 1),
                                    interface=None, route=route, version=4)
        kept = stored_route(datagram)
        assert type(kept) is tuple and kept[:2] == ("l", 4)
        assert packets.Route(*kept[2:]) == route
    assert len(stored_route(packets.Datagram(listener="l", data=b"", client=None, server=None, interface=None,
                                             route=plain, version=4))) == 4


def test_token_index_is_tracked_from_birth():
    """The token table's key index is GC-tracked while empty, so the startup gc.freeze() takes it out of
    every later collection (a plain empty dict would be tracked only after the freeze)."""
    table = TokenTable(max_entries=10, ttl=60, clock=Clock())
    assert gc.is_tracked(table._tokens) and gc.is_tracked(table._entries)


def test_only_a_whole_process_freezes_what_exists_once_started():
    """The gateway and the worker gc.freeze() once started when they are the process (signals theirs), so
    collections stop scanning the startup heap, and collect the youngest generation less often; a service
    inside a test's process changes neither."""
    from gateway.process import AsyncService

    from gateway.process import YOUNG_COLLECTION

    before, thresholds = gc.get_freeze_count(), gc.get_threshold()
    try:
        AsyncService(reactor=Clock(), signals=False).freeze_startup_objects()
        assert (gc.get_freeze_count(), gc.get_threshold()) == (before, thresholds)
        AsyncService(reactor=Clock(), signals=True).freeze_startup_objects()
        assert gc.get_freeze_count() > before
        assert gc.get_threshold() == (YOUNG_COLLECTION, *thresholds[1:])  # the older generations as they were
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


def test_sizes_line_follows_the_counters():
    """Gauges are logged as their own "sizes:" line, so the counters' line keeps its format; none, no line."""
    from gateway.stats import sizes_line, summary_line

    counters = Counters()
    assert sizes_line(counters) is None
    counters.incr("received")
    counters.gauges.update(reply_channels=lambda: 5, calls_in_flight=lambda: 0)
    assert summary_line(counters) == "counters: received=1"
    assert sizes_line(counters) == "sizes: calls_in_flight=0 reply_channels=5"
