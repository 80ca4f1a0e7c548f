"""The Prometheus endpoint: the collector's families, and /metrics over real HTTP from real processes."""

import asyncio
import http.client
import json
import re
import socket
import urllib.error
import urllib.request

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import gateway_collector, registry_for, worker_collector
from gateway.stats import LISTENER_COUNTERS, PROCESS_COUNTERS, WORKER_COUNTERS, Counters
from tests import apps
from tests.processes import GatewayProcess, Processes, WorkerProcess
from tests.redisserver import free_tcp_port
from tests.scaleout import APPLICATION, CHILD_ENV, assert_clean_log, gateway_process, worker_process, write_config
from tests.support import DEADLINE, aio, eventually, listener_address, stop, wait_until

METRICS_LINE = re.compile(r"metrics on (http://\S+/metrics)")


class Scrape:
    """One scrape, parsed by prometheus_client's own parser: families by name, samples by (name, labels)."""

    def __init__(self, text):
        self.families = {family.name: family for family in text_string_to_metric_families(text)}
        self.samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                        for family in self.families.values() for s in family.samples}

    def value(self, name, **labels):
        return self.samples[name, tuple(sorted(labels.items()))]


def parse(registry):
    return Scrape(generate_latest(registry).decode())


def fetch(url, accept=None):
    """GET url with urllib, never through a proxy: (status, content type, body text)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with opener.open(request, timeout=DEADLINE) as response:
        return response.status, response.headers["Content-Type"], response.read().decode()


def scrape(url):
    status, content_type, text = fetch(url)
    assert status == 200 and content_type.startswith("text/plain"), (status, content_type)
    return Scrape(text)


def metrics_url(process):
    return METRICS_LINE.search(process.wait_for("metrics on http://"))[1]


# -- the collector, without sockets --------------------------------------------------------------

def test_every_counter_is_exported_at_zero_with_its_labels():
    """Before any event, every counter is there at 0: per-listener ones once per listener, the others once."""
    scraped = parse(registry_for(gateway_collector(Counters(), lambda: ["echo", "ssdp"], reply_channels=lambda: 0,
                                                   calls_in_flight=lambda: 0)))
    for name in LISTENER_COUNTERS:
        for listener in ("echo", "ssdp"):
            assert scraped.value(f"udpgateway_{name}_total", listener=listener) == 0
        assert scraped.families[f"udpgateway_{name}"].type == "counter"
    for name in PROCESS_COUNTERS:
        assert scraped.value(f"udpgateway_{name}_total") == 0
    assert scraped.value("udpgateway_reply_channels") == 0
    assert scraped.value("udpgateway_app_calls_in_flight") == 0
    assert scraped.value("udpgateway_app_call_seconds_count") == 0
    assert scraped.value("udpgateway_app_call_seconds_bucket", le="+Inf") == 0


def test_counts_land_on_their_listener_and_the_process():
    """Per-listener counts carry their listener label; process-wide counts have none; gauges read live values."""
    counters = Counters()
    for _ in range(3):
        counters.incr("received", listener="echo")
    counters.incr("dropped_bad_message", listener="ssdp")
    counters.incr("app_errors")
    gauges = {"channels": 7}
    scraped = parse(registry_for(gateway_collector(counters, lambda: ["echo", "ssdp"],
                                                   reply_channels=lambda: gauges["channels"],
                                                   calls_in_flight=lambda: 2)))
    assert scraped.value("udpgateway_received_total", listener="echo") == 3
    assert scraped.value("udpgateway_received_total", listener="ssdp") == 0
    assert scraped.value("udpgateway_dropped_bad_message_total", listener="ssdp") == 1
    assert scraped.value("udpgateway_app_errors_total") == 1
    assert (scraped.value("udpgateway_reply_channels"), scraped.value("udpgateway_app_calls_in_flight")) == (7, 2)
    assert ("udpgateway_received_total", (("listener", ""),)) not in scraped.samples


def test_counts_without_a_listener_are_not_lost():
    """A per-listener counter incremented without a listener shows as listener="", so the sum is the total."""
    counters = Counters()
    counters.incr("received", 2, listener="echo")
    counters.incr("received")
    scraped = parse(registry_for(gateway_collector(counters, lambda: ["echo"], reply_channels=lambda: 0,
                                                   calls_in_flight=lambda: 0)))
    assert scraped.value("udpgateway_received_total", listener="") == 1
    assert scraped.value("udpgateway_received_total", listener="echo") == 2


def test_a_listener_no_longer_configured_keeps_its_samples():
    """Counts of a listener that is not (or no longer) configured keep their own label, not listener=""."""
    counters = Counters()
    counters.incr("received", 5, listener="gone")
    counters.incr("received", listener="echo")
    scraped = parse(registry_for(gateway_collector(counters, lambda: ["echo"], reply_channels=lambda: 0,
                                                   calls_in_flight=lambda: 0)))
    assert scraped.value("udpgateway_received_total", listener="gone") == 5
    assert scraped.value("udpgateway_replied_total", listener="gone") == 0
    assert ("udpgateway_received_total", (("listener", ""),)) not in scraped.samples


def test_a_counter_outside_the_tables_is_still_exported():
    """A counter the tables do not name is exported for the process rather than hidden."""
    counters = Counters()
    counters.incr("dropped_surprise", 4)
    scraped = parse(registry_for(worker_collector(counters, calls_in_flight=lambda: 0)))
    assert scraped.value("udpgateway_dropped_surprise_total") == 4


def test_call_time_histogram_buckets():
    """Call times become cumulative le buckets, a count and a sum, in seconds."""
    counters = Counters()
    for seconds in (0.0004, 0.003, 0.003, 0.2, 100):
        counters.call_time.observe(seconds)
    scraped = parse(registry_for(worker_collector(counters, calls_in_flight=lambda: 0)))
    family = scraped.families["udpgateway_app_call_seconds"]
    assert family.type == "histogram"
    assert scraped.value("udpgateway_app_call_seconds_bucket", le="0.0005") == 1
    assert scraped.value("udpgateway_app_call_seconds_bucket", le="0.005") == 3
    assert scraped.value("udpgateway_app_call_seconds_bucket", le="0.25") == 4
    assert scraped.value("udpgateway_app_call_seconds_bucket", le="60.0") == 4
    assert scraped.value("udpgateway_app_call_seconds_bucket", le="+Inf") == 5
    assert scraped.value("udpgateway_app_call_seconds_count") == 5
    assert scraped.value("udpgateway_app_call_seconds_sum") == pytest.approx(100.2064)


def test_worker_exports_only_what_a_worker_moves():
    """A worker has no listeners and no reply channels: its families are the app and layer ones."""
    scraped = parse(registry_for(worker_collector(Counters(), calls_in_flight=lambda: 0)))
    ours = {name for name in scraped.families if name.startswith("udpgateway_")}
    assert ours == {f"udpgateway_{name}" for name in WORKER_COUNTERS} | {
        "udpgateway_app_calls_in_flight", "udpgateway_app_call_seconds"}


def test_registry_is_private_with_process_metrics():
    """Each registry is its own (not prometheus_client's global one) and carries process_* metrics."""
    from prometheus_client import REGISTRY

    registry = registry_for(worker_collector(Counters(), calls_in_flight=lambda: 0))
    assert registry is not REGISTRY
    assert "process_resident_memory_bytes" in parse(registry).families
    assert not any(name.startswith("udpgateway_") for name in parse(REGISTRY).families)


# -- in process, over real HTTP --------------------------------------------------------------------

def memory_config(metrics="metrics: {bind: 127.0.0.1, port: 0}\n"):
    return ("channel_layer: {backend: memory}\napplication: tests.apps:replies\nlisteners:\n"
            "  - {name: echo, type: plain, bind: 127.0.0.1, port: 0}\n"
            "  - {name: other, type: plain, bind: 127.0.0.1, port: 0}\n" + metrics)


async def fetch_async(url, accept=None):
    """fetch() in a thread, so the reactor keeps serving the request."""
    return await asyncio.get_running_loop().run_in_executor(None, fetch, url, accept)


@aio
async def test_gateway_serves_metrics_and_closes_them_at_stop(gateway, client):
    """A running gateway answers GET /metrics with its counters per listener; after stop the port is closed."""
    service = await gateway(memory_config(), app=apps.Replies.as_asgi())
    c = await client()
    for _ in range(3):
        c.send(json.dumps(["GOOD"]).encode(), listener_address(service, "echo"))
        assert (await c.receive())[0] == b"good"
    c.send(json.dumps(["WRONG_TYPE", "GOOD"]).encode(), listener_address(service, "other"))
    assert (await c.receive())[0] == b"good"
    await eventually(lambda: service.counters.call_time.count == 4, what="4 calls timed")
    status, content_type, text = await fetch_async(service.metrics_endpoint.url)
    assert status == 200 and content_type.startswith("text/plain; version=")
    scraped = Scrape(text)
    assert scraped.value("udpgateway_received_total", listener="echo") == 3
    assert scraped.value("udpgateway_received_total", listener="other") == 1
    assert scraped.value("udpgateway_replied_total", listener="echo") == 3
    assert scraped.value("udpgateway_replied_total", listener="other") == 1
    assert scraped.value("udpgateway_dropped_bad_message_total", listener="other") == 1
    assert scraped.value("udpgateway_dropped_bad_message_total", listener="echo") == 0
    assert scraped.value("udpgateway_reply_channels") == 2  # one client, two listeners
    assert scraped.value("udpgateway_app_call_seconds_count") == 4
    url = service.metrics_endpoint.url
    await stop(service)
    with pytest.raises(urllib.error.URLError):
        await fetch_async(url)


@aio
async def test_metrics_speak_openmetrics_when_asked_and_404_elsewhere(gateway):
    """The scraper's Accept header picks OpenMetrics; any path but /metrics is 404."""
    service = await gateway(memory_config(), app=apps.Replies.as_asgi())
    _status, content_type, text = await fetch_async(service.metrics_endpoint.url, accept="application/openmetrics-text")
    assert content_type.startswith("application/openmetrics-text") and text.rstrip().endswith("# EOF")
    with pytest.raises(urllib.error.HTTPError) as raised:
        await fetch_async(service.metrics_endpoint.url.replace("/metrics", "/other"))
    assert raised.value.code == 404


@aio
async def test_metrics_on_ipv6_loopback(gateway):
    """`bind: '::1'` serves /metrics on the IPv6 loopback, and the URL brackets the address."""
    service = await gateway(memory_config("metrics: {bind: '::1', port: 0}\n"), app=apps.Replies.as_asgi())
    assert service.metrics_endpoint.url.startswith("http://[::1]:")
    status, _content_type, text = await fetch_async(service.metrics_endpoint.url)
    assert status == 200 and Scrape(text).value("udpgateway_received_total", listener="echo") == 0


@aio
async def test_connections_past_the_cap_are_closed_unanswered(gateway):
    """At most MAX_CONNECTIONS scrapers are connected at once; once they leave, scrapes are answered again."""
    from gateway.metrics import MAX_CONNECTIONS

    service = await gateway(memory_config(), app=apps.Replies.as_asgi())
    endpoint = service.metrics_endpoint
    port = int(endpoint.url.rsplit(":", 1)[1].split("/")[0])
    idle = []
    try:
        for _ in range(MAX_CONNECTIONS):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=DEADLINE))
        await eventually(lambda: len(endpoint._factory.protocols) == MAX_CONNECTIONS, what="idle connections taken")
        with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
            await fetch_async(endpoint.url)
    finally:
        for sock in idle:
            sock.close()
    await eventually(lambda: not endpoint._factory.protocols, what="idle connections gone")
    assert (await fetch_async(endpoint.url))[0] == 200


