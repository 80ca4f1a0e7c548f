"""The benchmark runs (a seconds-long smoke; real figures come from running it by hand)."""

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "echo_bench.py"


def test_echo_benchmark_smoke():
    """benchmarks/echo_bench.py --smoke measures the raw echo and the gateway and prints ratios."""
    done = subprocess.run([sys.executable, str(BENCH), "--smoke"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ratios gateway/raw" in done.stdout
