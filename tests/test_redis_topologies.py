"""Scaling out over a real redis-server: gateways, `udpgateway worker` processes and Django's runworker."""

import shutil
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from tests import apps
from tests.processes import UDPGATEWAY, Process, child_env
from tests.scaleout import (
    CHILD_ENV,
    EXAMPLES,
    BATCHING_BACKEND,
    PUBSUB_BACKEND,
    REDIS_BACKEND,
    assert_clean_log,
    counters,
    example_config,
    gateway_id,
    gateway_process,
    held,
    queued,
    tag,
    worker_process,
    write_config,
)
from tests.redisserver import AuthRedisServer, MutualTLSRedisServer, start_redis_server
from tests.support import DEADLINE, aio, eventually, listener_address, skip_or_fail, stop, wait_until
from tests.udpclients import Clients

pytestmark = pytest.mark.redis


@pytest.fixture
def redis(shared_redis):
    shared_redis.flushall()
    return shared_redis


def start_gateway(processes, path, env=None):
    gateway = processes.start(gateway_process(path, env))
    return gateway, ("127.0.0.1", gateway.port("echo")), gateway_id(gateway)


def start_holding(tmp_path, processes, redis, max_concurrency):
    """A gateway and a worker with `max_concurrency` whose calls each wait until the file `release` exists.

    Returns (config path, gateway, its address, worker, release).
    """
    path = write_config(tmp_path, redis.url, limits=f"  max_concurrency: {max_concurrency}\n")
    gateway, address, _ = start_gateway(processes, path)
    release = tmp_path / "release"
    worker = processes.start(worker_process(path, env={"UDPGATEWAY_TEST_HOLD": str(release)}))
    return path, gateway, address, worker, release


def stop_all(*started):
    """Stop each process by PID; every one must exit 0 with a clean log."""
    for process in started:
        assert process.stop() == 0, process.log_text()
    assert_clean_log(*started)


def test_shipped_example_gateway_and_two_workers_share_the_work(tmp_path, processes, redis, core_backend):
    """examples/redis.yaml: a gateway without application and two workers answer every datagram, both working."""
    path = example_config(tmp_path)
    env = {"REDIS_URL": redis.url, "UDPGATEWAY_PORT": "0"}
    gateway, address, gid = start_gateway(processes, path, env)
    workers = [processes.start(worker_process(path, env=env)) for _ in range(2)]
    with Clients(20) as clients:
        clients.until_answered(address)
        sent = clients.burst(400, address)
        replies = clients.collect(sent)
    answered = {tag(r)[0] for r in replies}
    assert answered == set(sent)
    assert all(r.source == address for r in replies)
    by_worker = Counter(tag(r)[1] for r in replies)
    assert set(by_worker) == {w.pid for w in workers}, by_worker
    assert {tag(r)[2] for r in replies} == {gid}
    stop_all(gateway, *workers)


def test_two_gateways_each_reply_leaves_through_its_receiver(tmp_path, processes, redis, core_backend):
    """Two gateways on different ports share one Redis and two workers; each reply leaves the gateway asked."""
    gateways = [start_gateway(processes, write_config(tmp_path, redis.url)) for _ in range(2)]
    workers = [processes.start(worker_process(gateways[0][0].argv[-1])) for _ in range(2)]
    assert gateways[0][1] != gateways[1][1] and gateways[0][2] != gateways[1][2]
    with Clients(10) as clients:
        for _, address, _ in gateways:
            clients.until_answered(address)
        sent = []
        for n, (_, address, _) in enumerate(gateways):
            sent += clients.burst(200, address, prefix=b"g%d-" % n)
        replies = clients.collect(sent)
    assert {tag(r)[0] for r in replies} == set(sent)
    for reply in replies:
        data, _pid, gid = tag(reply)
        n = int(data[1:2])
        assert reply.source == gateways[n][1], (reply, gateways[n][1])
        assert gid == gateways[n][2], reply
    assert len({tag(r)[1] for r in replies}) == 2
    stop_all(*(g for g, _, _ in gateways), *workers)


