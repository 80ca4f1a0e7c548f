"""gateway.runner without sockets: one message per instance, errors, admission in both modes, receive retries,
app_timeout."""

import asyncio

import pytest
from twisted.internet.task import Clock

from gateway.admission import Admission
from gateway.layers import InMemoryChannelLayer
from gateway.runner import AppRunner
from gateway.stats import Counters, QuietLog
from tests.support import aio, eventually

CHANNEL = "udp.receive"


def message(n, reply_channel="udp.send.test!t"):
    return {"type": "udp.receive", "data": b"%d" % n, "reply_channel": reply_channel, "listener": "echo"}


def make(app, layer=None, *, max_concurrency=10, reserve=False):
    """A runner; `reserve` is the memory-layer gateway's mode (delivery takes a slot, then calls run())."""
    layer = layer if layer is not None else InMemoryChannelLayer(capacity=1000)
    counters = Counters()
    runner = AppRunner(app, layer, [CHANNEL], admission=Admission(max_concurrency), counters=counters,
                       quiet=QuietLog(clock=Clock()), wait_before_receive=not reserve)
    return runner, layer, counters



class Gate:
    """An application whose calls wait for `release`; records what each call got."""

    def __init__(self):
        self.release = asyncio.Event()
        self.started = []
        self.scopes = []

    async def __call__(self, scope, receive, send):
        self.scopes.append(scope)
        received = await receive()
        self.started.append(received["data"])
        await self.release.wait()
        await send({"type": "udp.send", "data": b"re:" + received["data"]})


@aio
async def test_second_receive_ends_the_instance_cleanly():
    """An application looping on receive() handles one message per call; the second receive() ends it, no error."""
    handled = []

    async def looping(scope, receive, send):
        while True:
            got = await receive()
            handled.append(got["data"])
            await send({"type": "udp.send", "data": got["data"]})

    runner, layer, counters = make(looping)
    runner.start()
    for n in range(3):
        await layer.send(CHANNEL, message(n))
    replies = [await asyncio.wait_for(layer.receive_single("udp.send.test!"), 5) for _ in range(3)]
    await eventually(lambda: runner.active == 0)
    runner.stop_receiving()
    assert sorted(m["data"] for _, m in replies) == [b"0", b"1", b"2"]
    assert sorted(handled) == [b"0", b"1", b"2"]
    assert "app_errors" not in counters.snapshot()


@aio
async def test_scope_names_the_channel_and_the_layer():
    """Each call gets a channel scope with the channel it came in on and the layer."""
    app = Gate()
    app.release.set()
    runner, layer, _ = make(app)
    runner.start()
    await layer.send(CHANNEL, message(1))
    await asyncio.wait_for(layer.receive_single("udp.send.test!"), 5)
    runner.stop_receiving()
    (scope,) = app.scopes
    assert scope["type"] == "channel" and scope["channel"] == CHANNEL and scope["channel_layer"] is layer


@aio
async def test_an_application_error_is_counted_and_the_next_message_served():
    """An exception in the application counts app_errors once, and the following message is still handled."""

    async def app(scope, receive, send):
        got = await receive()
        if got["data"] == b"0":
            raise RuntimeError("boom")
        await send({"type": "udp.send", "data": got["data"]})

    runner, layer, counters = make(app)
    runner.start()
    await layer.send(CHANNEL, message(0))
    await layer.send(CHANNEL, message(1))
    _, reply = await asyncio.wait_for(layer.receive_single("udp.send.test!"), 5)
    await eventually(lambda: counters.get("app_errors") == 1)
    runner.stop_receiving()
    assert reply["data"] == b"1"


@aio
async def test_send_accepts_only_udp_send():
    """The `send` callable answers with udp.send messages only; anything else is an application error."""

    async def app(scope, receive, send):
        await receive()
        await send({"type": "http.response.start"})

    runner, layer, counters = make(app)
    runner.start()
    await layer.send(CHANNEL, message(0))
    await eventually(lambda: counters.get("app_errors") == 1)
    runner.stop_receiving()


@aio
async def test_shared_mode_stops_receiving_at_max_concurrency():
    """On a shared layer, with max_concurrency calls running, the runner takes no more messages: they stay in the layer."""
    app = Gate()
    runner, layer, _ = make(app, max_concurrency=2)
    runner.start()
    for n in range(4):
        await layer.send(CHANNEL, message(n))
    await eventually(lambda: len(app.started) == 2)
    # Another consumer of the channel (a second worker) gets the next message at once.
    other = await asyncio.wait_for(layer.receive(CHANNEL), 5)
    assert other["data"] == b"2" and app.started == [b"0", b"1"]
    app.release.set()
    await eventually(lambda: len(app.started) == 3)
    await eventually(lambda: runner.active == 0)
    runner.stop_receiving()
    assert app.started == [b"0", b"1", b"3"]


