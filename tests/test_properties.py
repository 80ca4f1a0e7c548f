"""Property-based robustness: any config file gives exit 0 or 2 with problem lines; any reply is sent or counted."""

import asyncio
import contextlib
import io
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.cli import main as cli_main
from gateway.config import Problem, errors, load_config
from gateway.messages import MAX_DATAGRAM, BadReply, validate_send
from tests.support import aio

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# Moderate example counts keep each property to seconds; no database, so runs leave nothing behind.
FAST = settings(max_examples=150, deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# -- generated config documents ---------------------------------------------

KEYS = [
    "channel_layer", "backend", "config", "application", "listeners", "limits", "name", "type", "bind", "port",
    "channel", "reuse_port", "remote", "host", "send_channel", "groups", "sources", "interfaces", "ttl",
    "loopback", "reply_ttl", "max_reply_channels", "max_concurrency", "max_layer_sends", "interface_poll",
    "capacity", "expiry", "hosts", "metrics", "allow", "deny", "rate_limit", "rate", "burst", "amplification",
    "rcvbuf", "sndbuf", "app_timeout", "max_sources", "fd",
]
WORDS = [
    "127.0.0.1", "::1", "0.0.0.0", "::", "239.255.255.250", "ff02::fb", "fe80::1%lo", "10.0.0.1", "lo", "eth0",
    "plain", "connected", "multicast", "memory", "examples.echo:application", "examples.echo:nothing",
    "channels_redis.core.RedisChannelLayer", "no_such_module_xyz:app", "gateway.layers.InMemoryChannelLayer",
    "udp.receive", "a:b", "udp.send!x", "", " ", "${NOT_SET_ANYWHERE_XYZ}", "$$", "\t", "null", "~", "0x10",
    "192.0.2.0/24", "2001:db8::/32", "10.0.0.1/8", "0.0.0.0/0", "::/0", "192.0.2.0/33",
]
NUMBERS = [0, 1, -1, 65535, 65536, 2**63, -(2**63), 0.5, float("inf"), float("-inf"), float("nan"), 1e-300]
scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=16)
           | st.sampled_from(WORDS) | st.sampled_from(NUMBERS))
keys = st.sampled_from(KEYS) | st.text(max_size=8) | st.integers() | st.booleans() | st.none()
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5),
                      max_leaves=30)
documents = st.dictionaries(keys, values, max_size=6) | values

VALID = [
    {"application": "examples.echo:application",
     "listeners": [{"name": "echo", "type": "plain", "bind": "127.0.0.1", "port": 9999}]},
    {"channel_layer": {"backend": "memory", "config": {"capacity": 100}},
     "application": "examples.echo:application",
     "listeners": [
         {"name": "echo", "type": "plain", "bind": "127.0.0.1", "port": 0, "channel": "udp.receive",
          "reuse_port": True, "allow": ["127.0.0.0/8", "::1"], "deny": ["127.0.0.66"],
          "rate_limit": {"rate": 100, "burst": 200}, "amplification": 10, "rcvbuf": 4194304, "sndbuf": 65536},
         {"name": "up", "type": "connected", "bind": "::1", "port": 0, "remote": {"host": "::1", "port": 9000},
          "send_channel": "up.out"},
         {"name": "mc", "type": "multicast", "port": 1901, "groups": ["239.255.255.250", "ff02::c"],
          "sources": ["192.0.2.10"], "interfaces": ["lo"], "ttl": 1, "loopback": True, "send_channel": "mc.out"},
     ],
     "limits": {"reply_ttl": 60, "max_reply_channels": 100000, "max_concurrency": 1000, "max_layer_sends": 50,
                "interface_poll": 5, "app_timeout": None, "max_sources": 100000},
     "metrics": {"bind": "127.0.0.1", "port": 9100}},
    {"channel_layer": {"backend": "channels_redis.core.RedisChannelLayer",
                       "config": {"hosts": ["redis://127.0.0.1:6379/0"]}},
     "listeners": [{"name": "x", "type": "plain", "bind": "lo", "port": 53}]},
]


def _paths(value, path=()):
    """Every key path inside a document, the root included."""
    yield path
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, inner in items:
        yield from _paths(inner, (*path, key))


