"""Full garbage collections of this process: how many, and the longest pause, for the summary line."""

import gc
import time


class GcWatch:
    """Counts full (generation 2) collections and keeps the longest pause, through gc.callbacks.

    Long full collections are what stalls every client at once when many
    objects live (a full reply-channel table), so operators can see them.
    """

    def __init__(self, clock=time.perf_counter):
        self.full = 0
        self.longest_ms = 0
        self._clock = clock
        self._started = None

    def start(self):
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def stop(self):
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def _callback(self, phase, info):
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._started = self._clock()
        elif self._started is not None:
            pause = int((self._clock() - self._started) * 1000)
            self.full += 1
            self.longest_ms = max(self.longest_ms, pause)
            self._started = None
