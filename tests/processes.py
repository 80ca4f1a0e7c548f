"""Real gateway and worker processes for tests: started by us, read line by line, stopped by PID."""

import functools
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from tests.support import DEADLINE, teardown

BIN = Path(sys.executable).parent
TWISTD = BIN / "twistd"
UDPGATEWAY = BIN / "udpgateway"
_LISTENER = re.compile(r"listener (\S+) \((\w+)\) on \[?([^\s\]]+)\]?:(\d+) -> (\S+)")


def interruptible_children():
    """Children started from here on get SIGINT's default action, even if this process ignores SIGINT.

    A suite started in the background of a non-interactive shell (`cmd &`, nohup, some CI
    runners) inherits SIGINT ignored, and an ignored signal stays ignored across exec: every
    child would ignore it too, and one without a SIGINT handler of its own (Django's
    runworker, any Python program relying on KeyboardInterrupt) would not stop on the
    Ctrl-C a test sends. A caught signal is reset to its default action by exec, so catching
    SIGINT with a handler that does nothing leaves this process as deaf to it as before.
    """
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, _not_interrupted)


def _not_interrupted(signum, frame):
    """SIGINT ignored, as it was before interruptible_children."""


def child_env(extra=None):
    """The environment for a child: ours, the repo importable, plus `extra`."""
    env = dict(os.environ)
    repo = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