@st.composite
def mutated(draw):
    """A valid document with a few random edits: values replaced, keys dropped or added, items repeated."""
    document = yaml.safe_load(yaml.safe_dump(draw(st.sampled_from(VALID))))
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(list(_paths(document))))
        parent, target = _at(document, path[:-1]), path[-1] if path else None
        action = draw(st.sampled_from(["replace", "drop", "add", "repeat"]))
        if not path:
            document = draw(values) if action == "replace" else document
        elif action == "replace":
            parent[target] = draw(values)
        elif action == "drop":
            del parent[target]
        elif action == "add" and isinstance(parent[target], dict):
            parent[target][draw(keys)] = draw(values)
        elif action == "repeat" and isinstance(parent, list):
            parent.append(parent[target])
    return document


def _at(document, path):
    for key in path:
        document = document[key]
    return document


def dump(document):
    """YAML text for a document (mixed key types, so unsorted)."""
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True)


config_texts = (documents.map(dump) | mutated().map(dump) | st.text(max_size=300)
                | st.sampled_from(["", "---\n...\n", "[", "{a: 1", "listeners: &a [*a]", "a: !!python/name:os.system",
                                   "listeners:\n- name: x\n  name: y\n", "\ufeffapplication: a:b", "%YAML 1.1\n"]))
config_files = config_texts.map(lambda text: text.encode("utf-8")) | st.binary(max_size=300)



@pytest.fixture(scope="module")
def config_path(tmp_path_factory):
    """One file rewritten by every example (one directory ends up on sys.path, not one per example)."""
    return str(tmp_path_factory.mktemp("properties") / "gateway.yaml")


def assert_problem_lines(lines, path):
    """Each line names the file first (warnings after "warning: "), and none is a traceback."""
    for line in lines:
        assert line.startswith(path) or line.startswith(f"warning: {path}"), line
        assert "Traceback" not in line, line


@FAST
@given(content=config_files)
def test_load_config_returns_problems_never_raises(config_path, content):
    """load_config returns a config or one-line problems naming the file, for any file content."""
    Path(config_path).write_bytes(content)
    config, problems = load_config(config_path)
    assert all(isinstance(problem, Problem) for problem in problems)
    assert (config is None) == bool(errors(problems))
    lines = [str(problem) for problem in problems]
    assert all(len(line.splitlines()) == 1 for line in lines), lines
    assert_problem_lines(lines, config_path)


@pytest.mark.parametrize("text, line", [
    ("listeners:\n- {type: []}\n", "listeners[0].type: expected a string, got a list"),
    ('? " \\N"\n: null\n', ":  \\x85: unknown key"),
    ('"a\\nb": 1\n', ": a\\nb: unknown key"),
], ids=["unhashable-type", "next-line-key", "newline-key"])
def test_found_by_the_properties(config_path, text, line):
    """Inputs these properties found: an unhashable listener type is a problem, and every problem is one line."""
    Path(config_path).write_text(text)
    _, problems = load_config(config_path)
    lines = [str(problem) for problem in problems]
    assert any(line in shown for shown in lines), lines
    assert all(len(shown.splitlines()) == 1 for shown in lines), lines


def run_check(path):
    """`udpgateway check -c path` in process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = cli_main(["check", "-c", path])
        except SystemExit as exc:
            status = exc.code
    return status, out.getvalue(), err.getvalue()


@FAST
@given(content=config_files)
def test_check_exits_0_or_2_with_problem_lines(config_path, content):
    """`udpgateway check` exits 0 with a summary or 2 with only problem lines on stderr, for any file."""
    Path(config_path).write_bytes(content)
    status, out, err = run_check(config_path)
    assert status in (0, 2), (status, out, err)
    assert_problem_lines(err.splitlines(), config_path)
    if status == 2:
        assert err.strip() and not out
    else:
        assert all(line.startswith("warning: ") for line in err.splitlines())


@settings(max_examples=4, deadline=None, database=None)
@given(content=config_files)
def test_real_check_command_never_shows_a_traceback(tmp_path_factory, content):
    """The real `udpgateway check` subprocess exits 0 or 2, problems on stderr, never a traceback."""
    path = tmp_path_factory.mktemp("check") / "gateway.yaml"
    path.write_bytes(content)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([str(BIN / "udpgateway"), "check", "-c", str(path)], capture_output=True, text=True,
                          timeout=60, env=env, cwd=str(path.parent))
    assert done.returncode in (0, 2), done.stderr
    assert "Traceback" not in done.stderr
    assert_problem_lines(done.stderr.splitlines(), str(path))


# -- replies ----------------------------------------------------------------

REASONS = {"bad_message", "too_large"}
data_values = (st.binary(max_size=64)
               | st.integers(0, 70000).map(lambda n: b"\x00" * n)
               | st.sampled_from([65507, 65508, 65527, 65528]).map(lambda n: b"x" * n)
               | st.binary(max_size=16).map(bytearray) | st.binary(max_size=16).map(memoryview)
               | scalars | st.lists(st.integers(0, 255), max_size=4))
multicast_values = st.booleans() | scalars | st.just([True])


@st.composite
def replies(draw):
    """Arbitrary messages: mostly udp.send-like dicts with odd fields, sometimes anything at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(values)
    message = {}
    if draw(st.integers(0, 5)):
        odd = st.sampled_from(["udp.receive", "udp.send ", "UDP.SEND", ""]) | scalars
        message["type"] = "udp.send" if draw(st.integers(0, 3)) else draw(odd)
    if draw(st.integers(0, 5)):
        message["data"] = draw(st.binary(max_size=1400)) if draw(st.integers(0, 2)) else draw(data_values)
    if draw(st.integers(0, 3)) == 0:
        message["multicast"] = draw(multicast_values)
    for key in draw(st.lists(keys, max_size=2)):
        message[key] = draw(values)
    return message


