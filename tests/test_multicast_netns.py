"""Multicast listeners over real sockets, between a gateway and a client network namespace."""

import json

import pytest

from tests.netns import ip

pytestmark = pytest.mark.netns

APP = '''
import json
from gateway.consumer import UDPConsumer


class Inspect(UDPConsumer):
    """Replies with the message's fields as JSON: by multicast for b"multicast";
    b"announce:CHANNEL" first sends b"announcement" to that send_channel."""

    async def udp_receive(self, message):
        data = message["data"]
        if data.startswith(b"announce:"):
            await self.send_to(data.split(b":", 1)[1].decode(), b"announcement")
        fields = {k: v for k, v in message.items() if k != "data"}
        fields["data"] = data.decode("latin-1")
        await self.reply(message, json.dumps(fields).encode(), multicast=data == b"multicast")


application = Inspect.as_asgi()
'''
G4, G6 = "239.1.2.3", "ff15::1234"
MARKER = "marker-datagram"  # APP's reply carries it back in its JSON


def start(run_gateway, *listeners, poll=0.5, ready=True):
    # APP answers with the message as JSON, 20-60 times the size of these tests' datagrams: past the
    # default amplification cap (10), so their listeners turn it off.
    text = f"application: nsapp:application\nlimits: {{interface_poll: {poll}}}\nlisteners:\n"
    text += "".join(f"  - {listener[:-1]}, amplification: null}}\n" for listener in listeners)
    return run_gateway(text, modules={"nsapp": APP}, ready=ready)


def ask(pair, host, port, *args, marker=None):
    """Send one datagram from the client namespace; (replies, the client's own address).

    Without `marker`: the first reply. With `marker=(host, port)` a marker datagram follows from the
    same socket; the replies are every one that came before the marker's answer.
    """
    extra = ("--marker", *marker, MARKER, MARKER) if marker else ()
    result = pair.client("--to", host, port, "--ifname", pair.cl_if, "--timeout", 30, *extra, *args)
    assert not marker or result["marker"], f"the marker to {marker} was not answered"
    return result["replies"], result["sent_from"]


def answer(replies):
    """The only reply and the message it describes."""
    (reply,) = replies
    return reply, json.loads(reply["data"])


def test_ipv4_group_answered_unicast_from_listener_port(pair, run_gateway):
    """A datagram to an IPv4 group reaches only that group's listener and is answered unicast from the
    gateway's interface address and the listener's port, with the listener's TTL."""
    gateway = start(run_gateway, f"{{name: m, type: multicast, port: 5000, groups: [{G4}], ttl: 7}}",
                    "{name: other, type: multicast, port: 5001, groups: [239.1.2.4]}")
    assert gateway.listeners == {"m": [("0.0.0.0", 5000)], "other": [("0.0.0.0", 5001)]}
    replies, (_, client_port) = ask(pair, G4, 5000, marker=(pair.gw4, 5000))
    reply, message = answer(replies)
    assert message["server"] == [G4, 5000]
    assert message["client"] == [pair.cl4, client_port]
    assert (message["listener"], message["interface"]) == ("m", pair.gw_if)
    assert reply["source"] == [pair.gw4, 5000]
    assert reply["ttl"] == 7


def test_ipv6_groups_keep_link_local_scope(pair, run_gateway):
    """IPv6 group requests are answered; a link-local client keeps its scope and gets the reply
    from the gateway's link-local address, with the hop limit from `ttl`."""
    gateway = start(run_gateway, f"{{name: m6, type: multicast, port: 5353, groups: ['ff02::fb', '{G6}'], ttl: 9}}")
    assert gateway.listeners == {"m6": [("::", 5353)]}
    client_ll, gateway_ll = pair.link_local(pair.cl), pair.link_local(pair.gw)
    reply, message = answer(ask(pair, "ff02::fb", 5353, "--bind", client_ll)[0])
    assert message["client"][0] == f"{client_ll}%{pair.gw_if}"
    assert (message["server"], message["interface"]) == (["ff02::fb", 5353], pair.gw_if)
    assert reply["source"] == [f"{gateway_ll}%{pair.cl_if}", 5353]
    assert reply["ttl"] == 9
    reply, message = answer(ask(pair, G6, 5353, "--bind", pair.cl6)[0])
    assert (message["client"][0], message["server"]) == (pair.cl6, [G6, 5353])
    assert reply["source"] == [pair.gw6, 5353]


