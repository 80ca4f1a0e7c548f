"""Tests for gateway.stats: counters, their summary, QuietLog and CounterReporter."""

from twisted.internet.task import Clock
from twisted.logger import LogLevel, Logger, formatEvent

from gateway.stats import (
    LISTENER_COUNTERS, PROCESS_COUNTERS, WORKER_COUNTERS, CounterReporter, Counters, Histogram, QuietLog, summary_line,
)


def capture():
    """A Logger whose events land in the returned list."""
    events = []
    return Logger(observer=events.append), events


def lines(events):
    return [formatEvent(event) for event in events]


def test_counters_count():
    """incr adds to a named counter; unknown names read as zero."""
    counters = Counters()
    counters.incr("received")
    counters.incr("received", 4)
    counters.incr("dropped_too_large")
    assert counters.get("received") == 5
    assert counters.get("never_seen") == 0
    assert counters.snapshot() == {"received": 5, "dropped_too_large": 1}


def test_snapshot_is_a_copy():
    """Changing a snapshot does not change the counters."""
    counters = Counters()
    counters.incr("received")
    counters.snapshot()["received"] = 99
    assert counters.get("received") == 1


def test_changed_since_last_report():
    """changed_since_last_report is true once after each change."""
    counters = Counters()
    assert not counters.changed_since_last_report()
    counters.incr("replied")
    assert counters.changed_since_last_report()
    assert not counters.changed_since_last_report()
    counters.incr("replied", 0)
    assert not counters.changed_since_last_report()


def test_summary_line_sorted_non_zero():
    """The summary lists non-zero counters sorted by name."""
    counters = Counters()
    counters.incr("received", 120)
    counters.incr("dropped_unknown_token", 3)
    counters.incr("app_errors", 0)
    assert summary_line(counters) == "counters: dropped_unknown_token=3 received=120"


def test_summary_line_all_zero():
    """With nothing counted the summary says so."""
    assert summary_line(Counters()) == "counters: all zero"


def test_quiet_log_first_time_then_rate_limited():
    """A key logs at warn level at once, then at most once per interval with a count."""
    log, events = capture()
    clock = Clock()
    quiet = QuietLog(log, interval=10, clock=clock)
    assert quiet.warn("too_large", "dropped a datagram: {why}", why="big")
    assert not quiet.warn("too_large", "dropped a datagram: {why}", why="big")
    assert not quiet.warn("too_large", "dropped a datagram: {why}", why="big")
    clock.advance(10)
    assert quiet.warn("too_large", "dropped a datagram: {why}", why="bigger")
    assert lines(events) == [
        "dropped a datagram: big",
        "dropped a datagram: bigger (2 more suppressed)",
    ]
    assert all(event["log_level"] is LogLevel.warn for event in events)


def test_quiet_log_keys_are_independent():
    """Each key has its own rate limit."""
    log, events = capture()
    quiet = QuietLog(log, clock=Clock())
    quiet.warn("a", "problem a")
    quiet.warn("b", "problem b")
    quiet.warn("a", "problem a")
    assert lines(events) == ["problem a", "problem b"]


def test_quiet_log_no_count_when_nothing_suppressed():
    """After a quiet interval the next line carries no suppressed count."""
    log, events = capture()
    clock = Clock()
    quiet = QuietLog(log, interval=10, clock=clock)
    quiet.warn("a", "problem")
    clock.advance(30)
    quiet.warn("a", "problem")
    assert lines(events) == ["problem", "problem"]


def test_quiet_log_key_table_is_capped():
    """Past max_keys the least recently seen key is forgotten, so the table stays bounded."""
    log, events = capture()
    quiet = QuietLog(log, clock=Clock(), max_keys=3)
    for key in ["a", "b", "c", "a", "d"]:  # "b" is least recently seen when "d" arrives
        quiet.warn(key, "problem {key}", key=key)
    assert len(quiet._seen) == 3
    assert quiet.warn("b", "problem {key}", key="b")
    assert not quiet.warn("a", "problem {key}", key="a")
    for i in range(1000):
        quiet.warn(f"peer-{i}", "problem")
    assert len(quiet._seen) == 3


def test_quiet_log_default_clock():
    """Without a clock QuietLog uses a monotonic one."""
    log, events = capture()
    quiet = QuietLog(log)
    quiet.warn("a", "problem")
    quiet.warn("a", "problem")
    assert lines(events) == ["problem"]


