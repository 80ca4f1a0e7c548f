"""BatchingRedisChannelLayer: channels_redis' RedisChannelLayer with one Redis round trip per batch of sends or receives.

Name it wherever a Channels layer goes (``channel_layer.backend`` or
Django's ``CHANNEL_LAYERS``) as ``gateway.layers.batching.BatchingRedisChannelLayer``.
It takes channels_redis 4.3's keys and defaults, keeps its keys and message
encoding in Redis, and so exchanges messages with stock channels_redis
processes both ways. What differs:

- sends made in one event-loop turn go to Redis as one Lua script call per
  host, which trims expired messages, checks each message against its
  channel's capacity and adds it (ChannelFull for those that do not fit);
- a receive pops up to ``receive_batch`` messages at once into a local
  buffer (gateway.layers.inbox), at most once: channels_redis' own receive
  re-queues what another consumer is handling (channels_redis issue #163).
  What is still in the buffer when the pools close goes back to Redis;
  a process that dies loses it;
- ``x!y`` channels live on the host of ``x!``, and receives read every host,
  so with several hosts a reply arrives wherever a stock process put it;
- ``send_ahead`` (default 0, every send waits for Redis' answer as in
  channels_redis): up to that many sends per host return before Redis
  answers them, for senders of one message at a time such as a Channels
  consumer. Only while the channel's last answer showed room for them; they
  may take it to capacity + send_ahead, and one lost to a failure or a full
  channel is counted (``sent_ahead_lost``) and logged, after which sends wait again;
- ``linger`` (default 0, seconds): so that a consumer of one message at a
  time (Channels' runworker) sends and receives several per round trip,
  under load sends ahead wait up to that long to share a script call, and a
  receive round trip that found less than a batch is followed by the next no
  sooner than that. Sends ahead linger while this process holds messages it
  popped and has not answered yet (it popped more than it sent) and its
  last send was less than OWED_FOR lingers ago, or while sends come less
  than BUSY apart (the last gap or a moving average), and join a batch
  already lingering; receives linger after a round trip whose messages came
  less than BUSY apart, or several of them less than half the linger apart.
  A receiver answering one message at a time, or back after a pause, is not
  held up.
"""

import asyncio
import functools
import logging
import random
import time

import msgpack
from channels.exceptions import ChannelFull
from channels_redis.core import RedisChannelLayer
from channels_redis.serializers import MsgPackSerializer
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.layers.inbox import Inbox
from gateway.layers.wire import Script, wire_for

# What a send script written on a live connection may fail with and still go the way that
# reconnects and loads the script; any other error reply goes to the senders as it is.
_RETRIED = (NoScriptError, RedisConnectionError, RedisTimeoutError, OSError)

FULL, ADDED, NEAR_FULL = b"012"  # the send script's answer per message

BUSY = 0.0005  # seconds: messages closer together than this (on average) are busy traffic, which may linger
IDLE_GAP = 4  # BUSYs: a longer gap between sends is a pause, which starts their moving average over
GAP_WEIGHT = 8  # the moving average of gaps between sends moves 1/GAP_WEIGHT of the way to each new gap
OWED_FOR = 4  # lingers: a process whose last send is older than this is not answering what it popped
MAX_LINGER = 1.0  # seconds the linger key may be at most

LOST_LOG_INTERVAL = 10.0  # seconds between two log lines about sends ahead that were lost

RECEIVE_BATCH = 64  # messages one receive round trip may pop per host

logger = logging.getLogger(__name__)

RECENT_NAMES = 4096  # channel names whose validity and capacity are remembered (then forgotten at once)

# ZPOPMIN up to ARGV[1] members of KEYS[1], answered as ONE string of
# (4-byte big-endian length, member) pairs: one reply to parse, not one per member.
_POP_SCRIPT = Script("""
local popped = redis.call('ZPOPMIN', KEYS[1], ARGV[1])
local parts = {}
for i = 1, #popped, 2 do
    parts[#parts + 1] = struct.pack('>I4', #popped[i]) .. popped[i]
end
return table.concat(parts)
""")