def test_reuse_port_two_gateways_share_one_port(tmp_path, processes, redis, core_backend):
    """With reuse_port two gateways share a port; each answers the clients the kernel gave it, from that port."""
    first, address, first_id = start_gateway(processes, write_config(tmp_path, redis.url, reuse_port=True))
    second, second_address, second_id = start_gateway(
        processes, write_config(tmp_path, redis.url, port=address[1], reuse_port=True))
    assert second_address == address
    worker = processes.start(worker_process(first.argv[-1]))
    with Clients(40) as clients:
        clients.until_answered(address)
        sent = clients.burst(400, address)
        replies = clients.collect(sent)
        clients.answered(clients.probes)  # every probe is answered in the end: the gateways' counters include them
    assert {tag(r)[0] for r in replies} == set(sent)
    assert all(r.source == address for r in replies)
    # The kernel picks a socket per client address: each client talks to one gateway only.
    per_client = {}
    for reply in replies:
        per_client.setdefault(reply.client, set()).add(tag(reply)[2])
    assert all(len(ids) == 1 for ids in per_client.values()), per_client
    answered_by = Counter(tag(r)[2] for r in replies if not r.data.startswith(b"probe"))
    assert set(answered_by) == {first_id, second_id}, answered_by
    stop_all(first, second, worker)
    # Each gateway wrote exactly the replies carrying its own id (one worker: no duplicates).
    for gateway, gid in ((first, first_id), (second, second_id)):
        mine = sum(1 for r in clients.replies if tag(r)[2] == gid)  # probes included
        assert counters(gateway)["replied"] == mine == counters(gateway)["received"], gateway.log_text()


def test_django_runworker_answers_through_the_gateway(tmp_path, processes, redis, core_backend):
    """examples/django_worker: `manage.py runworker udp.receive` with an unmodified AsyncConsumer answers."""
    path = example_config(tmp_path)
    env = {"REDIS_URL": redis.url, "UDPGATEWAY_PORT": "0"}
    gateway, address, _gid = start_gateway(processes, path, env)
    project = EXAMPLES / "django_worker"
    runworker = processes.start(
        Process([sys.executable, "manage.py", "runworker", "udp.receive"], cwd=str(project),
                env={**CHILD_ENV, **env}), ready=False)
    with Clients(10) as clients:
        clients.until_answered(address)
        sent = clients.burst(100, address)
        replies = clients.collect(sent)
    assert {r.data for r in replies} >= set(sent)
    assert all(r.source == address for r in replies)
    assert runworker.proc.poll() is None
    runworker.send_signal(signal.SIGINT)  # what Ctrl-C does; runworker has no SIGTERM handler of its own
    assert runworker.wait_exit(DEADLINE) == 0, runworker.log_text()
    stop_all(gateway)
    assert_clean_log(runworker)


@pytest.mark.parametrize("hosts", [2, 3])
def test_several_redis_hosts_every_reply_arrives(tmp_path, processes, redis_trio, core_backend, hosts):
    """With 2 and 3 Redis hosts every datagram is answered, by a worker on each layer (stock and ours mixed).

    channels_redis puts `udp.send.<id>!<token>` on the host of the whole name,
    but its receive_single("udp.send.<id>!") reads only the prefix's host.
    """
    for server in redis_trio:
        server.flushall()
    path = write_config(tmp_path, [server.url for server in redis_trio[:hosts]])
    gateway, address, gid = start_gateway(processes, path)
    workers = [processes.start(worker_process(path, env={"CHANNEL_LAYER_BACKEND": backend}))
               for backend in (REDIS_BACKEND, BATCHING_BACKEND)]
    with Clients(20) as clients:
        clients.until_answered(address)
        sent = clients.burst(300, address)
        replies = clients.collect(sent)
    assert {tag(r)[0] for r in replies} == set(sent)
    assert {tag(r)[2] for r in replies} == {gid}
    assert set(Counter(tag(r)[1] for r in replies)) == {w.pid for w in workers}
    stop_all(gateway, *workers)