@FAST
@given(message=replies(), version=st.sampled_from([4, 6]))
def test_validate_send_returns_bytes_or_a_named_drop(message, version):
    """validate_send gives (bytes within the datagram limit, bool) or BadReply with a known counter reason."""
    try:
        data, multicast = validate_send(message, version=version)
    except BadReply as exc:
        assert exc.reason in REASONS
        return
    assert type(data) is bytes and len(data) <= MAX_DATAGRAM[version]
    assert type(multicast) is bool


class Channels:
    """Keeps the reply channel of each datagram it receives (the application of the pump property)."""

    seen = None

    @classmethod
    async def application(cls, scope, receive, send):
        message = await receive()
        cls.seen.put_nowait(message["reply_channel"])


@aio
async def test_pump_sends_or_counts_any_message(gateway):
    """Any message on a live reply channel, an unknown one or a send_channel is sent, or dropped and counted."""
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.settimeout(2)
    Channels.seen = asyncio.Queue()
    try:
        yaml_text = (
            "application: examples.echo:application\nlisteners:\n"
            "  - {name: p, type: plain, bind: 127.0.0.1, port: 0, amplification: null}\n"
            "  - {name: c, type: connected, bind: 127.0.0.1, port: 0, send_channel: c.out,\n"
            f"     remote: {{host: 127.0.0.1, port: {sink.getsockname()[1]}}}}}\n"
        )
        service = await gateway(yaml_text, app=Channels.application)
        sink.sendto(b"hello", service.listeners["p"].addresses()[0])
        reply_channel = await asyncio.wait_for(Channels.seen.get(), 5)
        prefix = reply_channel[: reply_channel.index("!") + 1]
        others = st.sampled_from([prefix + "unknown", prefix, "udp.receive"]) | st.text(max_size=120)
        channels = st.integers(0, 5).flatmap(
            lambda n: st.just(reply_channel) if n < 3 else st.just("c.out") if n < 5 else others)
        _pump_property(service, sink, channels, reply_channel)
    finally:
        sink.close()


def _pump_property(service, sink, channels, reply_channel):
    seen = set()

    @settings(max_examples=300, deadline=None, database=None, print_blob=True)
    @given(channel=channels, message=replies())
    @example(channel=reply_channel, message={"type": "udp.send", "data": b"x" * 65507})
    @example(channel=reply_channel, message={"type": "udp.send", "data": b"x" * 65508})
    @example(channel=reply_channel, message={"type": "udp.send", "data": b"x", "multicast": True})
    @example(channel="c.out", message={"type": "udp.send", "data": b""})
    @example(channel=reply_channel + "x", message={"type": "udp.send", "data": b"x"})
    def handled(channel, message):
        before = service.counters.snapshot()
        service.pump.handle(channel, message)
        moved = {k: v - before.get(k, 0) for k, v in service.counters.snapshot().items() if v != before.get(k, 0)}
        assert len(moved) == 1 and list(moved.values()) == [1], moved
        (name,) = moved
        seen.add(name)
        assert name == "replied" or name.startswith("dropped_"), moved
        if name == "replied":
            assert sink.recv(65535) == bytes(message["data"])

    handled()
    assert {"replied", "dropped_too_large", "dropped_bad_message", "dropped_unknown_token"} <= seen, seen