def test_source_specific_multicast(pair, run_gateway):
    """With `sources`, only datagrams from those senders are delivered, for IPv4 and IPv6."""
    other4, other6 = f"10.254.{pair.n}.3", f"fd00:254:{pair.n:x}::3"
    pair.add_address(pair.cl, other4, other6)
    start(run_gateway, f"{{name: ssm, type: multicast, port: 5002, groups: [232.1.2.3, 'ff3e::1234'], "
                       f"sources: [{pair.cl4}, '{pair.cl6}']}}")
    for group, source, other, unicast in (("232.1.2.3", pair.cl4, other4, pair.gw4),
                                          ("ff3e::1234", pair.cl6, other6, pair.gw6)):
        _, message = answer(ask(pair, group, 5002, "--bind", source)[0])
        assert message["client"][0] == source
        assert ask(pair, group, 5002, "--bind", other, marker=(unicast, 5002))[0] == []


def test_two_listeners_on_one_port_see_only_their_groups(pair, run_gateway):
    """Two listeners sharing a port each receive only the groups they joined, whatever the sender's port."""
    start(run_gateway, "{name: a, type: multicast, port: 5003, groups: [239.1.2.3, 'ff15::a']}",
          "{name: b, type: multicast, port: 5003, groups: [239.1.2.4, 'ff15::b']}")
    for group, name in ((G4, "a"), ("239.1.2.4", "b"), ("ff15::a", "a"), ("ff15::b", "b")):
        _, message = answer(ask(pair, group, 5003, marker=(group, 5003))[0])  # not both listeners
        assert (message["listener"], message["server"][0]) == (name, group)
        # With SO_REUSEPORT the kernel would pick one socket by a hash of the sender's port.
        for _ in range(3):
            assert answer(ask(pair, group, 5003)[0])[1]["listener"] == name


def test_exact_destination_and_reply_source(pair, run_gateway):
    """A datagram to a secondary address of a wildcard-bound listener reports it as `server`
    and is answered from it (plain and multicast listeners, IPv4 and IPv6)."""
    second4, second6 = f"10.254.{pair.n}.9", f"fd00:254:{pair.n:x}::9"
    pair.add_address(pair.gw, second4, second6)
    start(run_gateway, "{name: p4, type: plain, bind: 0.0.0.0, port: 5004}",
          "{name: p6, type: plain, bind: '::', port: 5004}",
          f"{{name: m, type: multicast, port: 5005, groups: [{G4}, '{G6}']}}")
    for host, port, name in ((second4, 5004, "p4"), (second6, 5004, "p6"), (second4, 5005, "m"),
                             (second6, 5005, "m")):
        reply, message = answer(ask(pair, host, port)[0])
        assert (message["listener"], message["server"]) == (name, [host, port])
        assert message["interface"] == pair.gw_if
        assert reply["source"] == [host, port]


def test_multicast_reply_goes_to_the_group(pair, run_gateway):
    """A reply with `multicast: true` goes to the request's group on its interface, not to the sender."""
    start(run_gateway, f"{{name: m, type: multicast, port: 5006, groups: [{G4}, '{G6}']}}")
    for group in (G4, G6):
        watcher = pair.listen("--port", 5006, "--join", group, "--ifname", pair.cl_if, "--timeout", 30)
        assert ask(pair, group, 5006, "--data", "multicast", marker=(group, 5006))[0] == []
        reply, message = answer(watcher.result()["replies"])
        assert (reply["dst"], reply["source"][1]) == (group, 5006)
        assert message["server"] == [group, 5006]


def test_multicast_reply_to_a_unicast_request_goes_to_the_groups(pair, run_gateway):
    """After a unicast request, a `multicast: true` reply goes to the listener's groups on the arrival interface."""
    start(run_gateway, f"{{name: m, type: multicast, port: 5007, groups: [{G4}]}}")
    watcher = pair.listen("--port", 5007, "--join", G4, "--ifname", pair.cl_if, "--timeout", 30)
    assert ask(pair, pair.gw4, 5007, "--data", "multicast", marker=(pair.gw4, 5007))[0] == []
    reply, message = answer(watcher.result()["replies"])
    assert (reply["dst"], reply["source"][1]) == (G4, 5007)
    assert message["server"] == [pair.gw4, 5007]


def test_announcement_reaches_group_with_ttl(pair, run_gateway):
    """A send_channel message goes to every group with the configured TTL; unicast replies carry it too."""
    start(run_gateway, f"{{name: m, type: multicast, port: 5007, groups: [{G4}, '{G6}'], ttl: 3, "
                       "send_channel: m.out}")
    watchers = [pair.listen("--port", 5007, "--join", g, "--ifname", pair.cl_if, "--timeout", 30) for g in (G4, G6)]
    reply, message = answer(ask(pair, pair.gw4, 5007, "--data", "announce:m.out")[0])
    assert message["server"] == [pair.gw4, 5007]
    assert reply["ttl"] == 3
    for group, watcher in zip((G4, G6), watchers):
        (announcement,) = watcher.result()["replies"]
        assert (announcement["data"], announcement["dst"], announcement["ttl"]) == (b"announcement", group, 3)
        assert announcement["source"][1] == 5007
    _, message = answer(ask(pair, pair.gw6, 5007, "--ttl", 1)[0])
    assert message["server"] == [pair.gw6, 5007]


