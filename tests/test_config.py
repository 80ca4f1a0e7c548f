"""Tests for gateway.config: one line per problem with file and key path, or a frozen GatewayConfig."""

import ast
import dataclasses
import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest

import gateway.config
from gateway import interfaces
from gateway.config import (
    GatewayConfig,
    LayerConfig,
    Limits,
    ListenerConfig,
    Metrics,
    Problem,
    RateLimit,
    Remote,
    describe,
    errors,
    load_config,
)
from gateway.interfaces import Interface

MODULES = {
    "cfgapp": "async def application(scope, receive, send):\n    pass\n\nNOT_CALLABLE = 42\n",
    "cfg_raising": "raise ValueError('boom')\n",
    "cfg_broken": "import not_installed_xyz\n",
    "cfglayer": (
        "class Layer:\n"
        "    def __init__(self, url, capacity=100):\n"
        "        pass\n\n"
        "class AnyLayer:\n"
        "    def __init__(self, **kwargs):\n"
        "        pass\n"
    ),
}

# A made-up host, so that host checks do not depend on the machine running the tests.
HOST = {
    "lo": Interface("lo", 1, ("127.0.0.1",), ("::1",), up=True, multicast=False, loopback=True),
    "test0": Interface("test0", 2, ("192.0.2.2",), ("2001:db8::2", "fe80::2"), up=True, multicast=True, loopback=False),
    "v4only0": Interface("v4only0", 3, ("198.51.100.7",), (), up=True, multicast=True, loopback=False),
    "noaddr0": Interface("noaddr0", 4, (), (), up=True, multicast=True, loopback=False),
}

APP = "application: cfgapp:application\n"
P = "name: echo, type: plain, bind: 127.0.0.1, port: 9999"
C = "name: up, type: connected, bind: 127.0.0.1, port: 9000, remote: {host: 127.0.0.1, port: 9001}"
M = "name: mc, type: multicast, port: 5353, groups: [224.0.0.251]"
REDIS = "channel_layer: {backend: channels_redis.core.RedisChannelLayer"
BATCHING = "channel_layer: {backend: gateway.layers.batching.BatchingRedisChannelLayer"


def doc(*listeners, top=APP):
    """A gateway.yaml: `top`, then one flow-mapping listener per argument."""
    return top + "listeners:\n" + "".join(f"  - {{{item}}}\n" for item in listeners)


def block(*lines, top=APP):
    """A gateway.yaml with one listener written as block lines (line numbers count from `top`)."""
    return top + "listeners:\n  - name: echo\n" + "".join(f"    {line}\n" for line in lines)


@pytest.fixture(autouse=True)
def isolated(monkeypatch):
    """Fixture modules, sys.path, the environment and sysctls are restored or fixed for each test."""
    saved_path = list(sys.path)
    monkeypatch.delenv("UDPGW_TEST_UNSET", raising=False)
    monkeypatch.setattr(interfaces, "read_sysctl", lambda name: None)
    yield
    sys.path[:] = saved_path
    for name in [n for n in sys.modules if n.startswith("cfg")]:
        del sys.modules[name]


@pytest.fixture
def host(monkeypatch):
    """The made-up HOST as this machine's interfaces; the test may change the dict it returns."""
    table = dict(HOST)
    monkeypatch.setattr(interfaces, "list_interfaces", lambda: dict(table))
    return table


@pytest.fixture
def load(tmp_path, monkeypatch, host):
    """load(text, **kwargs): write gateway.yaml and the fixture modules to tmp_path (the cwd), then load it."""
    monkeypatch.chdir(tmp_path)
    for name, source in MODULES.items():
        (tmp_path / f"{name}.py").write_text(source)

    def load(text, **kwargs):
        (tmp_path / "gateway.yaml").write_text(text)
        return load_config("gateway.yaml", **kwargs)

    return load


def lines(problems):
    return [str(problem) for problem in problems]


