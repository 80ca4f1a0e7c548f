"""Start a task eagerly: its coroutine runs at once until it first waits, with no event-loop hop.

Python 3.12 has this built in (`Task(..., eager_start=True)`). Before it, a
subclass of asyncio's pure-Python Task takes its first step in the
constructor instead of scheduling it, so the coroutine still runs as a real
Task: `asyncio.current_task()`, cancellation, `asyncio.timeout()` and context
variables behave exactly as in a task started the usual way.
"""

import asyncio
import contextvars
import sys
from asyncio import futures, tasks

EAGER_BUILTIN = sys.version_info >= (3, 12)


class _EagerTask(tasks._PyTask):
    """Python < 3.12: a Task whose first step runs in the constructor (what 3.12's eager_start does)."""

    def __init__(self, coro, *, loop):
        futures._PyFuture.__init__(self, loop=loop)
        self._name = "udpgateway-eager"
        self._num_cancels_requested = 0
        self._must_cancel = False
        self._fut_waiter = None
        self._coro = coro
        self._context = contextvars.copy_context()
        self._context.run(self._Task__step)
        if not self.done():  # like 3.12: a task done in its eager step never enters all_tasks()
            tasks._register_task(self)


def start_task(coro, loop=None):
    """A Task for `coro`, already stepped until it first waits (it may be done on return)."""
    if loop is None:
        loop = asyncio.get_running_loop()
    if EAGER_BUILTIN:
        return asyncio.Task(coro, loop=loop, eager_start=True)
    if tasks.current_task(loop) is not None:
        return loop.create_task(coro)  # before 3.12 a task cannot step inside another one
    return _EagerTask(coro, loop=loop)
