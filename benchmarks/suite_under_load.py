"""The whole test suite, N times in a row, while CPU-bound processes load every core: does anything flake?

    python3 benchmarks/suite_under_load.py              # 10 runs, a fresh non-editable install (as CI)
    python3 benchmarks/suite_under_load.py --runs 1     # one run
    python3 benchmarks/suite_under_load.py --python .venv/bin/python --runs 3

Makes a virtualenv with README's install (`pip install '.[test]'`, not editable) unless --python
names an interpreter, starts `--load` processes running `while True: pass` (default: one per
core), then runs `python -m pytest` from the repository with UDPGATEWAY_REQUIRE_ALL=1, one run
after the other. It prints PASS or FAIL and the wall time of each run (and the failed tests),
and exits 0 only if every run passed. Each run is bounded by --bound seconds: past it, the run's
own process group is killed; whatever a run leaves running in its group fails it. The load
processes and the runs are stopped by their PIDs at the end, on failure and on SIGTERM or
Ctrl-C. Each run's output is kept in --logs (default: a new directory under /tmp).
"""

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LOAD = "while True: pass"


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--load", type=int, default=os.cpu_count() or 2, help="CPU-bound processes (default: cores)")
    parser.add_argument("--python", default=None, help="run the suite with this interpreter (default: a fresh venv)")
    parser.add_argument("--bound", type=float, default=1800.0, help="seconds one run may take before it is killed")
    parser.add_argument("--logs", default=None, help="directory for each run's output")
    parser.add_argument("pytest_args", nargs="*", help="extra arguments for pytest (after --)")
    return parser.parse_args(argv)


def fresh_python(directory):
    """A new virtualenv with README's non-editable install of this repository and its test extras."""
    venv = Path(directory) / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    done = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"{REPO}[test]"], cwd=directory,
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"pip install failed:\n{done.stdout}{done.stderr}")
    return str(venv / "bin" / "python")


def stop(proc, grace=10.0):
    """SIGTERM one process we started, by its PID; SIGKILL if it is still there after `grace` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def kill_group(leader):
    """SIGKILL what is left of the process group a run leads (its own session); returns those PIDs."""
    left = []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != leader:
            try:
                if os.getpgid(int(name)) == leader:
                    left.append(int(name))
            except OSError:
                pass
    try:
        os.killpg(leader, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return left


def run_suite(python, number, args, logs):
    """One pytest run in its own session, bounded: (passed, seconds, failures, log path)."""
    log = Path(logs) / f"run-{number:02d}.log"
    env = dict(os.environ, UDPGATEWAY_REQUIRE_ALL="1")
    started = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen([python, "-m", "pytest", *args.pytest_args], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            status = proc.wait(args.bound)
        except subprocess.TimeoutExpired:
            status = None
        finally:
            stop(proc, grace=30.0)
            left = kill_group(proc.pid)
    seconds = time.monotonic() - started
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", log.read_text(errors="replace"), re.M)
    if status is None:
        failed.append(f"(killed after the {args.bound:.0f} s bound)")
    if left:
        failed.append(f"(left processes running: {left})")
    return status == 0 and not left, seconds, failed, log


def _terminated(signum, frame):
    raise SystemExit(128 + signum)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, _terminated)
    load, results = [], []
    logs = args.logs or tempfile.mkdtemp(prefix="udpgateway-load-logs-")
    Path(logs).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="udpgateway-load-") as tmp:
        try:
            python = args.python or fresh_python(tmp)
            load = [subprocess.Popen([sys.executable, "-c", LOAD]) for _ in range(args.load)]
            print(f"{args.runs} runs of the suite with {python}, {args.load} CPU-bound processes "
                  f"(PIDs {' '.join(str(p.pid) for p in load)}), logs in {logs}", flush=True)
            for number in range(1, args.runs + 1):
                passed, seconds, failed, log = run_suite(python, number, args, logs)
                results.append((passed, seconds))
                line = f"run {number}/{args.runs}: {'PASS' if passed else 'FAIL'} in {seconds:.1f} s"
                print(line + ("" if passed else f" ({log}): " + " ".join(failed)), flush=True)
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            for proc in load:
                stop(proc, grace=2.0)
    times = [seconds for _, seconds in results]
    if times:
        print(f"{sum(p for p, _ in results)} of {len(results)} runs passed; wall time per run "
              f"min {min(times):.1f} s, max {max(times):.1f} s, mean {sum(times) / len(times):.1f} s")
    return 0 if results and all(passed for passed, _ in results) and len(results) == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
