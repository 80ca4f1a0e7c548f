"""Named counters, their periodic summary, and a rate-limited logger for hostile input."""

import time
from collections import Counter, OrderedDict

from twisted.internet import task
from twisted.logger import Logger


class _MonotonicClock:
    def seconds(self):
        return time.monotonic()


class Counters:
    """Named event counters (dropped_<reason>, received, ...); any name is allowed."""

    def __init__(self):
        self._counts = Counter()
        self._changes = 0
        self._reported = 0
        self.gauges = {}  # name -> callable: sizes shown in the summary line (reply_channels, ...)

    def incr(self, name, n=1):
        if n:
            self._counts[name] += n
            self._changes += 1

    def get(self, name):
        return self._counts[name]

    def snapshot(self):
        """A copy of every counter that was ever incremented."""
        return dict(self._counts)

    def changed_since_last_report(self):
        """Whether a counter moved since the previous call (the first: since creation)."""
        changed = self._changes != self._reported
        self._reported = self._changes
        return changed


def summary_line(counters):
    """One log line, "counters: a=1 b=2": the non-zero counters sorted by name, then the gauges."""
    counts = sorted(item for item in counters.snapshot().items() if item[1])
    line = "counters: " + (" ".join(f"{k}={v}" for k, v in counts) or "all zero")
    gauges = " ".join(f"{name}={read()}" for name, read in sorted(counters.gauges.items()))
    return f"{line}; {gauges}" if gauges else line


class QuietLog:
    """Warns about a problem the first time, then at most once per interval per key.

    Later lines say how many were suppressed in between. Keys should name the
    problem, not the peer; even so the table of keys is capped, least recently seen
    forgotten, so that attacker-chosen keys cannot grow it (zeroconf's QuietLogger).
    """

    def __init__(self, log=None, *, interval=10.0, clock=None, max_keys=512):
        self.log = log if log is not None else Logger()
        self.interval = interval
        self.clock = clock if clock is not None else _MonotonicClock()
        self.max_keys = max_keys
        self._seen = OrderedDict()  # key -> [last logged at, suppressed since]

    def warn(self, key, format, /, **kwargs):
        """Log at warn level unless key was logged less than interval ago.

        key and format are positional-only, so log fields may use those names too.
        """
        return self._emit(self.log.warn, key, format, kwargs)

    def failure(self, key, format, failure, /, **kwargs):
        """Like warn, but logs `failure` with its traceback (an application error, say)."""
        return self._emit(lambda fmt, **kw: self.log.failure(fmt, failure=failure, **kw), key, format, kwargs)

    def _emit(self, emit, key, format, kwargs):
        now = self.clock.seconds()
        seen = self._seen.get(key)
        if seen is not None:
            self._seen.move_to_end(key)
            if now - seen[0] < self.interval:
                seen[1] += 1
                return False
        self._seen[key] = [now, 0]
        if len(self._seen) > self.max_keys:
            self._seen.popitem(last=False)
        if seen is not None and seen[1]:
            format += " ({quiet_suppressed} more suppressed)"
            kwargs["quiet_suppressed"] = seen[1]
        emit(format, **kwargs)
        return True


class CounterReporter:
    """Logs the counters' summary line every interval when they changed, and at stop."""

    def __init__(self, counters, log, interval=60, clock=None):
        self.counters = counters
        self.log = log
        self.interval = interval
        self.clock = clock
        self._loop = None

    def start(self):
        if self._loop is not None:
            return
        self._loop = task.LoopingCall(self._report)
        if self.clock is None:
            from twisted.internet import reactor

            self.clock = reactor
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False)

    def stop(self):
        """Stop the timer and log a last line if anything changed since the previous."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        self._report()

    def _report(self):
        if self.counters.changed_since_last_report():
            self.log.info("{summary}", summary=summary_line(self.counters))