@pytest.mark.parametrize("kind", ["tls-client-cert", "acl-user"])
def test_gateway_and_worker_log_in_with_a_client_certificate_or_an_acl_user(tmp_path, processes, core_backend, kind):
    """Against a Redis that asks for a client certificate, or one that only lets an ACL user in, a gateway and
    a worker configured with the credentials answer every datagram, stop cleanly and log no password."""
    if kind.startswith("tls") and not shutil.which("openssl"):
        skip_or_fail("the openssl CLI is not installed (apt-get install openssl)")
    server = start_redis_server(kind={"tls-client-cert": MutualTLSRedisServer, "acl-user": AuthRedisServer}[kind])
    try:
        host = {"address": server.url, **server.client_options} if server.client_options else server.url
        path = write_config(tmp_path, host, backend=core_backend)
        gateway, address, _ = start_gateway(processes, path)
        worker = processes.start(worker_process(path))
        with Clients(10) as clients:
            clients.until_answered(address)
            sent = clients.burst(100, address)
            replies = clients.collect(sent)
        assert {tag(r)[0] for r in replies} == set(sent)
        stop_all(gateway, worker)
        if kind == "acl-user":  # the URL holds the password: no log line shows it
            for process in (gateway, worker):
                process.log_text()  # reads what is left of its output
                assert not [line for line in process.lines + process.errors if server.password in line]
    finally:
        server.close()


def test_worker_checks_only_the_schema(tmp_path, processes, redis):
    """A worker starts with listeners on interfaces this host lacks (workers run elsewhere); check refuses them."""
    path = tmp_path / "elsewhere.yaml"
    path.write_text(f"""\
channel_layer:
  backend: {REDIS_BACKEND}
  config: {{hosts: ["{redis.url}"]}}
application: ${{UDPGATEWAY_APPLICATION:-}}
listeners:
  - {{name: lan, type: plain, bind: nosuchif0, port: 5683}}
  - {{name: ssdp, type: multicast, port: 1900, groups: [239.255.255.250], interfaces: [nosuchif1]}}
""")
    worker = processes.start(worker_process(str(path)))
    assert "udp.receive" in worker.wait_for("udpgateway worker consuming")
    done = subprocess.run([str(UDPGATEWAY), "check", "-c", str(path)], capture_output=True, text=True,
                          env=child_env(), timeout=60)
    assert done.returncode == 2 and "nosuchif0" in done.stderr
    stop_all(worker)


def test_worker_at_max_concurrency_stops_receiving(tmp_path, processes, redis, core_backend):
    """A worker busy with max_concurrency calls receives no more: the other worker answers all the rest."""
    path, gateway, address, busy, release = start_holding(tmp_path, processes, redis, 2)
    with Clients(1) as clients:
        # Only the busy worker runs: it takes two messages and holds them, the rest wait in Redis.
        sent = clients.burst(6, address)
        wait_until(lambda: len(held(busy)) == 2 and queued(redis) == 4, what="2 calls held, 4 messages queued")
        other = processes.start(worker_process(path))
        early = clients.collect(set(sent) - set(held(busy)))
        assert len(held(busy)) == 2  # it took nothing more while the other worker answered four
        release.touch()
        late = clients.collect(held(busy))
    assert Counter(tag(r)[1] for r in early) == {other.pid: 4}, early
    assert Counter(tag(r)[1] for r in late) == {busy.pid: 2}, late
    assert {tag(r)[0] for r in early + late} == set(sent)
    stop_all(gateway, busy, other)


def test_worker_hung_calls_time_out_and_free_their_slots(tmp_path, processes, redis, core_backend):
    """A worker whose max_concurrency 2 slots hold calls that never return cancels them after app_timeout,
    counts app_timeouts, and then answers the datagram that waited in Redis meanwhile."""
    path = write_config(tmp_path, redis.url, limits="  max_concurrency: 2\n  app_timeout: 0.5\n")
    gateway, address, _ = start_gateway(processes, path)
    worker = processes.start(worker_process(path, application="tests.apps:hanging"))
    with Clients(1) as clients:
        clients.send(0, b"hang1", address)
        clients.send(0, b"hang2", address)
        worker.wait_for("hanging on hang1")
        worker.wait_for("hanging on hang2")
        reply = clients.exchange(b"waited", address, timeout=15)  # in Redis until a slot frees
    assert reply.data == b"waited" and worker.count("ran longer than app_timeout (0.5s): cancelled") >= 1
    stop_all(gateway, worker)
    counts = counters(worker)
    assert counts.get("app_timeouts") == 2 and "app_errors" not in counts, counts


