"""The Prometheus endpoint: our counters read at scrape time, served as /metrics by twisted.web."""

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString
from twisted.internet import defer
from twisted.protocols.policies import WrappingFactory
from twisted.web import pages, resource, server

from gateway.stats import LISTENER_COUNTERS, PROCESS_COUNTERS, WORKER_COUNTERS

PREFIX = "udpgateway_"
MAX_CONNECTIONS = 16  # scrapers connected at once; past it a connection is closed at once
IDLE_TIMEOUT = 10     # seconds an idle HTTP connection stays open
GAUGES = {
    "reply_channels": "Live reply channels (the reply token table's size).",
    "app_calls_in_flight": "Application calls running now.",
}
CALL_TIME = ("app_call_seconds", "Time of one application call, from its start to its end (raised or timed out included).")


class CountersCollector:
    """A prometheus_client collector that reads Counters when scraped: nothing runs per datagram.

    Counters of `per_listener` get one sample per listener: those `listeners()`
    names (the configured ones, from zero) and any other one something was
    counted for; counts made without a listener show as listener="". Every
    other counter is one sample for the process. `gauges` maps GAUGES names to
    callables read at scrape time.
    """

    def __init__(self, counters, *, listeners=tuple, per_listener=LISTENER_COUNTERS, per_process=PROCESS_COUNTERS,
                 gauges=None):
        self.counters = counters
        self.listeners = listeners
        self.per_listener = per_listener
        self.per_process = per_process
        self.gauges = gauges or {}

    def collect(self):
        configured = list(self.listeners())
        listeners = configured + sorted(self.counters.listener_names() - set(configured))
        for name, text in self.per_listener.items():
            yield self._per_listener(name, text, listeners)
        for name, text in self.per_process.items():
            yield CounterMetricFamily(PREFIX + name, text, value=self.counters.get(name))
        for name, value in sorted(self.counters.snapshot().items()):
            if name not in self.per_listener and name not in self.per_process:
                yield CounterMetricFamily(PREFIX + name, f"Counter {name}.", value=value)
        for name, read in self.gauges.items():
            yield GaugeMetricFamily(PREFIX + name, GAUGES[name], value=read())
        yield self._call_time()

    def _per_listener(self, name, text, listeners):
        family = CounterMetricFamily(PREFIX + name, text, labels=["listener"])
        counted = 0
        for listener in listeners:
            value = self.counters.get(name, listener)
            counted += value
            family.add_metric([listener], value)
        rest = self.counters.get(name) - counted
        if rest or not listeners:
            family.add_metric([""], rest)
        return family

    def _call_time(self):
        histogram = self.counters.call_time
        buckets = [(floatToGoString(bound), count) for bound, count in histogram.cumulative()]
        return HistogramMetricFamily(PREFIX + CALL_TIME[0], CALL_TIME[1], buckets=buckets, sum_value=histogram.sum)


def gateway_collector(counters, listeners, *, reply_channels, calls_in_flight):
    """The gateway's collector: every counter, per listener where it belongs, and both gauges.

    `listeners()` names the configured listeners at scrape time.
    """
    return CountersCollector(counters, listeners=listeners, gauges={
        "reply_channels": reply_channels, "app_calls_in_flight": calls_in_flight})


def worker_collector(counters, *, calls_in_flight):
    """A worker's collector: the counters a worker moves (no datagrams, no reply channels)."""
    return CountersCollector(counters, per_listener={},
                             per_process={name: PROCESS_COUNTERS[name] for name in WORKER_COUNTERS},
                             gauges={"app_calls_in_flight": calls_in_flight})


def registry_for(collector):
    """A private registry (not prometheus_client's global one): our collector and the process's own metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    ProcessCollector(registry=registry)
    return registry


class MetricsResource(resource.Resource):
    """GET renders the registry in the reactor thread, in the format the scraper's Accept header asks for.

    prometheus_client.twisted.MetricsResource renders in a thread pool
    instead, where it would read our counters while the reactor changes them.
    """

    isLeaf = True

    def __init__(self, registry):
        super().__init__()
        self.registry = registry

    def render_GET(self, request):
        encoder, content_type = choose_encoder(request.getHeader("accept") or "")
        request.setHeader("Content-Type", content_type)
        return encoder(self.registry)


class _Root(resource.Resource):
    """/metrics and nothing else: any other path is 404."""

    def getChild(self, path, request):
        return pages.notFound()


class _QuietSite(server.Site):
    """A Site without an access log line per request (a scrape every few seconds)."""

    noisy = False

    def log(self, request):
        pass


class _BoundedFactory(WrappingFactory):
    """At most MAX_CONNECTIONS connections at once (closed unanswered past it); `close()` ends them all."""

    noisy = False

    def buildProtocol(self, addr):
        if len(self.protocols) >= MAX_CONNECTIONS:
            return None
        return super().buildProtocol(addr)

    def close(self):
        for protocol in list(self.protocols):
            protocol.transport.abortConnection()


class MetricsEndpoint:
    """/metrics over HTTP on one address: `listen()` (raises CannotListenError), then `close()`."""

    def __init__(self, reactor, bind, port, registry):
        self.bind, self.port = bind, port
        self._reactor = reactor
        root = _Root()
        root.putChild(b"metrics", MetricsResource(registry))
        self._factory = _BoundedFactory(_QuietSite(root, timeout=IDLE_TIMEOUT, reactor=reactor))
        self._port = None
        self.url = None

    def listen(self):
        """Bind and listen now; returns the URL with the real port (port 0 resolved)."""
        self._port = self._reactor.listenTCP(self.port, self._factory, interface=self.bind)
        host = self._port.getHost()
        self.url = f"http://{_bracket(host.host)}:{host.port}/metrics"
        return self.url

    def close(self):
        """Stop listening and end open connections; a Deferred that fires once the port is closed."""
        port, self._port = self._port, None
        if port is None:
            return defer.succeed(None)
        closed = port.stopListening()
        self._factory.close()
        return closed


def _bracket(host):
    return f"[{host}]" if ":" in host else host
