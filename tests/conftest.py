"""Shared fixtures: a real gateway on loopback, async UDP clients, skip-or-fail for optional parts."""

import contextlib
import functools

import pytest
import pytest_twisted
from twisted.internet import defer

from tests import support
from tests.netns import pair, remove_leftover_namespaces, run_gateway  # noqa: F401 (fixtures for the namespace tests)
from tests.processes import interruptible_children


def pytest_configure(config):
    config.addinivalue_line("markers", "netns: needs ip netns (root, iproute2)")
    config.addinivalue_line("markers", "redis: needs redis-server")


def pytest_sessionstart(session):
    """Namespaces left by an earlier run that was killed (its pid is gone) are removed first.

    Children get SIGINT's default action even when the suite was started with it ignored.
    """
    remove_leftover_namespaces()
    interruptible_children()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under UDPGATEWAY_REQUIRE_ALL=1 (CI) any skip or xfail, however it was raised, is a failure."""
    _no_skips((yield).get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """The same for a whole module skipped while it is collected."""
    _no_skips((yield).get_result())


def _no_skips(report):
    if support.REQUIRE_ALL and (report.skipped or hasattr(report, "wasxfail")):
        why = getattr(report, "wasxfail", None) or (report.longrepr[2] if isinstance(report.longrepr, tuple) else
                                                     report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped or xfailed under UDPGATEWAY_REQUIRE_ALL=1: {why}"


@pytest.fixture
def write_config(tmp_path):
    """Write a gateway.yaml (plus optional modules beside it) and return its path."""

    def write(text, name="gateway.yaml", **modules):
        for module, source in modules.items():
            (tmp_path / f"{module}.py").write_text(source)
        path = tmp_path / name
        path.write_text(text)
        return str(path)

    return write


@pytest.fixture
def gateway(write_config):
    """Start a GatewayService from YAML text; every one started is stopped after the test."""
    started = []

    async def start(text, app=None, **modules):
        service = support.build_service(write_config(text, **modules), app=app)
        started.append(service)
        service.startService()
        await support.wait(service.started)
        return service

    yield start
    support.teardown(*(functools.partial(_stop_service, service) for service in started))


def _stop_service(service):
    if service.running:
        pytest_twisted.blockon(service.stopService())


@pytest.fixture
def client():
    """Async UDP clients bound to loopback; closed after the test."""
    clients = []

    async def make(host="127.0.0.1"):
        from twisted.internet import reactor

        c = support.UDPClient()
        c.port = reactor.listenUDP(0, c, interface=host, maxPacketSize=65535)
        clients.append(c)
        return c

    yield make
    support.teardown(*(functools.partial(_close_client, c) for c in clients))


def _close_client(c):
    pytest_twisted.blockon(defer.maybeDeferred(c.port.stopListening))


@pytest.fixture
def processes():
    """Start gateway/worker processes; each still running at the end is stopped and must exit 0."""
    from tests.processes import Processes

    started = Processes()
    yield started
    for process, status in started.stop_all():
        assert status == 0, f"{process.argv} exited {status}:\n{process.log_text()}"


@pytest.fixture(autouse=True)
def no_leftovers(request):
    """After each test and its fixtures' teardown, no UDP port is open and no reactor timer is left.

    trial checks this itself; pytest-twisted does not.
    """
    yield
    from twisted.internet import reactor, udp

    ports = [r for r in reactor.getReaders() if isinstance(r, udp.Port)]
    assert not ports, f"UDP ports left open: {ports}"

    leftover = [call for call in reactor.getDelayedCalls() if call.active()]
    for call in leftover:
        call.cancel()
    assert not leftover, f"delayed calls left behind: {leftover}"


@contextlib.contextmanager
def own_redis_servers(count):
    """A list of `count` redis-servers of our own, each stopped by its PID when the block ends."""
    from tests.redisserver import start_redis_server

    servers = []
    try:
        for _ in range(count):
            servers.append(start_redis_server())
        yield servers
    finally:
        for server in servers:
            server.close()


@pytest.fixture
def redis_server():
    """A redis-server of our own on 127.0.0.1 and a random port, stopped by its PID after the test."""
    with own_redis_servers(1) as [server]:
        yield server


@pytest.fixture(scope="module")
def shared_redis():
    """One redis-server for a module's tests that never stop it; flushed by each test that needs it."""
    with own_redis_servers(1) as [server]:
        yield server


@pytest.fixture(scope="module")
def redis_trio():
    """Three redis-servers of our own for a module's sharded-layer tests (2 or 3 of them as hosts)."""
    with own_redis_servers(3) as servers:
        yield servers


@pytest.fixture(params=["stock", "batching"])
def core_backend(request, monkeypatch):
    """Each sorted-set Redis layer in turn, also set as CHANNEL_LAYER_BACKEND (configs, examples, children)."""
    from tests.scaleout import CORE_BACKENDS

    backend = CORE_BACKENDS[request.param]
    monkeypatch.setenv("CHANNEL_LAYER_BACKEND", backend)
    return backend
