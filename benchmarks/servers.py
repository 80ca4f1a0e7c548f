"""The benchmark's server processes: start one and learn its port, read its RSS and counters, stop it by PID."""

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BIN = Path(sys.executable).parent
LISTENER_LINE = r"listener bench \(plain\) on \S+:(\d+)"
# Every child we start, at once (before it is ready): `stop_children` stops each by PID, in `finally`
# and on SIGTERM, so a benchmark that is stopped or fails part-way leaves nothing running.
CHILDREN = []


class Server:
    """One process we started: its log lines are kept (bounded) so its counters can be read."""

    def __init__(self, proc, port):
        self.proc = proc
        self.port = port
        self.lines = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:  # keep draining so a full pipe never blocks the server
            self.lines.append(line)
            del self.lines[:-200]

    def rss_mb(self):
        """Resident set size from /proc/PID/status, in MB."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024

    def cpu_seconds(self):
        """User + system CPU time the process used so far, from /proc/PID/stat."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def counters(self, timeout=5.0):
        """{name: value} of the gateway's counters and sizes, from the lines SIGUSR1 makes it log."""
        if not self._catches(signal.SIGUSR1):  # an older gateway would die of it
            return {}
        seen = len(self.lines)
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines[seen:]:
                if "received SIGUSR1: sizes:" in line:
                    found = [l for l in self.lines[seen:] if "received SIGUSR1: " in l]
                    return {k: int(v) for l in found for k, v in re.findall(r"(\w+)=(\d+)", l.split(": ", 2)[-1])}
            time.sleep(0.05)
        return {}

    def _catches(self, signum):
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        caught = int(re.search(r"SigCgt:\s+([0-9a-f]+)", status).group(1), 16)
        return bool(caught & (1 << (signum - 1)))

    def stop(self):
        stop(self.proc)


def start(argv, pattern, cwd, env=None, ready=None):
    """Start a server process; a Server once a log line matches `pattern` (port: its group, if any)
    and, with `ready`, a later line matches that too."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO), **(env or {}))
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd, env=env)
    CHILDREN.append(proc)
    watchdog = threading.Timer(60, proc.kill)  # a server that never logs its port is killed
    watchdog.start()
    seen, port = [], None
    try:
        for line in proc.stdout:
            seen.append(line)
            match = re.search(pattern, line) if port is None else None
            if match:
                port = int(match.group(1)) if match.re.groups else 0
            if port is not None and (ready is None or re.search(ready, line)):
                return Server(proc, port or None)
    finally:
        watchdog.cancel()
    proc.kill()
    proc.wait(5)
    raise RuntimeError(f"{argv[0]} did not start:\n{''.join(seen[-20:])}")


def start_gateway(tmp, name, yaml_text, env=None):
    config = Path(tmp) / f"{name}.yaml"
    config.write_text(yaml_text)
    argv = [str(BIN / "twistd"), "-n", f"--pidfile={tmp}/{name}.pid", "udpgateway", "-c", str(config)]
    return start(argv, LISTENER_LINE, tmp, env, ready=r"udpgateway ready")


def start_raw(tmp):
    return start([sys.executable, str(HERE / "raw_echo.py")], r"raw echo on \S+:(\d+)", tmp)


def stop_children():
    """Stop every child in reverse order of start (workers before their gateway, Redis last)."""
    while CHILDREN:
        stop(CHILDREN.pop())


def stop(proc):
    """SIGTERM, then SIGKILL after 10 s: only this process, by its PID."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


REDIS_YAML = """\
channel_layer:
  backend: channels_redis.core.RedisChannelLayer
  config:
    hosts: ["redis://127.0.0.1:{port}/0"]
    channel_capacity: {{"udp.receive": 10000, "udp.send.*": 10000}}
application: ${{UDPGATEWAY_APPLICATION:-}}
listeners:
  - {{name: bench, type: plain, bind: 127.0.0.1, port: 0}}
"""


def start_redis_topology(tmp):
    """redis-server, a gateway without application and two workers (all in CHILDREN); returns the gateway."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    start(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
           "--dir", tmp], r"Ready to accept connections", tmp)
    gateway = start_gateway(tmp, "redis", REDIS_YAML.format(port=port))
    config = str(Path(tmp) / "redis.yaml")
    for _ in range(2):
        start([str(BIN / "udpgateway"), "worker", "-c", config], r"udpgateway worker consuming", tmp,
              {"UDPGATEWAY_APPLICATION": "echo:application"})
    return gateway
