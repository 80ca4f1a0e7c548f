"""What the gateway and the worker processes share: an asyncio-driven Twisted service, its phases and signals."""

import asyncio
import gc
import signal

from twisted.application import service
from twisted.internet import defer, error
from twisted.logger import Logger

from gateway import metrics
from gateway.gcwatch import GcWatch
from gateway.layers.errors import LayerUnreachable, error_text
from gateway.lifespan import LifespanFailure
from gateway.stats import CounterReporter, Counters, QuietLog, log_summary

log = Logger()

# Net allocations between two collections of the youngest generation in a whole gateway or worker
# process (Python's default is 700). Each collection scans every object still young, and every call
# in flight holds a few dozen (task, coroutines, messages), so with hundreds in flight the default
# collected them over and over: a worker draining a backlog spent 69-88 us a message with it, 50-69 with this.
YOUNG_COLLECTION = 10_000

DRAIN_TIMEOUT = 5.0     # seconds in-flight application calls get at stop
REPORT_INTERVAL = 60.0  # seconds between counter summary lines (when they changed)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
OPERATOR_SIGNALS = (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


def as_future(deferred):
    """An asyncio future for a Twisted Deferred (await it from asyncio code)."""
    return deferred.asFuture(asyncio.get_event_loop())


class StartupError(Exception):
    """The process cannot start; the message is the one line to show."""


def install_signal_handlers(reactor, target):
    """Route SIGTERM/SIGINT/SIGHUP/SIGUSR1/SIGUSR2 to `target.on_signal` in the reactor thread.

    A handler only hands the signal over (callFromThread). SIGUSR1 still calls
    the handler it replaces: twistd's log rotation when it logs to a file.
    """

    def hand_over(signum, frame):
        reactor.callFromThread(target.on_signal, signal.Signals(signum))

    for signum in STOP_SIGNALS + OPERATOR_SIGNALS:
        previous = signal.getsignal(signum)
        if signum == signal.SIGUSR1 and callable(previous):
            signal.signal(signum, _chained(hand_over, previous))
        else:
            signal.signal(signum, hand_over)


def _chained(first, then):
    def handler(signum, frame):
        first(signum, frame)
        then(signum, frame)

    return handler


def fatal_line(failure, what):
    """The one line that says why `what` could not start (a traceback only for the unexpected)."""
    exc = failure.value
    if isinstance(exc, (StartupError, LayerUnreachable)):
        return str(exc)
    if isinstance(exc, LifespanFailure):
        return f"lifespan startup failed: {exc}"
    log.failure("{what} failed to start", failure=failure, what=what)
    return f"{what} failed to start: {error_text(exc)}"


class AsyncService(service.Service):
    """A Twisted service started in two phases: `bind()` (synchronous, privileged), then `_start()`.

    twistd calls privilegedStartService (bind) before it drops privileges
    (-u/-g) and startService (the asyncio coroutine `_start`) after. `started`
    fires when the process is serving; `stopService()` returns one Deferred
    covering the whole `_stop`. With `on_fatal`, a failed start calls it with
    one line instead of raising or failing `started`.
    """

    what = "udpgateway"

    def __init__(self, *, reactor, on_fatal=None, signals=False):
        self.counters = Counters()
        self.quiet = QuietLog()  # monotonic clock
        self.started = None
        self.metrics_endpoint = None  # once bound
        self.hurried = False
        self._bound = False
        self._reactor = reactor
        self._on_fatal = on_fatal
        self._signals = signals
        self._reporter = CounterReporter(self.counters, log, interval=REPORT_INTERVAL, clock=reactor)
        self.gc_watch = GcWatch()
        self._stopping = None
        self._stop_asked = False
        self._waiting = None

    # -- start -----------------------------------------------------------
    def privilegedStartService(self):
        service.Service.privilegedStartService(self)
        try:
            self._bind_once()
        except StartupError as exc:
            if self._on_fatal is None:
                raise
            self._on_fatal(str(exc))

    def startService(self):
        service.Service.startService(self)
        if self._signals:
            # After the reactor's own handlers, which make twistd exit -15.
            self._reactor.callWhenRunning(install_signal_handlers, self._reactor, self)
        self.started = defer.Deferred.fromFuture(asyncio.ensure_future(self._start_phases()))
        if self._on_fatal is not None:
            self.started.addErrback(lambda failure: self._on_fatal(fatal_line(failure, self.what)))

    async def _start_phases(self):
        self._bind_once()  # not yet bound when nobody called privilegedStartService (tests, the worker)
        await self._start()

    def _bind_once(self):
        if not self._bound:
            self._bound = True
            self.bind()

    def bind(self):
        """The privileged part of the start: synchronous, before privileges drop; raises StartupError."""

    async def _start(self):
        raise NotImplementedError

    def watch_collections(self):
        """Full garbage collections (how many, the longest pause) in the summary line's sizes, from now on."""
        self.counters.gauges.update(gc_full=lambda: self.gc_watch.full, gc_longest_ms=lambda: self.gc_watch.longest_ms)
        self.gc_watch.start()

    def freeze_startup_objects(self):
        """As the whole process (twistd, the worker command): what exists once started lives as long as the
        process, so gc.freeze() keeps every later collection from scanning it again (full collections of
        the startup heap took 60-90 ms each in a worker); and the youngest generation is collected after
        YOUNG_COLLECTION allocations, not Python's 700 (each collection scans every call in flight)."""
        if self._signals:
            gc.freeze()
            gc.set_threshold(YOUNG_COLLECTION, *gc.get_threshold()[1:])

    def serve_metrics(self, settings, collector):
        """Bind the Prometheus endpoint of `settings` (config `metrics`; None: none); raises StartupError."""
        if settings is None:
            return
        endpoint = metrics.MetricsEndpoint(self._reactor, settings.bind, settings.port,
                                           metrics.registry_for(collector))
        try:
            url = endpoint.listen()
        except error.CannotListenError as exc:
            host = f"[{settings.bind}]" if ":" in settings.bind else settings.bind
            raise StartupError(f"metrics: cannot bind {host}:{settings.port}: {exc.socketError}") from None
        self.metrics_endpoint = endpoint
        log.info("metrics on {url}", url=url)

    async def close_metrics(self):
        """Stop serving /metrics (after the ports: a last scrape still sees the stop's counts)."""
        if self.metrics_endpoint is not None:
            endpoint, self.metrics_endpoint = self.metrics_endpoint, None
            await as_future(endpoint.close())

    # -- stop ------------------------------------------------------------
    def stopService(self):
        service.Service.stopService(self)
        if self._stopping is None:
            self._stopping = defer.Deferred.fromFuture(asyncio.ensure_future(self._stop()))
        return self._stopping

    async def _stop(self):
        raise NotImplementedError

    async def patiently(self, awaitable):
        """Await one of the stop's waits (drain, lifespan shutdown, flush); `stop_now` cuts it short.

        After `stop_now` the waits still to come are skipped. True if it ran to its end.
        """
        if self.hurried:
            if asyncio.iscoroutine(awaitable):
                awaitable.close()
            return False
        self._waiting = asyncio.ensure_future(awaitable)
        try:
            await self._waiting
            return True
        except asyncio.CancelledError:
            if not self.hurried:
                raise
            return False
        finally:
            self._waiting = None

    async def finish_calls(self, runner):
        """Stop receiving; in-flight calls get DRAIN_TIMEOUT (none after `stop_now`), then are cancelled."""
        runner.stop_receiving()
        await self.patiently(runner.drain(DRAIN_TIMEOUT))
        await runner.drain(0)  # what `stop_now` left running

    async def finish_lifespan(self, lifespan):
        """Lifespan shutdown (bounded; skipped after `stop_now`), then its task ends."""
        await self.patiently(lifespan.shutdown())
        lifespan.close()

    def stop_now(self):
        """End a stop in progress at once: cancel the wait it is in and skip the others."""
        self.hurried = True
        if self._waiting is not None:
            self._waiting.cancel()

    # -- signals ---------------------------------------------------------
    def on_signal(self, sig):
        """A signal handed over from its handler, in the reactor thread."""
        if sig in STOP_SIGNALS:
            self._stop_signal(sig)
        elif sig == signal.SIGHUP:
            self.on_sighup()
        elif sig == signal.SIGUSR1:
            log_summary(log, self.counters, "received SIGUSR1: ")
        else:
            log.info("received {sig}: ignored", sig=sig.name)

    def on_sighup(self):
        """SIGHUP: the gateway reloads its config (GatewayService); other processes keep theirs and say so."""
        log.info("received SIGHUP: {what} does not reload its config; restart it to apply changes", what=self.what)

    def _stop_signal(self, sig):
        if not (self._stop_asked or self._stopping is not None):
            self._stop_asked = True
            log.info("received {sig}, stopping", sig=sig.name)
            try:
                self._reactor.stop()
            except error.ReactorNotRunning:
                pass
        elif not self.hurried:
            log.info("received {sig} again, stopping now", sig=sig.name)
            self.stop_now()