ROWS = [
    # unknown keys, with a did-you-mean
    ("unknown-key", doc(P + ", prot: 1"), "gateway.yaml: listeners[0].prot: unknown key (did you mean 'port'?)"),
    ("unknown-top-key", APP + "listener: []\n", "gateway.yaml: listener: unknown key (did you mean 'listeners'?)"),
    (
        "unknown-key-no-match",
        doc(P + ", zzz: 1"),
        "listeners[0].zzz: unknown key (expected one of: name, type, port, channel, fd, bind, reuse_port, allow, "
        "deny, rate_limit, amplification, rcvbuf, sndbuf)",
    ),
    (
        "unknown-limits-key",
        doc(P, top=APP + "limits: {max_concurency: 5}\n"),
        "gateway.yaml: limits.max_concurency: unknown key (did you mean 'max_concurrency'?)",
    ),
    (
        "unknown-layer-key",
        doc(P, top=APP + "channel_layer: {backnd: memory}\n"),
        "gateway.yaml: channel_layer.backnd: unknown key (did you mean 'backend'?)",
    ),
    # missing keys
    ("missing-listeners", APP, "gateway.yaml: listeners: required key is missing"),
    ("empty-file", "", "gateway.yaml: listeners: required key is missing"),
    ("empty-listeners", APP + "listeners: []\n", "gateway.yaml: listeners: must not be empty"),
    (
        "missing-port",
        doc("name: echo, type: plain, bind: 127.0.0.1"),
        "gateway.yaml: listeners[0].port: required key is missing",
    ),
    ("missing-name", doc("type: plain, bind: 127.0.0.1, port: 1"), "listeners[0].name: required key is missing"),
    ("missing-type", doc("name: echo, port: 1"), "listeners[0].type: required key is missing"),
    ("missing-bind", doc("name: echo, type: plain, port: 1"), "listeners[0].bind: required key is missing"),
    ("missing-groups", doc("name: mc, type: multicast, port: 1"), "listeners[0].groups: required key is missing"),
    (
        "connected-without-remote",
        doc("name: up, type: connected, bind: 127.0.0.1, port: 1"),
        "gateway.yaml: listeners[0].remote: required key is missing",
    ),
    (
        "remote-without-port",
        doc("name: up, type: connected, bind: 127.0.0.1, port: 1, remote: {host: 127.0.0.1}"),
        "listeners[0].remote.port: required key is missing",
    ),
    # wrong types
    (
        "string-port",
        doc(P.replace("9999", "'9999'")),
        "gateway.yaml: listeners[0].port: expected an integer, got '9999'",
    ),
    ("float-port", doc(P.replace("9999", "99.5")), "listeners[0].port: expected an integer, got 99.5"),
    ("null-port", doc(P.replace("9999", "null")), "listeners[0].port: expected an integer, got null"),
    ("int-name", doc(P.replace("echo", "5")), "listeners[0].name: expected a string, got 5"),
    ("listeners-mapping", APP + "listeners: {a: 1}\n", "gateway.yaml: listeners: expected a list, got a mapping"),
    ("listener-not-mapping", APP + "listeners: [echo]\n", "gateway.yaml: listeners[0]: expected a mapping, got 'echo'"),
    ("top-not-mapping", "- a\n", "gateway.yaml: expected a mapping, got a list"),
    (
        "groups-not-list",
        doc(M.replace("[224.0.0.251]", "224.0.0.251")),
        "listeners[0].groups: expected a list, got '224.0.0.251'",
    ),
    ("group-not-string", doc(M.replace("224.0.0.251", "5")), "listeners[0].groups[0]: expected a string, got 5"),
    (
        "remote-not-mapping",
        doc(C.replace("{host: 127.0.0.1, port: 9001}", "x")),
        "listeners[0].remote: expected a mapping",
    ),
    # bool where an int is expected, and the other way round
    ("bool-port", doc(P.replace("9999", "true")), "gateway.yaml: listeners[0].port: expected an integer, got true"),
    ("bool-ttl", doc(M + ", ttl: yes"), "listeners[0].ttl: expected an integer, got true"),
    ("string-bool", doc(P + ", reuse_port: 'yes'"), "listeners[0].reuse_port: expected true or false, got 'yes'"),
    ("int-bool", doc(M + ", loopback: 1"), "listeners[0].loopback: expected true or false, got 1"),
    # duplicates
    (
        "duplicate-name",
        doc(P, P.replace("9999", "9998")),
        "gateway.yaml: listeners[1].name: duplicate listener name 'echo' (also listeners[0])",
    ),
    (
        "duplicate-bind-port",
        doc(P, P.replace("echo", "two")),
        "gateway.yaml: listeners[1].bind: 127.0.0.1 port 9999 is already bound by listeners[0] (127.0.0.1); "
        "set reuse_port on both to share it",
    ),
    (
        "wildcard-overlaps-address",
        doc(P, C.replace("127.0.0.1, port: 9000", "0.0.0.0, port: 9999")),
        "listeners[1].bind: 0.0.0.0 port 9999 is already bound by listeners[0] (127.0.0.1)",
    ),
    (
        "reuse-port-on-one-only",
        doc(P, P.replace("echo", "two") + ", reuse_port: true"),
        "listeners[1].bind: 127.0.0.1 port 9999 is already bound by listeners[0]",
    ),
    (
        "interface-overlaps-address",
        doc(P, P.replace("echo", "two").replace("127.0.0.1", "lo")),
        "listeners[1].bind: 127.0.0.1 port 9999 is already bound by listeners[0] (127.0.0.1)",
    ),
    (
        "duplicate-yaml-key",
        block("type: plain", "bind: 127.0.0.1", "port: 1", "port: 2"),
        "gateway.yaml:7:5: duplicate key 'port'",
    ),
    # ranges
    ("fd-negative", doc(P + ", fd: -1"), "gateway.yaml: listeners[0].fd: -1 is less than 0"),
    ("fd-string", doc(P + ", fd: three"), "gateway.yaml: listeners[0].fd: expected an integer, got 'three'"),
    ("fd-bool", doc(P + ", fd: true"), "listeners[0].fd: expected an integer, got true"),
    ("fd-bad-bind", doc("name: echo, type: plain, fd: 3, bind: 'no such'"), "listeners[0].bind: 'no such' is not"),
    ("fd-groups-still-required", doc("name: mc, type: multicast, fd: 3"), "listeners[0].groups: required key"),
    ("port-too-big", doc(P.replace("9999", "65536")), "gateway.yaml: listeners[0].port: 65536 is outside 0-65535"),
    ("port-negative", doc(P.replace("9999", "-1")), "listeners[0].port: -1 is outside 0-65535"),
    ("remote-port-zero", doc(C.replace("9001", "0")), "listeners[0].remote.port: 0 is outside 1-65535"),
    ("ttl-too-big", doc(M + ", ttl: 256"), "listeners[0].ttl: 256 is outside 0-255"),
    ("ttl-negative", doc(M + ", ttl: -1"), "listeners[0].ttl: -1 is outside 0-255"),
    # addresses
    (
        "bad-address",
        doc(P.replace("127.0.0.1", "10.0.0.300")),
        "gateway.yaml: listeners[0].bind: '10.0.0.300' is not a valid IP address",
    ),
    (
        "bad-ipv6-address",
        doc(P.replace("127.0.0.1", "'1::2::3'")),
        "listeners[0].bind: '1::2::3' is not a valid IP address",
    ),
    (
        "bad-interface-name",
        doc(P.replace("127.0.0.1", "'a b'")),
        "listeners[0].bind: 'a b' is not an IP address or interface name",
    ),
    (
        "address-not-here",
        doc(P.replace("127.0.0.1", "203.0.113.9")),
        "listeners[0].bind: 203.0.113.9 is not an address of this host",
    ),
    (
        "remote-hostname",
        doc(C.replace("host: 127.0.0.1", "host: example.com")),
        "listeners[0].remote.host: 'example.com' is not an IP address (host names are not resolved)",
    ),
    (
        "remote-family",
        doc(C.replace("host: 127.0.0.1", "host: '::1'")),
        "gateway.yaml: listeners[0].remote.host: ::1 is IPv6 but bind has no IPv6 address",
    ),
    (
        "bad-group-address",
        doc(M.replace("224.0.0.251", "224.0.0.300")),
        "listeners[0].groups[0]: '224.0.0.300' is not a valid IP address",
    ),
    # interfaces
    (
        "unknown-bind-interface",
        doc(P.replace("127.0.0.1", "eth9")),
        "gateway.yaml: listeners[0].bind: unknown interface 'eth9'",
    ),
    (
        "unknown-interface",
        doc(M + ", interfaces: [test0, eth9]"),
        "gateway.yaml: listeners[0].interfaces[1]: unknown interface 'eth9'",
    ),
    (
        "interface-address-not-here",
        doc(M + ", interfaces: [203.0.113.9]"),
        "listeners[0].interfaces[0]: no interface of this host has address 203.0.113.9",
    ),
    (
        "interface-without-address",
        doc(P.replace("127.0.0.1", "noaddr0")),
        "listeners[0].bind: interface 'noaddr0' has no IP address",
    ),
    # groups and sources
    (
        "non-multicast-group",
        doc(M.replace("224.0.0.251", "10.0.0.1")),
        "gateway.yaml: listeners[0].groups[0]: 10.0.0.1 is not a multicast address",
    ),
    (
        "second-group-not-multicast",
        doc(M.replace("224.0.0.251", "224.0.0.251, '::1'")),
        "listeners[0].groups[1]: ::1 is not a multicast address",
    ),
    ("empty-groups", doc(M.replace("[224.0.0.251]", "[]")), "listeners[0].groups: must not be empty"),
    (
        "group-family-not-on-interfaces",
        doc(M.replace("224.0.0.251", "224.0.0.251, 'ff02::fb'") + ", interfaces: [198.51.100.7]"),
        "gateway.yaml: listeners[0].groups[1]: ff02::fb is IPv6 but none of the interfaces has an IPv6 address",
    ),
    (
        "source-multicast",
        doc(M + ", sources: [224.0.0.1]"),
        "listeners[0].sources[0]: 224.0.0.1 is not a unicast address",
    ),
    ("source-wildcard", doc(M + ", sources: [0.0.0.0]"), "listeners[0].sources[0]: 0.0.0.0 is not a unicast address"),
    (
        "source-family",
        doc(M + ", sources: ['2001:db8::1']"),
        "listeners[0].sources[0]: 2001:db8::1 is IPv6 but no group is IPv6",
    ),
    # keys of another kind
    (
        "bind-on-multicast",
        doc(M + ", bind: 0.0.0.0"),
        "gateway.yaml: listeners[0].bind: bind is not allowed on a multicast listener "
        "(it binds the wildcard address; use interfaces)",
    ),
    (
        "reuse-port-on-multicast",
        doc(M + ", reuse_port: true"),
        "gateway.yaml: listeners[0].reuse_port: reuse_port is not allowed on a multicast listener",
    ),
    (
        "remote-on-plain",
        doc(P + ", remote: {host: 127.0.0.1, port: 1}"),
        "listeners[0].remote: remote needs a connected listener",
    ),
    (
        "remote-on-multicast",
        doc(M + ", remote: {host: 127.0.0.1, port: 1}"),
        "listeners[0].remote: remote needs a connected listener",
    ),
    ("groups-on-plain", doc(P + ", groups: [224.0.0.251]"), "listeners[0].groups: groups needs a multicast listener"),
    (
        "send-channel-on-plain",
        doc(P + ", send_channel: out"),
        "gateway.yaml: listeners[0].send_channel: send_channel needs a connected or multicast listener",
    ),
    (
        "unknown-type",
        doc(P.replace("plain", "broadcast")),
        "listeners[0].type: 'broadcast' is not one of: plain, connected, multicast",
    ),
    ("empty-name", doc(P.replace("echo", "''")), "listeners[0].name: must not be empty"),
    # channel names
    (
        "bang-in-channel",
        doc(P + ", channel: 'udp.receive!x'"),
        "gateway.yaml: listeners[0].channel: 'udp.receive!x' is not a valid channel name",
    ),
    (
        "long-channel",
        doc(P + ", channel: " + "a" * 100),
        "listeners[0].channel: '" + "a" * 100 + "' is not a valid channel name",
    ),
    ("empty-channel", doc(P + ", channel: ''"), "listeners[0].channel: '' is not a valid channel name"),
    (
        "bad-send-channel",
        doc(C + ", send_channel: 'up out'"),
        "listeners[0].send_channel: 'up out' is not a valid channel name",
    ),
    (
        "send-channel-is-a-channel",
        doc(C + ", send_channel: udp.receive"),
        "listeners[0].send_channel: 'udp.receive' is also a listener's channel",
    ),
    (
        "send-channel-twice",
        doc(C + ", send_channel: out", M + ", send_channel: out"),
        "listeners[1].send_channel: 'out' is also the send_channel of listeners[0]",
    ),
    # application
    (
        "app-missing-module",
        doc(P, top="application: nosuch_app_mod:application\n"),
        "gateway.yaml: application: could not import module 'nosuch_app_mod'",
    ),
    (
        "app-module-raised",
        doc(P, top="application: cfg_raising:application\n"),
        "gateway.yaml: application: importing module 'cfg_raising' raised ValueError: boom",
    ),
    (
        "app-module-missing-inside",
        doc(P, top="application: cfg_broken:application\n"),
        "gateway.yaml: application: importing module 'cfg_broken' raised ModuleNotFoundError: "
        "No module named 'not_installed_xyz'",
    ),
    (
        "app-missing-attribute",
        doc(P, top="application: cfgapp:nope\n"),
        "gateway.yaml: application: module 'cfgapp' has no attribute 'nope'",
    ),
    (
        "app-not-callable",
        doc(P, top="application: cfgapp:NOT_CALLABLE\n"),
        "application: cfgapp:NOT_CALLABLE is not callable",
    ),
    (
        "app-format",
        doc(P, top="application: cfgapp.application\n"),
        "application: 'cfgapp.application' is not in the form 'module:attribute'",
    ),
    ("app-not-string", doc(P, top="application: 5\n"), "gateway.yaml: application: expected a string, got 5"),
    (
        "memory-without-application",
        doc(P, top=""),
        "gateway.yaml: application: required with the memory backend: nobody else could answer",
    ),
    (
        "explicit-memory-without-application",
        doc(P, top="channel_layer: {backend: memory}\n"),
        "gateway.yaml: application: required with the memory backend: nobody else could answer",
    ),
    # backend
    (
        "backend-missing",
        doc(P, top="channel_layer: {backend: nosuch_layer_mod.Layer}\n"),
        "gateway.yaml: channel_layer.backend: could not import module 'nosuch_layer_mod'",
    ),
    (
        "backend-missing-class",
        doc(P, top="channel_layer: {backend: cfglayer.Nope}\n"),
        "channel_layer.backend: module 'cfglayer' has no attribute 'Nope'",
    ),
    (
        "backend-format",
        doc(P, top="channel_layer: {backend: redis}\n"),
        "channel_layer.backend: 'redis' is not in the form",
    ),
    (
        "memory-config-key",
        doc(P, top=APP + "channel_layer: {config: {expiri: 5}}\n"),
        "gateway.yaml: channel_layer.config.expiri: unknown key for memory (did you mean 'expiry'?)",
    ),
    (
        "redis-config-key",
        doc(P, top=REDIS + ", config: {host: ['redis://127.0.0.1']}}\n"),
        "gateway.yaml: channel_layer.config.host: unknown key for channels_redis.core.RedisChannelLayer "
        "(did you mean 'hosts'?)",
    ),
    (
        "batching-linger-range",
        doc(P, top=BATCHING + ", config: {linger: 5}}\n"),
        "gateway.yaml: channel_layer.config.linger: must be a number of seconds from 0 to 1, not 5",
    ),
    (
        "batching-send-ahead-text",
        doc(P, top=BATCHING + ", config: {send_ahead: '64'}}\n"),
        "gateway.yaml: channel_layer.config.send_ahead: must be an integer of 0 or more, not '64'",
    ),
    (
        "batching-receive-batch-zero",
        doc(P, top=BATCHING + ", config: {receive_batch: 0}}\n"),
        "gateway.yaml: channel_layer.config.receive_batch: must be a positive integer, not 0",
    ),
    (
        "layer-required-key",
        doc(P, top="channel_layer: {backend: cfglayer.Layer}\n"),
        "channel_layer.config: required key 'url' of cfglayer.Layer is missing",
    ),
    (
        "layer-config-not-mapping",
        doc(P, top=APP + "channel_layer: {config: [1]}\n"),
        "gateway.yaml: channel_layer.config: expected a mapping, got a list",
    ),
    # ${VAR} substitution
    (
        "unset-var",
        block("type: plain", "bind: 127.0.0.1", "port: ${UDPGW_TEST_UNSET}"),
        "gateway.yaml:6: ${UDPGW_TEST_UNSET} is not set",
    ),
    (
        "unclosed-var",
        block("type: plain", "bind: 127.0.0.1", "port: ${UDPGW_TEST_UNSET"),
        "gateway.yaml:6: '${' is not closed by '}' on its line",
    ),
    (
        "bad-var",
        block("type: plain", "bind: 127.0.0.1", "port: ${1BAD}"),
        "gateway.yaml:6: ${1BAD} is not a valid substitution",
    ),
    # YAML syntax
    (
        "yaml-mapping-in-value",
        "application: cfgapp: application\n",
        "gateway.yaml:1:20: mapping values are not allowed here",
    ),
    (
        "yaml-indentation",
        APP + "listeners:\n  - name: a\n   type: plain\n",
        "gateway.yaml:4:4: expected <block end>, but found",
    ),
    ("yaml-unclosed-flow", APP + "listeners: [a, b\n", "gateway.yaml:3:1: expected ',' or ']'"),
    # limits
    (
        "limits-string",
        doc(P, top=APP + "limits: {reply_ttl: 60s}\n"),
        "gateway.yaml: limits.reply_ttl: expected a number, got '60s'",
    ),
    (
        "limits-bool",
        doc(P, top=APP + "limits: {max_layer_sends: true}\n"),
        "gateway.yaml: limits.max_layer_sends: expected an integer, got true",
    ),
    (
        "limits-float-for-int",
        doc(P, top=APP + "limits: {max_concurrency: 1.5}\n"),
        "limits.max_concurrency: expected an integer, got 1.5",
    ),
    (
        "limits-zero",
        doc(P, top=APP + "limits: {max_reply_channels: 0}\n"),
        "limits.max_reply_channels: 0 is less than 1",
    ),
    (
        "app-timeout-zero",
        doc(P, top=APP + "limits: {app_timeout: 0}\n"),
        "gateway.yaml: limits.app_timeout: 0 is not a positive number",
    ),
    (
        "app-timeout-string",
        doc(P, top=APP + "limits: {app_timeout: none}\n"),
        "gateway.yaml: limits.app_timeout: expected a number, got 'none'",
    ),
    (
        "limits-zero-poll",
        doc(P, top=APP + "limits: {interface_poll: 0}\n"),
        "limits.interface_poll: 0 is not a positive number",
    ),
    (
        "limits-negative-ttl",
        doc(P, top=APP + "limits: {reply_ttl: -1.5}\n"),
        "limits.reply_ttl: -1.5 is not a positive number",
    ),
    ("limits-not-mapping", doc(P, top=APP + "limits: 5\n"), "gateway.yaml: limits: expected a mapping, got 5"),
    ("max-sources-zero", doc(P, top=APP + "limits: {max_sources: 0}\n"), "limits.max_sources: 0 is less than 1"),
    (
        "max-sources-typo",
        doc(P, top=APP + "limits: {max_source: 5}\n"),
        "gateway.yaml: limits.max_source: unknown key (did you mean 'max_sources'?)",
    ),
    ("max-sources-float", doc(P, top=APP + "limits: {max_sources: 1000.5}\n"), "expected an integer, got 1000.5"),
    # allow and deny
    (
        "allow-host-bits",
        doc(P + ", allow: [192.0.2.1/24]"),
        "gateway.yaml: listeners[0].allow[0]: 192.0.2.1/24 has host bits set; did you mean 192.0.2.0/24?",
    ),
    (
        "deny-ipv6-host-bits",
        doc(M + ", deny: ['2001:db8::1/32']"),
        "gateway.yaml: listeners[0].deny[0]: 2001:db8::1/32 has host bits set; did you mean 2001:db8::/32?",
    ),
    (
        "deny-not-an-address",
        doc(P + ", deny: [192.0.2.0/24, example.com]"),
        "gateway.yaml: listeners[0].deny[1]: 'example.com' is not an IP address or network "
        "(like 192.0.2.0/24 or 2001:db8::/32)",
    ),
    ("allow-prefix-too-long", doc(C + ", allow: [10.0.0.0/33]"), "listeners[0].allow[0]: '10.0.0.0/33' is not an IP"),
    ("allow-not-list", doc(P + ", allow: 192.0.2.0/24"), "listeners[0].allow: expected a list, got '192.0.2.0/24'"),
    ("allow-int", doc(P + ", allow: [10]"), "gateway.yaml: listeners[0].allow[0]: expected a string, got 10"),
    (
        "allow-empty",
        doc(P + ", allow: []"),
        "gateway.yaml: listeners[0].allow: must not be empty (leave allow out to serve every source)",
    ),
    ("allow-typo", doc(P + ", alow: [192.0.2.0/24]"), "listeners[0].alow: unknown key (did you mean 'allow'?)"),
    # rate_limit
    (
        "rate-limit-without-burst",
        doc(P + ", rate_limit: {rate: 100}"),
        "gateway.yaml: listeners[0].rate_limit.burst: required key is missing",
    ),
    ("rate-limit-empty", doc(M + ", rate_limit: {}"), "listeners[0].rate_limit.rate: required key is missing"),
    (
        "rate-limit-zero-rate",
        doc(P + ", rate_limit: {rate: 0, burst: 5}"),
        "gateway.yaml: listeners[0].rate_limit.rate: 0 is not a positive number",
    ),
    ("rate-limit-inf-rate", doc(P + ", rate_limit: {rate: .inf, burst: 5}"), "rate: inf is not a positive number"),
    ("rate-limit-zero-burst", doc(P + ", rate_limit: {rate: 5, burst: 0}"), "rate_limit.burst: 0 is less than 1"),
    (
        "rate-limit-float-burst",
        doc(C + ", rate_limit: {rate: 5, burst: 2.5}"),
        "listeners[0].rate_limit.burst: expected an integer, got 2.5",
    ),
    (
        "rate-limit-typo",
        doc(P + ", rate_limit: {rate: 5, brust: 9}"),
        "gateway.yaml: listeners[0].rate_limit.brust: unknown key (did you mean 'burst'?)",
    ),
    ("rate-limit-number", doc(P + ", rate_limit: 100"), "listeners[0].rate_limit: expected a mapping, got 100"),
    ("rate-limit-key-typo", doc(P + ", ratelimit: {}"), "listeners[0].ratelimit: unknown key (did you mean 'rate_limit'?)"),
    # amplification
    (
        "amplification-zero",
        doc(P + ", amplification: 0"),
        "gateway.yaml: listeners[0].amplification: 0 is not a positive number",
    ),
    ("amplification-negative", doc(M + ", amplification: -2"), "listeners[0].amplification: -2 is not a positive"),
    (
        "amplification-off-string",
        doc(P + ", amplification: off"),
        "listeners[0].amplification: expected a number, got false",
    ),
    ("amplification-string", doc(P + ", amplification: 10x"), "listeners[0].amplification: expected a number, got '10x'"),
    # rcvbuf and sndbuf
    ("rcvbuf-zero", doc(P + ", rcvbuf: 0"), "gateway.yaml: listeners[0].rcvbuf: 0 is outside 1-1073741824"),
    ("rcvbuf-too-big", doc(M + ", rcvbuf: 2147483648"), "listeners[0].rcvbuf: 2147483648 is outside 1-1073741824"),
    ("rcvbuf-with-unit", doc(P + ", rcvbuf: 4M"), "listeners[0].rcvbuf: expected an integer, got '4M'"),
    ("sndbuf-negative", doc(C + ", sndbuf: -1"), "gateway.yaml: listeners[0].sndbuf: -1 is outside 1-1073741824"),
    ("sndbuf-float", doc(P + ", sndbuf: 65536.5"), "listeners[0].sndbuf: expected an integer, got 65536.5"),
    ("rcvbuf-typo", doc(P + ", recvbuf: 1"), "listeners[0].recvbuf: unknown key (did you mean 'rcvbuf'?)"),
    # metrics
    (
        "metrics-port-too-big",
        doc(P, top=APP + "metrics: {port: 70000}\n"),
        "gateway.yaml: metrics.port: 70000 is outside 0-65535",
    ),
    ("metrics-bind-name", doc(P, top=APP + "metrics: {bind: lo}\n"), "metrics.bind: 'lo' is not a valid IP address"),
    (
        "metrics-bind-not-here",
        doc(P, top=APP + "metrics: {bind: 203.0.113.9}\n"),
        "gateway.yaml: metrics.bind: 203.0.113.9 is not an address of this host",
    ),
    ("metrics-typo", doc(P, top=APP + "metrics: {prot: 9100}\n"), "metrics.prot: unknown key (did you mean 'port'?)"),
    ("metrics-number", doc(P, top=APP + "metrics: 9100\n"), "gateway.yaml: metrics: expected a mapping, got 9100"),
    ("metric-top-typo", doc(P, top=APP + "metric: {}\n"), "gateway.yaml: metric: unknown key (did you mean 'metrics'?)"),
]


