"""`udpgateway worker`: the application runner as its own process against a shared layer."""

from twisted.logger import Logger

from gateway import layers, metrics
from gateway.admission import Admission
from gateway.lifespan import Lifespan
from gateway.process import AsyncService
from gateway.layers.redis import from_channels_redis
from gateway.runner import AppRunner

log = Logger()


class WorkerService(AsyncService):
    """Consumes `channels` and runs the application, several messages at once.

    At `max_concurrency` calls in flight it stops receiving (AppRunner takes an
    Admission slot before each receive), so the messages wait in the layer for another
    worker instead of piling up here.
    """

    what = "udpgateway worker"

    def __init__(self, config, app, channels, *, reactor, on_fatal=None, signals=False):
        super().__init__(reactor=reactor, on_fatal=on_fatal, signals=signals)
        self.config = config
        self.app = app
        self.channels = channels
        self.layer = self.runner = self.lifespan = None

    def bind(self):
        """The worker's only socket of its own: the metrics endpoint, if its config has one."""
        self.serve_metrics(self.config.metrics, metrics.worker_collector(
            self.counters, calls_in_flight=lambda: 0 if self.runner is None else self.runner.active))

    async def _start(self):
        limits = self.config.limits
        backend = self.config.channel_layer
        self.layer = layers.LayerClient(layers.make_layer(backend.backend, dict(backend.config)),
                                        limits.max_layer_sends)
        await self.layer.check_reachable()
        if from_channels_redis(type(self.layer.inner), "channels_redis.pubsub"):
            log.warn("{layer} delivers each message to every worker receiving its channel: each datagram "
                     "is handled (and answered) once per running worker", layer=type(self.layer.inner).__name__)
        self.runner = AppRunner(self.app, self.layer, self.channels, admission=Admission(limits.max_concurrency),
                                counters=self.counters, quiet=self.quiet, app_timeout=limits.app_timeout)
        self.lifespan = Lifespan(self.app, self.layer)
        await self.lifespan.startup()
        self.counters.gauges["calls_in_flight"] = lambda: self.runner.active
        self.watch_collections()
        self.runner.start()
        self._reporter.start()
        self.freeze_startup_objects()
        log.info("udpgateway worker consuming {channels} (up to {n} messages at once)",
                 channels=", ".join(self.runner.channels), n=limits.max_concurrency)

    async def _stop(self):
        """Stop receiving, drain in-flight calls, lifespan shutdown, close the layer (a second signal: at once)."""
        if self.runner is not None:
            await self.finish_calls(self.runner)
        if self.lifespan is not None:
            await self.finish_lifespan(self.lifespan)
        await self.close_metrics()
        self._reporter.stop()
        self.gc_watch.stop()
        if self.layer is not None:
            await self.layer.close()
