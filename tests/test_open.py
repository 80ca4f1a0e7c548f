"""Operating in the open, over real sockets and a real twistd: allow/deny, rate_limit, the amplification cap."""

import contextlib
import socket
import time
from pathlib import Path

import pytest

from tests.processes import GatewayProcess
from tests.support import DEADLINE, wait_until
from tests.test_metrics import metrics_url, scrape, write

PAD = 34  # the measured request: 34 bytes answered with 1,000 replies of 1,000 bytes
METRICS = "metrics: {bind: 127.0.0.1, port: 0}\n"
AMPLIFIER = "application: tests.apps:amplifier\nlisteners:\n"
ROOMY = "channel_layer: {backend: memory, config: {capacity: 5000}}\n"  # room for a flood's replies


def request(text):
    """`text` padded with spaces to the 34-byte request of the issue."""
    return text.encode().ljust(PAD)


@contextlib.contextmanager
def udp(host="127.0.0.1", rcvbuf=None):
    """A UDP socket bound to `host` (a source address of its own: 127.0.0.2 is this host too)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((host, 0))
        sock.settimeout(DEADLINE)
        yield sock
    finally:
        sock.close()


def until_marker(sock, address, marker):
    """Send `marker` (echoed by the app) and return every datagram that came before its echo."""
    sock.sendto(marker, address)
    before = []
    while (data := sock.recv(65535)) != marker:  # socket timeout: DEADLINE
        before.append(data)
    return before


def start(processes, tmp_path, listeners, top=""):
    """A gateway running tests.apps:amplifier with these listener lines and a metrics endpoint: (gateway, its URL)."""
    gateway = processes.start(GatewayProcess(write(tmp_path, top + AMPLIFIER + listeners + METRICS)))
    return gateway, metrics_url(gateway)


def counter(gateway_url, name, listener):
    return scrape(gateway_url).value(f"udpgateway_{name}_total", listener=listener)


def test_allow_and_deny(tmp_path, processes):
    """deny wins over allow, allow serves only its sources, either family; denied datagrams are counted
    as dropped_denied for their listener and never logged one by one."""
    gateway, url = start(
        processes, tmp_path,
        "  - {name: v4, type: plain, bind: 127.0.0.1, port: 0, allow: [127.0.0.0/8], deny: [127.0.0.2]}\n"
        "  - {name: v6, type: plain, bind: '::1', port: 0, allow: [127.0.0.1]}\n"
        "  - {name: both, type: plain, bind: '::1', port: 0, allow: ['::1', 10.0.0.0/8]}\n")
    v4, v6, both = (("127.0.0.1", gateway.port("v4")), ("::1", gateway.port("v6")), ("::1", gateway.port("both")))
    with udp("127.0.0.1") as good, udp("127.0.0.2") as denied, udp("::1") as other_family:
        for n in range(5):
            denied.sendto(b"denied %d" % n, v4)
        for n in range(3):
            other_family.sendto(b"v6 %d" % n, v6)
        assert until_marker(good, v4, b"marker") == []  # served; the denied sends were read before it
        assert until_marker(other_family, both, b"marker") == []
        denied.settimeout(0)
        with pytest.raises(BlockingIOError):
            denied.recv(100)
    wait_until(lambda: counter(url, "dropped_denied", "v6") == 3, what="3 denied on v6")
    assert counter(url, "dropped_denied", "v4") == 5
    assert counter(url, "received", "v4") == 6
    assert counter(url, "replied", "v4") == 1
    assert counter(url, "dropped_denied", "both") == 0
    assert gateway.stop() == 0
    assert "127.0.0.2" not in gateway.log_text()  # no line per denied datagram (nor per source)


def test_rate_limit_per_source(tmp_path, processes):
    """A source over rate_limit gets at most burst + rate x elapsed answers, counted dropped_rate_limited;
    another source is served in full."""
    gateway, url = start(processes, tmp_path,
                         "  - {name: echo, type: plain, bind: 127.0.0.1, port: 0, rate_limit: {rate: 1, burst: 3}}\n")
    address = ("127.0.0.1", gateway.port("echo"))
    with udp("127.0.0.2") as flooder, udp("127.0.0.1") as good:
        started = time.monotonic()
        for n in range(20):
            flooder.sendto(b"flood-%d" % n, address)
        answers = []
        for n in range(3):  # the good source's burst: every one answered, read after the flood on one socket
            good.sendto(b"good-%d" % n, address)
            answers.append(good.recv(100))
        elapsed = time.monotonic() - started
        assert answers == [b"good-0", b"good-1", b"good-2"]
        scraped = wait_until(lambda: (s := scrape(url)).value("udpgateway_received_total", listener="echo") == 23 and s,
                             what="23 datagrams received")
        passed = 20 - scraped.value("udpgateway_dropped_rate_limited_total", listener="echo")
        flood_answers = [flooder.recv(100) for _ in range(int(passed))]  # socket timeout: DEADLINE
    assert 3 <= passed <= 3 + 1 * elapsed + 1, (passed, elapsed)
    assert {b"flood-0", b"flood-1", b"flood-2"} <= set(flood_answers)
    assert scraped.value("udpgateway_received_total", listener="echo") == 23
    assert gateway.stop() == 0
    assert gateway.count("over rate_limit") <= 1 + elapsed / 10  # one rate-limited line, not one per datagram


def drain(sock):
    """Every datagram waiting on `sock`, without waiting for more."""
    sock.settimeout(0)
    got = []
    with contextlib.suppress(BlockingIOError):
        while True:
            got.append(sock.recv(65535))
    sock.settimeout(DEADLINE)
    return got


def handled(url, listener, total):
    """Wait until `total` replies of `listener` were written or dropped (a loopback write is already queued
    at its receiver when counted), then return the scrape."""
    def settled():
        scraped = scrape(url)
        done = sum(scraped.value(f"udpgateway_{name}_total", listener=listener)
                   for name in ("replied", "dropped_amplification"))
        return done == total and scraped
    return wait_until(settled, what=f"{total} replies of {listener} handled")


def test_amplification_cap(tmp_path, processes):
    """One 34-byte datagram answered with 1,000 replies of 1,000 bytes gets none of them out (default factor 10):
    a reply channel never sends more than 10 x the bytes its client sent; the rest is dropped_amplification."""
    gateway, url = start(processes, tmp_path, "  - {name: open, type: plain, bind: 127.0.0.1, port: 0}\n", top=ROOMY)
    address = ("127.0.0.1", gateway.port("open"))
    with udp(rcvbuf=1 << 20) as victim:
        victim.sendto(request("flood 1000 1000"), address)
        handled(url, "open", 1000)
        assert drain(victim) == []  # credit 340: no 1,000-byte reply fits
        victim.sendto(request("flood 1000 100"), address)
        scraped = handled(url, "open", 2000)
        got = drain(victim)  # credit 680: six 100-byte replies fit
    assert [len(data) for data in got] == [100] * 6
    assert sum(map(len, got)) <= 10 * 2 * PAD
    assert scraped.value("udpgateway_dropped_amplification_total", listener="open") == 1000 + 994
    assert gateway.stop() == 0


def test_amplification_other_factor_and_off(tmp_path, processes):
    """`amplification: 2` lets a channel send twice what it received; `null` turns the cap off, said at startup."""
    gateway, url = start(
        processes, tmp_path,
        "  - {name: two, type: plain, bind: 127.0.0.1, port: 0, amplification: 2}\n"
        "  - {name: uncapped, type: plain, bind: 127.0.0.1, port: 0, amplification: null}\n",
        top=ROOMY)
    assert "listener uncapped: amplification cap off (amplification: null)" in gateway.wait_for("cap off")
    assert gateway.count("amplification cap off") == 1
    with udp(rcvbuf=1 << 20) as client:
        client.sendto(request("flood 10 34"), ("127.0.0.1", gateway.port("two")))  # credit 68: two of 34
        handled(url, "two", 10)
        assert [len(d) for d in drain(client)] == [34, 34]
        client.sendto(request("flood 50 1000"), ("127.0.0.1", gateway.port("uncapped")))
        handled(url, "uncapped", 50)
        assert [len(d) for d in drain(client)] == [1000] * 50
    assert counter(url, "dropped_amplification", "uncapped") == 0
    assert gateway.stop() == 0


def test_send_channel_is_not_capped(tmp_path, processes):
    """Messages to a send_channel are not replies to a source: all leave, whatever the remote sent;
    the connected listener's own reply channel is capped."""
    with udp(rcvbuf=1 << 20) as remote:
        gateway, url = start(
            processes, tmp_path,
            "  - {name: uplink, type: connected, bind: 127.0.0.1, port: 0, send_channel: uplink.out,\n"
            f"     remote: {{host: 127.0.0.1, port: {remote.getsockname()[1]}}}}}\n",
            top=ROOMY)
        address = ("127.0.0.1", gateway.port("uplink"))
        remote.sendto(request("announce 50 1000 uplink.out"), address)
        handled(url, "uplink", 50)
        assert [len(d) for d in drain(remote)] == [1000] * 50
        remote.sendto(request("flood 20 1000"), address)
        scraped = handled(url, "uplink", 70)
        assert drain(remote) == []
    assert scraped.value("udpgateway_dropped_amplification_total", listener="uplink") == 20
    assert gateway.stop() == 0