# KEYS: one per message. ARGV: expired-before score, expiry seconds, the
# send-ahead margin, then (message, capacity, score, sent ahead "1"/"0") per
# message; a message sent ahead may go up to capacity + margin. Returns one
# string, per message "0" (full), "1" (added) or "2" (added, and its channel
# is now within the margin of its capacity): one reply to parse, not one per message.
_SEND_SCRIPT = Script("""
local cutoff, expiry, margin = ARGV[1], ARGV[2], tonumber(ARGV[3])
local counts, added = {}, {}
for i = 1, #KEYS do
    local key = KEYS[i]
    if counts[key] == nil then
        redis.call('ZREMRANGEBYSCORE', key, 0, cutoff)
        counts[key] = redis.call('ZCARD', key)
    end
    local base = 4 * i
    local capacity = tonumber(ARGV[base + 1])
    local limit = capacity
    if ARGV[base + 3] == '1' then
        limit = capacity + margin
    end
    if counts[key] < limit then
        redis.call('ZADD', key, ARGV[base + 2], ARGV[base])
        counts[key] = counts[key] + 1
        if counts[key] + margin >= capacity then
            added[i] = '2'
        else
            added[i] = '1'
        end
    else
        added[i] = '0'
    end
end
for key in pairs(counts) do
    redis.call('EXPIRE', key, expiry)
end
return table.concat(added)
""")


class _SendBatch:
    """The sends waiting for one script call per host, made at the end of the loop turn they came in.

    While a host's call is in flight, the sends for that host wait and go
    together in the next call as soon as it returns: under load a batch is
    everything sent during one Redis round trip, at no cost in latency when idle.
    """

    def __init__(self, layer, loop):
        self.layer = layer
        self.loop = loop
        self.pending = {}     # host index -> [(key, payload, capacity, sent ahead, future or None if ahead)]
        self.ahead = {}       # host index -> sends ahead not answered yet
        self.busy = set()     # host indexes with a call in flight
        self.prompt = set()   # host indexes with a send that does not linger
        self.flushes = set()  # script calls in flight
        self._scheduled = False
        self._lingering = None  # the timer of a batch of sends ahead only
        self._last_add = float("-inf")  # loop time of the last send
        self._gap = IDLE_GAP * BUSY  # seconds between sends lately (a moving average)

    def add(self, index, key, payload, capacity, ahead=False, owed=False):
        """The future of the script's answer for this message: ADDED, NEAR_FULL or FULL (None for a send
        ahead: the layer's _answered_ahead gets its answer).

        A send ahead (nobody waits for its answer) waits up to the layer's
        linger for more, also while the host's call is in flight: when
        `owed` (its sender holds messages it popped and has not answered yet)
        and the send before came less than OWED_FOR lingers ago, when sends
        came less than BUSY apart lately, or when a batch is lingering
        already. So a sender of one message at a time shares calls under
        load and adds no latency when idle. Any other send goes at the end
        of this turn, or as soon as the host's call in flight returns.
        """
        now = self.loop.time()
        gap, self._last_add = now - self._last_add, now
        # Busy: this gap, or their moving average (so that one slow gap does not cut the batches
        # short), is under BUSY; a pause (IDLE_GAP BUSYs or more) starts the average over.
        idle = IDLE_GAP * BUSY
        self._gap = idle if gap >= idle else self._gap + (gap - self._gap) / GAP_WEIGHT
        busy = gap < BUSY or self._gap < BUSY
        backlog = owed and gap < OWED_FOR * self.layer.linger
        if not (ahead and self.layer.linger and (self._lingering is not None or backlog or busy)):
            self.prompt.add(index)
            if self._lingering is not None:
                self._lingering.cancel()
                self._lingering = None
            if not self._scheduled:
                self._scheduled = True
                self.loop.call_soon(self.flush)
        elif not self._scheduled and self._lingering is None:
            self._lingering = self.loop.call_later(self.layer.linger, self._lingered)
        if ahead:
            self.ahead[index] = self.ahead.get(index, 0) + 1
            future = None
        else:
            future = self.loop.create_future()
        self.pending.setdefault(index, []).append((key, payload, capacity, ahead, future))
        return future

    def _lingered(self):
        self._lingering = None
        if not self._scheduled:
            self.flush()

    def flush(self, hosts=None):
        """Start a call for every host with sends waiting and none in flight."""
        self._scheduled = False
        if hosts is None and self._lingering is not None:
            self._lingering.cancel()
            self._lingering = None
        for index in list(self.pending) if hosts is None else hosts:
            if index in self.busy or index not in self.pending:
                continue
            self.busy.add(index)
            self.prompt.discard(index)
            sends = self.pending.pop(index)
            # On a live connection the call is written now and settled from its reply, with no
            # task; a failure (Redis restarted, script not loaded) goes the way that retries.
            written = self.layer._request_send_script(index, sends)
            if written is None:
                self._retry(index, sends)
            else:
                self.flushes.add(written)
                written.add_done_callback(functools.partial(self._written, index, sends))

    def _written(self, index, sends, written):
        self.flushes.discard(written)
        failure = None if written.cancelled() else written.exception()
        if written.cancelled() or isinstance(failure, _RETRIED):
            self._retry(index, sends)
        elif failure is not None:
            self._fail(index, sends, failure)
        else:
            self._settle(index, sends, written.result())

    def _retry(self, index, sends):
        task = self.loop.create_task(self._call(index, sends))
        self.flushes.add(task)
        task.add_done_callback(self.flushes.discard)

    async def _call(self, index, sends):
        try:
            added = await self.layer._run_send_script(index, sends)
        except BaseException as exc:
            self._fail(index, sends, exc if isinstance(exc, Exception) else asyncio.CancelledError())
            if not isinstance(exc, Exception):
                raise
        else:
            self._settle(index, sends, added)

    def _fail(self, index, sends, exc):
        for key, _payload, _capacity, ahead, future in sends:
            if ahead:
                self._answered_ahead(index, key, None, exc)
            elif not future.done():
                future.set_exception(exc)
        self._done(index)

    def _settle(self, index, sends, added):
        for (key, _payload, _capacity, ahead, future), answer in zip(sends, added):  # FULL, ADDED or NEAR_FULL
            if ahead:
                self._answered_ahead(index, key, answer, None)
            elif not future.done():
                future.set_result(answer)
        self._done(index)

    def _answered_ahead(self, index, key, answer, failure):
        self.ahead[index] -= 1
        self.layer._answered_ahead(key, answer, failure)

    def _done(self, index):
        self.busy.discard(index)
        if index in self.pending and (self._lingering is None or index in self.prompt):
            self.flush([index])


