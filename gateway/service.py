"""GatewayService: wires layer, listeners, tokens, pump and runner, and orders start, reload and stop."""

import asyncio
from contextlib import contextmanager

from twisted.internet import error
from twisted.logger import Logger

from gateway import layers, metrics, reload
from gateway.admission import Admission
from gateway.amplification import make_budget
from gateway.delivery import NOT_READY, Delivery, drop
from gateway.guard import SourceTable, make_guard
from gateway.lifespan import Lifespan
from gateway.messages import reply_prefix
from gateway.process import AsyncService, StartupError, as_future
from gateway.replies import DirectReplies, ReplyPump
from gateway.runner import AppRunner
from gateway.tokens import TokenTable
from listeners import KINDS
from listeners.activation import AdoptError

log = Logger()


class GatewayService(AsyncService):
    """The whole gateway process as one Twisted service.

    `started` fires when datagrams are being delivered; `stopService()`
    returns one Deferred covering design.md's whole stop sequence.
    """

    def __init__(self, config, *, reactor, app=None, on_fatal=None, signals=False, inherited=None):
        super().__init__(reactor=reactor, on_fatal=on_fatal, signals=signals)
        self.config = config
        self.app = app
        self.inherited = dict(inherited or {})  # name -> fds passed by systemd (LISTEN_FDNAMES)
        self.layer = self.runner = self.pump = self.delivery = self.lifespan = self.prefix = self.tokens = None
        self.admission = self.app_layer = None
        self.listeners = {}
        self.sources = SourceTable(config.limits.max_sources)  # rate_limit's sources, every listener's
        self.budget = make_budget(config.listeners)            # the amplification cap; None: no listener has one
        self._reloading = None  # the running reload's task

    # -- start: bind (privileged, synchronous), then the async phases, in this order --
    def bind(self):
        """Bind every listener's ports; twistd calls this before dropping privileges (-u/-g)."""
        for listener_config in self.config.listeners:
            listener = self._make_listener(listener_config)
            with _listener_errors(listener):
                listener.privilegedStartService()
            self.listeners[listener.name] = listener
        for name in sorted(self.inherited.keys() - self.listeners.keys()):
            log.warn("systemd passed fd {fds} named {fdname}, which is no listener's name: not used",
                     fds=" ".join(map(str, self.inherited[name])), fdname=name)
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
        self.layer = layers.LayerClient(self._make_layer(), self.config.limits.max_layer_sends)
        await self.layer.check_reachable()

    def _build_data_path(self):
        """Tokens, admission, delivery (the listeners' sink), the reply pump and the runner."""
        limits = self.config.limits
        self.prefix = reply_prefix(self.layer.gateway_id)
        self.tokens = TokenTable(max_entries=limits.max_reply_channels, ttl=limits.reply_ttl,
                                 on_forget=self._forget_token)  # monotonic: a clock step expires nothing
        self.admission = Admission(limits.max_concurrency)
        self._add_gauges()
        self.delivery = Delivery(
            self.layer, self.tokens, self.prefix, {l.name: l.channel for l in self.config.listeners},
            senders=limits.max_layer_sends, counters=self.counters, quiet=self.quiet, admission=self.admission,
            budget=self.budget,
        )
        send_channels = {l.send_channel: self.listeners[l.name] for l in self.config.listeners if l.send_channel}
        self.pump = ReplyPump(self.layer, self.prefix, self.tokens, self.listeners, send_channels,
                              counters=self.counters, quiet=self.quiet, budget=self.budget)
        if not self.pump.prefix_receive:
            self.delivery.on_token = self.pump.watch  # one receive per live reply channel
        self.app_layer = self._make_runner()
        self.pump.start()
        self.delivery.start()

    def _add_gauges(self):
        """Sizes the summary line (and SIGUSR1) shows beside the counters."""
        self.counters.gauges.update(reply_channels=self.tokens.__len__, calls_in_flight=lambda: self.admission.in_use)
        self.watch_collections()

    async def _start_application(self):
        if self.app is not None:
            self.lifespan = Lifespan(self.app, self.app_layer)
            await self.lifespan.startup()
            self.runner.start()

    def _declare_ready(self):
        self.delivery.ready = True
        self._reporter.start()
        self.freeze_startup_objects()
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
            app_timeout=self.config.limits.app_timeout,
        )
        if memory:
            self.delivery.runner = self.runner
        return app_layer

    def _make_listener(self, listener_config):
        kwargs = dict(sink=self._receive, reactor=self._reactor, counters=self.counters, quiet=self.quiet,
                      fds=self._fds_of(listener_config))
        if listener_config.type == "multicast":
            kwargs["poll_interval"] = self.config.limits.interface_poll
        listener = KINDS[listener_config.type](listener_config, **kwargs)
        listener.guard = make_guard(listener_config, table=self.sources, counters=self.counters, quiet=self.quiet)
        if listener_config.amplification is None:
            log.info("listener {name}: amplification cap off (amplification: null): replies to a source "
                     "are not limited by the bytes it sent", name=listener.name)
        return listener

    def _fds_of(self, listener_config):
        """The sockets a listener adopts: its `fd`, else those systemd passed under its name; () to bind."""
        if listener_config.fd is not None:
            return (listener_config.fd,)
        return tuple(self.inherited.get(listener_config.name, ()))

    def _set_amplification(self, listener_configs):
        """A reload's factors: unchanged listeners keep their channels' accounting (changed ones lost their tokens)."""
        if self.budget is None:
            self.budget = make_budget(listener_configs)
        else:
            self.budget.set_factors({l.name: l.amplification for l in listener_configs})
        self.delivery.budget = self.pump.budget = self.budget

    def _forget_token(self, token):
        if self.budget is not None:
            self.budget.forget(token)
        if self.pump is not None:
            self.pump.unwatch(token)

    # -- reload (SIGHUP): check the file as `udpgateway check` does, bind what is new, then close what went --
    def on_sighup(self):
        refusal = self._reload_refusal()
        if refusal:
            log.info("reload: ignored, {why}", why=refusal)
            return
        log.info("received SIGHUP: reloading {path}", path=self.config.path)
        self._reloading = asyncio.ensure_future(self._reload())

    def _reload_refusal(self):
        if self._stopping is not None or self._stop_asked:
            return "the gateway is stopping"
        if self._reloading is not None and not self._reloading.done():
            return "a reload is already running"
        if self.delivery is None or not self.delivery.ready:
            return "the gateway is still starting"
        return None

    async def _reload(self):
        try:
            new = reload.load_checked(self.config.path)
            if new is not None:
                await self._apply_reload(reload.plan(self.config, new))
        except Exception:
            log.failure("reload: failed unexpectedly; the running config stays")

    async def _apply_reload(self, plan):
        for key in plan.restart:
            log.warn("reload: {key} changed: not applied, it needs a restart", key=key)
        swap = reload.ListenerSwap(self.listeners, self._start_listener, lambda config: bool(self._fds_of(config)))
        channels = self.delivery.channels
        self.delivery.channels = {**{l.name: l.channel for l in plan.added}, **channels}  # new ones may hear first
        try:
            outgoing = await swap.bind(plan)
        except reload.BindFailed as exc:
            self.delivery.channels = channels
            for line in swap.lost:
                log.error("{line}", line=line)
            log.error("reload: rolled back, {why}; still serving with the running config", why=exc)
            return
        self._commit_reload(plan, swap.started)
        closing = [as_future(listener.stopService()) for listener in outgoing]  # all stop reading now
        await asyncio.gather(*closing)
        log.info("{summary}", summary=reload.summary(plan))

    def _start_listener(self, listener_config):
        """A listener bound and started now (a reload); BindFailed with its one line if it cannot."""
        listener = self._make_listener(listener_config)
        try:
            with _listener_errors(listener):
                listener.privilegedStartService()
                listener.startService()
        except StartupError as exc:
            raise reload.BindFailed(str(exc)) from None
        return listener

    def _commit_reload(self, plan, started):
        """The new listeners serve; replies to the closed ones' clients are unknown from now on."""
        gone = set(plan.removed) | {l.name for l in plan.changed}
        for name in plan.removed:
            del self.listeners[name]
        self.listeners.update(started)
        self.tokens.forget_if(lambda key: key[0] in gone)
        self.config = config = plan.config
        self._set_amplification(config.listeners)
        self.delivery.channels = {l.name: l.channel for l in config.listeners}
        self.pump.set_send_channels({l.send_channel: self.listeners[l.name] for l in config.listeners
                                     if l.send_channel})
        self.tokens.ttl = config.limits.reply_ttl
        if self.runner is not None:
            self.runner.app_timeout = config.limits.app_timeout
            for listener_config in config.listeners:
                self.runner.consume(listener_config.channel)
        if "interface_poll" in plan.live_limits:
            for listener in self.listeners.values():
                if hasattr(listener, "set_poll_interval"):
                    listener.set_poll_interval(config.limits.interface_poll)

    # -- stop: design.md's order; a second stop signal cuts the waits short (AsyncService.patiently) --
    async def _stop(self):
        if self._reloading is not None:
            await asyncio.wait({self._reloading})  # binds are synchronous: a reload ends in a moment
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
            await as_future(listener.stopService())
        self.listeners = {}
        await self.close_metrics()
        self._reporter.stop()
        self.gc_watch.stop()
        if self.layer is not None:
            await self.layer.close()


@contextmanager
def _listener_errors(listener):
    """A listener that cannot bind or start: one StartupError line naming it."""
    try:
        yield
    except error.CannotListenError as exc:
        raise StartupError(f"listener {listener.name}: cannot bind {exc.interface or '*'}:{exc.port}: "
                           f"{exc.socketError}") from None
    except (OSError, RuntimeError, AdoptError) as exc:
        raise StartupError(f"listener {listener.name}: {exc}") from None
