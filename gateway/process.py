"""What the gateway and the worker processes share: an asyncio-driven Twisted service and its stop signals."""

import asyncio
import signal

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from gateway import health
from gateway.lifespan import LifespanFailure
from gateway.stats import CounterReporter, Counters, QuietLog

log = Logger()
DRAIN_TIMEOUT = 5.0     # seconds in-flight application calls get at stop
REPORT_INTERVAL = 60.0  # seconds between counter summary lines (when they changed)


class StartupError(Exception):
    """The process cannot start; the message is the one line to show."""


def install_stop_handlers(reactor):
    """SIGTERM/SIGINT stop the reactor cleanly, so the process exits 0."""

    def stop(signum, frame):
        log.info("received {sig}, stopping", sig=signal.Signals(signum).name)
        reactor.callFromThread(reactor.stop)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def fatal_line(failure, what):
    """The one line that says why `what` could not start (a traceback only for the unexpected)."""
    exc = failure.value
    if isinstance(exc, (StartupError, health.LayerUnreachable)):
        return str(exc)
    if isinstance(exc, LifespanFailure):
        return f"lifespan startup failed: {exc}"
    log.failure("{what} failed to start", failure=failure, what=what)
    return f"{what} failed to start: {health.error_text(exc)}"


class AsyncService(service.Service):
    """A Twisted service whose start and stop are asyncio coroutines (`_start`, `_stop`).

    `started` fires when the process is serving; `stopService()` returns one
    Deferred covering the whole stop. With `on_fatal`, a failed start calls
    it with one line instead of failing `started`.
    """

    what = "udpgateway"

    def __init__(self, *, reactor, on_fatal=None, signals=False):
        self.counters = Counters()
        self.quiet = QuietLog()  # monotonic clock
        self.started = None
        self._reactor = reactor
        self._on_fatal = on_fatal
        self._signals = signals
        self._reporter = CounterReporter(self.counters, log, interval=REPORT_INTERVAL, clock=reactor)
        self._stopping = None

    def startService(self):
        service.Service.startService(self)
        if self._signals:
            # After the reactor's own handlers, which make twistd exit -15.
            self._reactor.callWhenRunning(install_stop_handlers, self._reactor)
        self.started = defer.Deferred.fromFuture(asyncio.ensure_future(self._start()))
        if self._on_fatal is not None:
            self.started.addErrback(lambda failure: self._on_fatal(fatal_line(failure, self.what)))

    def stopService(self):
        service.Service.stopService(self)
        if self._stopping is None:
            self._stopping = defer.Deferred.fromFuture(asyncio.ensure_future(self._stop()))
        return self._stopping

    async def _start(self):
        raise NotImplementedError

    async def _stop(self):
        raise NotImplementedError
