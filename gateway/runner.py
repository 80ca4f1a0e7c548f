"""Run the ASGI application once per message of the listeners' channels, bounded by one Admission."""

import asyncio

from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.clock import MONOTONIC
from gateway.eager import start_task
from gateway.layers.client import as_client
from gateway.layers.errors import error_text
from gateway.messages import SEND_TYPE

log = Logger()
_RETRY_DELAY = 1.0  # after a failed layer receive (Redis down), before trying again


class InstanceEnded(BaseException):
    """Raised by an instance's second receive(): its call ends there, cleanly.

    Channels' AsyncConsumer ends on StopConsumer the same way. A BaseException,
    like the CancelledError it replaces, so `except Exception` in an application
    does not swallow it; ending needs no cancel round trip through the loop.
    """


class _Instance:
    """One application call: its message, first from receive(); the second receive() ends it."""

    __slots__ = ("message", "layer", "task", "delivered", "timed_out", "started", "deadline")

    def __init__(self, message, layer):
        self.message = message
        self.layer = layer
        self.task = None        # set only while the call waits (an eager call may end before)
        self.delivered = False
        self.timed_out = False
        self.started = MONOTONIC.seconds()
        self.deadline = None    # monotonic time its app_timeout ends (None: never)

    def time_out(self):
        """Cancel a call that ran past app_timeout (told apart from other cancels by `timed_out`)."""
        if self.task is not None and not self.task.done():
            self.timed_out = True
            self.task.cancel()

    async def receive(self):
        if not self.delivered:
            self.delivered = True
            return self.message
        raise InstanceEnded()  # a new one each time: a shared instance would grow its traceback

    async def send(self, reply):
        """ASGI-style convenience: a udp.send through `send` answers this message."""
        if not isinstance(reply, dict) or reply.get("type") != SEND_TYPE:
            raise ValueError(f"send() takes udp.send messages, not {reply!r:.80}")
        await self.layer.send(self.message["reply_channel"], reply)


