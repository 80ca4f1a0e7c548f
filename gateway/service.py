"""GatewayService: wires layer, listeners, tokens, pump and runner, and orders start and stop."""

from contextlib import contextmanager

from twisted.internet import error
from twisted.logger import Logger

from gateway import health, layers, metrics
from gateway.amplification import make_budget
from gateway.delivery import NOT_READY, Delivery, drop
from gateway.guard import SourceTable, make_guard
from gateway.lifespan import Lifespan
from gateway.messages import reply_prefix
from gateway.process import AsyncService, StartupError
from gateway.replies import ReplyPump
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
        self.layer = self.runner = self.pump = self.delivery = self.lifespan = self.prefix = self.tokens = None
        self.listeners = {}
        self.sources = SourceTable(config.limits.max_sources)  # rate_limit's sources, every listener's
        self.budget = make_budget(config.listeners)            # the amplification cap; None: no listener has one

    # -- start: bind (privileged, synchronous), then the async phases, in this order --
    def bind(self):
        """Bind every listener's ports; twistd calls this before dropping privileges (-u/-g)."""
        for listener_config in self.config.listeners:
            listener = self._make_listener(listener_config)
            with _listener_errors(listener):
                listener.privilegedStartService()
            self.listeners[listener.name] = listener
            if listener_config.amplification is None:
                log.info("listener {name}: amplification cap off (amplification: null): replies to a source "
                         "are not limited by the bytes it sent", name=listener.name)
        self.serve_metrics(self.config.metrics, metrics.gateway_collector(
            self.counters, lambda: [l.name for l in self.config.listeners],
            reply_channels=lambda: 0 if self.tokens is None else len(self.tokens),
            calls_in_flight=lambda: 0 if self.runner is None else self.runner.active))

    async def _start(self):
        self._start_listeners()
        await self._connect_layer()
        self._build_data_path()
        await self._start_application()
        self._declare_ready()

    def _start_listeners(self):
        """What follows the bind: multicast joins (as the unprivileged user under twistd -u)."""
        for listener in self.listeners.values():
            with _listener_errors(listener):
                listener.startService()

    async def _connect_layer(self):
        self.layer = layers.BoundedLayer(self._make_layer(), self.config.limits.max_layer_sends)
        await health.check_reachable(self.layer.inner)

    def _build_data_path(self):
        """Tokens, runner, delivery (the listeners' sink) and the reply pump."""
        limits = self.config.limits
        self.prefix = reply_prefix(layers.gateway_id(self.layer.inner))
        self.tokens = TokenTable(max_entries=limits.max_reply_channels, ttl=limits.reply_ttl,
                                 on_forget=self._forget_token)  # monotonic: a clock step expires nothing
        self._make_runner()
        self.delivery = Delivery(
            self.layer, self.tokens, self.prefix, {l.name: l.channel for l in self.config.listeners},
            senders=limits.max_layer_sends, counters=self.counters, quiet=self.quiet,
            runner=self.runner if self.runner and self.runner.reserve_mode else None,
            on_token=self._new_token, budget=self.budget,
        )
        send_channels = {l.send_channel: self.listeners[l.name] for l in self.config.listeners if l.send_channel}
        self.pump = ReplyPump(self.layer, self.prefix, self.tokens, self.listeners, send_channels,
                              counters=self.counters, quiet=self.quiet, budget=self.budget)
        self.pump.start()
        self.delivery.start()

    async def _start_application(self):
        if self.app is not None:
            self.lifespan = Lifespan(self.app, self.layer)
            await self.lifespan.startup()
            self.runner.start()

    def _declare_ready(self):
        self.delivery.ready = True
        self._reporter.start()
        log.info("udpgateway ready: {n} listener(s), reply channels {prefix}*", n=len(self.listeners),
                 prefix=self.prefix)

    def _receive(self, datagram):
        """The listeners' sink: Delivery once it exists; before that, dropped as not ready."""
        if self.delivery is not None:
            self.delivery(datagram)
            return
        self.counters.incr("received", listener=datagram.listener)
        drop(self.counters, self.quiet, "not_ready", NOT_READY, listener=datagram.listener)

    def _make_layer(self):
        layer_config = dict(self.config.channel_layer.config)
        if self.config.channel_layer.backend == "memory":
            # Nothing queues in front of the app: udp.receive never holds more
            # than max_concurrency reserved messages.
            layer_config.setdefault("capacity", max(100, self.config.limits.max_concurrency))
        return layers.make_layer(self.config.channel_layer.backend, layer_config)

    def _make_runner(self):
        if self.app is None:
            return
        channels = [l.channel for l in self.config.listeners]
        self.runner = AppRunner(
            self.app, self.layer, channels, max_concurrency=self.config.limits.max_concurrency,
            counters=self.counters, quiet=self.quiet, reserve=self.config.channel_layer.backend == "memory",
            app_timeout=self.config.limits.app_timeout,
        )

    def _make_listener(self, listener_config):
        kwargs = dict(sink=self._receive, reactor=self._reactor, counters=self.counters, quiet=self.quiet)
        if listener_config.type == "multicast":
            kwargs["poll_interval"] = self.config.limits.interface_poll
        listener = KINDS[listener_config.type](listener_config, **kwargs)
        listener.guard = make_guard(listener_config, table=self.sources, counters=self.counters, quiet=self.quiet)
        return listener

    def _new_token(self, token):
        if self.pump is not None:
            self.pump.watch(token)

    def _forget_token(self, token):
        if self.budget is not None:
            self.budget.forget(token)
        if self.pump is not None:
            self.pump.unwatch(token)

    # -- stop: design.md's order; a second stop signal cuts the waits short (AsyncService.patiently) --
    async def _stop(self):
        if self.delivery is not None:
            self.delivery.ready = False
        if self.runner is not None:
            await self.finish_calls(self.runner)
        if self.lifespan is not None:
            await self.finish_lifespan(self.lifespan)
        await self._flush_sends()
        await self._close()

    async def _flush_sends(self):
        """Queued datagrams reach the layer; queued replies and send_channel messages leave."""
        if self.delivery is not None:
            await self.patiently(self.delivery.flush())
            self.delivery.stop()
        if self.pump is not None:
            self.pump.stop()
            await self.patiently(self.pump.flush())

    async def _close(self):
        for listener in list(self.listeners.values()):
            await health.as_future(listener.stopService())
        self.listeners = {}
        await self.close_metrics()
        self._reporter.stop()
        if self.layer is not None:
            await health.close_layer(self.layer.inner)


@contextmanager
def _listener_errors(listener):
    """A listener that cannot bind or start: one StartupError line naming it."""
    try:
        yield
    except error.CannotListenError as exc:
        raise StartupError(f"listener {listener.name}: cannot bind {exc.interface or '*'}:{exc.port}: "
                           f"{exc.socketError}") from None
    except (OSError, RuntimeError) as exc:
        raise StartupError(f"listener {listener.name}: {exc}") from None