def test_interface_removed_and_recreated(pair, run_gateway):
    """When the interface is destroyed and re-created with a new index, the listener leaves and
    re-joins within a few polls, logging both, and answers again."""
    gateway = start(run_gateway, f"{{name: m, type: multicast, port: 5008, groups: [{G4}, '{G6}']}}")
    old = pair.ifindex(pair.gw, pair.gw_if)
    assert answer(ask(pair, G4, 5008)[0])[1]["interface"] == pair.gw_if
    ip("-n", pair.gw, "link", "del", pair.gw_if)
    gateway.wait_for(f"left IPv4 groups on {pair.gw_if} (index {old})")
    gateway.wait_for(f"left IPv6 groups on {pair.gw_if} (index {old})")
    pair.make_link()
    pair.address(pair.cl, pair.cl_if, pair.cl4, pair.cl6)
    pair.wait_ready()
    new = pair.ifindex(pair.gw, pair.gw_if)
    assert new != old
    gateway.wait_for(f"joined IPv4 groups on {pair.gw_if} (index {new})")
    gateway.wait_for(f"joined IPv6 groups on {pair.gw_if} (index {new})")
    for group in (G4, G6):
        assert answer(ask(pair, group, 5008)[0])[1]["interface"] == pair.gw_if
    assert gateway.count("failed") == 0  # leaving on a destroyed interface (ENODEV, EADDRNOTAVAIL) is silent


def test_interface_that_cannot_join_is_skipped(pair, run_gateway):
    """An interface where the kernel refuses the join is logged with a hint and skipped."""
    pair.sh(pair.gw, "sysctl", "-qw", "net.ipv4.igmp_max_memberships=1")
    ip("-n", pair.gw, "link", "add", "extra0", "type", "veth", "peer", "name", "extra1")
    ip("-n", pair.gw, "addr", "add", f"10.253.{pair.n}.1/24", "dev", "extra0")
    ip("-n", pair.gw, "link", "set", "extra0", "up")
    gateway = start(run_gateway, f"{{name: m, type: multicast, port: 5009, groups: [{G4}], "
                                 f"interfaces: [{pair.gw_if}, extra0]}}")
    line = gateway.wait_for("cannot join")
    assert f"{G4} on extra0" in line and "igmp_max_memberships" in line
    assert gateway.wait_for(f"{G4} joined on {pair.gw_if}")
    assert answer(ask(pair, G4, 5009)[0])[1]["listener"] == "m"


def test_listener_joining_nowhere_fails_startup(pair, run_gateway):
    """A listener that joins its groups nowhere stops the gateway with exit status 1 and one line."""
    pair.sh(pair.gw, "sysctl", "-qw", "net.ipv4.igmp_max_memberships=0")
    gateway = start(run_gateway, f"{{name: m, type: multicast, port: 5010, groups: [{G4}]}}", ready=False)
    assert gateway.wait_exit() == 1
    line = f"udpgateway: listener m: joined none of its groups on {pair.gw_if}"
    assert [e for e in gateway.errors if not e.startswith("warning:")] == [line]
    assert "Traceback" not in gateway.log_text()


def test_source_join_refused_then_retried_after_limit_raised(pair, run_gateway):
    """A source join refused past igmp_max_msf leaves no partial filter and succeeds on a later poll
    once the sysctl is raised, while the IPv6 group works all along."""
    sources = [pair.cl4, *(f"10.9.0.{i}" for i in range(1, 11)), pair.cl6]
    gateway = start(run_gateway, "{name: ssm, type: multicast, port: 5011, groups: [232.1.2.3, 'ff3e::1234'], "
                                 f"sources: [{', '.join(repr(s) for s in sources)}]}}")
    assert "igmp_max_msf" in gateway.wait_for("cannot join 232.1.2.3 on")
    assert answer(ask(pair, "ff3e::1234", 5011, "--bind", pair.cl6)[0])[1]["listener"] == "ssm"
    assert ask(pair, "232.1.2.3", 5011, marker=(pair.gw4, 5011))[0] == []
    pair.sh(pair.gw, "sysctl", "-qw", "net.ipv4.igmp_max_msf=11")
    gateway.wait_for(f"joined IPv4 groups on {pair.gw_if}")
    assert answer(ask(pair, "232.1.2.3", 5011)[0])[1]["client"][0] == pair.cl4
