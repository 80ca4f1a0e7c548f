"""Datagram → `udp.receive` on the layer: tokens, readiness, a bounded queue of layer sends."""

import asyncio

from gateway.health import error_text
from gateway.messages import build_receive

SEND_QUEUE = 1000  # datagrams waiting for a layer send; past it the arriving one is dropped
NOT_READY = "datagram arrived before startup completed or during stop"


class Delivery:
    """The listeners' sink: turns each Datagram into a message and sends it, bounded.

    Sends run in `senders` worker tasks pulling from one bounded queue; the
    layer itself is a BoundedLayer, so they share `max_layer_sends` with the
    application's own sends.
    """

    def __init__(self, layer, tokens, prefix, channels, *, senders, counters, quiet, runner=None,
                 on_token=None, budget=None, queue_size=SEND_QUEUE):
        self.layer = layer
        self.tokens = tokens
        self.prefix = prefix
        self.channels = channels  # listener name -> channel
        self.counters = counters
        self.quiet = quiet
        self.runner = runner      # set in memory mode: reserve a slot or drop
        self.on_token = on_token
        self.budget = budget      # the amplification cap's accounting (ReplyBudget), or None
        self.ready = False
        self._senders = senders
        self._queue = asyncio.Queue(queue_size)
        self._tasks = []

    def start(self):
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
        if self.runner is not None and not self.runner.try_reserve():
            self._drop("concurrency", "max_concurrency application calls are running", datagram.listener)
            return
        token = self.tokens.token_for((datagram.listener, datagram.client),
                                      (datagram.listener, datagram.version, datagram.route))
        if self.on_token is not None:
            self.on_token(token)
        if self.budget is not None:
            self.budget.received(token, datagram.listener, len(datagram.data))
        message = build_receive(
            data=datagram.data, client=datagram.client, server=datagram.server,
            listener=datagram.listener, reply_channel=self.prefix + token, interface=datagram.interface,
        )
        try:
            self._queue.put_nowait((self.channels[datagram.listener], message))
        except asyncio.QueueFull:
            self._unreserve()
            self._drop("queue_full", "the queue of layer sends is full", datagram.listener)

    async def _send_loop(self):
        while True:
            channel, message = await self._queue.get()
            try:
                await self.layer.send(channel, message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._unreserve()
                reason = "channel_full" if type(exc).__name__ == "ChannelFull" else "layer_error"
                self._drop(reason, f"sending to {channel} failed: {error_text(exc)}", message["listener"])
            finally:
                self._queue.task_done()

    def _unreserve(self):
        if self.runner is not None:
            self.runner.unreserve()

    def _drop(self, reason, why, listener):
        drop(self.counters, self.quiet, reason, why, listener=listener)


def drop(counters, quiet, reason, why, *, listener=None):
    """Count an arriving datagram as dropped_<reason> (for its listener), and say why (rate-limited)."""
    counters.incr(f"dropped_{reason}", listener=listener)
    quiet.warn(f"in-{reason}", "dropped a datagram: {why}", why=why)
