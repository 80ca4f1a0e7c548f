"""ASGI lifespan for the application: startup after bind, shutdown before the ports close."""

import asyncio

from twisted.logger import Logger

log = Logger()
SHUTDOWN_TIMEOUT = 10.0


class LifespanFailure(Exception):
    """The application reported lifespan.startup.failed."""


class Lifespan:
    """Drives one `lifespan` scope; an app that raises on it runs without it."""

    def __init__(self, app, layer):
        self.app = app
        self.layer = layer
        self.supported = False
        self._inbox = asyncio.Queue()
        self._outbox = asyncio.Queue()
        self._task = None

    async def startup(self):
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "channel_layer": self.layer}
        self._task = asyncio.ensure_future(self.app(scope, self._inbox.get, self._outbox.put))
        await self._inbox.put({"type": "lifespan.startup"})
        event = await self._next_event()
        if event is None:
            return
        if event["type"] == "lifespan.startup.failed":
            raise LifespanFailure(event.get("message") or "the application's lifespan startup failed")
        self.supported = True

    @property
    def task(self):
        """The application's lifespan call, once startup began (None before)."""
        return self._task

    async def shutdown(self, timeout=SHUTDOWN_TIMEOUT):
        """Run shutdown; returns the app's last event (None: unsupported, or no answer in time)."""
        if not self.supported:
            return None
        await self._inbox.put({"type": "lifespan.shutdown"})
        try:
            event = await asyncio.wait_for(self._next_event(), timeout)
        except asyncio.TimeoutError:
            log.warn("lifespan shutdown did not complete in {t}s", t=timeout)
            event = None
        if event is not None and event["type"] == "lifespan.shutdown.failed":
            log.error("lifespan shutdown failed: {message}", message=event.get("message", ""))
        self._task.cancel()
        return event

    def close(self):
        """End the lifespan task (after shutdown, or instead of it when a stop cannot wait)."""
        if self._task is not None:
            self._task.cancel()

    async def _next_event(self):
        """The app's next lifespan event, or None when the app ended (or raised) without one."""
        getter = asyncio.ensure_future(self._outbox.get())
        done, _ = await asyncio.wait([getter, self._task], return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            return getter.result()
        getter.cancel()
        if not self.supported:
            exc = None if self._task.cancelled() else self._task.exception()
            reason = f"it raised {exc!r}" if exc is not None else "it returned"
            log.info("the application does not support lifespan ({reason}); running without it", reason=reason)
        return None
