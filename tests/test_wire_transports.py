"""The Wire and BatchingRedisChannelLayer over TCP, a unix socket, TLS (with and without client certificates)
and an ACL user's password, against real redis-servers."""

import asyncio
import os
import shutil

import pytest
from redis.exceptions import AuthenticationError, RedisError

from gateway.layers import make_layer, wire
from tests.redisserver import (AuthRedisServer, MutualTLSRedisServer, RedisServer, TLSRedisServer, UnixRedisServer,
                               start_redis_server, wire_connection)
from tests.support import DEADLINE, aio, skip_or_fail

BATCHING = "gateway.layers.batching.BatchingRedisChannelLayer"


KINDS = {"tcp": RedisServer, "unix": UnixRedisServer, "tls": TLSRedisServer, "tls-client-cert": MutualTLSRedisServer,
         "acl-user": AuthRedisServer}


@pytest.fixture(params=list(KINDS))
def server(request):
    """A redis-server of our own reached over TCP, a unix socket only, TLS only (a client certificate asked or not)
    or TCP for an ACL user with a password only; stopped by PID after the test."""
    if request.param.startswith("tls") and not shutil.which("openssl"):
        skip_or_fail("the openssl CLI is not installed (apt-get install openssl)")
    kinds = KINDS
    started = start_redis_server(kind=kinds[request.param])
    try:
        yield started
    finally:
        started.close()


def _host(server):
    """The server as a channels_redis host: its URL, or the dict form when the client needs options (the CA)."""
    options = server.client_options
    return {"address": server.url, **options} if options else server.url


@aio
async def test_overlapping_commands_and_a_script(server):
    """Commands written before any reply came back are answered in order; a script is loaded on first use."""
    async with wire_connection(server) as connection:
        replies = await asyncio.gather(*(connection.command(b"ECHO", b"%d" % n) for n in range(50)))
        assert replies == [b"%d" % n for n in range(50)]
        assert await connection.call(wire.Script("return ARGV[1]"), [], [b"x"]) == b"x"


@aio
async def test_a_large_value_comes_back_intact(server):
    """A 1 MiB value (many reads, many TLS records) is written and read back byte for byte."""
    value = os.urandom(1 << 20)
    async with wire_connection(server) as connection:
        assert await connection.command(b"SET", b"large", value) in (b"OK", "OK")
        assert await connection.command(b"GET", b"large") == value


@aio
async def test_a_restarted_redis_costs_one_retry_not_an_error(server):
    """After Redis is killed and started again at the same address, the next command reconnects and is answered."""
    async with wire_connection(server) as connection:
        assert await connection.command(b"PING") in (b"PONG", "PONG")
        server.restart()
        assert await connection.command(b"PING") in (b"PONG", "PONG")


@aio
async def test_the_batching_layer_sends_and_receives(server):
    """BatchingRedisChannelLayer with the server as its host: normal and process-specific channels."""
    layer = make_layer(BATCHING, {"hosts": [_host(server)]})
    try:
        assert isinstance(wire.wire_for(layer.connection(0)), wire.Wire)  # so the layer's traffic goes by Wires
        await asyncio.gather(*(layer.send("udp.receive", {"type": "t", "n": n}) for n in range(5)))
        received = [await asyncio.wait_for(layer.receive("udp.receive"), DEADLINE) for _ in range(5)]
        assert [message["n"] for message in received] == list(range(5))
        name = await layer.new_channel()
        await layer.send(name, {"type": "udp.send", "data": b"r"})
        assert await asyncio.wait_for(layer.receive(name), DEADLINE) == {"type": "udp.send", "data": b"r"}
    finally:
        await layer.close_pools()


@pytest.mark.parametrize("kind", ["acl-user", "tls-client-cert"])
@aio
async def test_a_client_without_its_credentials_is_refused_not_hung(kind):
    """A wrong password, or no client certificate where the server asks for one: the send raises redis-py's error."""
    if kind.startswith("tls") and not shutil.which("openssl"):
        skip_or_fail("the openssl CLI is not installed (apt-get install openssl)")
    server = start_redis_server(kind=KINDS[kind])
    try:
        if kind == "acl-user":
            host = server.url.replace(server.password, "not-the-password")
        else:
            host = {"address": server.url, "ssl_ca_certs": server.ca}  # no ssl_certfile / ssl_keyfile
        layer = make_layer(BATCHING, {"hosts": [host]})
        try:
            with pytest.raises((RedisError, OSError)) as refused:
                await asyncio.wait_for(layer.send("udp.receive", {"type": "t"}), DEADLINE)
            assert not isinstance(refused.value, asyncio.TimeoutError), "hung instead of refused"
            if kind == "acl-user":
                assert isinstance(refused.value, AuthenticationError), refused.value
        finally:
            await layer.close_pools()
    finally:
        server.close()
