"""The benchmarks run (seconds-long smokes; real figures come from running them by hand)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import skip_or_fail

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.parametrize("script, extra, expected", [
    ("echo_bench.py", [], ["ratios gateway/raw"]),
    ("echo_bench.py", ["--redis"], ["ratios gateway/raw", "ratios redis/raw"]),
    ("soak.py", [], ["unaccounted 0", "exit status 0 on SIGTERM", "result: PASS"]),
], ids=["memory", "redis", "soak"])
def test_benchmark_smoke(script, extra, expected):
    """Each benchmark's --smoke runs to the end and prints its figures: echo_bench.py measures the raw echo and
    the gateway (and over Redis) and prints ratios; soak.py accounts for every datagram and the gateway exits 0."""
    if "--redis" in extra and shutil.which("redis-server") is None:
        skip_or_fail("redis-server is not installed (apt-get install redis-server)")
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), "--smoke", *extra], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    for text in expected:
        assert text in done.stdout, done.stdout
