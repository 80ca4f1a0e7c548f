"""The SSDP and mDNS examples, run by twistd in a namespace, against real discovery clients."""

import json
from pathlib import Path

import pytest
from dnslib import QTYPE, DNSRecord

from tests.netns import HERE

pytestmark = pytest.mark.netns

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CLIENTS = HERE / "discovery_clients.py"
SSDP_UUID = "3f0a8f3a-6a5e-4c55-9d1c-0123456789ab"
DEVICE_TYPE = "urn:schemas-upnp-org:device:Basic:1"
SERVICE = "_http._tcp.local."


def start_ssdp(pair, run_gateway):
    env = {"SSDP_INTERFACE": pair.gw_if, "SSDP_HTTP_PORT": "8181", "SSDP_UUID": SSDP_UUID}
    return run_gateway(path=EXAMPLES / "ssdp.yaml", env=env)


def start_mdns(run_gateway):
    return run_gateway(path=EXAMPLES / "mdns.yaml", env={"MDNS_PORT": "8123", "MDNS_TXT": "path=/,v=1"})


def test_ssdp_example_found_by_async_upnp_client(pair, run_gateway):
    """async-upnp-client's search finds the SSDP example as root device, uuid and device type,
    and reads its device description from LOCATION."""
    start_ssdp(pair, run_gateway)
    result = json.loads(pair.python(pair.cl, CLIENTS, "ssdp", pair.cl4, 20))
    udn = f"uuid:{SSDP_UUID}"
    found = {r["ST"]: r for r in result["responses"]}
    assert {st: r["USN"] for st, r in found.items()} == {
        "upnp:rootdevice": f"{udn}::upnp:rootdevice", udn: udn, DEVICE_TYPE: f"{udn}::{DEVICE_TYPE}"}
    for response in found.values():
        assert response["LOCATION"] == f"http://{pair.gw4}:8181/description.xml"
        assert response["CACHE-CONTROL"] == "max-age=1800" and response["EXT"] == ""
        assert response["DATE"].endswith("GMT") and "UPnP/1.1" in response["SERVER"]
    assert result["device"] == {"udn": udn, "device_type": DEVICE_TYPE, "friendly_name": "udpgateway SSDP example"}


def test_ssdp_unicast_search_and_unknown_target(pair, run_gateway):
    """A unicast M-SEARCH for upnp:rootdevice gets one HTTP 200 answer; a search for another type none."""
    start_ssdp(pair, run_gateway)
    search = "M-SEARCH * HTTP/1.1\r\nHOST: {host}:1900\r\nMAN: \"ssdp:discover\"\r\nST: {st}\r\n\r\n"
    # A second search, for the device's uuid, answered after the first: what came before its answer is all.
    marker = ("--marker", pair.gw4, 1900, search.format(host=pair.gw4, st=f"uuid:{SSDP_UUID}"), f"ST: uuid:{SSDP_UUID}")
    ask = ("--to", pair.gw4, 1900, "--timeout", 30, *marker)
    result = pair.client(*ask, "--data", search.format(host=pair.gw4, st="upnp:rootdevice"))
    replies = result["replies"]
    assert result["marker"], "the marker search was not answered"
    assert len(replies) == 1 and replies[0]["data"].startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nST: upnp:rootdevice\r\n" in replies[0]["data"]
    # Without MX (the random delay of a multicast search's answer) a marker search can follow in order.
    other = search.format(host="239.255.255.250", st="urn:schemas-upnp-org:device:Printer:1")
    marker = ("--marker", "239.255.255.250", 1900, search.format(host="239.255.255.250", st=f"uuid:{SSDP_UUID}"),
              f"ST: uuid:{SSDP_UUID}")
    result = pair.client("--to", "239.255.255.250", 1900, "--ifname", pair.cl_if, "--timeout", 30, *marker,
                         "--data", other)
    assert result["marker"] and result["replies"] == []