@aio
async def test_no_metrics_key_no_endpoint(gateway):
    """Without `metrics` in the config the gateway opens no HTTP port."""
    service = await gateway(memory_config(metrics=""), app=apps.Replies.as_asgi())
    assert service.metrics_endpoint is None


# -- real twistd and worker processes ---------------------------------------------------------------

def udp_exchange(sock, port, data):
    sock.sendto(data, ("127.0.0.1", port))
    return sock.recvfrom(65535)[0]


def write(tmp_path, text):
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("text, expected", [
    ("", ("127.0.0.1", 9101)),
    ("metrics: {bind: '::1', port: 9100}\n", ("::1", 9101)),
])
def test_worker_metrics_port_option(write_config, text, expected):
    """`worker --metrics-port` replaces the file's metrics.port, at its bind or 127.0.0.1 when it has none."""
    from gateway.cli import _with_metrics_port
    from gateway.config import load_config

    config, _problems = load_config(write_config(memory_config(text)))
    metrics = _with_metrics_port(config, 9101).metrics
    assert (metrics.bind, metrics.port) == expected


def test_twistd_metrics_over_http(tmp_path, processes):
    """A real twistd gateway's /metrics, scraped over HTTP, counts what real datagrams did, per listener."""
    text = ("application: tests.apps:replies\nlisteners:\n  - {name: echo, type: plain, bind: 127.0.0.1, port: 0}\n"
            "metrics: {bind: 127.0.0.1, port: 0}\n")
    gateway = processes.start(GatewayProcess(write(tmp_path, text)))
    url = metrics_url(gateway)
    port = gateway.port("echo")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as good, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as bad:
        good.settimeout(DEADLINE)
        bad.settimeout(DEADLINE)
        for _ in range(5):
            assert udp_exchange(good, port, json.dumps(["GOOD"]).encode()) == b"good"
        for _ in range(2):
            assert udp_exchange(bad, port, json.dumps(["WRONG_TYPE", "BAD_TOKEN", "GOOD"]).encode()) == b"good"
    scraped = wait_until(lambda: (s := scrape(url)).value("udpgateway_app_call_seconds_count") == 7 and s,
                         what="7 application calls timed")
    assert scraped.value("udpgateway_received_total", listener="echo") == 7
    assert scraped.value("udpgateway_replied_total", listener="echo") == 7
    assert scraped.value("udpgateway_dropped_bad_message_total", listener="echo") == 2
    assert scraped.value("udpgateway_dropped_unknown_token_total") == 2
    assert scraped.value("udpgateway_dropped_not_ready_total", listener="echo") == 0
    assert scraped.value("udpgateway_reply_channels") == 2
    assert scraped.value("udpgateway_app_calls_in_flight") == 0
    assert scraped.value("udpgateway_app_call_seconds_bucket", le="+Inf") == 7
    assert scraped.value("udpgateway_app_errors_total") == 0
    assert gateway.stop() == 0
    assert "Traceback" not in gateway.log_text()