class AppRunner:
    """Calls `app(scope, receive, send)` with a fresh instance per message.

    Messages come two ways. `run()` starts one at once: the gateway's delivery
    on the memory layer, with a slot already taken by `admission.try_acquire()`.
    Receive loops take them from the layer: with `wait_before_receive` (a worker,
    a gateway on a shared layer) a loop waits for a slot before it receives, so a
    busy process stops receiving; otherwise it receives, then waits for a slot.
    Instances start eagerly: each runs until it first waits, with no loop hop.
    A call still running `app_timeout` seconds after that is cancelled and counted.
    One timer serves every call: armed for the earliest deadline, it cancels
    the calls past theirs and arms itself for the next (a reload changes
    app_timeout for the calls started after it, so deadlines need not follow
    the order calls started in).
    """

    def __init__(self, app, layer, channels, *, admission, counters, quiet, app_layer=None,
                 wait_before_receive=True, app_timeout=None):
        self.app = app
        self.app_timeout = app_timeout  # seconds, or None: calls may run for ever
        self.layer = layer
        self.app_layer = app_layer if app_layer is not None else layer  # what scope["channel_layer"] is
        self.channels = list(dict.fromkeys(channels))
        self.admission = admission
        self.counters = counters
        self.quiet = quiet
        self.wait_before_receive = wait_before_receive
        self._receive = as_client(layer).receive
        self._loops = []
        self._instances = set()
        self._loop = None
        self._timeout = None  # the timer handle of the earliest deadline, while one is armed
        self._timeout_at = None

    @property
    def active(self):
        return len(self._instances)

    def start(self):
        self._loop = asyncio.get_event_loop()
        self._loops = [asyncio.ensure_future(self._receive_loop(c)) for c in self.channels]

    def consume(self, channel):
        """Also receive from `channel` (a reload added a listener with a channel of its own)."""
        if channel in self.channels:
            return
        self.channels.append(channel)
        if self._loop is not None:  # started: receive it from now on
            self._loops.append(asyncio.ensure_future(self._receive_loop(channel)))

    def stop_receiving(self):
        for loop in self._loops:
            loop.cancel()
        self._loops = []

    def run(self, channel, message):
        """Start one instance for `message` (its slot already taken); it runs now until it first waits."""
        instance = _Instance(message, self.app_layer)
        scope = {"type": "channel", "channel": channel, "channel_layer": self.app_layer}
        self._instances.add(instance)
        task = start_task(self._call(scope, instance), self._loop or asyncio.get_event_loop())
        if not task.done():
            instance.task = task
            if self.app_timeout is not None:
                instance.deadline = instance.started + self.app_timeout
                if self._timeout is None or instance.deadline < self._timeout_at:  # else armed for an earlier one
                    self._arm(instance.deadline, task.get_loop())

    async def drain(self, timeout):
        """Wait up to `timeout` seconds for in-flight calls, then cancel the rest."""
        pending = [i.task for i in self._instances if i.task is not None]
        if pending:
            _done, late = await asyncio.wait(pending, timeout=timeout)
            for task in late:
                task.cancel()
            if late:
                log.warn("cancelled {n} application calls still running after {t}s", n=len(late), t=timeout)
                await asyncio.wait(late, timeout=1)
        if self._timeout is not None and not self._instances:
            self._timeout.cancel()
            self._timeout = None

    def _arm(self, deadline, loop):
        if self._timeout is not None:
            self._timeout.cancel()
        self._timeout_at = deadline
        self._timeout = loop.call_later(max(0.0, deadline - MONOTONIC.seconds()), self._time_out_due)

    def _time_out_due(self):
        """Cancel every call past its deadline; arm the timer for the earliest deadline still ahead."""
        self._timeout = None
        now, earliest = MONOTONIC.seconds(), None
        for instance in self._instances:  # time_out() only asks for a cancel: nothing leaves the set here
            if instance.timed_out or instance.deadline is None:
                continue  # cancelled already (its task not ended yet), or started with no app_timeout
            if instance.deadline <= now:
                instance.time_out()
            elif earliest is None or instance.deadline < earliest:
                earliest = instance.deadline
        if earliest is not None:
            self._arm(earliest, asyncio.get_running_loop())

    def _room(self):
        """Messages this process can start now: a layer popping several takes no more, the rest stay for others."""
        return self.admission.limit - self.admission.in_use + (1 if self.wait_before_receive else 0)

    async def _receive_loop(self, channel):
        while True:
            if self.wait_before_receive:
                await self.admission.acquire()
            try:
                message = await self._receive(channel, batch=self._room())
            except asyncio.CancelledError:
                self._release_early()
                raise
            except Exception as exc:
                self._release_early()
                self.counters.incr("layer_errors")
                self.quiet.warn(f"receive-{channel}", "receiving from {channel} failed: {err}",
                                channel=channel, err=error_text(exc))
                await asyncio.sleep(_RETRY_DELAY)
                continue
            if not self.wait_before_receive:
                await self.admission.acquire()
            self.run(channel, message)

    def _release_early(self):
        if self.wait_before_receive:
            self.admission.release()

    async def _call(self, scope, instance):
        try:
            await self.app(scope, instance.receive, instance.send)
        except InstanceEnded:
            pass  # the second receive(): a clean end
        except asyncio.CancelledError:
            if not instance.timed_out:
                raise
            self._timed_out(instance)  # our own cancel: the call ends here
        except Exception as exc:
            # An app that answers the timeout's cancel by raising still timed out.
            self._timed_out(instance) if instance.timed_out else self._failed(instance, exc)
        finally:
            self._ended(instance)

    def _ended(self, instance):
        self.counters.call_time.observe(MONOTONIC.seconds() - instance.started)
        self._instances.discard(instance)
        instance.task = None  # no instance <-> task cycle once the call is over
        self.admission.release()

    def _failed(self, instance, exc):
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
