"""Test helpers: event waits with generous deadlines, real UDP clients, service building, skip-or-fail."""

import asyncio
import functools
import os
import time

import pytest
from twisted.internet import defer, protocol

from gateway.service import GatewayService
from gateway.startup import load_application

REQUIRE_ALL = os.environ.get("UDPGATEWAY_REQUIRE_ALL") == "1"
# How long a test waits for an event (a reply, a log line, a counter) before it fails. Generous on
# purpose: a loaded machine is slow, not wrong; a passing test never waits this long.
DEADLINE = 30.0


def wait_until(condition, timeout=DEADLINE, *, interval=0.05, what=None):
    """Poll `condition()` until it returns something true and return that; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(interval)
    return result


async def eventually(condition, timeout=DEADLINE, *, interval=0.02, what=None):
    """`wait_until` for asyncio tests: polls without blocking the reactor."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (result := condition()):
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        await asyncio.sleep(interval)
    return result


def teardown(*steps):
    """Run every step (a callable), even after one fails; then raise the first failure."""
    errors = []
    for step in steps:
        try:
            step()
        except BaseException as exc:  # noqa: BLE001 (collected, raised below)
            errors.append(exc)
    if errors:
        raise errors[0]


def aio(test):
    """Run an async test as an asyncio task (so it can await asyncio futures) under pytest-twisted."""

    @functools.wraps(test)
    def run(*args, **kwargs):
        return defer.Deferred.fromFuture(asyncio.ensure_future(test(*args, **kwargs)))

    return run


async def stop(service):
    """Stop a service and wait for its whole stop sequence."""
    await wait(service.stopService())


def skip_or_fail(reason):
    """Skip with a clear reason, or fail when UDPGATEWAY_REQUIRE_ALL=1 (CI)."""
    if REQUIRE_ALL:
        pytest.fail(f"{reason} (UDPGATEWAY_REQUIRE_ALL=1)")
    pytest.skip(reason)


def build_service(path, app=None):
    from gateway.config import errors as config_errors, load_config

    from twisted.internet import reactor

    config, problems = load_config(path)
    errors = config_errors(problems)
    assert not errors, [str(p) for p in errors]
    return GatewayService(config, reactor=reactor, app=app if app is not None else load_application(config))


async def wait(deferred_or_future, timeout=DEADLINE):
    """Await a Deferred or asyncio future with a timeout (asyncio side)."""
    if isinstance(deferred_or_future, defer.Deferred):
        deferred_or_future = deferred_or_future.asFuture(asyncio.get_event_loop())
    return await asyncio.wait_for(deferred_or_future, timeout)


class UDPClient(protocol.DatagramProtocol):
    """Collects datagrams; `receive()` waits for the next one."""

    def __init__(self):
        self.received = []
        self._waiters = []
        self.port = None

    def datagramReceived(self, data, addr):
        self.received.append((data, addr))
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    def send(self, data, addr):
        self.transport.write(data, addr)

    @property
    def address(self):
        host = self.transport.getHost()
        return host.host, host.port

    async def receive(self, timeout=DEADLINE, count=1):
        """The next `count` datagrams as (data, addr), in order."""
        loop = asyncio.get_event_loop()
        deadline = loop.time() + timeout
        while len(self.received) < count:
            waiter = loop.create_future()
            self._waiters.append(waiter)
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise asyncio.TimeoutError(f"got {len(self.received)} of {count} datagrams")
            try:
                await asyncio.wait_for(waiter, remaining)
            except asyncio.TimeoutError:
                raise asyncio.TimeoutError(f"got {len(self.received)} of {count} datagrams") from None
        got, self.received = self.received[:count], self.received[count:]
        return got if count > 1 else got[0]

    async def flush(self, address, marker=b"marker", *, answer=None, timeout=DEADLINE):
        """Send `marker` to `address`, wait for its answer, and return what arrived before it (removed).

        The answer is the first datagram equal to `answer` (default: the marker itself) or, if
        `answer` is callable, the first it accepts. A reply to the marker proves that anything sent
        earlier that was going to be answered has been: "nothing arrived" checks use this instead
        of waiting a fixed time, which passes whenever the gateway is merely slow.
        """
        answer = answer if answer is not None else marker
        accepts = answer if callable(answer) else (lambda data: data == answer)
        self.send(marker, address)
        loop = asyncio.get_event_loop()
        deadline = loop.time() + timeout
        while not any(accepts(data) for data, _ in self.received):
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise AssertionError(f"no answer to {marker!r} from {address} within {timeout} s") from None
        index = next(i for i, (data, _) in enumerate(self.received) if accepts(data))
        before, self.received = self.received[:index], self.received[index + 1:]
        for _ in range(3):  # let datagrams already queued on other sockets be read too
            await asyncio.sleep(0)
        return before

    async def until_answered(self, address, data=b"probe", *, timeout=DEADLINE, interval=0.25):
        """Send `data` every `interval` until a reply arrives (a layer still subscribing); bounded by `timeout`."""
        loop = asyncio.get_event_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            self.send(data, address)
            try:
                return await self.receive(min(interval, max(0.0, deadline - loop.time())))
            except asyncio.TimeoutError:
                continue
        raise AssertionError(f"nothing answered at {address} within {timeout} s")


def counting(mapping):
    """A copy of a dict or OrderedDict that counts the keys its iterations visit, in `.visits`.

    Tests of cost use it instead of a stopwatch: work per call is the number of entries
    a call looks at, which a loaded machine does not change.
    """

    class Counting(type(mapping)):
        visits = 0

        def __iter__(self):
            for key in super().__iter__():
                self.visits += 1
                yield key

        def keys(self):
            return list(iter(self))

        def values(self):
            return [self[key] for key in self]

        def items(self):
            return [(key, self[key]) for key in self]

    return Counting(mapping)


def listener_address(service, name):
    host, port = service.listeners[name].addresses()[0]
    return host, port
