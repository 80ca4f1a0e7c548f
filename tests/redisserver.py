"""A real redis-server for tests: 127.0.0.1, a random free port, no persistence; stopped by PID."""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from tests.support import DEADLINE

STARTUP_TIMEOUT = DEADLINE
COMMAND_TIMEOUT = 10.0  # a loaded machine answers late, not never


def free_tcp_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_server_binary():
    return shutil.which("redis-server") or (os.path.exists("/usr/bin/redis-server") and "/usr/bin/redis-server")


class RedisServer:
    """One redis-server process we started; `restart()` brings it back on the same port."""

    def __init__(self, binary=None, port=None):
        self.binary = binary or redis_server_binary()
        self.port = port or free_tcp_port()
        self.directory = tempfile.mkdtemp(prefix="udpgateway-redis-")
        self.proc = None
        self._log = None

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def start(self, timeout=STARTUP_TIMEOUT):
        """Start on self.port and return once it answers PING."""
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--daemonize", "no", "--dir", self.directory]
        self._log = open(os.path.join(self.directory, "redis.log"), "ab")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not self.ping():
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited {self.proc.returncode}:\n{self.log_text()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server did not answer PING within {timeout}s:\n{self.log_text()}")
            time.sleep(0.02)
        return self

    def ping(self, timeout=0.5):
        """Whether the server answers PING now."""
        return self.command(b"PING", timeout=timeout) == b"+PONG"

    def command(self, *words, timeout=COMMAND_TIMEOUT):
        """Send one inline command and return the first line of the answer (None if unreachable)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
                s.sendall(b" ".join(words) + b"\r\n")
                answer = b""
                while not answer.endswith(b"\r\n"):
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    answer += chunk
                return answer.split(b"\r\n", 1)[0]
        except OSError:
            return None

    def info(self, section=b"stats"):
        """INFO of one section as {field: value text}."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=COMMAND_TIMEOUT) as s:
            s.sendall(b"INFO " + section + b"\r\n")
            answer = b""
            while b"\r\n" not in answer or len(answer) < int(answer[1:answer.index(b"\r\n")]) + 4:
                chunk = s.recv(65536)
                if not chunk:
                    break
                answer += chunk
        lines = answer.decode().split("\r\n")[1:]
        return dict(line.split(":", 1) for line in lines if ":" in line)

    def flushall(self):
        assert self.command(b"FLUSHALL") == b"+OK"

    def stop(self, timeout=10.0):
        """SIGTERM our process and wait for it."""
        self._end(signal.SIGTERM, timeout)

    def kill(self):
        """SIGKILL our process (a crash): clients see their connections drop."""
        self._end(signal.SIGKILL, 10.0)

    def pause(self):
        """SIGSTOP our process: connections stay open and commands wait unanswered (a hung Redis)."""
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self):
        """SIGCONT our process after pause()."""
        os.kill(self.proc.pid, signal.SIGCONT)

    def restart(self, timeout=STARTUP_TIMEOUT):
        """Start again on the same port (after stop or kill)."""
        self._end(signal.SIGKILL, 10.0)
        return self.start(timeout)

    def _end(self, signum, timeout):
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)  # a paused server would not act on SIGTERM
                os.kill(proc.pid, signum)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_text(self):
        try:
            with open(os.path.join(self.directory, "redis.log"), "rb") as f:
                return f.read()[-3000:].decode(errors="replace")
        except OSError:
            return ""

    def close(self):
        """Stop the server and remove its directory."""
        self._end(signal.SIGTERM, 10.0)
        shutil.rmtree(self.directory, ignore_errors=True)


def start_redis_server(attempts=3):
    """A started RedisServer; skips (or fails under UDPGATEWAY_REQUIRE_ALL=1) without redis-server."""
    from tests.support import skip_or_fail

    binary = redis_server_binary()
    if not binary:
        skip_or_fail("redis-server is not installed (apt-get install redis-server)")
    for attempt in range(attempts):
        server = RedisServer(binary)
        try:
            return server.start()
        except RuntimeError:
            server.close()  # most likely the free port was taken meanwhile: try another
            if attempt == attempts - 1:
                raise