@pytest.mark.parametrize("text, expected", [pytest.param(text, line, id=name) for name, text, line in ROWS])
def test_problem_lines(load, text, expected):
    """Each mistake gives a line naming the file, the key path and what is wrong, and no config."""
    config, problems = load(text)
    assert config is None
    assert any(expected in line for line in lines(problems)), lines(problems)


VALID = [
    ("minimal", doc(P)),
    ("batching-own-keys", doc(P, top=BATCHING + ", config: {send_ahead: 64, linger: 0.002, receive_batch: 16}}\n")),
    ("loopback-127-0-0-2", doc(P.replace("127.0.0.1", "127.0.0.2"))),
    ("both-reuse-port", doc(P + ", reuse_port: true", P.replace("echo", "two") + ", reuse_port: true")),
    ("port-zero-twice", doc(P.replace("9999", "0"), P.replace("echo", "two").replace("9999", "0"))),
    (
        "wildcards-of-both-families",
        doc(P.replace("127.0.0.1", "0.0.0.0"), P.replace("echo", "two").replace("127.0.0.1", "'::'")),
    ),
    ("multicast-share-a-port", doc(M, M.replace("mc", "mc2"))),
    (
        "lo-address-has-both-families",
        doc(M.replace("224.0.0.251", "224.0.0.251, 'ff02::fb'") + ", interfaces: ['127.0.0.1']"),
    ),
    ("interface-by-name", doc(M + ", interfaces: [test0, v4only0]")),
    (
        "external-backend-without-application",
        doc(P, top="channel_layer: {backend: cfglayer.AnyLayer, config: {x: 1}}\n"),
    ),
    (
        "redis-backend",
        doc(P, top=REDIS + ", config: {hosts: ['redis://127.0.0.1:6379/0']}}\n"),
    ),
    (
        "memory-config",
        doc(P, top=APP + "channel_layer: {config: {expiry: 5, group_expiry: 9, capacity: 10, channel_capacity: {}}}\n"),
    ),
    ("send-channels", doc(C + ", send_channel: up.out", M + ", send_channel: mc.out")),
    ("channel-99-characters", doc(P + ", channel: " + "a" * 99)),
    (
        "extreme-values",
        doc(P.replace("9999", "65535"), M.replace("5353", "0") + ", ttl: 0", M.replace("mc", "m2") + ", ttl: 255"),
    ),
    (
        "mixed-groups-and-sources",
        doc(M.replace("224.0.0.251", "232.1.1.1, 'ff3e::1'") + ", sources: [192.0.2.10, '2001:db8::10']"),
    ),
    ("ipv6-remote", doc(C.replace("bind: 127.0.0.1", "bind: '::1'").replace("host: 127.0.0.1", "host: '::1'"))),
    (
        "empty-optional-keys",
        doc(M + ", interfaces: , sources: ", top="application:\nchannel_layer: {backend: cfglayer.AnyLayer}\n"),
    ),
    ("commented-var", "# port: ${UDPGW_TEST_UNSET}\n" + doc(P)),
    ("fd-without-bind-or-port", doc("name: echo, type: plain, fd: 3")),
    ("fd-connected", doc("name: up, type: connected, fd: 4, remote: {host: 127.0.0.1, port: 9001}")),
    ("fd-multicast-without-port", doc("name: mc, type: multicast, fd: 0, groups: [224.0.0.251]")),
    ("fd-with-bind-and-port", doc(P + ", fd: 3")),
    (
        "traffic-keys-on-every-kind",
        doc(
            P + ", allow: [192.0.2.0/24, '2001:db8::/32', 198.51.100.7], deny: [192.0.2.66], "
            "rate_limit: {rate: 0.5, burst: 1}, amplification: 2.5, rcvbuf: 1, sndbuf: 1073741824",
            C + ", deny: ['::/0'], amplification: null, rate_limit: {rate: 100, burst: 200}",
            M + ", allow: ['fe80::/10', 0.0.0.0/0], rcvbuf: 65536, sndbuf: 65536, amplification: ~",
        ),
    ),
    ("null-traffic-keys", doc(P + ", allow: , deny: , rate_limit: , rcvbuf: , sndbuf: ")),
    ("metrics-defaults", doc(P, top=APP + "metrics: {}\n")),
    ("metrics-null", doc(P, top=APP + "metrics:\n")),
    ("metrics-ipv6-ephemeral", doc(P, top=APP + "metrics: {bind: '::1', port: 0}\n")),
    ("metrics-wildcard-same-port-as-udp", doc(P, top=APP + "metrics: {bind: 0.0.0.0, port: 9999}\n")),
    ("max-sources-one", doc(P, top=APP + "limits: {max_sources: 1}\n")),
]


