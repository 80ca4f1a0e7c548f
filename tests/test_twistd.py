"""The twistd plugin and the `udpgateway` command as real processes on loopback."""

import signal
import socket
import subprocess
import sys

import pytest

from tests.processes import UDPGATEWAY, GatewayProcess, child_env
from tests.scaleout import counters
from tests.udpclients import Clients
from tests.support import DEADLINE

ECHO_APP = """
from gateway.consumer import UDPConsumer

class Echo(UDPConsumer):
    async def udp_receive(self, message):
        await self.reply(message, message["data"])

application = Echo.as_asgi()
"""

FAILING_STARTUP = """
from gateway.consumer import UDPConsumer

class Broken(UDPConsumer):
    async def startup(self):
        raise RuntimeError("database is not there")

application = Broken.as_asgi()
"""


def write(tmp_path, text, **modules):
    for name, source in modules.items():
        (tmp_path / f"{name}.py").write_text(source)
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return str(path)


def echo_config(port=0, app="echoapp:application"):
    return f"application: {app}\nlisteners:\n  - {{name: echo, type: plain, bind: 127.0.0.1, port: {port}}}\n"


def udp_exchange(port, data=b"ping", host="127.0.0.1", timeout=DEADLINE):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(data, (host, port))
        return s.recvfrom(65535)


def free_port_holder():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    return s


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_twistd_serves_and_stops_cleanly(tmp_path, processes, signum):
    """twistd -n udpgateway answers a datagram, then a signal stops it with exit 0 and frees the port."""
    gateway = processes.start(GatewayProcess(write(tmp_path, echo_config(), echoapp=ECHO_APP)))
    port = gateway.port("echo")
    assert udp_exchange(port, b"hello") == (b"hello", ("127.0.0.1", port))
    assert gateway.stop(signum=signum) == 0
    assert "received SIG" in gateway.log_text()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", port))  # the port is free again


def test_twistd_logs_each_listener_with_its_real_port(tmp_path, processes):
    """The startup log names every listener with its real address and port (port 0 resolved)."""
    text = ("application: echoapp:application\nlisteners:\n"
            "  - {name: a, type: plain, bind: 127.0.0.1, port: 0}\n"
            "  - {name: b, type: plain, bind: '::1', port: 0}\n")
    gateway = processes.start(GatewayProcess(write(tmp_path, text, echoapp=ECHO_APP)))
    assert gateway.port("a") > 0 and gateway.port("b") > 0
    assert gateway.listeners["b"][0][0] == "::1"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux caps buffers at net.core.rmem_max")
def test_twistd_warns_once_when_linux_caps_rcvbuf(tmp_path, processes):
    """A listener asking for more than net.core.rmem_max gets one startup warning naming the sysctl command;
    one within it gets none, and both serve."""
    with open("/proc/sys/net/core/rmem_max") as file:
        rmem_max = int(file.read())
    asked = min(2 * rmem_max, 1 << 30)
    text = ("application: echoapp:application\nlisteners:\n"
            f"  - {{name: big, type: plain, bind: 127.0.0.1, port: 0, rcvbuf: {asked}}}\n"
            "  - {name: small, type: plain, bind: 127.0.0.1, port: 0, rcvbuf: 65536, sndbuf: 65536}\n")
    gateway = processes.start(GatewayProcess(write(tmp_path, text, echoapp=ECHO_APP)))
    for name in ("big", "small"):
        assert udp_exchange(gateway.port(name), b"hello") == (b"hello", ("127.0.0.1", gateway.port(name)))
    line = gateway.wait_for("capped")
    assert line.endswith(f"listener big: SO_RCVBUF capped at {rmem_max} bytes (asked {asked}): raise it with "
                         f"`sysctl -w net.core.rmem_max={asked}` (and in /etc/sysctl.d/ to keep it)")
    assert gateway.count("capped") == 1
    assert gateway.stop() == 0


def test_twistd_refuses_bad_config_with_exit_2(tmp_path, processes):
    """A bad config makes twistd exit 2 with one line per problem on stderr and no traceback."""
    text = "listeners:\n  - {name: x, type: plain, bind: 127.0.0.1, port: 70000, colour: red}\n"
    gateway = processes.start(GatewayProcess(write(tmp_path, text)), ready=False)
    assert gateway.wait_exit() == 2
    errors = [line for line in gateway.errors if line.strip()]
    assert any("listeners[0].port" in line for line in errors), errors
    assert any("listeners[0].colour" in line for line in errors), errors
    assert any(line.startswith(str(tmp_path / "gateway.yaml")) or "gateway.yaml" in line for line in errors)
    assert "Traceback" not in "\n".join(errors + gateway.lines)
    assert not any("listener x" in line for line in gateway.lines)