def test_worker_runs_several_messages_at_once(tmp_path, processes, redis, core_backend):
    """One worker runs up to max_concurrency calls concurrently, not one after another."""
    _, gateway, address, worker, release = start_holding(tmp_path, processes, redis, 50)
    with Clients(10) as clients:
        sent = clients.burst(40, address)
        # None can finish before the release: 40 held at once are 40 calls running concurrently.
        wait_until(lambda: len(held(worker)) == 40, what="40 calls held at once")
        release.touch()
        replies = clients.collect(sent)
    assert {tag(r)[0] for r in replies} == set(sent)
    assert sorted(held(worker)) == sorted(sent)
    stop_all(gateway, worker)


def test_idle_gateway_and_worker_still_answer(tmp_path, processes, redis, core_backend):
    """After more than 6 idle seconds (redis-py 8's 5 s socket timeout) a datagram is answered at once, no errors."""
    path = write_config(tmp_path, redis.url)
    gateway, address, _ = start_gateway(processes, path)
    worker = processes.start(worker_process(path))
    with Clients(1) as clients:
        clients.until_answered(address)
        connections = int(redis.info()["total_connections_received"])
        time.sleep(6.5)  # idle time is what this test is about, not a wait for an event
        # A 5 s socket timeout would have broken each blocking receive, and a retry reconnected it.
        assert int(redis.info()["total_connections_received"]) == connections + 1  # this INFO's own
        clients.exchange(b"after-idle", address)
    for process in (gateway, worker):
        assert not any("failed" in line for line in process.lines), process.log_text()
    stop_all(gateway, worker)
    assert "layer_errors" not in counters(gateway) and "layer_errors" not in counters(worker)


def test_pubsub_layer_replies_and_warns(tmp_path, processes, redis):
    """RedisPubSubChannelLayer: replies work through per-token receives; every worker answers every datagram,
    the first datagrams of new clients too (their reply channels are subscribed before the datagrams go out)."""
    path = write_config(tmp_path, redis.url, backend=PUBSUB_BACKEND)
    gateway, address, _ = start_gateway(processes, path)
    gateway.wait_for("one receive per live reply channel (costs more per client)")
    workers = [processes.start(worker_process(path)) for _ in range(2)]
    for worker in workers:
        worker.wait_for("delivers each message to every worker")
    with Clients(1) as probe:  # until a probe is answered by both workers: both subscribed to udp.receive
        for i in range(int(DEADLINE)):
            probe.send(0, b"both%d" % i, address)
            try:
                probe.answered([b"both%d" % i], 1.0, copies=2)
                break
            except AssertionError:
                continue  # a worker not subscribed yet
        else:
            raise AssertionError(f"no probe was answered by both workers within {DEADLINE} s")
    for round_ in range(5):  # each round: 10 clients the gateway never saw, 50 datagrams at once
        with Clients(10) as clients:
            sent = clients.burst(50, address, prefix=b"r%dm" % round_)
            clients.answered(sent, copies=2)
            clients.flush(address, copies=2)  # a third copy of any datagram would have come by now
            replies = [r for r in clients.replies if tag(r)[0] in set(sent)]
        assert {tag(r)[0] for r in replies} == set(sent)
        per_datagram = Counter(tag(r)[0] for r in replies)
        assert set(per_datagram.values()) == {2}, per_datagram  # once per worker, as documented
        assert all(r.source == address for r in replies)
    stop_all(gateway, *workers)


@pytest.mark.parametrize("backend", [REDIS_BACKEND, BATCHING_BACKEND, PUBSUB_BACKEND])
@aio
async def test_stop_closes_every_redis_connection(gateway, client, redis, backend):
    """A gateway with an application over Redis closes every connection it opened when it stops."""
    text = f"""\
channel_layer:
  backend: {backend}
  config: {{hosts: ["{redis.url}"]}}
listeners:
  - {{name: echo, type: plain, bind: 127.0.0.1, port: 0}}
"""
    service = await gateway(text, app=apps.Echo.as_asgi())
    c = await client()
    address = listener_address(service, "echo")
    # The pub/sub layer subscribes udp.receive in the background: probe until it answers.
    assert (await c.until_answered(address, b"hello"))[0] == b"hello"
    assert int(redis.info(b"clients")["connected_clients"]) > 1
    await stop(service)
    # Redis notices the closed sockets a moment later; only the INFO's own connection stays.
    await eventually(lambda: redis.info(b"clients")["connected_clients"] == "1", what="one connected client")