@pytest.mark.parametrize("text", [pytest.param(text, id=name) for name, text in VALID])
def test_valid_configs(load, text):
    """Configs that follow the rules load without a single problem."""
    config, problems = load(text)
    assert lines(problems) == []
    assert isinstance(config, GatewayConfig)


def test_fd_makes_bind_and_port_optional(load):
    """With `fd`, a listener needs neither bind nor port: port is then None (the adopted socket's)."""
    config, problems = load(doc("name: echo, type: plain, fd: 3", M + ", fd: 4"))
    assert problems == []
    assert [(l.fd, l.port, l.bind) for l in config.listeners] == [(3, None, ()), (4, 5353, ())]


def test_fd_bind_address_needs_no_host_address(load):
    """With `fd`, a bound address is only compared with the socket: it need not be on this host."""
    config, problems = load(doc(P.replace("127.0.0.1", "192.0.2.99") + ", fd: 3"))
    assert problems == []
    assert config.listeners[0].bind == ("192.0.2.99",)
    _config, problems = load(doc(P.replace("127.0.0.1", "192.0.2.99")))
    assert "192.0.2.99 is not an address of this host" in lines(problems)[0]


def test_minimal_config_gets_defaults(load, tmp_path):
    """A valid file gives a frozen GatewayConfig with every default filled in."""
    config, problems = load(doc(P))
    assert problems == []
    assert config == GatewayConfig(
        path=str(tmp_path / "gateway.yaml"),
        directory=str(tmp_path),
        channel_layer=LayerConfig(backend="memory", config={}),
        application="cfgapp:application",
        listeners=(ListenerConfig(name="echo", type="plain", port=9999, bind=("127.0.0.1",)),),
        limits=Limits(),
    )
    listener = config.listeners[0]
    assert (listener.channel, listener.reuse_port) == ("udp.receive", False)
    assert (listener.remote, listener.send_channel, listener.bind_interface) == (None, None, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        listener.port = 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.limits = Limits()


def test_full_config_values(load):
    """Every key lands in its field; addresses are normalized and limits numbers become floats."""
    text = doc(
        C + ", reuse_port: true, send_channel: up.out, channel: up.in",
        "name: mc, type: multicast, port: 5353, groups: ['FF02::FB', 224.0.0.251], sources: ['2001:DB8::9'], "
        "interfaces: [test0, '192.0.2.2'], ttl: 4, loopback: false, send_channel: mc.out",
        top=APP + "limits: {reply_ttl: 30, max_reply_channels: 7, max_concurrency: 8, max_layer_sends: 9, "
        "interface_poll: 1.5, app_timeout: 2}\n",
    )
    config, problems = load(text)
    assert problems == []
    connected, multicast = config.listeners
    assert connected.remote == Remote(host="127.0.0.1", port=9001)
    assert (connected.reuse_port, connected.send_channel, connected.channel) == (True, "up.out", "up.in")
    assert multicast.groups == ("ff02::fb", "224.0.0.251")
    assert multicast.sources == ("2001:db8::9",)
    assert multicast.interfaces == ("test0", "192.0.2.2")
    assert (multicast.ttl, multicast.loopback, multicast.bind) == (4, False, ())
    assert config.limits == Limits(
        reply_ttl=30.0, max_reply_channels=7, max_concurrency=8, max_layer_sends=9, interface_poll=1.5,
        app_timeout=2.0,
    )
    assert isinstance(config.limits.reply_ttl, float) and isinstance(config.limits.app_timeout, float)


@pytest.mark.parametrize("text, expected", [("", 60.0), ("limits: {app_timeout: null}\n", None),
                                             ("limits: {app_timeout: ~}\n", None), ("limits: {}\n", 60.0),
                                             ("limits: {app_timeout: 0.5}\n", 0.5)])
def test_app_timeout_default_and_null(load, text, expected):
    """limits.app_timeout defaults to 60 seconds; an explicit null means calls are never timed out."""
    config, problems = load(doc(P, top=APP + text))
    assert problems == [] and config.limits.app_timeout == expected


def test_traffic_keys_default(load):
    """Without the keys: no filters, no rate limit, amplification 10, a 4 MiB rcvbuf, the system's sndbuf,
    100,000 sources and no metrics endpoint."""
    config, problems = load(doc(P, M))
    assert problems == []
    for listener in config.listeners:
        assert (listener.allow, listener.deny, listener.rate_limit) == ((), (), None)
        assert (listener.amplification, listener.rcvbuf, listener.sndbuf) == (10.0, 4194304, None)
    assert config.limits.max_sources == 100000
    assert config.metrics is None


def test_traffic_key_values(load):
    """allow/deny become networks (a bare address a /32 or /128), numbers land in their fields as floats or ints."""
    text = doc(
        P + ", allow: [192.0.2.0/24, '2001:DB8::/32', 198.51.100.7, '2001:db8::7'], deny: [192.0.2.66], "
        "rate_limit: {rate: 100, burst: 200}, amplification: 3, rcvbuf: 8388608, sndbuf: 262144",
        top=APP + "limits: {max_sources: 50}\n",
    )
    config, problems = load(text)
    assert problems == []
    listener = config.listeners[0]
    assert listener.allow == tuple(ipaddress.ip_network(text) for text in (
        "192.0.2.0/24", "2001:db8::/32", "198.51.100.7/32", "2001:db8::7/128"))
    assert listener.deny == (ipaddress.ip_network("192.0.2.66/32"),)
    assert ipaddress.ip_address("192.0.2.9") in listener.allow[0]
    assert listener.rate_limit == RateLimit(rate=100.0, burst=200)
    assert isinstance(listener.rate_limit.rate, float) and isinstance(listener.amplification, float)
    assert (listener.amplification, listener.rcvbuf, listener.sndbuf) == (3.0, 8388608, 262144)
    assert config.limits.max_sources == 50


@pytest.mark.parametrize("value", ["null", "~"])
def test_amplification_null_turns_the_cap_off(load, value):
    """amplification: null means no cap at all, not the default of 10."""
    config, problems = load(doc(P + f", amplification: {value}"))
    assert problems == [] and config.listeners[0].amplification is None


@pytest.mark.parametrize("text, expected", [
    ("metrics: {}\n", Metrics(bind="127.0.0.1", port=9100)),
    ("metrics: {port: 9200}\n", Metrics(bind="127.0.0.1", port=9200)),
    ("metrics: {bind: '::1', port: 0}\n", Metrics(bind="::1", port=0)),
    ("metrics: {bind: '::'}\n", Metrics(bind="::", port=9100)),
    ("metrics: {bind: 'fe80::2'}\n", Metrics(bind="fe80::2%test0", port=9100)),
    ("metrics:\n", None),
])
def test_metrics_values(load, text, expected):
    """metrics takes bind 127.0.0.1 and port 9100 by default; a link-local bind gets its scope; null is none."""
    config, problems = load(doc(P, top=APP + text))
    assert problems == [] and config.metrics == expected


def test_metrics_bind_without_host_checks(load):
    """Without host checks (a worker), metrics.bind need not be an address of this host, but must be one."""
    config, problems = load(doc(P, top=APP + "metrics: {bind: 203.0.113.9}\n"), host_checks=False)
    assert problems == [] and config.metrics == Metrics(bind="203.0.113.9")
    _, problems = load(doc(P, top=APP + "metrics: {bind: nowhere}\n"), host_checks=False)
    assert lines(problems) == ["gateway.yaml: metrics.bind: 'nowhere' is not a valid IP address"]


def test_bind_interface_expands_to_its_addresses(load):
    """An interface name binds every address it has, IPv6 link-local ones with their scope."""
    config, _ = load(doc(P.replace("127.0.0.1", "test0")))
    assert config.listeners[0].bind == ("192.0.2.2", "2001:db8::2", "fe80::2%test0")
    assert config.listeners[0].bind_interface == "test0"


def test_link_local_bind_gets_its_scope(load):
    """A link-local address without a scope gets the scope of the interface that has it."""
    config, _ = load(doc(P.replace("127.0.0.1", "'fe80::2'")))
    assert config.listeners[0].bind == ("fe80::2%test0",)
    assert config.listeners[0].bind_interface is None


@pytest.mark.parametrize(
    "environ, port", [({}, 9999), ({"UDPGW_TEST_PORT": ""}, 9999), ({"UDPGW_TEST_PORT": "1234"}, 1234)]
)
def test_env_default_keeps_yaml_types(load, monkeypatch, environ, port):
    """${VAR:-default} is replaced before parsing, so the value keeps its YAML type; empty means default."""
    monkeypatch.delenv("UDPGW_TEST_PORT", raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    text = doc(P.replace("9999", "${UDPGW_TEST_PORT:-9999}") + ", reuse_port: ${UDPGW_TEST_UNSET:-true}")
    config, problems = load(text)
    assert problems == []
    assert config.listeners[0].port == port
    assert config.listeners[0].reuse_port is True


def test_env_value_is_used(load, monkeypatch):
    """${VAR} takes the environment's value."""
    monkeypatch.setenv("UDPGW_TEST_BIND", "127.0.0.1")
    config, problems = load(doc(P.replace("127.0.0.1", "${UDPGW_TEST_BIND}")))
    assert problems == []
    assert config.listeners[0].bind == ("127.0.0.1",)


def test_double_dollar_is_a_literal_dollar(load):
    """$$ stands for one literal $."""
    config, problems = load(doc(P, top="channel_layer: {backend: cfglayer.AnyLayer, config: {password: 'pa$$word'}}\n"))
    assert problems == []
    assert config.channel_layer == LayerConfig(backend="cfglayer.AnyLayer", config={"password": "pa$word"})


def test_each_unset_var_is_one_problem(load):
    """Every unset ${VAR} is reported with its line, and nothing more is checked."""
    text = block("type: plain", "bind: ${UDPGW_TEST_UNSET}", "port: ${UDPGW_TEST_UNSET2}", "prot: 1")
    config, problems = load(text)
    assert config is None
    assert lines(problems) == [
        "gateway.yaml:5: ${UDPGW_TEST_UNSET} is not set",
        "gateway.yaml:6: ${UDPGW_TEST_UNSET2} is not set",
    ]


def test_every_problem_reported_at_once(load):
    """A file with three mistakes gives exactly three lines, in file order."""
    text = doc(P.replace("9999", "70000"), M.replace("224.0.0.251", "10.0.0.1") + ", bind: 0.0.0.0")
    config, problems = load(text)
    assert config is None
    assert lines(problems) == [
        "gateway.yaml: listeners[0].port: 70000 is outside 0-65535",
        "gateway.yaml: listeners[1].bind: bind is not allowed on a multicast listener "
        "(it binds the wildcard address; use interfaces)",
        "gateway.yaml: listeners[1].groups[0]: 10.0.0.1 is not a multicast address",
    ]


def test_config_directory_first_on_sys_path(tmp_path, monkeypatch, host):
    """The config file's directory goes first on sys.path, once, so a module beside it imports from any cwd."""
    conf = tmp_path / "conf"
    (conf / "examples").mkdir(parents=True)
    (conf / "examples" / "__init__.py").write_text("")
    (conf / "examples" / "cfgecho.py").write_text(MODULES["cfgapp"])
    (conf / "gateway.yaml").write_text(doc(P, top="application: examples.cfgecho:application\n"))
    monkeypatch.chdir(tmp_path)
    sys.modules.pop("examples", None)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    for _ in range(2):
        config, problems = load_config("conf/gateway.yaml")
        assert problems == []
        assert sys.path[0] == str(conf)
        assert sys.path.count(str(conf)) == 1
    assert config.directory == str(conf)
    assert config.path == str(conf / "gateway.yaml")
    sys.modules.pop("examples", None)
    sys.modules.pop("examples.cfgecho", None)


def test_problem_names_the_file_as_given(load):
    """Problems name the config file the way the user gave it."""
    _, problems = load(doc(P.replace("9999", "-5")))
    assert {problem.file for problem in problems} == {"gateway.yaml"}


def test_host_checks_off_accepts_unknown_interfaces(load):
    """Without host checks, interface names and addresses need not exist here; bind keeps the name."""
    text = doc(
        P.replace("127.0.0.1", "eth9"),
        P.replace("echo", "two").replace("127.0.0.1", "203.0.113.9"),
        M + ", interfaces: [eth9, 203.0.113.9]",
    )
    config, problems = load(text, host_checks=False)
    assert problems == []
    assert config.listeners[0].bind == ("eth9",)
    assert config.listeners[0].bind_interface == "eth9"
    assert config.listeners[1].bind == ("203.0.113.9",)
    assert config.listeners[2].interfaces == ("eth9", "203.0.113.9")


def test_host_checks_off_still_checks_the_schema(load):
    """Without host checks, malformed addresses and names are still problems."""
    config, problems = load(doc(P.replace("127.0.0.1", "10.0.0.300")), host_checks=False)
    assert config is None
    assert lines(problems) == ["gateway.yaml: listeners[0].bind: '10.0.0.300' is not a valid IP address"]


def test_imports_off_skips_imports(load):
    """With imports=False, application and backend are not imported."""
    config, problems = load(doc(P, top="application: nosuch_app_mod:application\n"), imports=False)
    assert problems == []
    assert config.application == "nosuch_app_mod:application"


HOSTILE = [
    ("nul-byte", doc(P.replace("echo", "e\0")), "gateway.yaml:3:13: character U+0000 is not allowed in YAML"),
    ("escape-char", doc(P) + "\x1b[31m\n", "gateway.yaml:4:1: character U+001B is not allowed in YAML"),
    ("c1-control", APP + "x: \x85\x86\n", "gateway.yaml:2:5: character U+0086 is not allowed in YAML"),
    ("deep-flow", "listeners: " + "[" * 600 + "]" * 600 + "\n", "gateway.yaml:1:75: nested deeper than 64 levels"),
    ("deep-block", "".join("  " * i + "a:\n" for i in range(100)), "gateway.yaml:64:127: nested deeper than 64 levels"),
    ("list-key", APP + "? [1, 2]\n: 3\n", "gateway.yaml:2:3: found unhashable key"),
    ("dict-key", doc("? {a: 1} : 2"), "gateway.yaml:3:8: found unhashable key"),
    ("int-key", doc(P + ", 7: 2"), "gateway.yaml: listeners[0].7: unknown key"),
    ("control-in-key", APP + '"a\\nb\\0": 1\n' + doc(P, top=""), r"gateway.yaml: a\nb\x00: unknown key"),
    ("control-in-value", doc(P.replace("echo", '"e\\0"')), "listeners[0].name: contains the control character U+0000"),
    ("cyclic-alias", APP + "listeners: &a [*a]\n", "gateway.yaml: listeners[0]: expected a mapping, got a list"),
    ("merge-cycle", APP + "x: &a {<<: *a}\n" + doc(P, top=""), "gateway.yaml: x: unknown key"),
    ("list-as-type", doc("name: e, type: [plain], port: 0"), "listeners[0].type: expected a string, got a list"),
    ("decimal-past-4300-digits", doc(P.replace("9999", "9" * 5000)), "gateway.yaml:3:54: not a valid int: Exceeds"),
    ("hex-20000-bits", doc(P.replace("9999", "0x" + "f" * 5000)), "listeners[0].port: a 20000-bit number is outside"),
    ("sexagesimal", doc(P.replace("9999", ":".join(["59"] * 3000))), "listeners[0].port: a 17721-bit number is outside"),
    ("float-overflow", APP + "limits: {reply_ttl: 0x" + "f" * 300 + "}\n" + doc(P, top=""),
     "limits.reply_ttl: a 1200-bit number is not a positive number"),
    ("inf-port", doc(P.replace("9999", ".inf")), "gateway.yaml: listeners[0].port: expected an integer, got inf"),
    ("inf-ttl", APP + "limits: {reply_ttl: .inf}\n" + doc(P, top=""), "limits.reply_ttl: inf is not a positive number"),
    ("nan-poll", APP + "limits: {interface_poll: .nan}\n" + doc(P, top=""),
     "limits.interface_poll: nan is not a positive number"),
    ("bad-timestamp", APP + "x: 2001-13-45\n" + doc(P, top=""), "gateway.yaml:2:4: not a valid timestamp: month"),
    ("python-tag", APP + "x: !!python/object/apply:os.system [ls]\n", "gateway.yaml:2:4: could not determine a constructor"),
    ("long-value", doc(P.replace("127.0.0.1", "x" * 100000)), "listeners[0].bind: 'xxxx"),
    ("two-documents", doc(P) + "---\nx: 1\n", "gateway.yaml:4:1: but found another document"),
]


@pytest.mark.parametrize("text, expected", [pytest.param(text, line, id=name) for name, text, line in HOSTILE])
def test_hostile_files_give_lines_not_exceptions(load, text, expected):
    """Control bytes, deep nesting and weird but valid YAML are problems with a location, never exceptions."""
    config, problems = load(text)
    assert config is None
    assert any(line.startswith("gateway.yaml") and expected in line for line in lines(problems)), lines(problems)
    assert all(len(line) < 400 for line in lines(problems)), lines(problems)


def test_unexpected_exception_in_a_check_is_one_problem(load, monkeypatch):
    """A case the checks missed still gives one problem line naming the file, not a traceback."""

    def broken():
        raise TypeError("unhashable type: 'list'")

    monkeypatch.setattr(interfaces, "list_interfaces", broken)
    config, problems = load(doc(P))
    assert config is None
    assert lines(problems) == ["gateway.yaml: cannot check this file (TypeError: unhashable type: 'list')"]


def test_file_over_1_mib_refused_before_it_is_read(tmp_path, monkeypatch):
    """A file over 1 MiB is refused by its size; one that grows past it while read is cut at 1 MiB + 1 byte."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gateway.yaml").write_bytes(b"listeners: []\n" + b"#" * (1024 * 1024))
    config, problems = load_config("gateway.yaml")
    assert config is None
    assert lines(problems) == ["gateway.yaml: cannot read: larger than 1 MiB (1048590 bytes): not a config file"]
    assert lines(load_config("/dev/zero")[1]) == ["/dev/zero: cannot read: larger than 1 MiB: not a config file"]


def test_missing_file(tmp_path, monkeypatch):
    """A missing file is one problem, not an exception."""
    monkeypatch.chdir(tmp_path)
    config, problems = load_config("gateway.yaml")
    assert config is None
    assert problems == [Problem("gateway.yaml", "", "cannot read: No such file or directory")]
    assert str(load_config("gateway.yaml")[1][0]) == "gateway.yaml: cannot read: No such file or directory"


def test_no_multicast_interface_of_a_family_is_a_warning(load, host):
    """With no interfaces given, a family no up multicast interface has now is only a warning."""
    del host["test0"]
    config, problems = load(doc(M.replace("224.0.0.251", "224.0.0.251, 'ff02::fb'")))
    assert config is not None
    assert [problem.warning for problem in problems] == [True]
    assert lines(problems) == [
        "gateway.yaml: listeners[0].groups[1]: no up multicast interface has an IPv6 address now; "
        "ff02::fb will be joined when one appears"
    ]


def test_igmp_sysctl_warnings(load, monkeypatch):
    """Past Linux's igmp_max_memberships or igmp_max_msf a multicast listener gets a warning naming the sysctl."""
    sysctls = {"net.ipv4.igmp_max_memberships": 3, "net.ipv4.igmp_max_msf": 1}
    monkeypatch.setattr(interfaces, "read_sysctl", sysctls.get)
    groups = "[232.1.1.1, 232.1.1.2, 'ff3e::1']"
    text = doc(M.replace("[224.0.0.251]", groups) + ", interfaces: [test0, v4only0], sources: [192.0.2.7, 192.0.2.8]")
    config, problems = load(text)
    assert config is not None
    assert errors(problems) == []
    assert lines(problems) == [
        "gateway.yaml: listeners[0].groups: 2 IPv4 groups x 2 interfaces exceed net.ipv4.igmp_max_memberships = 3; "
        "raise it: sysctl -w net.ipv4.igmp_max_memberships=4 (and in /etc/sysctl.d/ to keep it)",
        "gateway.yaml: listeners[0].sources: 2 IPv4 sources exceed net.ipv4.igmp_max_msf = 1; "
        "raise it: sysctl -w net.ipv4.igmp_max_msf=2 (and in /etc/sysctl.d/ to keep it)",
    ]


@pytest.mark.parametrize("absent", ["channels_redis", "redis"])
def test_channels_redis_not_installed(load, monkeypatch, absent):
    """A channels_redis backend without channels_redis (or its redis client) says how to install it."""

    class Uninstalled:
        """A meta path finder that makes `absent` look not installed."""

        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] == absent:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    for name in [n for n in sys.modules if n.partition(".")[0] in ("channels_redis", absent)]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [Uninstalled(), *sys.meta_path])
    config, problems = load(doc(P, top="channel_layer: {backend: channels_redis.core.RedisChannelLayer}\n"))
    assert config is None
    assert lines(problems) == [
        "gateway.yaml: channel_layer.backend: channels_redis is not installed (pip install 'udpgateway[redis]')"
    ]


