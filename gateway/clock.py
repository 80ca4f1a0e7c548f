"""The monotonic clock that lifetimes and log rate limits follow: a wall-clock step moves neither."""

import time


class MonotonicClock:
    """`seconds()` like a reactor's, but from time.monotonic(), so NTP or an operator setting the date
    cannot expire every reply channel at once."""

    def seconds(self):
        return time.monotonic()


MONOTONIC = MonotonicClock()
