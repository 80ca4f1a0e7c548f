"""Named counters, their periodic summary, and a rate-limited logger for hostile input."""

from bisect import bisect_left
from collections import Counter, OrderedDict

from twisted.internet import task
from twisted.logger import Logger

from gateway.clock import MONOTONIC


# Every counter the code moves, name -> what it counts: exported (gateway.metrics) from the
# start, at zero, so dashboards and alerts see them before the first event. Those of the
# first table are counted per listener too; those of the second belong to the process.
LISTENER_COUNTERS = {
    "received": "Datagrams received (those dropped as denied or rate-limited included).",
    "replied": "Replies and send_channel messages written to a socket.",
    "dropped_denied": "Datagrams dropped: their source is not in the listener's allow, or is in its deny.",
    "dropped_rate_limited": "Datagrams dropped: their source address sent faster than the listener's rate_limit.",
    "dropped_not_ready": "Datagrams dropped: they arrived before startup completed or during stop.",
    "dropped_concurrency": "Datagrams dropped: max_concurrency application calls were running.",
    "dropped_queue_full": "Datagrams dropped: the queue of layer sends was full.",
    "dropped_channel_full": "Datagrams dropped: the channel was at its capacity.",
    "dropped_layer_error": "Datagrams dropped: the channel layer failed to take them.",
    "dropped_bad_message": "Replies dropped: not a valid udp.send message.",
    "dropped_too_large": "Replies dropped: longer than a datagram can carry.",
    "dropped_amplification": "Replies dropped: they would take the bytes sent on a reply channel past "
                             "amplification times the bytes its client sent.",
    "dropped_send_failed": "Replies dropped: the socket refused the write.",
    "receive_errors": "Socket reads that failed, or datagrams whose hand-off raised.",
    "connection_refused": "ICMP port unreachable from a connected listener's remote.",
}
PROCESS_COUNTERS = {
    "dropped_unknown_token": "Replies dropped: unknown or expired reply channel.",
    "layer_errors": "Channel layer receives that failed.",
    "app_errors": "Application calls that raised.",
    "app_timeouts": "Application calls cancelled after limits.app_timeout.",
}
WORKER_COUNTERS = ("layer_errors", "app_errors", "app_timeouts")  # what a worker process can move
# Upper bounds (seconds) of the application call time histogram's buckets.
CALL_TIME_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Histogram:
    """Observations counted into fixed buckets, Prometheus-style: O(log buckets) per observation."""

    def __init__(self, bounds=CALL_TIME_BUCKETS):
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value):
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self):
        return sum(self.counts)

    def cumulative(self):
        """[(upper bound, observations <= it)], ending with (inf, count)."""
        total, buckets = 0, []
        for bound, n in zip(self.bounds + (float("inf"),), self.counts):
            total += n
            buckets.append((bound, total))
        return buckets


class Counters:
    """Named event counters (dropped_<reason>, received, ...); any name is allowed.

    `incr(name, listener=...)` also counts the event for that listener (the
    process total counts it either way). `call_time` is the histogram of
    application call times in seconds.
    """

    def __init__(self):
        self._counts = Counter()
        self._by_listener = Counter()  # (name, listener) -> count; listener names come from the config
        self._changes = 0
        self._reported = 0
        self.call_time = Histogram()
        self.gauges = {}  # name -> callable: sizes shown in the summary line (reply_channels, ...)

    def incr(self, name, n=1, listener=None):
        if n:
            self._counts[name] += n
            self._changes += 1
            if listener is not None:
                self._by_listener[name, listener] += n

    def get(self, name, listener=None):
        """The process total of `name`, or with `listener` that listener's part of it."""
        return self._counts[name] if listener is None else self._by_listener[name, listener]

    def listener_names(self):
        """Every listener something was counted for."""
        return {listener for _name, listener in self._by_listener}

    def snapshot(self):
        """A copy of every counter that was ever incremented."""
        return dict(self._counts)

    def changed_since_last_report(self):
        """Whether a counter moved since the previous call (the first: since creation)."""
        changed = self._changes != self._reported
        self._reported = self._changes
        return changed


def summary_line(counters):
    """One log line, "counters: a=1 b=2": the non-zero counters sorted by name."""
    counts = sorted(item for item in counters.snapshot().items() if item[1])
    return "counters: " + (" ".join(f"{k}={v}" for k, v in counts) or "all zero")


def sizes_line(counters):
    """The line after it, "sizes: reply_channels=5 ...": the gauges by name; None without any."""
    if not counters.gauges:
        return None
    return "sizes: " + " ".join(f"{name}={read()}" for name, read in sorted(counters.gauges.items()))


def log_summary(log, counters, prefix=""):
    """Log the counters' summary line, then the sizes line if there are gauges."""
    log.info("{prefix}{summary}", prefix=prefix, summary=summary_line(counters))
    sizes = sizes_line(counters)
    if sizes is not None:
        log.info("{prefix}{sizes}", prefix=prefix, sizes=sizes)


class QuietLog:
    """Warns about a problem the first time, then at most once per interval per key.

    Later lines say how many were suppressed in between. Keys should name the
    problem, not the peer; even so the table of keys is capped, least recently seen
    forgotten, so that attacker-chosen keys cannot grow it (zeroconf's QuietLogger).
    """

    def __init__(self, log=None, *, interval=10.0, clock=None, max_keys=512):
        self.log = log if log is not None else Logger()
        self.interval = interval
        self.clock = clock if clock is not None else MONOTONIC
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
            log_summary(self.log, self.counters)