def test_twistd_port_in_use_exits_1_with_one_line(tmp_path, processes):
    """A port that cannot be bound stops the gateway with exit 1 and one line naming it."""
    holder = free_port_holder()
    try:
        port = holder.getsockname()[1]
        gateway = processes.start(GatewayProcess(write(tmp_path, echo_config(port), echoapp=ECHO_APP)), ready=False)
        assert gateway.wait_exit() == 1
        assert any(f"127.0.0.1:{port}" in line and "listener echo" in line for line in gateway.errors), gateway.errors
        assert "Traceback" not in "\n".join(gateway.errors)
    finally:
        holder.close()


def test_twistd_failed_lifespan_startup_exits_1(tmp_path, processes):
    """A failed lifespan startup exits 1 with its message and no traceback."""
    gateway = GatewayProcess(write(tmp_path, echo_config(app="broken:application"), broken=FAILING_STARTUP))
    processes.start(gateway, ready=False)
    assert gateway.wait_exit() == 1
    assert any("database is not there" in line for line in gateway.errors), gateway.errors
    assert "Traceback" not in "\n".join(gateway.errors)


def run_cli(*args, cwd=None):
    return subprocess.run([str(UDPGATEWAY), *args], capture_output=True, text=True, cwd=cwd,
                          env=child_env(), timeout=60)


def test_check_prints_summary_and_exits_0(tmp_path):
    """`udpgateway check` prints one summary line per listener and exits 0."""
    done = run_cli("check", "-c", write(tmp_path, echo_config(), echoapp=ECHO_APP))
    assert done.returncode == 0, done.stderr
    assert "echo" in done.stdout and "127.0.0.1" in done.stdout


def test_check_defaults_to_gateway_yaml_in_cwd(tmp_path):
    """Without -c, `check` reads ./gateway.yaml."""
    write(tmp_path, echo_config(), echoapp=ECHO_APP)
    assert run_cli("check", cwd=tmp_path).returncode == 0


def test_check_bad_config_exit_2_lines_on_stderr(tmp_path):
    """`check` on a bad config prints the problem lines on stderr only and exits 2."""
    done = run_cli("check", "-c", write(tmp_path, "listeners: []\nbogus: 1\n"))
    assert done.returncode == 2
    assert done.stdout == ""
    assert len(done.stderr.strip().splitlines()) >= 2
    assert "Traceback" not in done.stderr


def test_shipped_gateway_yaml_checks(tmp_path):
    """The shipped gateway.yaml with its echo example passes `check` from another directory."""
    from pathlib import Path

    shipped = Path(__file__).resolve().parent.parent / "gateway.yaml"
    done = run_cli("check", "-c", str(shipped), cwd=tmp_path)
    assert done.returncode == 0, done.stderr


def test_worker_refuses_memory_backend(tmp_path):
    """`udpgateway worker` with the memory backend exits 2 with one line."""
    done = run_cli("worker", "-c", write(tmp_path, echo_config(), echoapp=ECHO_APP))
    assert done.returncode == 2
    assert "channel_layer.backend" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def redis_down_config(port=0):
    from tests.redisserver import free_tcp_port

    return ("channel_layer:\n  backend: channels_redis.core.RedisChannelLayer\n"
            f"  config: {{hosts: ['redis://127.0.0.1:{free_tcp_port()}/0']}}\n"
            f"listeners:\n  - {{name: echo, type: plain, bind: 127.0.0.1, port: {port}}}\n")


FAILED_STARTS = {
    "port in use": (lambda port: echo_config(port), "cannot bind 127.0.0.1:"),
    "redis down": (lambda port: redis_down_config(), "127.0.0.1:"),
    "lifespan": (lambda port: echo_config(app="broken:application"), "database is not there"),
}


def failed_start(tmp_path, config, run_dir):
    gateway = GatewayProcess(config, cwd=run_dir).start(ready=False)
    assert gateway.wait_exit(60) == 1, gateway.log_text()
    return gateway


