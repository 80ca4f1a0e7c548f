"""Datagram → `udp.receive`: tokens, readiness, admission; straight to the app, or a bounded queue of layer sends."""

import asyncio

from gateway.layers.errors import error_text
from gateway.messages import build_receive

SEND_QUEUE = 1000  # datagrams waiting for a layer send; past it the arriving one is dropped
NOT_READY = "datagram arrived before startup completed or during stop"


class Delivery:
    """The listeners' sink: turns each Datagram into a message and delivers it, bounded.

    With `runner` (the memory layer, the application in this process) the
    message goes straight to a new application instance, started at once, if
    `admission` has a free slot; else the datagram is dropped and counted. The
    application sees exactly what the layer would have handed it. Otherwise
    sends run in `senders` tasks pulling from one bounded queue; the layer is a
    LayerClient, so they share `max_layer_sends` with the application's sends.

    `on_token(token)` (layers without prefix receive: the pump's watch) may
    return an awaitable done once a receive on the new reply channel began;
    the datagram's send waits for it, so that a pub/sub layer subscribes to
    the reply channel before the datagram can reach a worker.
    """

    def __init__(self, layer, tokens, prefix, channels, *, senders, counters, quiet, runner=None,
                 admission=None, on_token=None, budget=None, queue_size=SEND_QUEUE):
        self.layer = layer
        self.tokens = tokens
        self.prefix = prefix
        self.channels = channels  # listener name -> channel
        self.counters = counters
        self.quiet = quiet
        self.runner = runner      # set in memory mode: hand messages to it directly
        self.admission = admission
        self.on_token = on_token
        self.budget = budget      # the amplification cap's accounting (ReplyBudget), or None
        self.ready = False
        self._senders = senders
        self._queue = asyncio.Queue(queue_size)
        self._tasks = []

    def start(self):
        if self.runner is None:
            self._tasks = [asyncio.ensure_future(self._send_loop()) for _ in range(self._senders)]

    async def flush(self, timeout=1.0):
        """Give queued messages a moment to reach the layer."""
        try:
            await asyncio.wait_for(self._queue.join(), timeout)
        except asyncio.TimeoutError:
            pass

    def stop(self):
        """Stop the senders; whatever is still queued stays unsent."""
        self.ready = False
        for task in self._tasks:
            task.cancel()
        self._tasks = []

    def __call__(self, datagram):
        self.counters.incr("received", listener=datagram.listener)
        if not self.ready:
            self._drop("not_ready", NOT_READY, datagram.listener)
            return
        if self.runner is not None and not self.admission.try_acquire():
            self._drop("concurrency", "max_concurrency application calls are running", datagram.listener)
            return
        message, begun = self._message(datagram)
        channel = self.channels[datagram.listener]
        if self.runner is not None:
            self.runner.run(channel, message)
            return
        try:
            self._queue.put_nowait((channel, message, begun))
        except asyncio.QueueFull:
            self._drop("queue_full", "the queue of layer sends is full", datagram.listener)

    def _message(self, datagram):
        """(the udp.receive message, what its send waits for first or None)."""
        token = self.tokens.token_for((datagram.listener, datagram.client), stored_route(datagram))
        begun = None if self.on_token is None else self.on_token(token)
        if self.budget is not None:
            self.budget.received(token, datagram.listener, len(datagram.data))
        return build_receive(
            data=datagram.data, client=datagram.client, server=datagram.server,
            listener=datagram.listener, reply_channel=self.prefix + token, interface=datagram.interface,
        ), begun

    async def _send_loop(self):
        while True:
            channel, message, begun = await self._queue.get()
            try:
                if begun is not None:
                    await begun
                await self.layer.send(channel, message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                reason = "channel_full" if type(exc).__name__ == "ChannelFull" else "layer_error"
                self._drop(reason, f"sending to {channel} failed: {error_text(exc)}", message["listener"])
            finally:
                self._queue.task_done()

    def _drop(self, reason, why, listener):
        drop(self.counters, self.quiet, reason, why, listener=listener)


def stored_route(datagram):
    """(listener, IP version, *route fields) as the token table keeps it: one flat tuple of plain values.

    Plain (not the Route namedtuple) so the collector stops tracking it, and
    without the fields a reply from the routing table's choice leaves at their
    defaults: 100,000 reply channels hold a few tens of MB, not more.
    """
    route = datagram.route
    if route.source is None and not route.ifindex and route.group is None and not route.arrived_on:
        return (datagram.listener, datagram.version, route.port, route.address)
    return (datagram.listener, datagram.version, *route)


def drop(counters, quiet, reason, why, *, listener=None):
    """Count an arriving datagram as dropped_<reason> (for its listener), and say why (rate-limited)."""
    counters.incr(f"dropped_{reason}", listener=listener)
    quiet.warn(f"in-{reason}", "dropped a datagram: {why}", why=why)
