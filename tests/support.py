"""Test helpers: real UDP clients with one-shot waits, service building, skip-or-fail."""

import asyncio
import functools
import os

import pytest
from twisted.internet import defer, protocol

from gateway.service import GatewayService
from gateway.startup import load_application

REQUIRE_ALL = os.environ.get("UDPGATEWAY_REQUIRE_ALL") == "1"


def aio(test):
    """Run an async test as an asyncio task (so it can await asyncio futures) under pytest-twisted."""

    @functools.wraps(test)
    def run(*args, **kwargs):
        return defer.Deferred.fromFuture(asyncio.ensure_future(test(*args, **kwargs)))

    return run


async def stop(service):
    """Stop a service and wait for its whole stop sequence."""
    await wait(service.stopService(), 20)


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


async def wait(deferred_or_future, timeout=5.0):
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

    async def receive(self, timeout=5.0, count=1):
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

    async def nothing(self, seconds=0.3):
        """Assert no datagram arrives within `seconds`."""
        await asyncio.sleep(seconds)
        assert not self.received, self.received


def listener_address(service, name):
    host, port = service.listeners[name].addresses()[0]
    return host, port
