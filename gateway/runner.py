"""Run the ASGI application for each message of the listeners' channels, bounded in concurrency."""

import asyncio

from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway import redislayer
from gateway.clock import MONOTONIC
from gateway.health import error_text
from gateway.messages import SEND_TYPE

log = Logger()
_RETRY_DELAY = 1.0  # after a failed layer receive (Redis down), before trying again


class _Instance:
    """One application call: its message, its own task, and whether it ended itself."""

    def __init__(self, message):
        self.message = message
        self.task = None
        self.timer = None       # the app_timeout handle, cancelled when the call ends
        self.delivered = False
        self.ended = False
        self.timed_out = False
        self.started = MONOTONIC.seconds()

    def time_out(self):
        """Cancel a call that ran past app_timeout (told apart from other cancels by `timed_out`)."""
        if not self.task.done() and not self.ended:
            self.timed_out = True
            self.task.cancel()

    async def receive(self):
        if not self.delivered:
            self.delivered = True
            return self.message
        # A second receive() ends the instance: one message per instance.
        self.ended = True
        self.task.cancel()
        await asyncio.Future()


class AppRunner:
    """Consumes channels from a layer and calls `app(scope, receive, send)` per message.

    `reserve=True` is the in-process memory-layer mode: the gateway reserves a
    slot before it sends a datagram to the layer and drops it when none is
    free, so nothing queues in front of the application. Otherwise each
    receive loop takes a slot before receiving, so a busy process stops
    receiving and other workers take the load.
    """

    def __init__(self, app, layer, channels, *, max_concurrency, counters, quiet, reserve=False, app_timeout=None):
        self.app = app
        self.app_timeout = app_timeout  # seconds, or None: calls may run for ever
        self.layer = layer
        self.channels = list(dict.fromkeys(channels))
        self.max_concurrency = max_concurrency
        self.counters = counters
        self.quiet = quiet
        self.reserve_mode = reserve
        self._receive = redislayer.receiver(layer)
        self._reserved = 0
        self._slots = None
        self._loops = []
        self._instances = set()

    @property
    def active(self):
        return len(self._instances)

    def try_reserve(self):
        """Take a slot for a message about to be sent to the layer (memory mode)."""
        if self._reserved + len(self._instances) >= self.max_concurrency:
            return False
        self._reserved += 1
        return True

    def unreserve(self):
        self._reserved = max(0, self._reserved - 1)

    def start(self):
        self._slots = asyncio.Semaphore(self.max_concurrency)
        self._loops = [asyncio.ensure_future(self._receive_loop(c)) for c in self.channels]

    def consume(self, channel):
        """Also receive from `channel` (a reload added a listener with a channel of its own)."""
        if channel in self.channels:
            return
        self.channels.append(channel)
        if self._slots is not None:
            self._loops.append(asyncio.ensure_future(self._receive_loop(channel)))

    def stop_receiving(self):
        for loop in self._loops:
            loop.cancel()
        self._loops = []

    async def drain(self, timeout):
        """Wait up to `timeout` seconds for in-flight calls, then cancel the rest."""
        pending = [i.task for i in self._instances]
        if pending:
            _done, late = await asyncio.wait(pending, timeout=timeout)
            for task in late:
                task.cancel()
            if late:
                log.warn("cancelled {n} application calls still running after {t}s", n=len(late), t=timeout)
                await asyncio.wait(late, timeout=1)

    async def _receive_loop(self, channel):
        while True:
            if not self.reserve_mode:
                await self._slots.acquire()
            try:
                message = await self._receive(channel)
            except asyncio.CancelledError:
                self._release_slot()
                raise
            except Exception as exc:
                self._release_slot()
                self.counters.incr("layer_errors")
                self.quiet.warn(f"receive-{channel}", "receiving from {channel} failed: {err}",
                                channel=channel, err=error_text(exc))
                await asyncio.sleep(_RETRY_DELAY)
                continue
            if self.reserve_mode:
                self.unreserve()
            self.spawn(channel, message)

    def _release_slot(self):
        if not self.reserve_mode:
            self._slots.release()

    def spawn(self, channel, message):
        """Start one application instance for `message`."""
        scope = {"type": "channel", "channel": channel, "channel_layer": self.layer}
        instance = _Instance(message)
        instance.task = asyncio.ensure_future(self._call(scope, instance))
        self._instances.add(instance)
        if self.app_timeout is not None:
            # One timer handle per call, no wait_for wrapper task.
            instance.timer = asyncio.get_event_loop().call_later(self.app_timeout, instance.time_out)
        instance.task.add_done_callback(lambda task: self._finished(instance, task))

    async def _call(self, scope, instance):
        async def send(reply):
            # ASGI-style convenience: a udp.send through `send` answers this message.
            if not isinstance(reply, dict) or reply.get("type") != SEND_TYPE:
                raise ValueError(f"send() takes udp.send messages, not {reply!r:.80}")
            await self.layer.send(instance.message["reply_channel"], reply)

        await self.app(scope, instance.receive, send)

    def _finished(self, instance, task):
        self.counters.call_time.observe(MONOTONIC.seconds() - instance.started)
        self._instances.discard(instance)
        self._release_slot()
        if instance.timer is not None:
            instance.timer.cancel()
        if instance.timed_out:
            if not task.cancelled():
                task.exception()  # the app answered the cancel by raising: still a timeout, not an error
            self._timed_out(instance)
            return
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            # Logged with its traceback, at most once per interval per exception
            # type: an app failing on every message (Redis gone) must not flood the log.
            self.counters.incr("app_errors")
            message = instance.message if isinstance(instance.message, dict) else {}
            self.quiet.failure(f"app-{type(exc).__name__}", "application raised on a message from listener {listener}",
                               Failure(exc, type(exc), exc.__traceback__), listener=message.get("listener", "?"))

    def _timed_out(self, instance):
        self.counters.incr("app_timeouts")
        message = instance.message if isinstance(instance.message, dict) else {}
        self.quiet.warn("app-timeout", "application call on a message from listener {listener} ran longer than "
                        "app_timeout ({timeout}s): cancelled", listener=message.get("listener", "?"),
                        timeout=self.app_timeout)
