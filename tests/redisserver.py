"""A real redis-server for tests: 127.0.0.1 and a free port (or a unix socket, or TLS), no persistence; stopped by PID."""

import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from contextlib import asynccontextmanager

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

    @property
    def client_options(self):
        """What a redis-py client needs besides `url` (the CA of a TLS server)."""
        return {}

    def start(self, timeout=STARTUP_TIMEOUT):
        """Start on self.port and return once it answers PING."""
        argv = [self.binary, *self.listen_args(), "--save", "", "--appendonly", "no", "--daemonize", "no",
                "--dir", self.directory]
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

    def listen_args(self):
        """redis-server's arguments saying where it listens."""
        return ["--port", str(self.port), "--bind", "127.0.0.1"]

    def connect(self, timeout):
        """A client socket to the server, as `listen_args` says."""
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)

    def ping(self, timeout=0.5):
        """Whether the server answers PING now."""
        return self.command(b"PING", timeout=timeout) == b"+PONG"

    def command(self, *words, timeout=COMMAND_TIMEOUT):
        """Send one inline command and return the first line of the answer (None if unreachable)."""
        try:
            with self.connect(timeout) as s:
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
        with self.connect(COMMAND_TIMEOUT) as s:
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


class UnixRedisServer(RedisServer):
    """A redis-server on a unix socket in its directory, with no TCP port (`port` is unused)."""

    @property
    def path(self):
        return os.path.join(self.directory, "redis.sock")

    @property
    def url(self):
        return f"unix://{self.path}"

    @property
    def address(self):
        return self.path

    def listen_args(self):
        return ["--port", "0", "--unixsocket", self.path, "--unixsocketperm", "700"]

    def connect(self, timeout):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(timeout)
            s.connect(self.path)
        except OSError:
            s.close()
            raise
        return s


class AuthRedisServer(RedisServer):
    """A redis-server that answers only clients logged in as an ACL user (`user`, `password`); default user off."""

    user, password = "gateway", "s3cret-for-tests"

    @property
    def url(self):
        return f"redis://{self.user}:{self.password}@127.0.0.1:{self.port}/0"

    def listen_args(self):
        return [*super().listen_args(), "--user", "default", "off",
                "--user", self.user, "on", f">{self.password}", "~*", "&*", "+@all"]

    def connect(self, timeout):
        s = super().connect(timeout)
        try:
            s.sendall(f"AUTH {self.user} {self.password}\r\n".encode())
            answer = b""
            while not answer.endswith(b"\r\n"):
                chunk = s.recv(4096)
                if not chunk:
                    raise ConnectionError("redis-server closed the connection at AUTH")
                answer += chunk
            if answer != b"+OK\r\n":
                raise ConnectionError(f"AUTH refused: {answer!r}")
            return s
        except OSError:
            s.close()
            raise


class TLSRedisServer(RedisServer):
    """A redis-server speaking only TLS on 127.0.0.1, with a certificate from a throwaway CA (`ca`)."""

    auth_clients = "no"  # whether it asks clients for a certificate

    def __init__(self, binary=None, port=None):
        super().__init__(binary, port)
        try:
            self.ca, self.certificate, self.key = make_certificates(self.directory)
        except BaseException:
            shutil.rmtree(self.directory, ignore_errors=True)
            raise

    @property
    def url(self):
        return f"rediss://127.0.0.1:{self.port}/0"

    @property
    def client_options(self):
        return {"ssl_ca_certs": self.ca}

    def listen_args(self):
        return ["--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1", "--tls-cert-file",
                self.certificate, "--tls-key-file", self.key, "--tls-ca-cert-file", self.ca,
                "--tls-auth-clients", self.auth_clients]

    def connect(self, timeout):
        context = ssl.create_default_context(cafile=self.ca)
        self.present_certificate(context)
        s = super().connect(timeout)
        try:
            return context.wrap_socket(s, server_hostname="127.0.0.1")
        except OSError:
            s.close()
            raise

    def present_certificate(self, context):
        """What this server asks of a client's TLS context: nothing (no client certificates)."""