class _LoopState:
    """What the layer holds per event loop: its send batch, receive inboxes and connections.

    It hangs on channels_redis' own per-loop object, whose flush runs when
    the pools close and when the loop closes (channels_redis wraps
    loop.close), so a loop made for one async_to_sync call leaves nothing open.
    """

    def __init__(self, layer, loop):
        self.layer = layer
        self.batch = _SendBatch(layer, loop)
        self.inboxes = {}  # channel (or `x!` prefix) -> Inbox
        self.wires = {}    # (owner, host index) -> Wire: the sends', and each receive key's, own connection

    async def close(self):
        """Send what is batched, stop the receive rounds, put back what was popped but not received, close."""
        self.batch.flush()
        while self.batch.flushes:  # a call ending starts the next one of its host
            await asyncio.wait(list(self.batch.flushes))
        inboxes, self.inboxes = self.inboxes, {}
        for channel, inbox in inboxes.items():
            await inbox.close()
            if inbox.buffer:
                await self._put_back(channel, list(inbox.buffer))
                inbox.buffer.clear()
        wires, self.wires = list(self.wires.values()), {}
        for wire in wires:
            await wire.close()

    async def _put_back(self, channel, members):
        """Queue members again in `channel`, on the host a stock channels_redis receiver reads; lost if Redis fails."""
        layer = self.layer
        key = layer.prefix + channel
        index = layer.consistent_hash(channel) if channel.endswith("!") else 0
        score = time.time() - 1  # ahead of what was sent since
        args = [arg for member in members for arg in (score, member)]
        # A connection this loop already has to that host (its pop rounds made one): no new
        # per-loop object while channels_redis closes the loop.
        wire = next((w for (_owner, i), w in self.wires.items() if i == index), None)
        if wire is None:
            return  # never connected there: lost, as popped messages may be
        try:
            await wire.command(b"ZADD", key, *args)
        except (RedisError, OSError):  # at stop, with Redis gone: they are lost, as popped messages may be
            pass