@pytest.mark.parametrize("failure", sorted(FAILED_STARTS))
def test_failed_start_removes_its_pid_file(tmp_path, failure):
    """A failed start exits 1 with one line and removes the twistd.pid it wrote, so the next start is not refused."""
    make_config, expected = FAILED_STARTS[failure]
    holder = free_port_holder()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    try:
        config = write(tmp_path, make_config(holder.getsockname()[1]), echoapp=ECHO_APP, broken=FAILING_STARTUP)
        for attempt in (1, 2):
            gateway = failed_start(tmp_path, config, run_dir)
            lines = [line for line in gateway.errors if line.strip()]
            assert len(lines) == 1 and expected in lines[0], lines
            assert "Another twistd server is running" not in "\n".join(gateway.errors + gateway.lines)
            assert "Traceback" not in "\n".join(gateway.errors + gateway.lines), gateway.log_text()
            assert not gateway.pidfile.exists(), f"attempt {attempt} left {gateway.pidfile}"
    finally:
        holder.close()


def test_clean_stop_removes_the_pid_file(tmp_path, processes):
    """twistd's default ./twistd.pid holds the gateway's pid while it runs and is gone after SIGTERM (exit 0)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    gateway = processes.start(GatewayProcess(write(tmp_path, echo_config(), echoapp=ECHO_APP), cwd=run_dir))
    assert gateway.pidfile.read_text() == str(gateway.pid)
    assert gateway.stop() == 0
    assert not gateway.pidfile.exists()


def test_failed_start_keeps_a_pid_file_of_another_process(tmp_path):
    """A failed start never removes a pid file that does not name it (checkPID leaves a live one alone)."""
    from gateway.tap import remove_own_pidfile

    other = tmp_path / "other.pid"
    other.write_text("1")
    remove_own_pidfile(str(other))
    assert other.read_text() == "1"


HOSTILE = {
    "nul-byte": ("listeners:\n  - {name: e\0, type: plain, bind: 127.0.0.1, port: 0}\n", "gateway.yaml:2:13: character U+0000"),
    "control-byte": ("application: x:y\x1b\nlisteners: []\n", "gateway.yaml:1:17: character U+001B"),
    "deep-nesting": ("listeners: " + "[" * 3000 + "]" * 3000 + "\n", "gateway.yaml:1:75: nested deeper than 64 levels"),
    "over-1-MiB": ("listeners: []\n" + "#" * (50 * 1024 * 1024) + "\n", "gateway.yaml: cannot read: larger than 1 MiB"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_config_file_is_one_line_and_exit_2(tmp_path, name):
    """A NUL or control byte, nesting past the loader or a file over 1 MiB gets exit 2 and one line naming
    the file (and line:column), from `check` and from twistd, and never a traceback."""
    text, expected = HOSTILE[name]
    path = write(tmp_path, text)
    done = run_cli("check", "-c", path)
    gateway = GatewayProcess(path).start(ready=False)
    assert gateway.wait_exit() == 2
    for status, errors in ((done.returncode, done.stderr.splitlines()), (2, gateway.errors)):
        assert status == 2
        assert len(errors) == 1 and expected in errors[0] and errors[0].startswith(path), errors
        assert "Traceback" not in "\n".join(errors + gateway.lines)


def test_twistd_hung_calls_time_out_and_free_their_slots(tmp_path, processes):
    """With app_timeout 0.5 s, two calls that never return and fill max_concurrency 2 are cancelled and
    counted as app_timeouts, and a datagram after them is answered."""
    text = ("application: tests.apps:hanging\nlimits: {app_timeout: 0.5, max_concurrency: 2}\n"
            "listeners:\n  - {name: echo, type: plain, bind: 127.0.0.1, port: 0}\n")
    gateway = processes.start(GatewayProcess(write(tmp_path, text)))
    address = ("127.0.0.1", gateway.port("echo"))
    with Clients(1) as clients:
        clients.send(0, b"hang1", address)
        clients.send(0, b"hang2", address)
        gateway.wait_for("hanging on hang2")
        clients.send(0, b"while-full", address)  # both slots taken: dropped, not queued
        clients.until_answered(address, timeout=15)
        assert not [r for r in clients.replies if r.data.startswith((b"hang", b"while-full"))]
    assert gateway.stop() == 0
    counts = counters(gateway)
    assert counts.get("app_timeouts") == 2 and counts.get("dropped_concurrency", 0) >= 1, counts
    assert "app_errors" not in counts and gateway.count("ran longer than app_timeout (0.5s): cancelled") >= 1
    assert "Traceback" not in "\n".join(gateway.lines + gateway.errors)
