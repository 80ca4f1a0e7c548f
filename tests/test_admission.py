"""Admission: one count of application calls in flight, in its drop mode and its wait mode."""

import asyncio

import pytest

from tests.support import aio


def test_try_acquire_refuses_past_the_limit():
    """With every slot taken, try_acquire says no (the memory layer drops the datagram); a release frees one."""
    from gateway.admission import Admission

    admission = Admission(2)
    assert admission.try_acquire() and admission.try_acquire()
    assert not admission.try_acquire()
    admission.release()
    assert admission.try_acquire()
    assert admission.in_use == 2


def test_limit_must_be_positive():
    """A limit below one is refused when the object is made."""
    from gateway.admission import Admission

    with pytest.raises(AssertionError):
        Admission(0)


@aio
async def test_acquire_waits_for_a_release():
    """At the limit, acquire() waits and takes the slot the next release() gives back."""
    from gateway.admission import Admission

    admission = Admission(1)
    await admission.acquire()
    waiting = asyncio.ensure_future(admission.acquire())
    await asyncio.sleep(0)
    assert not waiting.done()
    assert not admission.try_acquire(), "a waiting receive loop goes first"
    admission.release()
    await asyncio.wait_for(waiting, 5)
    assert admission.in_use == 1


@aio
async def test_cancelled_waiter_passes_its_slot_on():
    """A waiter cancelled after being handed a slot gives it to the next one, so no slot is lost."""
    from gateway.admission import Admission

    admission = Admission(1)
    await admission.acquire()
    first = asyncio.ensure_future(admission.acquire())
    second = asyncio.ensure_future(admission.acquire())
    await asyncio.sleep(0)
    admission.release()  # hands the slot to `first`...
    first.cancel()       # ...which is cancelled before it runs
    await asyncio.wait_for(second, 5)
    assert first.cancelled() and admission.in_use == 1
    admission.release()
    assert admission.in_use == 0
