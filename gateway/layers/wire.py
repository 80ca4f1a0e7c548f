"""A Redis connection of our own: commands packed by hand, replies parsed by hiredis straight into futures, one retry.

redis-py's per-command path (pool lock, argument encoding, a task hop per
reply, observability hooks) costs more CPU than the Redis work of a whole
batch. A Wire connects with redis-py (address, password, TLS, database,
protocol: whatever the host's pool says), then takes the connection's
transport over with a protocol of its own: a command is one write, and
each reply settles the future waiting for it from data_received, in order,
with no task in between. Several commands may be in flight on one Wire.
"""

import asyncio
import hashlib
from collections import deque

from redis.asyncio.connection import ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

try:
    import hiredis
except ImportError:  # the `redis` extra installs it; without it every host gets a PoolWire
    hiredis = None


def pack(*args):
    """One RESP command from bytes, str, int and float arguments (a Wire exists only where hiredis is installed)."""
    return hiredis.pack_command(args)


class Script:
    """A Lua script called by EVALSHA, loaded on the server the first time it is missing."""

    def __init__(self, text):
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()


def _error(reply):
    """The redis-py exception for an error reply."""
    text = str(reply)
    return NoScriptError(text) if text.startswith("NOSCRIPT") else ResponseError(text)


class _Replies(asyncio.Protocol):
    """The reading side of one connection: each reply settles the oldest future waiting, in order."""

    def __init__(self, transport):
        self.transport = transport
        self.reader = hiredis.Reader()  # error replies come back as hiredis.ReplyError values
        self.waiting = deque()          # one future per command written, oldest first
        self.lost = None                # the exception that ended the connection
        self.writer = None              # the StreamWriter redis-py connected with (see Wire._connect)

    def request(self, command):
        """Write one command; the future its reply will settle (a cancelled one just drops the reply)."""
        future = asyncio.get_running_loop().create_future()
        if self.lost is not None:
            future.set_exception(self.lost)
            return future
        self.waiting.append(future)
        self.transport.write(command)
        return future

    def data_received(self, data):
        self.reader.feed(data)
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError as exc:
                self.close(RedisConnectionError(f"Redis protocol error: {exc}"))
                return
            if reply is False:
                return
            if not self.waiting:
                self.close(RedisConnectionError("Redis sent a reply nobody asked for"))
                return
            future = self.waiting.popleft()
            if future.done():  # its caller gave up (cancelled): the reply is dropped, the order kept
                continue
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(_error(reply))
            else:
                future.set_result(reply)

    def eof_received(self):
        return False  # close the transport: connection_lost follows

    def connection_lost(self, exc):
        self.close(RedisConnectionError(f"Connection to Redis lost: {exc}" if exc else "Connection closed by server."))

    def close(self, reason):
        """Fail every command in flight with `reason` and close; later requests fail at once."""
        if self.lost is None:
            self.lost = reason
            self.transport.close()
        waiting, self.waiting = self.waiting, deque()
        for future in waiting:
            if not future.done():
                future.set_exception(reason)


class Wire:
    """One connection to one Redis host; commands may overlap, replies come back in order."""

    def __init__(self, pool):
        self._pool = pool
        self._replies = None  # _Replies of the live connection
        self._connecting = None

    @property
    def connected(self):
        return self._replies is not None and self._replies.lost is None

    def request(self, script, keys, args):
        """The future of `script`'s reply, written now on the live connection; None when not connected."""
        if not self.connected:
            return None
        return self._replies.request(pack(b"EVALSHA", script.sha, len(keys), *keys, *args))

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
        replies = await self._connected()
        future = replies.request(command)
        timer = None
        if read_timeout is not None:
            timer = asyncio.get_running_loop().call_later(read_timeout, self._timed_out, replies, future)
        try:
            return await future
        except asyncio.CancelledError:
            # A caller gone with a reply pending: a blocking pop must not take messages for nobody.
            replies.close(RedisConnectionError("command cancelled"))
            raise
        finally:
            if timer is not None:
                timer.cancel()

    @staticmethod
    def _timed_out(replies, future):
        if not future.done():
            replies.close(RedisTimeoutError("Timeout reading from Redis"))

    async def _connected(self):
        """The live connection's _Replies, connecting first (one connect at a time) if there is none."""
        while not self.connected:
            if self._connecting is None:
                self._connecting = asyncio.ensure_future(self._connect())
            connecting = self._connecting
            try:
                await asyncio.shield(connecting)
            finally:
                if self._connecting is connecting and connecting.done():
                    self._connecting = None
        return self._replies

    async def _connect(self):
        connection = self._pool.make_connection()
        await connection.connect()  # redis-py's handshake: TLS, AUTH, HELLO, SELECT, client name
        writer = connection._writer
        transport = writer.transport  # from here on the transport is ours
        connection._writer = connection._reader = None  # so redis-py's __del__ does not close it
        replies = _Replies(transport)
        replies.writer = writer  # kept: a StreamWriter closes its transport when collected
        transport.set_protocol(replies)
        self._replies = replies

    async def close(self):
        connecting, self._connecting = self._connecting, None
        if connecting is not None and not connecting.done():
            connecting.cancel()
            await asyncio.wait([connecting])
        replies, self._replies = self._replies, None
        if replies is not None:
            replies.close(RedisConnectionError("connection closed"))


class PoolWire:
    """The same calls through a redis-py client and its pool, for pools a Wire does not fit (sentinel)."""

    connected = False  # never written to directly (Wire.request): every call goes through redis-py

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
    """A Wire on a connection of its own where the client's pool and hiredis allow, else a PoolWire."""
    pool = client.connection_pool
    if hiredis is not None and type(pool) is ConnectionPool and "_writer" in dir(pool.connection_class):
        return Wire(pool)
    return PoolWire(client)
