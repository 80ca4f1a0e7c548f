"""`udpgateway worker`: the application runner as its own process against a shared layer."""

import asyncio

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from gateway import health, layers
from gateway.lifespan import Lifespan
from gateway.runner import AppRunner
from gateway.service import DRAIN_TIMEOUT, REPORT_INTERVAL, install_stop_handlers
from gateway.stats import CounterReporter, Counters, QuietLog

log = Logger()


class WorkerService(service.Service):
    """Consumes `channels` and runs the application, several messages at once.

    At `max_concurrency` calls in flight it stops receiving (AppRunner takes a
    slot before each receive), so the messages wait in the layer for another
    worker instead of piling up here.
    """

    def __init__(self, config, app, channels, *, reactor, on_fatal=None, signals=False):
        self.config = config
        self.app = app
        self.channels = channels
        self.counters = Counters()
        self.quiet = QuietLog(clock=reactor)
        self.started = None
        self._reactor = reactor
        self._on_fatal = on_fatal
        self._signals = signals
        self._reporter = CounterReporter(self.counters, log, interval=REPORT_INTERVAL, clock=reactor)
        self.layer = self.runner = self.lifespan = None
        self._stopping = None

    def startService(self):
        service.Service.startService(self)
        if self._signals:
            self._reactor.callWhenRunning(install_stop_handlers, self._reactor)
        self.started = defer.Deferred.fromFuture(asyncio.ensure_future(self._start()))
        if self._on_fatal is not None:
            self.started.addErrback(lambda f: self._on_fatal(_fatal_line(f)))

    async def _start(self):
        limits = self.config.limits
        backend = self.config.channel_layer
        self.layer = layers.BoundedLayer(layers.make_layer(backend.backend, dict(backend.config)),
                                         limits.max_layer_sends)
        await health.check_reachable(self.layer.inner)
        if _delivers_to_every_receiver(self.layer.inner):
            log.warn("{layer} delivers each message to every worker receiving its channel: each datagram "
                     "is handled (and answered) once per running worker", layer=type(self.layer.inner).__name__)
        self.runner = AppRunner(self.app, self.layer, self.channels, max_concurrency=limits.max_concurrency,
                                counters=self.counters, quiet=self.quiet)
        self.lifespan = Lifespan(self.app, self.layer)
        await self.lifespan.startup()
        self.runner.start()
        self._reporter.start()
        log.info("udpgateway worker consuming {channels} (up to {n} messages at once)",
                 channels=", ".join(self.runner.channels), n=limits.max_concurrency)

    def stopService(self):
        service.Service.stopService(self)
        if self._stopping is None:
            self._stopping = defer.Deferred.fromFuture(asyncio.ensure_future(self._stop()))
        return self._stopping

    async def _stop(self):
        """Stop receiving, drain in-flight calls, lifespan shutdown, close the layer."""
        if self.runner is not None:
            self.runner.stop_receiving()
            await self.runner.drain(DRAIN_TIMEOUT)
        if self.lifespan is not None:
            await self.lifespan.shutdown()
        self._reporter.stop()
        if self.layer is not None:
            await health.close_layer(self.layer.inner)


def _delivers_to_every_receiver(layer):
    """channels_redis' pub/sub layer: every subscriber of a channel gets each message."""
    return any(getattr(base, "__module__", "") == "channels_redis.pubsub" for base in type(layer).__mro__)


def _fatal_line(failure):
    exc = failure.value
    if isinstance(exc, health.LayerUnreachable):
        return str(exc)
    if type(exc).__name__ == "LifespanFailure":
        return f"lifespan startup failed: {exc}"
    log.failure("udpgateway worker failed to start", failure=failure)
    return f"udpgateway worker failed to start: {health.error_text(exc)}"
