"""Ports below 1024 under `twistd -u nobody -g nogroup`: bound as root, then served as nobody."""

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.processes import GatewayProcess
from tests.support import DEADLINE, skip_or_fail
from tests.test_twistd import ECHO_APP, udp_exchange

REPO = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = Path("/usr/bin/python3")  # the default python3 lives under /root, which nobody cannot read
USER, GROUP = "nobody", "nogroup"
LOW_PORTS = range(700, 1000)
_COPY_IGNORE = shutil.ignore_patterns(".venv", ".git", "__pycache__", "build", "*.egg-info", ".pytest_cache")


def _unprivileged_ids():
    import grp

    try:
        return pwd.getpwnam(USER).pw_uid, grp.getgrnam(GROUP).gr_gid
    except KeyError:
        return None


@pytest.fixture(scope="session")
def world_readable_install():
    """A virtualenv from /usr/bin/python3 with this repo pip-installed (not editable), readable by everyone."""
    if os.geteuid() != 0:
        skip_or_fail("dropping privileges with twistd -u/-g needs root")
    if not SYSTEM_PYTHON.exists():
        skip_or_fail(f"no {SYSTEM_PYTHON} to build an install that {USER} can read")
    if _unprivileged_ids() is None:
        skip_or_fail(f"no user {USER} or group {GROUP} on this host")
    top = Path(tempfile.mkdtemp(prefix="udpgateway-lowport-"))
    try:
        top.chmod(0o755)
        shutil.copytree(REPO, top / "src", ignore=_COPY_IGNORE)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        for argv in ([str(SYSTEM_PYTHON), "-m", "venv", str(top / "venv")],
                     [str(top / "venv" / "bin" / "pip"), "install", "-q", str(top / "src")]):
            done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
            if done.returncode != 0:
                skip_or_fail(f"could not build the install ({' '.join(argv[:3])}): {done.stderr.strip()[-500:]}")
        yield top
    finally:
        shutil.rmtree(top, ignore_errors=True)


def free_low_port():
    """A UDP port below 1024 on 127.0.0.1 that is free now (we are root)."""
    for port in LOW_PORTS:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    skip_or_fail(f"no free UDP port in {LOW_PORTS} on 127.0.0.1")