def test_ssdp_alive_at_start_and_byebye_at_stop(pair, run_gateway):
    """The SSDP example multicasts three NOTIFY ssdp:alive at start and three ssdp:byebye at SIGTERM, TTL 2."""
    watcher = pair.listen("--port", 1900, "--join", "239.255.255.250", "--ifname", pair.cl_if,
                          "--count", 6, "--timeout", 30)
    gateway = start_ssdp(pair, run_gateway)
    assert gateway.stop() == 0
    notices = watcher.result()["replies"]
    kinds = [n["data"].split(b"\r\nNTS: ")[1].split(b"\r\n")[0] for n in notices]
    assert kinds == [b"ssdp:alive"] * 3 + [b"ssdp:byebye"] * 3
    assert {(n["dst"], n["ttl"], tuple(n["source"])) for n in notices} == {("239.255.255.250", 2, (pair.gw4, 1900))}
    assert all(n["data"].startswith(b"NOTIFY * HTTP/1.1\r\n") for n in notices)
    location = f"\r\nLOCATION: http://{pair.gw4}:8181/description.xml\r\n".encode()
    assert [location in n["data"] for n in notices] == [True] * 3 + [False] * 3


@pytest.mark.parametrize("family", [4, 6])
def test_zeroconf_browses_and_resolves_mdns_example(pair, run_gateway, family):
    """python-zeroconf browses _http._tcp and resolves Gateway to gateway.local, the gateway's
    addresses on that link and the configured port and TXT."""
    start_mdns(run_gateway)
    interface = pair.cl4 if family == 4 else pair.ifindex(pair.cl, pair.cl_if)
    result = json.loads(pair.python(pair.cl, CLIENTS, "mdns", interface, SERVICE, 20))
    assert result["names"][0] == f"Gateway.{SERVICE}"
    resolved = result["resolved"]
    assert (resolved["server"], resolved["port"]) == ("gateway.local.", 8123)
    assert resolved["properties"] == {"path": "/", "v": "1"}
    assert {pair.gw4, pair.gw6, pair.link_local(pair.gw)} <= set(resolved["addresses"])


def mdns_query(name, qtype, *, qu=False, ident=0):
    query = DNSRecord.question(name, qtype)
    query.header.id = ident
    if qu:
        query.questions[0].qclass |= 0x8000
    return query.pack().hex()


def test_mdns_legacy_unicast(pair, run_gateway):
    """A query from a port other than 5353 gets a unicast answer echoing its ID and question,
    with TTLs of at most 10 s and IP TTL 255 (RFC 6762 §6.7, §11)."""
    start_mdns(run_gateway)
    replies = pair.client("--to", "224.0.0.251", 5353, "--ifname", pair.cl_if, "--hex",
                          "--data", mdns_query("gateway.local", "A", ident=4242))["replies"]
    (reply,) = replies
    response = DNSRecord.parse(reply["data"])
    assert (reply["dst"], reply["ttl"], reply["source"]) == (pair.cl4, 255, [pair.gw4, 5353])
    assert response.header.id == 4242 and str(response.q.qname) == "gateway.local."
    assert [(str(rr.rdata), rr.ttl, rr.rclass) for rr in response.rr] == [(pair.gw4, 10, 1)]


def test_mdns_multicast_and_qu_answers(pair, run_gateway):
    """From port 5353 a QM question is answered to the group and a QU question unicast, both with ID 0."""
    start_mdns(run_gateway)
    base = ("--port", 5353, "--join", "ff02::fb", "--ifname", pair.cl_if, "--hex", "--bind", "::")
    ptr = mdns_query(SERVICE, "PTR")
    (reply,) = pair.client(*base, "--to", "ff02::fb", 5353, "--data", ptr)["replies"]
    response = DNSRecord.parse(reply["data"])
    assert (reply["dst"], reply["ttl"], response.header.id) == ("ff02::fb", 255, 0)
    assert str(response.rr[0].rdata) == f"Gateway.{SERVICE}"
    additional = {QTYPE[rr.rtype] for rr in response.ar}
    assert additional == {"SRV", "TXT", "A", "AAAA"}
    (reply,) = pair.client(*base, "--to", "ff02::fb", 5353, "--data", mdns_query(SERVICE, "PTR", qu=True))["replies"]
    assert reply["dst"] == pair.link_local(pair.cl) and reply["source"][1] == 5353
    enum = mdns_query("_services._dns-sd._udp.local", "PTR")
    (reply,) = pair.client(*base, "--to", "ff02::fb", 5353, "--data", enum)["replies"]
    assert [str(rr.rdata) for rr in DNSRecord.parse(reply["data"]).rr] == [SERVICE]


