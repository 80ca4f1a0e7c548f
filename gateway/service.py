"""GatewayService: wires layer, listeners, tokens, pump and runner, and orders start and stop."""

import gc

from twisted.internet import error
from twisted.logger import Logger

from gateway import health, layers
from gateway.admission import Admission
from gateway.delivery import Delivery
from gateway.gcwatch import GcWatch
from gateway.lifespan import Lifespan
from gateway.messages import reply_prefix
from gateway.process import DRAIN_TIMEOUT, AsyncService, StartupError
from gateway.replies import DirectReplies, ReplyPump
from gateway.runner import AppRunner
from gateway.tokens import TokenTable
from listeners import KINDS

log = Logger()


class GatewayService(AsyncService):
    """The whole gateway process as one Twisted service.

    `started` fires when datagrams are being delivered; `stopService()`
    returns one Deferred covering design.md's whole stop sequence.
    """

    def __init__(self, config, *, reactor, app=None, on_fatal=None, signals=False):
        super().__init__(reactor=reactor, on_fatal=on_fatal, signals=signals)
        self.config = config
        self.app = app
        self.layer = self.runner = self.pump = self.delivery = self.lifespan = self.admission = None
        self.listeners = {}
        self.gc_watch = GcWatch()

    # -- start -----------------------------------------------------------
    async def _start(self):
        limits = self.config.limits
        self.layer = layers.BoundedLayer(self._make_layer(), limits.max_layer_sends)
        await health.check_reachable(self.layer.inner)
        prefix = reply_prefix(layers.gateway_id(self.layer.inner))
        self.tokens = TokenTable(max_entries=limits.max_reply_channels, ttl=limits.reply_ttl,
                                 clock=self._reactor, on_forget=self._forget_token)
        self.admission = Admission(limits.max_concurrency)
        self.counters.gauges.update(reply_channels=self.tokens.__len__, calls_in_flight=lambda: self.admission.in_use,
                                    gc_full=lambda: self.gc_watch.full, gc_longest_ms=lambda: self.gc_watch.longest_ms)
        self.gc_watch.start()
        self.delivery = Delivery(
            self.layer, self.tokens, prefix, {l.name: l.channel for l in self.config.listeners},
            senders=limits.max_layer_sends, counters=self.counters, quiet=self.quiet,
            admission=self.admission,
        )
        self._bind_listeners()
        send_channels = {l.send_channel: self.listeners[l.name] for l in self.config.listeners if l.send_channel}
        self.pump = ReplyPump(self.layer, prefix, self.tokens, self.listeners, send_channels,
                              counters=self.counters, quiet=self.quiet)
        if not self.pump.prefix_receive:
            self.delivery.on_token = self.pump.watch  # one receive per live reply channel
        app_layer = self._make_runner()
        self.pump.start()
        self.delivery.start()
        if self.app is not None:
            self.lifespan = Lifespan(self.app, app_layer)
            await self.lifespan.startup()
            self.runner.start()
        self.delivery.ready = True
        self._reporter.start()
        if self._signals:  # the whole process (twistd): what exists now lives as long as it
            gc.freeze()
        log.info("udpgateway ready: {n} listener(s), reply channels {prefix}*", n=len(self.listeners), prefix=prefix)

    def _make_layer(self):
        layer_config = dict(self.config.channel_layer.config)
        if self.config.channel_layer.backend == "memory":
            # Nothing queues in front of the app: udp.receive never holds more
            # than max_concurrency reserved messages.
            layer_config.setdefault("capacity", max(100, self.config.limits.max_concurrency))
        return layers.make_layer(self.config.channel_layer.backend, layer_config)

    def _make_runner(self):
        """The application runner, if any; on the memory layer it takes datagrams straight from delivery.

        Returns the layer the application sees (its own replies skip the
        memory layer's queue there).
        """
        if self.app is None:
            return self.layer
        memory = self.config.channel_layer.backend == "memory"
        app_layer = DirectReplies(self.layer, self.pump) if memory else self.layer
        self.runner = AppRunner(
            self.app, self.layer, [l.channel for l in self.config.listeners], admission=self.admission,
            counters=self.counters, quiet=self.quiet, app_layer=app_layer, wait_before_receive=not memory,
        )
        if memory:
            self.delivery.runner = self.runner
        return app_layer

    def _bind_listeners(self):
        for listener_config in self.config.listeners:
            kind = KINDS[listener_config.type]
            kwargs = dict(sink=self.delivery, reactor=self._reactor, counters=self.counters, quiet=self.quiet)
            if listener_config.type == "multicast":
                kwargs["poll_interval"] = self.config.limits.interface_poll
            listener = kind(listener_config, **kwargs)
            try:
                listener.startService()
            except error.CannotListenError as exc:
                raise StartupError(f"listener {listener.name}: cannot bind {exc.interface or '*'}:{exc.port}: "
                                   f"{exc.socketError}") from None
            except (OSError, RuntimeError) as exc:
                raise StartupError(f"listener {listener.name}: {exc}") from None
            finally:
                if listener.running:
                    self.listeners[listener.name] = listener

    def _forget_token(self, token):
        if self.pump is not None:
            self.pump.unwatch(token)

    # -- stop ------------------------------------------------------------
    async def _stop(self):
        if self.delivery is not None:
            self.delivery.ready = False
        if self.runner is not None:
            self.runner.stop_receiving()
            await self.runner.drain(DRAIN_TIMEOUT)
        if self.lifespan is not None:
            await self.lifespan.shutdown()
        if self.delivery is not None:
            await self.delivery.stop()
        if self.pump is not None:
            self.pump.stop()
            await self.pump.flush()
        for listener in list(self.listeners.values()):
            await health.as_future(listener.stopService())
        self.listeners = {}
        self._reporter.stop()
        self.gc_watch.stop()
        if self.layer is not None:
            await health.close_layer(self.layer.inner)
