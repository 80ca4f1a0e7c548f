"""The benchmarks run (seconds-long smokes; real figures come from running them by hand)."""

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import child_env, kill_group, run_in_own_group
from tests.support import skip_or_fail

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
# A bound on a hung benchmark, not a speed check: on a busy machine the smokes take far longer than alone.
BOUND = 600


@pytest.mark.parametrize("extra", [[], ["--redis"]], ids=["memory", "redis"])
def test_echo_benchmark_smoke(extra):
    """benchmarks/echo_bench.py --smoke measures the raw echo and the gateway (and over Redis), prints
    ratios, and leaves none of the servers it started running."""
    if extra and shutil.which("redis-server") is None:
        skip_or_fail("redis-server is not installed (apt-get install redis-server)")
    status, out, err = run_in_own_group([sys.executable, BENCHMARKS / "echo_bench.py", "--smoke", *extra], BOUND)
    assert status == 0, out + err
    assert "ratios gateway/raw" in out
    if extra:
        assert "ratios redis/raw" in out


@pytest.mark.parametrize(
    "argv, stdin, running",
    [
        # echo_bench holds before measuring until a line on stdin: it never comes.
        pytest.param(["echo_bench.py", "--smoke", "--hold"], subprocess.PIPE, lambda line: "servers started" in line,
                     id="echo_bench"),
        pytest.param(["soak.py", "--smoke", "--progress"], None, lambda line: line.startswith("  t="), id="soak"),
    ],
)
def test_benchmark_stopped_leaves_nothing_running(argv, stdin, running):
    """SIGTERM to a benchmark mid-run stops what it started, by PID: echo_bench.py the raw echo and the
    gateway, soak.py the gateway."""
    proc = subprocess.Popen([sys.executable, str(BENCHMARKS / argv[0]), *argv[1:]], stdin=stdin,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env=child_env())
    try:
        seen = []
        for line in proc.stdout:  # ends early if the benchmark does
            seen.append(line)
            if running(line):
                break
        assert seen and running(seen[-1]), "".join(seen)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 128 + signal.SIGTERM, "".join(seen)
    finally:
        left = kill_group(proc)
        if proc.poll() is None:
            proc.wait(10)
        if proc.stdin:
            proc.stdin.close()
        proc.stdout.close()
    assert not left, f"left running: {left}"


def test_core_benchmark_smoke():
    """benchmarks/core_bench.py --smoke times the memory layer and the token table."""
    status, out, err = run_in_own_group([sys.executable, BENCHMARKS / "core_bench.py", "--smoke"], BOUND)
    assert status == 0, out + err
    assert "memory layer:" in out and "token table:" in out


def test_redis_benchmark_smoke():
    """benchmarks/redis_bench.py --smoke measures a bare layer round trip, a gateway + 2 workers, runworker,
    runworker's ceiling on a layer that costs nothing and runworker alone draining Redis on our layer, and
    leaves none of the processes it started running."""
    if shutil.which("redis-server") is None:
        skip_or_fail("redis-server is not installed (apt-get install redis-server)")
    status, out, err = run_in_own_group([sys.executable, BENCHMARKS / "redis_bench.py", "--smoke"], BOUND)
    assert status == 0, out + err
    for row in ("bare stock", "gateway+2 ours", "runworker ours", "runworker ceiling", "runworker drain"):
        assert row in out, out
    assert out.splitlines()[-1].startswith("headline: ")
    assert "runworker ceiling (a layer that costs nothing)" in out.splitlines()[-1], out
    assert "ours alone draining Redis" in out.splitlines()[-1], out


def test_redis_benchmark_repeats_rows_and_gives_their_medians():
    """--repeat N runs the chosen rows N times, a headline each time, then one line of medians."""
    status, out, err = run_in_own_group(
        [sys.executable, BENCHMARKS / "redis_bench.py", "--smoke", "--only", "runworker ceiling", "--repeat", "2"], BOUND)
    assert status == 0, out + err
    lines = out.splitlines()
    assert sum(line.startswith("runworker ceiling ") for line in lines) == 2, out
    assert sum(line.startswith("headline: ") for line in lines) == 2, out
    assert lines[-1].startswith("medians over 2 rounds: runworker ceiling "), out


def test_soak_smoke():
    """benchmarks/soak.py --smoke accounts for every datagram, and the gateway it ran exits 0 on SIGTERM."""
    status, out, err = run_in_own_group([sys.executable, BENCHMARKS / "soak.py", "--smoke"], BOUND)
    assert status == 0, out + err
    for text in ("unaccounted 0", "replies to the wrong source 0", "exit status 0 on SIGTERM", "result: PASS"):
        assert text in out, out