class Process:
    """A child process whose stdout is collected line by line (stderr separately)."""

    ready_text = None

    def __init__(self, argv, *, cwd=None, env=None, ns=None, pass_fds=()):
        self.argv = (["ip", "netns", "exec", ns] if ns else []) + [str(a) for a in argv]
        self.pass_fds = tuple(pass_fds)  # file descriptors the child inherits, at the same numbers
        self._own_cwd = cwd is None
        self.cwd = cwd or tempfile.mkdtemp(prefix="udpgateway-proc-")
        self.env = env
        self.lines, self.errors, self.listeners = [], [], {}
        self._queue = queue.Queue()
        self._threads = []
        self.proc = None

    def start(self, ready=True, timeout=DEADLINE):
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     cwd=self.cwd, env=child_env(self.env), stdin=subprocess.DEVNULL,
                                     pass_fds=self.pass_fds)
        self._threads = [threading.Thread(target=t, daemon=True) for t in (self._read, self._read_errors)]
        for thread in self._threads:
            thread.start()
        if ready and self.ready_text:
            self.wait_for(self.ready_text, timeout)
        return self

    @property
    def pid(self):
        return self.proc.pid

    def _read(self):
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def _read_errors(self):
        for line in self.proc.stderr:
            self.errors.append(line.rstrip("\n"))

    def _pump(self, timeout):
        try:
            line = self._queue.get(timeout=timeout)
        except queue.Empty:
            return False
        if line is None:
            self._queue.put(None)
            return None
        self.lines.append(line)
        match = _LISTENER.search(line)
        if match:
            name, _kind, host, port, _channel = match.groups()
            self.listeners.setdefault(name, []).append((host, int(port)))
        return True

    def wait_for(self, text, timeout=DEADLINE, *, start=0):
        """The first log line (from index `start`) containing `text`; fails with the log so far."""
        deadline, index = time.monotonic() + timeout, start
        while True:
            for index in range(index, len(self.lines)):
                if text in self.lines[index]:
                    return self.lines[index]
            index = len(self.lines)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._pump(min(remaining, 0.2)) is None:
                raise AssertionError(f"no log line with {text!r}:\n{self.log_text()}")

    def mark(self):
        """The index of the next log line (for wait_for(..., start=))."""
        self._drain()
        return len(self.lines)

    def count(self, text):
        self._drain()
        return sum(text in line for line in self.lines)

    def port(self, name):
        self._drain()
        return self.listeners[name][0][1]

    def log_text(self):
        self._drain()
        return "\n".join(self.lines[-60:] + ["-- stderr --"] + self.errors[-20:])

    def _drain(self):
        while self._pump(0) is True:
            pass

    def send_signal(self, signum):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signum)

    def stop(self, timeout=DEADLINE, signum=signal.SIGTERM):
        """Signal this process only and wait; returns its exit status (-9 if it had to be killed)."""
        self.send_signal(signum)
        try:
            return self.wait_exit(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            self._finish()
            return -9

    def wait_exit(self, timeout=DEADLINE):
        status = self.proc.wait(timeout)
        self._finish()
        return status

    def _finish(self):
        for thread in self._threads:
            thread.join(5)
        self._drain()
        if self._own_cwd:
            shutil.rmtree(self.cwd, ignore_errors=True)


class GatewayProcess(Process):
    """`twistd -n udpgateway -c FILE`, optionally inside a network namespace."""

    ready_text = "udpgateway ready"

    def __init__(self, config_path, *, env=None, ns=None, cwd=None, twistd=None, twistd_options=None,
                 pass_fds=(), wrapper=()):
        """`cwd` given: twistd runs there with its default pid file (./twistd.pid), and the directory stays.

        `wrapper`: an argv prefix that execs twistd (e.g. listen_fds_wrapper); `pass_fds`: fds it inherits.
        """
        own = cwd is None
        cwd = str(cwd or tempfile.mkdtemp(prefix="udpgateway-twistd-"))  # twistd leaves twistd.pid here
        options = twistd_options if twistd_options is not None else (
            ["-n", f"--pidfile={cwd}/twistd.pid"] if own else ["-n"])
        argv = [*wrapper, twistd or TWISTD, *options, "udpgateway", "-c", config_path]
        super().__init__(argv, cwd=cwd, env=env, ns=ns, pass_fds=pass_fds)
        self._own_cwd = own

    @property
    def pidfile(self):
        return Path(self.cwd) / "twistd.pid"


def listen_fds_wrapper(fds, names=None):
    """An argv prefix that execs the rest as systemd-socket-activate does: `fds` (numbers, or
    "bind:HOST:PORT" to bind one there) moved to 3, 4, ..., LISTEN_FDS, LISTEN_FDNAMES (when
    `names`) and LISTEN_PID = the exec'd process's own pid."""
    argv = [sys.executable, str(Path(__file__).with_name("listen_fds.py")), ",".join(map(str, fds))]
    return argv + ([":".join(names)] if names is not None else ["-"]) + ["--"]


class WorkerProcess(Process):
    """`udpgateway worker -c FILE [CHANNEL ...]`."""

    ready_text = "udpgateway worker consuming"

    def __init__(self, config_path, *channels, env=None, ns=None):
        super().__init__([UDPGATEWAY, "worker", "-c", config_path, *channels], env=env, ns=ns)


def run_in_own_group(argv, timeout, **kwargs):
    """Run `argv` to its end in a session of its own: (returncode, stdout, stderr).

    Whatever happens (a timeout, a failure, Ctrl-C) nothing it started outlives this call: it
    gets SIGTERM (to stop its children itself), then its process group, the one this call
    created (PGID = its PID), gets SIGKILL. Fails if it ran past `timeout` or left a process behind.
    """
    proc = subprocess.Popen([str(a) for a in argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, start_new_session=True, env=kwargs.pop("env", child_env()),
                            **kwargs)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            out, err = "", ""
        raise AssertionError(f"{argv} ran past {timeout} s:\n{out}{err}") from None
    finally:
        left = kill_group(proc)
        if proc.poll() is None:
            proc.wait(10)
    assert not left, f"{argv} left processes of its group running: {left}\n{out}{err}"
    return proc.returncode, out, err


def kill_group(proc):
    """SIGKILL the process group `proc` leads (its own session); returns the PIDs it still had."""
    left = [pid for pid in _pids() if pid != proc.pid and _pgid(pid) == proc.pid]
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return left


def _pids():
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _pgid(pid):
    try:
        return os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        return None


class Processes:
    """Every process a test started; `stop_all()` stops the ones still running, by PID."""

    def __init__(self):
        self.started = []

    def start(self, process, ready=True, timeout=DEADLINE):
        self.started.append(process)
        return process.start(ready=ready, timeout=timeout)

    def stop_all(self):
        """Stop each one still running, by its PID, even if stopping another failed; [(process, status)]."""
        statuses = []

        def stop(process):
            if process.proc is not None and process.proc.poll() is None:
                statuses.append((process, process.stop()))

        teardown(*(functools.partial(stop, process) for process in self.started))
        return statuses