def started_reporter():
    """A CounterReporter started on a fake clock, interval 60: (reporter, its counters, the clock, logged events)."""
    log, events = capture()
    clock = Clock()
    counters = Counters()
    reporter = CounterReporter(counters, log, interval=60, clock=clock)
    reporter.start()
    return reporter, counters, clock, events


def test_reporter_logs_when_changed():
    """The reporter logs the summary each interval only when the counters changed."""
    reporter, counters, clock, events = started_reporter()
    clock.advance(60)
    assert events == []
    counters.incr("received", 2)
    clock.advance(60)
    clock.advance(60)
    assert lines(events) == ["counters: received=2"]
    reporter.stop()
    assert clock.getDelayedCalls() == []


def test_reporter_final_line_on_stop():
    """stop() logs a last summary if anything changed since the previous one."""
    reporter, counters, clock, events = started_reporter()
    counters.incr("dropped_queue_full")
    reporter.stop()
    assert lines(events) == ["counters: dropped_queue_full=1"]
    assert events[0]["log_level"] is LogLevel.info
    assert clock.getDelayedCalls() == []


def test_reporter_stop_without_change_is_quiet():
    """stop() logs nothing when nothing changed, and works when never started."""
    log, events = capture()
    reporter = CounterReporter(Counters(), log, interval=60, clock=Clock())
    reporter.stop()
    assert events == []


def test_reporter_braces_in_names():
    """Counter names are data, not format strings."""
    log, events = capture()
    counters = Counters()
    counters.incr("odd{name}")
    CounterReporter(counters, log, clock=Clock()).stop()
    assert lines(events) == ["counters: odd{name}=1"]


def test_quiet_failure_logs_traceback_once_per_interval():
    """QuietLog.failure logs a failure with its traceback, then stays quiet for the interval per key."""
    from twisted.python.failure import Failure

    events = []
    clock = Clock()
    quiet = QuietLog(Logger(observer=events.append), interval=10, clock=clock)
    try:
        raise ValueError("boom")
    except ValueError:
        failure = Failure()
    assert quiet.failure("app-ValueError", "app raised on {listener}", failure, listener="echo")
    assert not quiet.failure("app-ValueError", "app raised on {listener}", failure, listener="echo")
    clock.advance(10)
    assert quiet.failure("app-ValueError", "app raised on {listener}", failure, listener="echo")
    assert len(events) == 2
    assert events[0]["log_failure"] is failure
    assert "1 more suppressed" in formatEvent(events[1])


def test_counters_per_listener_and_total():
    """incr with a listener counts the event for that listener and in the process total."""
    counters = Counters()
    counters.incr("received", listener="echo")
    counters.incr("received", 2, listener="ssdp")
    counters.incr("received")
    assert (counters.get("received"), counters.get("received", "echo"), counters.get("received", "ssdp")) == (4, 1, 2)
    assert counters.get("received", "nobody") == 0
    assert counters.snapshot() == {"received": 4}
    assert summary_line(counters) == "counters: received=4"


def test_histogram_buckets_are_upper_bounds():
    """An observation lands in the first bucket whose bound it does not exceed; +Inf takes the rest."""
    histogram = Histogram((0.1, 1))
    for value in (0.05, 0.1, 0.5, 1, 7):
        histogram.observe(value)
    assert histogram.cumulative() == [(0.1, 2), (1, 4), (float("inf"), 5)]
    assert histogram.count == 5 and histogram.sum == 8.65


def test_counter_tables_do_not_overlap():
    """A counter is either per listener or per process, and the worker's are the process's."""
    assert not set(LISTENER_COUNTERS) & set(PROCESS_COUNTERS)
    assert set(WORKER_COUNTERS) <= set(PROCESS_COUNTERS)


def test_every_counter_the_code_moves_is_in_the_tables():
    """Each counter name incremented anywhere in gateway/ and listeners/ is exported (a fixed table entry)."""
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parent.parent
    source = "\n".join(p.read_text() for d in ("gateway", "listeners") for p in (root / d).rglob("*.py"))
    names = set(re.findall(r'\.incr\(\s*"([a-z_]+)"', source))
    reasons = re.findall(r'(?:BadReply|BadRoute|_drop|drop\(self\.counters, self\.quiet,)\(?\s*"([a-z_]+)"', source)
    for pair in re.findall(r'reason = "([a-z_]+)" if .* else "([a-z_]+)"', source):
        reasons += pair
    names |= {f"dropped_{reason}" for reason in reasons}
    assert len(names) >= 15, names
    assert names <= set(LISTENER_COUNTERS) | set(PROCESS_COUNTERS)
