"""gateway.layers.wire against a real redis-server: overlapping commands, dropped replies, reconnects, fallback."""

import asyncio

import pytest
from redis.exceptions import NoScriptError, ResponseError

from gateway.layers import wire
from tests.redisserver import wire_connection, wire_to
from tests.support import aio


@aio
async def test_overlapping_commands_get_their_own_replies_and_errors(redis_server):
    """Commands written before any reply came back are answered in order, error replies raise redis-py's errors."""
    async with wire_connection(redis_server) as connection:
        assert isinstance(connection, wire.Wire)
        replies = await asyncio.gather(*(connection.command(b"ECHO", b"%d" % n) for n in range(50)))
        assert replies == [b"%d" % n for n in range(50)]
        script = wire.Script("return ARGV[1]")
        assert await connection.call(script, [], [b"loaded on first use"]) == b"loaded on first use"
        with pytest.raises(NoScriptError):
            await connection.command(b"EVALSHA", b"0" * 40, 0)
        with pytest.raises(ResponseError, match="(?i)unknown command"):
            await connection.command(b"NOSUCHCOMMAND")


@aio
async def test_a_cancelled_command_closes_the_connection_and_the_next_one_reconnects(redis_server):
    """A blocking pop given up drops its connection (so it takes nothing for nobody); the next command reconnects."""
    async with wire_connection(redis_server) as connection:
        blocked = asyncio.ensure_future(connection.command(b"BZPOPMIN", b"nothing", 5))
        await asyncio.sleep(0.1)
        blocked.cancel()
        await asyncio.gather(blocked, return_exceptions=True)
        assert not connection.connected
        redis_server.command(b"ZADD", b"nothing", b"1", b"m")
        assert await connection.command(b"ZCARD", b"nothing") == 1  # the pop given up took nothing


def test_without_hiredis_every_host_goes_through_redis_py(redis_server, monkeypatch):
    """With hiredis missing, wire_for hands out a PoolWire (redis-py's own pool and parser)."""
    monkeypatch.setattr(wire, "hiredis", None)
    assert isinstance(wire_to(redis_server), wire.PoolWire)
