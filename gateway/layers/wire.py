"""A Redis connection of our own for one caller at a time: commands packed by hand, scripts by SHA, one retry.

redis-py's per-command path (pool lock, argument encoding, observability
hooks) costs more CPU than the Redis work of a whole batch. The batching
layer keeps at most one call in flight per host for its sends and per
receive key, so each gets a dedicated connection made from the host's pool
settings (address, password, TLS, timeouts) and released on close.
"""

import hashlib

from redis.asyncio.connection import ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError


def pack(*args):
    """One RESP command from bytes, str, int and float arguments."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode()
        elif isinstance(arg, int):
            arg = b"%d" % arg
        elif isinstance(arg, float):
            arg = repr(arg).encode()
        parts.append(b"$%d\r\n%b\r\n" % (len(arg), arg))
    return b"".join(parts)


class Script:
    """A Lua script called by EVALSHA, loaded on the server the first time it is missing."""

    def __init__(self, text):
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()


class Wire:
    """One connection to one Redis host, used by one caller at a time (no pool, no lock)."""

    def __init__(self, pool):
        self._connection = pool.make_connection()

    async def call(self, script, keys, args, read_timeout=None):
        """The reply of `script` on `keys` and `args`; reconnects and retries once after a dropped connection."""
        return await self._retried(pack(b"EVALSHA", script.sha, len(keys), *keys, *args), read_timeout, script)

    async def command(self, *args, read_timeout=None):
        """The reply of one command, retried once after a dropped connection."""
        return await self._retried(pack(*args), read_timeout, None)

    async def _retried(self, command, read_timeout, script):
        try:
            return await self._execute(command, script, read_timeout)
        except (RedisConnectionError, RedisTimeoutError, OSError):
            await self.close()  # after a Redis restart the first command on an old connection fails
            return await self._execute(command, script, read_timeout)

    async def _execute(self, command, script, read_timeout):
        try:
            reply = await self._round_trip(command, read_timeout)
        except NoScriptError:
            if script is None:
                raise
            await self._round_trip(pack(b"SCRIPT", b"LOAD", script.text), None)
            reply = await self._round_trip(command, read_timeout)
        return reply

    async def _round_trip(self, command, read_timeout):
        connection = self._connection
        if not connection.is_connected:
            await connection.connect()
        try:
            await connection.send_packed_command(command, check_health=False)
            return await connection.read_response(timeout=read_timeout)
        except ResponseError:
            raise
        except BaseException:
            # Cancelled or failed with a reply pending: that reply must not answer the next command.
            await connection.disconnect(nowait=True)
            raise

    async def close(self):
        await self._connection.disconnect(nowait=True)


class PoolWire:
    """The same calls through a redis-py client and its pool, for pools a Wire does not fit (sentinel)."""

    def __init__(self, client):
        self.client = client
        self._scripts = {}

    async def call(self, script, keys, args, read_timeout=None):
        registered = self._scripts.get(script.sha)
        if registered is None:
            registered = self._scripts[script.sha] = self.client.register_script(script.text)
        return await registered(keys=keys, args=args)

    async def command(self, *args, read_timeout=None):
        return await self.client.execute_command(*args)

    async def close(self):
        """Nothing of its own: the layer closes its pools."""


def wire_for(client):
    """A Wire on a connection of its own where the client's pool allows, else a PoolWire."""
    pool = client.connection_pool
    return Wire(pool) if type(pool) is ConnectionPool else PoolWire(client)
