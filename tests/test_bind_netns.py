"""Plain and connected listeners bound to an interface, a link-local address or 127.0.0.2, between namespaces."""

import json

import pytest

pytestmark = pytest.mark.netns

APP = "application: tests.apps:inspect\nlisteners:\n"
UNCAPPED = "amplification: null"  # Inspect answers with the message as JSON, far past 10 x these tests' datagrams


def ask(pair, host, port, *args, ns=None):
    """Send one datagram; (reply, the message it describes, the client's own address)."""
    result = pair.client("--to", host, port, "--timeout", 5, *args, ns=ns)
    (reply,) = result["replies"]
    return reply, json.loads(reply["data"]), result["sent_from"]


def ports(gateway, name):
    return dict(gateway.listeners[name])


def test_bind_interface_name_serves_its_link_local_address(pair, run_gateway):
    """`bind: <interface>` binds its link-local address with its scope: a link-local client is answered from
    it, and the message's server keeps the %scope and names the interface."""
    gateway = run_gateway(APP + f"  - {{name: e, type: plain, bind: {pair.gw_if}, port: 0, {UNCAPPED}}}\n")
    gw_ll, cl_ll = pair.link_local(pair.gw), pair.link_local(pair.cl)
    bound = ports(gateway, "e")
    assert set(bound) == {pair.gw4, pair.gw6, f"{gw_ll}%{pair.gw_if}"}
    port = bound[f"{gw_ll}%{pair.gw_if}"]
    reply, message, (_, client_port) = ask(pair, f"{gw_ll}%{pair.cl_if}", port)
    assert message["server"] == [f"{gw_ll}%{pair.gw_if}", port]
    assert message["client"] == [f"{cl_ll}%{pair.gw_if}", client_port]
    assert message["interface"] == pair.gw_if
    assert reply["source"] == [f"{gw_ll}%{pair.cl_if}", port]
    for host in (pair.gw4, pair.gw6):  # the interface's other addresses still answer
        reply, message, _ = ask(pair, host, bound[host])
        assert message["server"] == [host, bound[host]] and message["interface"] == pair.gw_if


def test_bind_scoped_link_local_address(pair, run_gateway):
    """`bind: fe80::…%<interface>` binds that address with its scope and answers a link-local client."""
    gw_ll, cl_ll = pair.link_local(pair.gw), pair.link_local(pair.cl)
    gateway = run_gateway(APP + f"  - {{name: ll, type: plain, bind: '{gw_ll}%{pair.gw_if}', port: 0, {UNCAPPED}}}\n")
    ((host, port),) = gateway.listeners["ll"]
    assert host == f"{gw_ll}%{pair.gw_if}"
    reply, message, (_, client_port) = ask(pair, f"{gw_ll}%{pair.cl_if}", port, "--bind", cl_ll, "--ifname", pair.cl_if)
    assert (message["server"], message["interface"]) == ([host, port], pair.gw_if)
    assert message["client"] == [f"{cl_ll}%{pair.gw_if}", client_port]
    assert reply["source"] == [f"{gw_ll}%{pair.cl_if}", port]


def test_connected_listener_between_link_local_addresses(pair, run_gateway):
    """A connected listener bound to a link-local address hears and answers its link-local remote."""
    gw_ll, cl_ll = pair.link_local(pair.gw), pair.link_local(pair.cl)
    gateway = run_gateway(APP + f"  - {{name: up, type: connected, bind: '{gw_ll}%{pair.gw_if}', port: 0, {UNCAPPED}, "
                                f"remote: {{host: '{cl_ll}%{pair.gw_if}', port: 7100}}}}\n")
    ((_, port),) = gateway.listeners["up"]
    reply, message, _ = ask(pair, f"{gw_ll}%{pair.cl_if}", port, "--bind", cl_ll, "--port", 7100,
                            "--ifname", pair.cl_if)
    assert message["client"] == [f"{cl_ll}%{pair.gw_if}", 7100]
    assert (message["server"], message["interface"]) == ([f"{gw_ll}%{pair.gw_if}", port], pair.gw_if)
    assert reply["source"] == [f"{gw_ll}%{pair.cl_if}", port]


def test_bind_127_0_0_2(pair, run_gateway):
    """Linux answers on all of 127.0.0.0/8: `bind: 127.0.0.2` passes the checks, binds and answers on lo."""
    gateway = run_gateway(APP + f"  - {{name: lo2, type: plain, bind: 127.0.0.2, port: 0, {UNCAPPED}}}\n")
    ((host, port),) = gateway.listeners["lo2"]
    assert host == "127.0.0.2"
    reply, message, (_, client_port) = ask(pair, "127.0.0.2", port, ns=pair.gw)
    assert (message["server"], message["interface"]) == (["127.0.0.2", port], "lo")
    assert message["client"] == ["127.0.0.1", client_port]
    assert reply["source"] == ["127.0.0.2", port]
