"""Shared by the Redis tests: the worker application, config files, and log checks for real processes."""

import asyncio
import json
import os
import re
from pathlib import Path

from gateway.consumer import UDPConsumer
from tests.processes import GatewayProcess, WorkerProcess

APPLICATION = "tests.scaleout:application"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
REDIS_BACKEND = "channels_redis.core.RedisChannelLayer"
BATCHING_BACKEND = "gateway.layers.batching.BatchingRedisChannelLayer"
# The sorted-set layers every Redis topology and fault runs on (the core_backend fixture picks one).
CORE_BACKENDS = {"stock": REDIS_BACKEND, "batching": BATCHING_BACKEND}
# What write_config names by default: the core_backend fixture's choice, else stock channels_redis.
DEFAULT_BACKEND = "${CHANNEL_LAYER_BACKEND:-" + REDIS_BACKEND + "}"
PUBSUB_BACKEND = "channels_redis.pubsub.RedisPubSubChannelLayer"
# Lines that must never appear in a process's output: crashes and leaked connections or tasks.
# As examples/redis.yaml: room for bursts in the queues that carry datagrams (default capacity 100).
BURST_CAPACITY = '    channel_capacity: {"udp.receive": 10000, "udp.send.*": 10000}\n'
BAD_LOG_TEXT = ("Traceback", "Unclosed", "Task was destroyed", "never retrieved", "Unhandled error")


HOLD_LINE = "holding"
HOLD_BOUND = 300.0  # seconds a held call waits for its release file at most


class Tagged(UDPConsumer):
    """Replies `<data> <worker pid> <gateway id>`.

    With UDPGATEWAY_TEST_HOLD=PATH each call first prints "holding <data>" and waits
    until the file PATH exists: a test sees how many calls a worker has in progress
    and decides when they finish, instead of guessing with delays.
    """

    async def udp_receive(self, message):
        release = os.environ.get("UDPGATEWAY_TEST_HOLD")
        if release:
            print(HOLD_LINE, message["data"].decode(errors="replace"), flush=True)
            await _until_exists(release)
        gateway = message["reply_channel"].partition("!")[0].removeprefix("udp.send.")
        await self.reply(message, b" ".join([message["data"], str(os.getpid()).encode(), gateway.encode()]))


async def _until_exists(path):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HOLD_BOUND
    while not os.path.exists(path) and loop.time() < deadline:
        await asyncio.sleep(0.02)


application = Tagged.as_asgi()


def held(process):
    """The payloads a worker running Tagged with UDPGATEWAY_TEST_HOLD has taken (and holds, until released)."""
    process.count(HOLD_LINE)  # reads what it printed so far
    return [match[1].encode() for line in process.lines if (match := re.search(HOLD_LINE + r" (\S+)", line))]


def queued(redis, channel=b"udp.receive"):
    """How many messages wait in a channels_redis channel (default prefix "asgi")."""
    return int(redis.command(b"ZCARD", b"asgi" + channel)[1:])


# Children show ResourceWarnings (unclosed sockets and pools), which Python hides by default.
CHILD_ENV = {"PYTHONWARNINGS": "always::ResourceWarning", "PYTHONDONTWRITEBYTECODE": "1"}


def gateway_process(path, env=None):
    """`twistd -n udpgateway -c path`, warnings shown."""
    return GatewayProcess(path, env={**CHILD_ENV, **(env or {})})


def worker_process(path, env=None, application=APPLICATION):
    """`udpgateway worker -c path` running the Tagged application, warnings shown."""
    return WorkerProcess(path, env={**CHILD_ENV, "UDPGATEWAY_APPLICATION": application, **(env or {})})


def tag(reply):
    """(data, worker pid, gateway id) of a Tagged reply."""
    data, pid, gateway = reply.data.split()
    return data, int(pid), gateway.decode()


def write_config(directory, redis_url, *, port=0, backend=DEFAULT_BACKEND, reuse_port=False, application=None,
                 layer_config=BURST_CAPACITY, limits=""):
    """A gateway.yaml for a Redis-backed gateway and its workers, as examples/redis.yaml does it.

    `redis_url` is one host (a URL, or channels_redis' dict form) or a list of them (a ring of hosts).
    """
    urls = [redis_url] if isinstance(redis_url, (str, dict)) else list(redis_url)  # several: a ring of hosts
    text = f"""\
channel_layer:
  backend: {backend}
  config:
    hosts: [{", ".join(json.dumps(url) for url in urls)}]
{layer_config}"""
    # Gateways run without an application; workers get theirs from UDPGATEWAY_APPLICATION.
    text += f"application: {application or '${UDPGATEWAY_APPLICATION:-}'}\n"
    text += f"""\
listeners:
  - name: echo
    type: plain
    bind: 127.0.0.1
    port: {port}
    reuse_port: {'true' if reuse_port else 'false'}
    amplification: null  # Tagged adds its pid and gateway id: many times the tests' short datagrams
"""
    if limits:
        text += "limits:\n" + limits
    path = Path(directory) / f"gateway-{port}-{len(list(Path(directory).glob('gateway-*.yaml')))}.yaml"
    path.write_text(text)
    return str(path)


def example_config(directory):
    """examples/redis.yaml copied next to the test's other files (processes get a cwd beside their config)."""
    path = Path(directory) / "redis.yaml"
    text = (EXAMPLES / "redis.yaml").read_text()
    # The tests' workers run Tagged, not the echo, which adds its pid and gateway id to each answer.
    assert "\n    amplification: 1 " in text
    path.write_text(text.replace("\n    amplification: 1 ", "\n    amplification: null "))
    return str(path)


def gateway_id(process):
    """The gateway id a running gateway process logged at startup."""
    line = process.wait_for("reply channels udp.send.")
    return re.search(r"reply channels udp\.send\.([^!\s]+)!", line)[1]


def counters(process):
    """The last counters summary of a stopped process, as {name: value}."""
    lines = [line for line in process.lines if "counters:" in line]
    if not lines:
        return {}
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", lines[-1].split("counters:", 1)[1])}


def assert_clean_log(*processes):
    """No traceback, unclosed connection or destroyed task in any of the processes' output."""
    for process in processes:
        text = "\n".join(process.lines + process.errors)
        bad = [marker for marker in BAD_LOG_TEXT if marker in text]
        assert not bad, f"{process.argv}: {bad} in its output:\n{process.log_text()}"