def test_twistd_metrics_port_in_use_exits_1_and_removes_its_pid_file(tmp_path):
    """A metrics port that cannot be bound: exit 1, one line naming it, the pid file removed."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        taken = holder.getsockname()[1]
        text = ("application: tests.apps:replies\nlisteners:\n  - {name: echo, type: plain, bind: 127.0.0.1, "
                f"port: 0}}\nmetrics: {{port: {taken}}}\n")
        processes = Processes()
        try:
            gateway = processes.start(GatewayProcess(write(tmp_path, text), cwd=run_dir), ready=False)
            assert gateway.wait_exit() == 1, gateway.log_text()
        finally:
            processes.stop_all()
    lines = [line for line in gateway.errors if line.strip()]
    assert len(lines) == 1 and f"metrics: cannot bind 127.0.0.1:{taken}: " in lines[0], lines
    assert "Traceback" not in gateway.log_text()
    assert not gateway.pidfile.exists()


def test_worker_metrics_over_http_beside_a_gateway(tmp_path, processes, redis_server):
    """A gateway and a worker sharing one config file on one host each serve /metrics (--metrics-port)."""
    path = write_config(tmp_path, redis_server.url)
    gateway_port = free_tcp_port()
    with open(path, "a") as f:
        f.write(f"metrics: {{bind: 127.0.0.1, port: {gateway_port}}}\n")
    gateway = processes.start(gateway_process(path))
    assert metrics_url(gateway) == f"http://127.0.0.1:{gateway_port}/metrics"
    clash = processes.start(worker_process(path), ready=False)
    assert clash.wait_exit() == 1
    lines = [line for line in clash.errors if line.strip()]
    assert len(lines) == 1 and f"udpgateway worker: metrics: cannot bind 127.0.0.1:{gateway_port}: " in lines[0]
    worker = processes.start(WorkerProcess(path, "--metrics-port", "0",
                                           env={**CHILD_ENV, "UDPGATEWAY_APPLICATION": APPLICATION}))
    worker_url = metrics_url(worker)
    assert worker_url != metrics_url(gateway)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(DEADLINE)
        for i in range(4):
            assert udp_exchange(s, gateway.port("echo"), b"n%d" % i).startswith(b"n%d " % i)
    at_worker = wait_until(lambda: (w := scrape(worker_url)).value("udpgateway_app_call_seconds_count") == 4 and w,
                           what="4 calls timed by the worker")
    assert at_worker.value("udpgateway_app_calls_in_flight") == 0
    assert at_worker.value("udpgateway_app_errors_total") == 0
    assert "udpgateway_received" not in at_worker.families
    at_gateway = wait_until(lambda: (g := scrape(metrics_url(gateway))).value(
        "udpgateway_replied_total", listener="echo") == 4 and g, what="4 replies counted by the gateway")
    assert at_gateway.value("udpgateway_received_total", listener="echo") == 4
    assert at_gateway.value("udpgateway_reply_channels") == 1
    assert at_gateway.value("udpgateway_app_call_seconds_count") == 0
    assert worker.stop() == 0 and gateway.stop() == 0
    assert_clean_log(gateway, worker)