@aio
async def test_memory_mode_reserves_slots_up_to_max_concurrency():
    """In memory mode slots are reserved before a hand-off: past max_concurrency reserved or running, none is given."""
    app = Gate()
    runner, layer, _ = make(app, max_concurrency=2, reserve=True)
    runner.start()
    admission = runner.admission
    assert admission.try_acquire() and admission.try_acquire()
    assert not admission.try_acquire()
    runner.run(CHANNEL, message(0))  # delivery's hand-off, with one of the reserved slots
    await eventually(lambda: app.started == [b"0"])
    assert not admission.try_acquire()  # one running, one reserved
    admission.release()
    assert admission.try_acquire()
    app.release.set()
    await eventually(lambda: runner.active == 0)
    runner.stop_receiving()


@aio
async def test_drain_cancels_calls_past_the_timeout():
    """drain() waits for calls in flight, then cancels those still running; a cancelled call is no error."""
    app = Gate()
    runner, layer, counters = make(app)
    runner.start()
    await layer.send(CHANNEL, message(0))
    await eventually(lambda: app.started == [b"0"])
    runner.stop_receiving()
    await runner.drain(0.01)
    assert runner.active == 0
    assert "app_errors" not in counters.snapshot()


class BrokenLayer(InMemoryChannelLayer):
    """Receives fail `failures` times (Redis down), then work."""

    def __init__(self, failures):
        super().__init__()
        self.failures = failures
        self.attempts = []

    async def receive(self, channel):
        self.attempts.append(asyncio.get_event_loop().time())
        if len(self.attempts) <= self.failures:
            raise ConnectionError("Connection refused")
        return await super().receive(channel)


@aio
async def test_failed_receive_counts_layer_errors_and_retries_after_a_second():
    """A failing receive counts layer_errors and is retried about a second later, not in a tight loop."""
    app = Gate()
    app.release.set()
    layer = BrokenLayer(failures=2)
    runner, _, counters = make(app, layer)
    runner.start()
    await layer.send(CHANNEL, message(7))
    await eventually(lambda: app.started == [b"7"], timeout=10)
    runner.stop_receiving()
    assert counters.get("layer_errors") == 2
    first, second, third = layer.attempts[:3]  # two failures, then the receive that got the message
    assert second - first >= 0.9 and third - second >= 0.9, layer.attempts


# app_timeout

def hanging_app(handled, *, on_cancel=None):
    """Never returns for b"hang"; records any other message's data."""

    async def app(scope, receive, send):
        message = await receive()
        if message["data"] == b"hang":
            try:
                await asyncio.Future()
            except asyncio.CancelledError:
                if on_cancel is not None:
                    raise on_cancel from None
                raise
        handled.append(message["data"])

    return app


async def run(app, datas, *, reserve, app_timeout=0.2, expect=1, deadline=10.0):
    """Start a runner (max_concurrency 2), send `datas`, wait until `expect` messages were handled.

    `reserve` is the memory-layer gateway's mode: delivery takes a slot, then hands the message over.
    """
    layer, counters = InMemoryChannelLayer(), Counters()
    runner = AppRunner(app, layer, ["udp.receive"], admission=Admission(2), counters=counters, quiet=QuietLog(),
                       wait_before_receive=not reserve, app_timeout=app_timeout)
    runner.start()
    try:
        for data in datas:
            message = {"type": "udp.receive", "data": data, "listener": "l"}
            if reserve:
                assert runner.admission.try_acquire(), "no free slot"
                runner.run("udp.receive", message)
            else:
                await layer.send("udp.receive", message)
        stop_at = asyncio.get_event_loop().time() + deadline
        while counters.get("app_timeouts") < datas.count(b"hang") and asyncio.get_event_loop().time() < stop_at:
            await asyncio.sleep(0.01)
        return runner, counters
    finally:
        runner.stop_receiving()
        await runner.drain(1)


@pytest.mark.parametrize("reserve", [False, True], ids=["receive-mode", "reserve-mode"])
@aio
async def test_hung_calls_are_cancelled_counted_and_free_their_slots(reserve):
    """Calls running past app_timeout are cancelled and counted as app_timeouts, not app_errors, and a
    message after them is handled although they had filled every slot."""
    handled = []
    runner, counters = await run(hanging_app(handled), [b"hang", b"hang"], reserve=reserve)
    assert counters.get("app_timeouts") == 2 and counters.get("app_errors") == 0
    assert runner.active == 0 and handled == []


@aio
async def test_slot_freed_by_timeout_serves_the_next_message():
    """With both slots held by hung calls, the third message waits and is handled once they time out."""
    handled = []
    layer, counters = InMemoryChannelLayer(), Counters()
    runner = AppRunner(hanging_app(handled), layer, ["udp.receive"], admission=Admission(2), counters=counters,
                       quiet=QuietLog(), app_timeout=0.2)
    runner.start()
    try:
        for data in (b"hang", b"hang", b"ok"):
            await layer.send("udp.receive", {"type": "udp.receive", "data": data, "listener": "l"})
        stop_at = asyncio.get_event_loop().time() + 10
        while not handled and asyncio.get_event_loop().time() < stop_at:
            await asyncio.sleep(0.01)
        assert handled == [b"ok"]
        assert counters.get("app_timeouts") == 2
    finally:
        runner.stop_receiving()
        await runner.drain(1)