def test_real_host_loopback(tmp_path, monkeypatch):
    """Against this host's real interfaces, lo and 127.0.0.1 pass the host checks."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cfgapp.py").write_text(MODULES["cfgapp"])
    second = P.replace("echo", "two").replace("127.0.0.1", "lo").replace("9999", "0")
    (tmp_path / "gateway.yaml").write_text(doc(P, second))
    config, problems = load_config("gateway.yaml")
    assert problems == []
    assert "127.0.0.1" in config.listeners[1].bind


def test_problem_str():
    """A problem renders as `file: key: message`, or `file: message` without a key."""
    assert str(Problem("gateway.yaml", "listeners[2].groups[0]", "10.0.0.1 is not a multicast address")) == (
        "gateway.yaml: listeners[2].groups[0]: 10.0.0.1 is not a multicast address"
    )
    assert str(Problem("gateway.yaml:12", "", "${FOO} is not set")) == "gateway.yaml:12: ${FOO} is not set"
    assert str(Problem("g.yaml", "limits", "odd", warning=True)) == "g.yaml: limits: odd"


def test_errors_leaves_out_warnings():
    """errors() keeps only the problems that are not warnings."""
    problems = [Problem("g", "a", "bad"), Problem("g", "b", "doubtful", warning=True)]
    assert errors(problems) == problems[:1]


def test_describe(load):
    """describe() gives one line per listener: kind, real addresses or groups and interfaces, port, channels."""
    text = doc(
        P,
        "name: up, type: connected, bind: test0, port: 0, remote: {host: '2001:db8::7', port: 9001}, "
        "send_channel: up.out",
        M + ", sources: [192.0.2.7]",
        "name: ssdp, type: multicast, port: 1900, groups: [239.255.255.250], interfaces: [test0], channel: ssdp.in",
        P.replace("echo", "shared").replace("9999", "7000") + ", reuse_port: true",
        "name: sd, type: plain, fd: 3",
        P.replace("echo", "sd2").replace("9999", "9998") + ", fd: 4",
        M.replace("mc", "sd3") + ", fd: 5",
    )
    config, problems = load(text)
    assert problems == []
    assert describe(config) == [
        "echo: plain on 127.0.0.1 port 9999, channel udp.receive",
        "up: connected on test0 (192.0.2.2, 2001:db8::2, fe80::2%test0) port 0 (ephemeral) to [2001:db8::7]:9001, "
        "channel udp.receive, send_channel up.out",
        "mc: multicast 224.0.0.251 on all multicast interfaces port 5353 from 192.0.2.7, channel udp.receive",
        "ssdp: multicast 239.255.255.250 on test0 port 1900, channel ssdp.in",
        "shared: plain on 127.0.0.1 port 7000, reuse_port, channel udp.receive",
        "sd: plain adopting fd 3 on its socket, channel udp.receive",
        "sd2: plain adopting fd 4 on 127.0.0.1 port 9998, channel udp.receive",
        "sd3: multicast 224.0.0.251 on all multicast interfaces port 5353 adopting fd 5, channel udp.receive",
    ]


def test_describe_traffic_keys_and_metrics(load):
    """describe() adds the filters, limits and buffers that differ from the defaults, and the metrics URL."""
    text = doc(
        P + ", allow: [192.0.2.0/24, '2001:db8::/32'], deny: [192.0.2.66], rate_limit: {rate: 0.5, burst: 20}, "
        "amplification: null, rcvbuf: 65536, sndbuf: 32768",
        M + ", amplification: 2.5",
        M.replace("mc", "m10") + ", amplification: 10, rcvbuf: 4194304",
        top=APP + "metrics: {bind: '::1', port: 9101}\n",
    )
    config, problems = load(text)
    assert problems == []
    assert describe(config) == [
        "echo: plain on 127.0.0.1 port 9999, channel udp.receive, allow 192.0.2.0/24 2001:db8::/32, "
        "deny 192.0.2.66/32, rate_limit 0.5/s burst 20, amplification off, rcvbuf 65536, sndbuf 32768",
        "mc: multicast 224.0.0.251 on all multicast interfaces port 5353, channel udp.receive, amplification 2.5x",
        "m10: multicast 224.0.0.251 on all multicast interfaces port 5353, channel udp.receive",
        "metrics: http://[::1]:9101/metrics",
    ]


def _package_imports():
    """{module: (modules of gateway.config it imports, every top-level package it imports)}, read from source."""
    found = {}
    for source in sorted(Path(gateway.config.__file__).parent.glob("*.py")):
        names = []
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.append(node.module)
            elif isinstance(node, ast.Import):
                names.extend(alias.name for alias in node.names)
        inside = {name.rpartition(".")[2] for name in names if name.startswith("gateway.config.")}
        found[source.stem] = (inside, {name.partition(".")[0] for name in names})
    return found


def test_config_package_imports_point_one_way():
    """The modules of gateway.config import each other without a cycle, and none of them imports Twisted."""
    graph = _package_imports()
    assert {"__init__", "model", "schema", "tables", "source", "imports", "checker", "summary"} <= set(graph)
    assert graph["model"][0] == set() and graph["schema"][0] == set() and graph["source"][0] == set()
    done, visiting = set(), []

    def visit(name):
        assert name not in visiting, f"import cycle: {' -> '.join(visiting + [name])}"
        if name not in done:
            visiting.append(name)
            for other in graph[name][0]:
                visit(other)
            visiting.pop()
            done.add(name)

    for name in graph:
        visit(name)
    assert not any("twisted" in packages for _, packages in graph.values())


@pytest.mark.parametrize("module", sorted(_package_imports()))
def test_each_config_module_imports_first(module):
    """Each module of gateway.config imports cleanly as the first thing a fresh interpreter imports."""
    name = "gateway.config" if module == "__init__" else f"gateway.config.{module}"
    result = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