def amplification_of(path):
    """The amplification factor a shipped example's yaml sets (10 when it sets none)."""
    import yaml

    (listener,) = yaml.safe_load(path.read_text())["listeners"]
    return listener.get("amplification", 10)


def unicast_ratio(pair, request, count, *args):
    """Bytes of the unicast replies to one request over the request's bytes: what the cap must allow."""
    replies = pair.client("--ifname", pair.cl_if, "--hex", "--count", count, "--timeout", 30, *args,
                          "--data", request.hex())["replies"]
    assert len(replies) == count, replies
    assert all(not reply["dst"].startswith(("224.", "239.", "ff")) for reply in replies)
    return sum(len(reply["data"]) for reply in replies) / len(request)


def test_ssdp_example_amplification(pair, run_gateway):
    """async-upnp-client's ssdp:all search, multicast (MX 1) or unicast, gets its three answers
    within the factor examples/ssdp.yaml sets."""
    from async_upnp_client.ssdp import build_ssdp_search_packet

    start_ssdp(pair, run_gateway)
    factor = amplification_of(EXAMPLES / "ssdp.yaml")
    searches = {"multicast": ("239.255.255.250", build_ssdp_search_packet(("239.255.255.250", 1900), 1, "ssdp:all")),
                "unicast": (pair.gw4, build_ssdp_search_packet((pair.gw4, 1900), 1, "ssdp:all"))}
    for kind, (host, search) in searches.items():
        ratio = unicast_ratio(pair, search, 3, "--to", host, 1900)
        print(f"SSDP {kind} M-SEARCH ssdp:all: {len(search)} bytes, answers {ratio:.1f} times that")
        assert ratio <= factor


def test_mdns_example_amplification(pair, run_gateway):
    """The unicast answers of the mDNS example (legacy and QU queries as python-zeroconf and resolvers
    send them) stay within the factor examples/mdns.yaml sets."""
    start_mdns(run_gateway)
    factor = amplification_of(EXAMPLES / "mdns.yaml")
    resolve = DNSRecord()  # python-zeroconf's first ServiceInfo request: SRV, TXT, A, AAAA, QU
    for qtype in ("SRV", "TXT", "A", "AAAA"):
        resolve.add_question(DNSRecord.question(f"Gateway.{SERVICE}", qtype).q)
    for question in resolve.questions:
        question.qclass |= 0x8000
    resolve.header.id = 0
    queries = {
        "legacy A gateway.local": (bytes.fromhex(mdns_query("gateway.local", "A", ident=7)), ()),
        "legacy PTR _http._tcp.local": (bytes.fromhex(mdns_query(SERVICE, "PTR", ident=7)), ()),
        "QU PTR _http._tcp.local": (bytes.fromhex(mdns_query(SERVICE, "PTR", qu=True)), ("--port", 5353)),
        "QU SRV/TXT/A/AAAA Gateway._http._tcp.local": (resolve.pack(), ("--port", 5353)),
        "QU PTR _services._dns-sd._udp.local": (bytes.fromhex(mdns_query("_services._dns-sd._udp.local", "PTR",
                                                                         qu=True)), ("--port", 5353)),
    }
    worst = 0
    for kind, (query, args) in queries.items():
        for family, group in ((4, "224.0.0.251"), (6, "ff02::fb")):
            bind = ("--bind", "::") if family == 6 else ()
            ratio = unicast_ratio(pair, query, 1, "--to", group, 5353, *args, *bind)
            print(f"mDNS {kind} over IPv{family}: {len(query)} bytes, answer {ratio:.1f} times that")
            worst = max(worst, ratio)
    assert worst <= factor