class MutualTLSRedisServer(TLSRedisServer):
    """A TLS-only redis-server that also asks every client for a certificate from its CA (`client_certificate`)."""

    auth_clients = "yes"

    def __init__(self, binary=None, port=None):
        super().__init__(binary, port)
        try:
            self.client_certificate, self.client_key = make_client_certificate(self.directory, self.ca)
        except BaseException:
            shutil.rmtree(self.directory, ignore_errors=True)
            raise

    @property
    def client_options(self):
        return {**super().client_options, "ssl_certfile": self.client_certificate, "ssl_keyfile": self.client_key}

    def present_certificate(self, context):
        context.load_cert_chain(self.client_certificate, self.client_key)


_NEW_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]  # openssl req: a P-256 key


def make_certificates(directory, timeout=COMMAND_TIMEOUT):
    """A new CA and a certificate it signed for 127.0.0.1 (IP SAN), in `directory`: paths (ca, cert, key)."""
    ca, ca_key, cert, key, request, extensions = (os.path.join(directory, name) for name in (
        "ca.crt", "ca.key", "server.crt", "server.key", "server.csr", "server.ext"))
    with open(extensions, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\nauthorityKeyIdentifier=keyid\nbasicConstraints=CA:FALSE\n"
                "extendedKeyUsage=serverAuth\n")
    for argv in (
        ["req", "-x509", *_NEW_KEY, "-keyout", ca_key, "-out", ca, "-subj", "/CN=udpgateway test CA", "-days", "2",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ["req", "-new", *_NEW_KEY, "-keyout", key, "-out", request, "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", request, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
         "-days", "2", "-extfile", extensions],
    ):
        _openssl(argv, timeout)
    return ca, cert, key


def make_client_certificate(directory, ca, timeout=COMMAND_TIMEOUT):
    """A client certificate signed by the CA that make_certificates made in `directory`: paths (cert, key)."""
    ca_key, cert, key, request, extensions = (os.path.join(directory, name) for name in (
        "ca.key", "client.crt", "client.key", "client.csr", "client.ext"))
    with open(extensions, "w") as f:
        f.write("basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n")
    for argv in (
        ["req", "-new", *_NEW_KEY, "-keyout", key, "-out", request, "-subj", "/CN=udpgateway test client"],
        ["x509", "-req", "-in", request, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
         "-days", "2", "-extfile", extensions],
    ):
        _openssl(argv, timeout)
    return cert, key


def _openssl(argv, timeout):
    done = subprocess.run(["openssl", *argv], capture_output=True, stdin=subprocess.DEVNULL, timeout=timeout)
    if done.returncode:
        raise RuntimeError(f"openssl {argv[0]} exited {done.returncode}: {done.stderr.decode(errors='replace')}")


def start_redis_server(attempts=3, kind=RedisServer):
    """A started `kind` of RedisServer; skips (or fails under UDPGATEWAY_REQUIRE_ALL=1) without redis-server."""
    from tests.support import skip_or_fail

    binary = redis_server_binary()
    if not binary:
        skip_or_fail("redis-server is not installed (apt-get install redis-server)")
    for attempt in range(attempts):
        server = kind(binary)
        try:
            return server.start()
        except RuntimeError:
            server.close()  # most likely the free port was taken meanwhile: try another
            if attempt == attempts - 1:
                raise


def wire_to(server):
    """What gateway.layers.wire makes for a redis-py client of `server`: a Wire, or a PoolWire without hiredis."""
    import redis.asyncio

    from gateway.layers import wire

    return wire.wire_for(redis.asyncio.Redis.from_url(server.url, **server.client_options))


@asynccontextmanager
async def wire_connection(server):
    """A Wire to `server` (not a PoolWire), closed after the block."""
    from gateway.layers import wire

    connection = wire_to(server)
    assert isinstance(connection, wire.Wire)
    try:
        yield connection
    finally:
        await connection.close()