def ids_of(pid):
    """(real, effective) uid and gid of a process, from /proc."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    uids, gids = fields["Uid"].split(), fields["Gid"].split()
    return (int(uids[0]), int(uids[1])), (int(gids[0]), int(gids[1]))


def echo_run_dir(top):
    """(a new directory readable by the user nobody, its gateway.yaml path), with the echo application in it."""
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=top))
    run_dir.chmod(0o755)
    (run_dir / "echoapp.py").write_text(ECHO_APP)
    return run_dir, run_dir / "gateway.yaml"


def test_low_port_is_bound_before_twistd_drops_privileges(world_readable_install):
    """As root with -u nobody -g nogroup, a plain listener on a port below 1024 binds, then serves as nobody."""
    top = world_readable_install
    run_dir, config = echo_run_dir(top)
    port = free_low_port()
    config.write_text(f"application: echoapp:application\nlisteners:\n"
                      f"  - {{name: echo, type: plain, bind: 127.0.0.1, port: {port}}}\n")
    options = ["-n", "--pidfile=", "-u", USER, "-g", GROUP]
    gateway = GatewayProcess(str(config), cwd=run_dir, twistd=top / "venv" / "bin" / "twistd",
                             twistd_options=options, env={"PYTHONPATH": ""})
    gateway.start()
    try:
        uid, gid = _unprivileged_ids()
        assert ids_of(gateway.pid) == ((uid, uid), (gid, gid))
        assert udp_exchange(port, b"low") == (b"low", ("127.0.0.1", port))
        bound = gateway.lines.index(gateway.wait_for(f"listener echo (plain) on 127.0.0.1:{port}"))
        dropped = gateway.lines.index(gateway.wait_for(f"set uid/gid {uid}/{gid}"))
        assert bound < dropped, gateway.log_text()
        assert gateway.stop(signum=signal.SIGTERM) == 0, gateway.log_text()
        assert "Traceback" not in gateway.log_text()
    finally:
        gateway.stop()


def test_low_port_in_use_fails_before_privileges_drop(world_readable_install):
    """Under -u/-g a port that cannot be bound exits 1 with one line, still root, and removes twistd.pid."""
    top = world_readable_install
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=top))  # root's, 0700: nobody could not remove a file here
    port = free_low_port()
    config = run_dir / "gateway.yaml"
    config.write_text(f"application: echoapp:application\nlisteners:\n"
                      f"  - {{name: echo, type: plain, bind: 127.0.0.1, port: {port}}}\n")
    (run_dir / "echoapp.py").write_text(ECHO_APP)
    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        holder.bind(("127.0.0.1", port))
        gateway = GatewayProcess(str(config), cwd=run_dir, twistd=top / "venv" / "bin" / "twistd",
                                 twistd_options=["-n", "-u", USER, "-g", GROUP], env={"PYTHONPATH": ""})
        assert gateway.start(ready=False).wait_exit(60) == 1, gateway.log_text()
        lines = [line for line in gateway.errors if line.strip()]
        assert lines == [f"udpgateway: listener echo: cannot bind 127.0.0.1:{port}: [Errno 98] Address already in use"]
        assert "set uid/gid" not in gateway.log_text() and "Traceback" not in gateway.log_text()
        assert not (run_dir / "twistd.pid").exists()
    finally:
        holder.close()


def test_socket_activated_gateway_never_runs_as_root(world_readable_install):
    """Started as nobody from the first instruction, the gateway serves a port below 1024 on a socket
    root bound and passed as LISTEN_FDS (the exec wrapper does what systemd-socket-activate does)."""
    top = world_readable_install
    run_dir, config = echo_run_dir(top)
    port = free_low_port()
    config.write_text(f"application: echoapp:application\nlisteners:\n"
                      f"  - {{name: echo, type: plain, bind: 127.0.0.1, port: {port}}}\n")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", port))  # as root
    venv = top / "venv" / "bin"
    wrapper = ["setpriv", f"--reuid={USER}", f"--regid={GROUP}", "--clear-groups", "--",
               venv / "python", top / "src" / "tests" / "listen_fds.py", str(sock.fileno()), "echo", "--"]
    gateway = GatewayProcess(str(config), cwd=run_dir, twistd=venv / "twistd", twistd_options=["-n", "--pidfile="],
                             env={"PYTHONPATH": ""}, pass_fds=[sock.fileno()], wrapper=wrapper)
    try:
        gateway.start()
        sock.close()
        uid, gid = _unprivileged_ids()
        assert ids_of(gateway.pid) == ((uid, uid), (gid, gid))
        assert gateway.listeners["echo"] == [("127.0.0.1", port)]
        assert udp_exchange(port, b"low, unprivileged") == (b"low, unprivileged", ("127.0.0.1", port))
        assert "set uid/gid" not in gateway.log_text()
        assert gateway.stop(signum=signal.SIGTERM) == 0, gateway.log_text()
    finally:
        sock.close()
        gateway.stop()


def test_reload_cannot_bind_a_low_port_after_privileges_dropped(world_readable_install):
    """Under -u nobody a reload adding a port below 1024 fails to bind and is rolled back; the rest serves."""
    top = world_readable_install
    run_dir, config = echo_run_dir(top)
    port = free_low_port()
    listener = "  - {{name: {name}, type: plain, bind: 127.0.0.1, port: {port}}}\n"
    config.write_text("application: echoapp:application\nlisteners:\n" + listener.format(name="echo", port=port))
    gateway = GatewayProcess(str(config), cwd=run_dir, twistd=top / "venv" / "bin" / "twistd",
                             twistd_options=["-n", "--pidfile=", "-u", USER, "-g", GROUP], env={"PYTHONPATH": ""})
    try:
        gateway.start()
        other = free_low_port()
        start = gateway.mark()
        config.write_text(config.read_text() + listener.format(name="low", port=other))
        gateway.send_signal(signal.SIGHUP)
        line = gateway.wait_for("reload: rolled back", DEADLINE, start=start)
        assert f"listener low: cannot bind 127.0.0.1:{other}: [Errno 13] Permission denied" in line
        assert udp_exchange(port, b"still") == (b"still", ("127.0.0.1", port))
        assert gateway.stop(signum=signal.SIGTERM) == 0, gateway.log_text()
    finally:
        gateway.stop()
