"""Signals of the gateway (twistd) and of `udpgateway worker`, over real processes."""

import signal
import sys

import pytest

from tests import scaleout
from tests.processes import GatewayProcess, Process, interruptible_children
from tests.support import DEADLINE
from tests.test_twistd import ECHO_APP, echo_config, udp_exchange, write

OPERATOR_SIGNALS = [
    (signal.SIGHUP, "received SIGHUP: "),  # the gateway reloads (test_reload.py), a worker says it does not
    (signal.SIGUSR1, "received SIGUSR1: counters:"),
    (signal.SIGUSR2, "received SIGUSR2: ignored"),
]
SLEEPY = "application: tests.apps:sleepy\n"


def send_operator_signals(process, check):
    """Each of SIGHUP, SIGUSR1, SIGUSR2 logs its line and the process goes on (`check` proves it)."""
    for signum, line in OPERATOR_SIGNALS:
        start = len(process.lines)
        process.send_signal(signum)
        process.wait_for(line, 20, start=start)
        check()
        assert process.proc.poll() is None, process.log_text()


def test_gateway_keeps_serving_through_sighup_sigusr1_sigusr2(tmp_path, processes):
    """SIGHUP, SIGUSR1 (the counters line) and SIGUSR2 each log one line and the gateway still answers."""
    gateway = processes.start(GatewayProcess(write(tmp_path, echo_config(), echoapp=ECHO_APP)))
    port = gateway.port("echo")
    send_operator_signals(gateway, lambda: udp_exchange(port, b"still") == (b"still", ("127.0.0.1", port)))
    assert "received=" in gateway.wait_for("received SIGUSR1: counters:")
    assert "Traceback" not in gateway.log_text()


@pytest.mark.redis
def test_worker_keeps_serving_through_sighup_sigusr1_sigusr2(tmp_path, redis_server, processes):
    """A worker logs one line for each of SIGHUP, SIGUSR1 (counters, then sizes) and SIGUSR2 and keeps answering."""
    path = scaleout.write_config(tmp_path, redis_server.url)
    gateway = processes.start(scaleout.gateway_process(path))
    worker = processes.start(scaleout.worker_process(path))
    port = gateway.port("echo")

    def answers():
        data, pid, _gateway = udp_exchange(port, b"still", timeout=10)[0].split()
        assert (data, int(pid)) == (b"still", worker.pid)

    send_operator_signals(worker, answers)
    sizes = worker.wait_for("received SIGUSR1: sizes:")  # as the gateway's: in flight, full collections
    assert all(f" {name}=" in sizes for name in ("calls_in_flight", "gc_full", "gc_longest_ms")), sizes
    scaleout.assert_clean_log(worker)


def assert_stopped_at_once(process, sent):
    """Exit 0 after the second signal, one line for it, no traceback, and no wait ran to its end."""
    assert process.wait_exit(60) == 0, process.log_text()
    text = "\n".join(process.lines + process.errors)
    assert process.count(f"received {sent.name} again, stopping now") == 1, text
    for bad in ("ReactorNotRunning", "Traceback", "Unhandled error"):
        assert bad not in text, text
    # The drain's and lifespan shutdown's own timeouts (5 s, 10 s) never came: the stop ended before them.
    assert "still running after 5.0s" not in text and "did not complete in 10.0s" not in text, text


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT])
def test_second_stop_signal_ends_a_slow_gateway_stop_at_once(tmp_path, second):
    """A second SIGTERM/SIGINT during a drain that would wait ends the stop at once: exit 0, pid file removed."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = write(tmp_path, SLEEPY + "listeners:\n  - {name: echo, type: plain, bind: 127.0.0.1, port: 0}\n")
    gateway = GatewayProcess(config, cwd=run_dir).start()
    try:
        udp_exchange_no_answer(gateway.port("echo"))
        gateway.wait_for("sleepy: call started", 20)
        gateway.send_signal(signal.SIGTERM)
        gateway.wait_for("received SIGTERM, stopping", 20)
        gateway.send_signal(second)
        assert_stopped_at_once(gateway, second)
        assert not gateway.pidfile.exists()
    finally:
        gateway.stop()


@pytest.mark.redis
def test_second_stop_signal_ends_a_slow_worker_stop_at_once(tmp_path, redis_server, processes):
    """`udpgateway worker` too: a second SIGTERM during the drain ends the stop at once with exit 0."""
    path = scaleout.write_config(tmp_path, redis_server.url)
    gateway = processes.start(scaleout.gateway_process(path))
    worker = scaleout.worker_process(path, application="tests.apps:sleepy").start()
    try:
        udp_exchange_no_answer(gateway.port("echo"))
        worker.wait_for("sleepy: call started", 20)
        worker.send_signal(signal.SIGTERM)
        worker.wait_for("received SIGTERM, stopping", 20)
        worker.send_signal(signal.SIGTERM)
        assert_stopped_at_once(worker, signal.SIGTERM)
    finally:
        worker.stop()


def udp_exchange_no_answer(port):
    """Send one datagram to the sleepy application (it never answers)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"sleep", ("127.0.0.1", port))


def test_a_child_stops_on_sigint_even_when_the_suite_ignores_sigint(processes):
    """A child without a SIGINT handler of its own (as runworker) stops on SIGINT though the suite ignores SIGINT."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as in `pytest &` from a script, or under nohup
    try:
        interruptible_children()
        child = processes.start(Process([sys.executable, "-c", "import time; print('ready', flush=True); "
                                         f"time.sleep({4 * DEADLINE})"]), ready=False)
    finally:
        signal.signal(signal.SIGINT, previous)
    child.wait_for("ready")
    child.send_signal(signal.SIGINT)
    assert child.wait_exit() == -signal.SIGINT, child.log_text()  # KeyboardInterrupt ends Python by SIGINT
