"""The benchmark runs (a seconds-long smoke; real figures come from running it by hand)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import skip_or_fail

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "echo_bench.py"


@pytest.mark.parametrize("extra", [[], ["--redis"]], ids=["memory", "redis"])
def test_echo_benchmark_smoke(extra):
    """benchmarks/echo_bench.py --smoke measures the raw echo and the gateway (and over Redis) and prints ratios."""
    if extra and shutil.which("redis-server") is None:
        skip_or_fail("redis-server is not installed (apt-get install redis-server)")
    done = subprocess.run([sys.executable, str(BENCH), "--smoke", *extra], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ratios gateway/raw" in done.stdout
    if extra:
        assert "ratios redis/raw" in done.stdout


def test_redis_benchmark_smoke():
    """benchmarks/redis_bench.py --smoke measures a bare layer round trip, a gateway + 2 workers and runworker."""
    if shutil.which("redis-server") is None:
        skip_or_fail("redis-server is not installed (apt-get install redis-server)")
    pytest.importorskip("django")
    done = subprocess.run([sys.executable, str(BENCH.parent / "redis_bench.py"), "--smoke"], capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    for row in ("bare stock", "gateway+2 ours", "runworker ours"):
        assert row in done.stdout, done.stdout
    assert done.stdout.splitlines()[-1].startswith("headline: ")
