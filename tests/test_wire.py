"""gateway.layers.wire against a real redis-server: overlapping commands, dropped replies, reconnects, fallback."""

import asyncio

import redis.asyncio
from redis.exceptions import NoScriptError, ResponseError

from gateway.layers import wire
from tests.support import aio


def _wire(server):
    return wire.wire_for(redis.asyncio.Redis.from_url(server.url))


@aio
async def test_overlapping_commands_get_their_own_replies_and_errors(redis_server):
    """Commands written before any reply came back are answered in order, error replies raise redis-py's errors."""
    connection = _wire(redis_server)
    assert isinstance(connection, wire.Wire)
    try:
        replies = await asyncio.gather(*(connection.command(b"ECHO", b"%d" % n) for n in range(50)))
        assert replies == [b"%d" % n for n in range(50)]
        script = wire.Script("return ARGV[1]")
        assert await connection.call(script, [], [b"loaded on first use"]) == b"loaded on first use"
        try:
            await connection.command(b"EVALSHA", b"0" * 40, 0)
        except NoScriptError:
            pass
        else:
            raise AssertionError("no NoScriptError")
        try:
            await connection.command(b"NOSUCHCOMMAND")
        except ResponseError as exc:
            assert "unknown command" in str(exc).lower()
        else:
            raise AssertionError("no ResponseError")
    finally:
        await connection.close()


@aio
async def test_a_cancelled_command_closes_the_connection_and_the_next_one_reconnects(redis_server):
    """A blocking pop given up drops its connection (so it takes nothing for nobody); the next command reconnects."""
    connection = _wire(redis_server)
    try:
        blocked = asyncio.ensure_future(connection.command(b"BZPOPMIN", b"nothing", 5))
        await asyncio.sleep(0.1)
        blocked.cancel()
        await asyncio.gather(blocked, return_exceptions=True)
        assert not connection.connected
        redis_server.command(b"ZADD", b"nothing", b"1", b"m")
        assert await connection.command(b"ZCARD", b"nothing") == 1  # the pop given up took nothing
    finally:
        await connection.close()


@aio
async def test_a_restarted_redis_costs_one_retry_not_an_error(redis_server):
    """After Redis restarts, the next command reconnects and is answered."""
    connection = _wire(redis_server)
    try:
        assert await connection.command(b"PING") in (b"PONG", "PONG")
        redis_server.restart()
        assert await connection.command(b"PING") in (b"PONG", "PONG")
    finally:
        await connection.close()


def test_without_hiredis_every_host_goes_through_redis_py(redis_server, monkeypatch):
    """With hiredis missing, wire_for hands out a PoolWire (redis-py's own pool and parser)."""
    monkeypatch.setattr(wire, "hiredis", None)
    assert isinstance(_wire(redis_server), wire.PoolWire)