@pytest.mark.netns
def test_multicast_replies_are_not_capped(pair, run_gateway):
    """`multicast: true` replies go to the group uncapped and leave the unicast budget untouched."""
    group, port = "239.1.2.3", 5008
    run_gateway("application: tests.apps:amplifier\nlisteners:\n"
                f"  - {{name: m, type: multicast, port: {port}, groups: [{group}], interfaces: [{pair.gw_if}]}}\n")
    watcher = pair.listen("--port", port, "--join", group, "--ifname", pair.cl_if, "--count", 5, "--timeout", 30)
    result = pair.client("--to", pair.gw4, port, "--ifname", pair.cl_if, "--timeout", 30,
                         "--data", request("mflood 5 1000").decode())
    assert [reply["data"] for reply in result["replies"]] == [b"ok"]
    replies = watcher.result()["replies"]
    assert [(len(r["data"]), r["dst"]) for r in replies] == [(1000, group)] * 5


def test_reload_applies_new_source_rules(tmp_path, processes):
    """A SIGHUP that changes a listener's deny and amplification rebinds it with the new rules;
    a listener left alone keeps its rules and its clients' reply channels."""
    from tests.test_reload import last_port, reload_with

    def text(deny, factor):
        return (AMPLIFIER + f"  - {{name: guarded, type: plain, bind: 127.0.0.1, port: 0, deny: [{deny}], "
                f"amplification: {factor}}}\n"
                "  - {name: kept, type: plain, bind: 127.0.0.1, port: 0, amplification: 2}\n")

    path = tmp_path / "gateway.yaml"
    path.write_text(text("127.0.0.1", 10))
    gateway = processes.start(GatewayProcess(str(path)))
    with udp("127.0.0.1") as client:
        kept = ("127.0.0.1", gateway.port("kept"))
        client.sendto(request("flood 1 34"), kept)  # factor 2: credit 68, 34 of it used
        assert client.recv(100) == b"\0\0\0\0" + b"x" * 30
        client.sendto(b"denied", ("127.0.0.1", gateway.port("guarded")))
        reload_with(gateway, path, text("127.0.0.2", 1), "reload: rebound guarded, unchanged kept")
        guarded = ("127.0.0.1", last_port(gateway, "guarded"))
        assert until_marker(client, guarded, b"served now") == []
        client.sendto(b"flood 2 10", guarded)  # factor 1 now: these 10 bytes buy one 10-byte reply, not two
        assert until_marker(client, guarded, b"marker") == [b"\0\0\0\0" + b"x" * 6]
        client.sendto(b"flood 2 17", kept)  # 34 left from before the reload + 2 x 10: both replies of 17 fit
        assert [client.recv(100) for _ in range(2)] == [b"\0\0\0\0" + b"x" * 13, b"\0\0\0\1" + b"x" * 13]
    assert gateway.stop() == 0
    assert "dropped_denied=1" in gateway.log_text()


ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.netns
@pytest.mark.parametrize("path", ["gateway.yaml", "examples/all-kinds.yaml"])
def test_echo_examples_within_their_factor(pair, run_gateway, path):
    """The shipped echo configs set amplification 1 and every listener kind still answers in full
    (measured: an echo sends back 1.0 x what it got), run in a namespace of their own."""
    gateway = run_gateway(path=ROOT / path)
    data = "x" * 1000
    asks = [("--to", "127.0.0.1", 9999)]
    if "uplink" in gateway.listeners:
        asks.append(("--bind", "127.0.0.1", "--port", 9000, "--to", "127.0.0.1", gateway.port("uplink")))
        asks.append(("--to", "239.255.255.250", 1901, "--ifname", "lo"))
    for ask in asks:
        (reply,) = pair.client(*ask, "--timeout", 30, "--data", data, ns=pair.gw)["replies"]
        assert reply["data"] == data.encode()