@aio
async def test_cancel_answered_by_raising_is_still_a_timeout():
    """An application that raises when its call is cancelled for running too long counts as app_timeouts."""
    runner, counters = await run(hanging_app([], on_cancel=RuntimeError("cleanup failed")), [b"hang"], reserve=False)
    assert (counters.get("app_timeouts"), counters.get("app_errors")) == (1, 0)


def started_runner(app, app_timeout):
    """A started AppRunner (5 slots, receive mode) on a memory layer of its own: (layer, counters, runner)."""
    layer, counters = InMemoryChannelLayer(), Counters()
    runner = AppRunner(app, layer, ["udp.receive"], admission=Admission(5), counters=counters, quiet=QuietLog(),
                       app_timeout=app_timeout)
    runner.start()
    return layer, counters, runner


@aio
async def test_no_timer_with_null_and_one_timer_for_all_calls():
    """With app_timeout None no timer is armed; with one, a single timer serves every call in flight, and the
    calls ending in time leave nothing counted."""
    release, handled = asyncio.Event(), []

    async def app(scope, receive, send):
        message = await receive()
        await release.wait()
        handled.append(message["data"])

    for app_timeout in (None, 30):
        layer, counters, runner = started_runner(app, app_timeout)
        timers = len(asyncio.get_running_loop()._scheduled)
        try:
            for data in (b"a", b"b", b"c"):
                await layer.send("udp.receive", {"type": "udp.receive", "data": data, "listener": "l"})
            while runner.active < 3:
                await asyncio.sleep(0.01)
            assert (runner._timeout is None) == (app_timeout is None)
            assert len(asyncio.get_running_loop()._scheduled) - timers == (0 if app_timeout is None else 1)
            release.set()
            while runner.active:
                await asyncio.sleep(0.01)
            assert sorted(handled) == [b"a", b"b", b"c"] and counters.get("app_timeouts") == 0
        finally:
            runner.stop_receiving()
            await runner.drain(1)
            assert runner._timeout is None  # nothing left armed once drained
            release.clear()
            handled.clear()


@aio
async def test_a_changed_app_timeout_applies_to_calls_started_after_it():
    """As a reload does: a call started under app_timeout 30 keeps it, a call started after the change to
    0.2 is cancelled at 0.2 although the older call comes first."""
    cancelled, release = [], asyncio.Event()

    async def app(scope, receive, send):
        message = await receive()
        try:
            await release.wait()
        except asyncio.CancelledError:
            cancelled.append(message["data"])
            raise

    layer, counters, runner = started_runner(app, 30)
    try:
        await layer.send("udp.receive", {"type": "udp.receive", "data": b"old", "listener": "l"})
        while runner.active < 1:
            await asyncio.sleep(0.01)
        runner.app_timeout = 0.2
        await layer.send("udp.receive", {"type": "udp.receive", "data": b"new", "listener": "l"})
        stop_at = asyncio.get_running_loop().time() + 10
        while not cancelled and asyncio.get_running_loop().time() < stop_at:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)
        assert cancelled == [b"new"] and runner.active == 1 and counters.get("app_timeouts") == 1
        runner.app_timeout = None  # calls started from now on: never timed out
        await layer.send("udp.receive", {"type": "udp.receive", "data": b"none", "listener": "l"})
        while runner.active < 2:
            await asyncio.sleep(0.01)
        release.set()
        while runner.active:
            await asyncio.sleep(0.01)
        assert cancelled == [b"new"]
    finally:
        runner.stop_receiving()
        await runner.drain(1)


@aio
async def test_each_call_times_out_at_its_own_deadline():
    """A call started later than another is cancelled app_timeout after its own start, not with the older one."""
    cancelled = {}
    loop = asyncio.get_running_loop()

    async def app(scope, receive, send):
        message = await receive()
        try:
            await asyncio.Future()
        except asyncio.CancelledError:
            cancelled[message["data"]] = loop.time()
            raise

    layer, counters, runner = started_runner(app, 0.4)
    try:
        started = {}
        for data in (b"first", b"second"):
            started[data] = loop.time()
            await layer.send("udp.receive", {"type": "udp.receive", "data": data, "listener": "l"})
            await asyncio.sleep(0.25)
        stop_at = loop.time() + 10
        while len(cancelled) < 2 and loop.time() < stop_at:
            await asyncio.sleep(0.01)
        for data in (b"first", b"second"):
            assert cancelled[data] - started[data] >= 0.4 - 0.02, (data, cancelled, started)
        assert cancelled[b"second"] - cancelled[b"first"] >= 0.2  # not both at the first deadline
        assert counters.get("app_timeouts") == 2 and runner.active == 0
    finally:
        runner.stop_receiving()
        await runner.drain(1)