class BatchingRedisChannelLayer(RedisChannelLayer):
    """A drop-in for channels_redis.core.RedisChannelLayer that batches its Redis round trips."""

    pops_at_most_once = True  # LayerClient uses receive_single as it is

    def __init__(self, hosts=None, prefix="asgi", expiry=60, group_expiry=86400, capacity=100,
                 channel_capacity=None, symmetric_encryption_keys=None, random_prefix_length=12,
                 serializer_format="msgpack", receive_batch=RECEIVE_BATCH, send_ahead=0, linger=0):
        super().__init__(hosts=hosts, prefix=prefix, expiry=expiry, group_expiry=group_expiry, capacity=capacity,
                         channel_capacity=channel_capacity, symmetric_encryption_keys=symmetric_encryption_keys,
                         random_prefix_length=random_prefix_length, serializer_format=serializer_format)
        problems = self.config_problems({"receive_batch": receive_batch, "send_ahead": send_ahead, "linger": linger})
        if problems:
            raise ValueError("; ".join(f"{key} {what}" for key, what in problems))
        self.receive_batch = receive_batch
        self.send_ahead = send_ahead
        self.linger = linger
        self.sent_ahead_lost = 0  # sends returned early that Redis then refused or never got
        self._lost_logged = None  # monotonic time of the last log line about them
        self._room = {}           # Redis key -> it had room beyond send_ahead at its last answer
        self._last_score = 0.0
        self._known = {}     # recently sent-to (valid) channel name -> (capacity, Redis key, host index or None)
        self._received = self._replied = 0  # messages popped, and sends (counted up to as many)
        self._has_bzmpop = True  # until a Redis before 7.0 says otherwise
        # channels_redis' msgpack encoding without encryption: serialize and deserialize take the short way.
        self._plain_msgpack = type(self._serializer) is MsgPackSerializer and self._serializer.crypter is None
        self._prefix_length = self._serializer.random_prefix_length

    @classmethod
    def config_problems(cls, config):
        """[(key, what is wrong)] for the keys of `config` this layer adds to channels_redis' (udpgateway check)."""
        return [(key, f"{rule}, not {config[key]!r}") for key, (valid, rule) in _OWN_KEYS.items()
                if key in config and not valid(config[key])]

    async def send(self, channel, message):
        """Queue a message for this turn's batch; ChannelFull if its channel was at capacity."""
        assert isinstance(message, dict), "message is not a dict"
        capacity, key, index = self._destination(channel)
        assert "__asgi_channel__" not in message
        if index is None:
            index = next(self._send_index_generator)
        else:
            message = {**message, "__asgi_channel__": channel}
        batch = self._state().batch
        payload = self.serialize(message)
        self._replied += 1
        if self._replied > self._received:  # more sends than receives: no backlog, and none owed
            self._replied = self._received
        if self._room.get(key) and batch.ahead.get(index, 0) < self.send_ahead:
            # Sent ahead: returns now, goes with this turn's batch (see send_ahead in the README).
            batch.add(index, key, payload, capacity, True, owed=self._replied < self._received)
            return
        answer = await batch.add(index, key, payload, capacity)
        self._note_room(key, answer)
        if answer == FULL:
            raise ChannelFull(channel)

    async def receive(self, channel):
        """The next message of `channel`, as channels_redis' receive; a plain channel takes the short way."""
        if "!" in channel:
            return await super().receive(channel)
        inbox = self._inbox(channel)
        buffer = inbox.buffer
        message = self.deserialize(buffer.popleft() if buffer else await inbox.get())
        message.pop("__asgi_channel__", None)  # a plain channel's messages do not carry it
        return message

    async def receive_single(self, channel, *, batch=None):
        """(channel, message): the next message of a channel or of any channel of an `x!` prefix, from any host.

        `batch` (at most receive_batch) bounds what one round trip pops, for a caller with less room.
        """
        message = self.deserialize(await self._inbox(channel).get(batch))
        if "__asgi_channel__" in message:
            channel = message.pop("__asgi_channel__")
        return channel, message

    def serialize(self, message):
        """channels_redis' encoding of `message` (the same bytes, fewer calls for msgpack without encryption)."""
        if not self._plain_msgpack:
            return super().serialize(message)
        packed = msgpack.packb(message)
        length = self._prefix_length
        return random.getrandbits(8 * length).to_bytes(length, "big") + packed if length > 0 else packed

    def deserialize(self, message):
        """The message channels_redis encoded in `message`."""
        if not self._plain_msgpack:
            return super().deserialize(message)
        return msgpack.unpackb(message[self._prefix_length:] if self._prefix_length > 0 else message)

    async def flush(self):
        """Delete every message and group on every host, and this loop's local buffers."""
        for inbox in self._state().inboxes.values():
            inbox.buffer.clear()
        await super().flush()

    # -- internals -----------------------------------------------------------
    def _note_room(self, key, answer):
        if self.send_ahead:
            if len(self._room) >= RECENT_NAMES:
                self._room.clear()
            self._room[key] = answer == ADDED

    def _answered_ahead(self, key, answer, failure):
        """Redis' answer to a send that returned before it: lost if refused or failed (counted, logged)."""
        if failure is None and answer != FULL:
            self._note_room(key, answer)
            return
        # Refused (past capacity + send_ahead) or Redis failed: every channel waits for its
        # answers again until one shows room, so the next send raises what is wrong.
        self._room.clear()
        self.sent_ahead_lost += 1
        now = time.monotonic()
        if self._lost_logged is None or now - self._lost_logged >= LOST_LOG_INTERVAL:
            self._lost_logged = now
            reason = "its channel was full" if failure is None else f"{type(failure).__name__}: {failure}"
            logger.warning("A message sent ahead to %s was lost (%s); %d lost so far",
                           key[len(self.prefix):], reason, self.sent_ahead_lost)

    def _state(self):
        """This event loop's _LoopState, made with channels_redis' per-loop object and closed with it."""
        loop = asyncio.get_running_loop()
        loop_layer = self._layers.get(loop)
        state = getattr(loop_layer, "batching_state", None)
        if state is None:
            self.connection(0)  # channels_redis' per-loop object, and its hook on loop.close
            loop_layer = self._layers[loop]
            state = loop_layer.batching_state = _LoopState(self, loop)
            close_pools = loop_layer.flush

            async def flush():
                await state.close()
                await close_pools()

            loop_layer.flush = flush
        return state

    def _destination(self, channel):
        """(capacity, Redis key, host index or None for the next host in turn) of a valid channel name
        (TypeError for an invalid one), remembered for the next sends."""
        known = self._known.get(channel)
        if known is None:
            assert self.require_valid_channel_name(channel), "Channel name not valid"
            if len(self._known) >= RECENT_NAMES:
                self._known.clear()
            if "!" in channel:
                non_local = self.non_local_name(channel)
                index = self.consistent_hash(non_local)  # where a stock receive_single("x!") looks
            else:
                non_local, index = channel, None
            known = self._known[channel] = (self.get_capacity(channel), self.prefix + non_local, index)
        return known

    def _inbox(self, channel):
        """This loop's Inbox of `channel` (a channel, or an `x!` prefix): made, after checking the name, on first use."""
        inboxes = self._state().inboxes
        inbox = inboxes.get(channel)
        if inbox is None:
            assert self.require_valid_channel_name(channel, receive=True), "Channel name invalid"
            inbox = inboxes[channel] = Inbox(self._popper(self.prefix + channel), self.ring_size,
                                             batch=self.receive_batch)
        return inbox

    def _wire(self, owner, index):
        """The connection `owner` (the sends, or one receive key) uses for host `index`."""
        wires = self._state().wires
        wire = wires.get((owner, index))
        if wire is None:
            wire = wires[owner, index] = wire_for(self.connection(index))
        return wire

    def _send_script_arguments(self, sends):
        """(KEYS, ARGV) of the send script. Scores are wall-clock time as channels_redis scores messages,
        strictly increasing (from call to call too) so that a batch keeps its order."""
        now = time.time()
        score = max(now, self._last_score + 1e-6)
        keys, args = [], [int(now) - int(self.expiry), int(self.expiry), self.send_ahead]
        for key, payload, capacity, ahead, _future in sends:
            keys.append(key)
            args += (payload, capacity, repr(score), b"1" if ahead else b"0")
            score += 1e-6
        self._last_score = score - 1e-6
        return keys, args

    def _request_send_script(self, index, sends):
        """The future of the send script's reply, written now; None when the host's connection is not live."""
        wire = self._wire(None, index)
        return wire.request(_SEND_SCRIPT, *self._send_script_arguments(sends)) if wire.connected else None

    async def _run_send_script(self, index, sends):
        return await self._wire(None, index).call(_SEND_SCRIPT, *self._send_script_arguments(sends))

    def _popper(self, key):
        """`pop(index, count)` for the Inbox of `key`: one round trip per batch.

        After a full batch (more are likely waiting) the pop script; otherwise
        BZMPOP (Redis 7), which waits on the server and pops up to `count` in
        the same command. Before Redis 7: the script, then BZPOPMIN if it was empty.
        With linger, a pop after one that found less than a batch of busy
        traffic (its messages came less than BUSY apart on average since the
        pop before, or several of them less than half the linger apart) starts
        no sooner than linger after that one returned, so that more come in
        one round trip; a receiver back later, or of one message per round
        trip, pops at once.
        """
        full = set()  # hosts whose last pop filled its batch
        busy = set()  # hosts whose last pop found less than a batch of busy traffic
        returned = {}  # host index -> loop time its last pop returned

        async def pop(index, count):
            if index in busy and count > 1:
                delay = returned[index] + self.linger - asyncio.get_running_loop().time()
                if delay > 0:
                    await asyncio.sleep(delay)
            try:
                members = await _pop(self._wire(key, index), index, count)
            except BaseException:
                busy.discard(index)
                returned.pop(index, None)
                raise
            self._received += len(members)
            if self.linger:
                now = asyncio.get_running_loop().time()
                since = now - returned.get(index, float("-inf"))
                returned[index] = now
                # Busy: messages came less than BUSY apart, or several less than half the linger apart
                # (a receiver slower than BUSY per message, such as runworker on a slow machine).
                if 0 < len(members) < count and (since < len(members) * BUSY
                                                 or len(members) > 1 and since < len(members) * self.linger / 2):
                    busy.add(index)
                else:
                    busy.discard(index)
            return members

        async def _pop(wire, index, count):
            if count > 1 and (index in full or not self._has_bzmpop):
                members = _unpack(await wire.call(_POP_SCRIPT, [key], [count]) or b"")
                if len(members) == count:
                    return members
                if members:
                    full.discard(index)
                    return members
            full.discard(index)
            members = await self._blocking_pop(wire, key, count)
            if len(members) == count > 1:
                full.add(index)
            return members

        return pop

    async def _blocking_pop(self, wire, key, count):
        """Up to `count` members, waiting at most brpop_timeout on the server for the first."""
        # The server-side timeout ends a wait without cancelling a command in flight.
        wait, read_timeout = self.brpop_timeout, self.brpop_timeout + 5
        if self._has_bzmpop:
            try:
                result = await wire.command(b"BZMPOP", wait, 1, key, b"MIN", b"COUNT", count, read_timeout=read_timeout)
            except ResponseError as exc:
                if "unknown command" not in str(exc).lower():
                    raise
                self._has_bzmpop = False  # Redis before 7.0
            else:
                return [] if result is None else [pair[0] for pair in result[1]]
        result = await wire.command(b"BZPOPMIN", key, wait, read_timeout=read_timeout)
        return [] if result is None else [result[1]]


def _count(value, least):
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _seconds(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= MAX_LINGER


# The keys this layer adds to channels_redis': (valid(value), what a valid value is).
_OWN_KEYS = {
    "receive_batch": (lambda value: _count(value, 1), "must be a positive integer"),
    "send_ahead": (lambda value: _count(value, 0), "must be an integer of 0 or more"),
    "linger": (_seconds, f"must be a number of seconds from 0 to {MAX_LINGER:g}"),
}


def _unpack(packed):
    """The members of the pop script's answer: (4-byte big-endian length, member) pairs."""
    members, at, end = [], 0, len(packed)
    while at < end:
        size = int.from_bytes(packed[at:at + 4], "big")
        members.append(packed[at + 4:at + 4 + size])
        at += 4 + size
    return members
