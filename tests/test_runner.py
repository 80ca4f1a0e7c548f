"""AppRunner units on the in-process memory layer: application calls, their slots and app_timeout."""

import asyncio

import pytest

from gateway.admission import Admission
from gateway.layers import InMemoryChannelLayer
from gateway.runner import AppRunner
from gateway.stats import Counters, QuietLog
from tests.support import aio


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


@aio
async def test_no_timer_with_null_and_timer_cancelled_when_a_call_ends():
    """With app_timeout None a call gets no timer; with one, a call ending in time cancels its timer."""
    release, handled = asyncio.Event(), []

    async def app(scope, receive, send):
        message = await receive()
        await release.wait()
        handled.append(message["data"])

    for app_timeout in (None, 30):
        layer, counters = InMemoryChannelLayer(), Counters()
        runner = AppRunner(app, layer, ["udp.receive"], admission=Admission(2), counters=counters, quiet=QuietLog(),
                           app_timeout=app_timeout)
        runner.start()
        try:
            await layer.send("udp.receive", {"type": "udp.receive", "data": b"x", "listener": "l"})
            while runner.active == 0:
                await asyncio.sleep(0.01)
            (instance,) = runner._instances
            assert (instance.timer is None) == (app_timeout is None)
            release.set()
            while runner.active:
                await asyncio.sleep(0.01)
            assert instance.timer is None or instance.timer.cancelled()
            assert counters.get("app_timeouts") == 0
        finally:
            runner.stop_receiving()
            await runner.drain(1)
            release.clear()
