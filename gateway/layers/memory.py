"""The in-memory channel layer: Django-free, with channels_redis' "name!" prefix receive."""

import asyncio
import fnmatch
import re
import time
import uuid
from collections import OrderedDict, deque
from contextlib import suppress
from copy import deepcopy
from itertools import count

try:
    from channels.exceptions import ChannelFull
except ImportError:  # pragma: no cover - channels is installed with us

    class ChannelFull(Exception):
        """Raised by send when a channel is at capacity."""


MAX_NAME_LENGTH = 100
_CHANNEL_NAME = re.compile(r"^[a-zA-Z\d\-_.]+(\![\d\w\-_.]*)?$")
_GROUP_NAME = re.compile(r"^[a-zA-Z\d\-_.]+$")


def _wake(waiters):
    """Wake the first receiver still waiting in a deque of futures."""
    while waiters:
        waiter = waiters.popleft()
        if not waiter.done():
            waiter.set_result(None)
            return


class _Queue:
    """The messages of one channel, or of all channels of one "name!" prefix, in order.

    A send wakes one receiver, which then takes the message itself (as asyncio.Queue
    does): a receive cancelled after its wake-up leaves the message queued and passes
    the wake-up on. `by_name` lets receive("x!y") take its own messages in O(1).
    """

    def __init__(self):
        self.items = OrderedDict()  # seq -> (channel, message)
        self.by_name = {}  # channel -> deque of its seqs, oldest first
        self.waiters = deque()  # receivers of any channel of this queue
        self.named_waiters = {}  # channel -> deque of receivers of that channel only
        self.receivers = 0

    def put(self, seq, channel, message):
        self.items[seq] = (channel, message)
        self.by_name.setdefault(channel, deque()).append(seq)
        _wake(self.waiters)
        _wake(self.named_waiters.get(channel))

    def take(self, channel=None):
        """Remove (seq, channel, message): the oldest, or the oldest of channel."""
        seqs = self.items if channel is None else self.by_name.get(channel)
        if not seqs:
            return None
        seq = next(iter(seqs))
        return (seq, *self.remove(seq))

    def remove(self, seq):
        """Remove a message that is its channel's oldest; return (channel, message)."""
        channel, message = self.items.pop(seq)
        seqs = self.by_name[channel]
        oldest = seqs.popleft()
        assert oldest == seq, "removed a message that is not its channel's oldest"
        if not seqs:
            del self.by_name[channel]
        return channel, message

    def has(self, channel=None):
        return bool(self.items) if channel is None else channel in self.by_name

    async def wait(self, channel=None):
        """Sleep until a message for channel (None: any channel) may have arrived."""
        if channel is None:
            waiters = self.waiters
        else:
            waiters = self.named_waiters.setdefault(channel, deque())
        waiter = asyncio.get_running_loop().create_future()
        waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            waiter.cancel()
            if waiter.cancelled():
                with suppress(ValueError):
                    waiters.remove(waiter)
            elif self.has(channel):
                _wake(waiters)  # woken, then cancelled: pass the wake-up on
            raise
        finally:
            if not waiters and self.named_waiters.get(channel) is waiters:
                del self.named_waiters[channel]


_IMMUTABLE = (bytes, str, int, float, bool, type(None))


def copy_message(value):
    """A deep copy of a message as a layer would serialise it, without deepcopy's overhead.

    Like Channels' in-memory layer, receivers must not share mutable state
    with the sender; messages are JSON-like, so only dicts and lists need copying.
    """
    if isinstance(value, _IMMUTABLE):
        return value
    if isinstance(value, dict):
        return {k: copy_message(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [copy_message(v) for v in value]
    return deepcopy(value)


class InMemoryChannelLayer:
    """A Channels layer held in this process, with channels_redis' receive_single.

    Each "name!" prefix has one queue, as in channels_redis, so all of a process's
    specific channels share one capacity. Work per call does not grow with the
    number of channels: expired messages are the oldest, dropped from the front.
    """

    extensions = ["groups", "flush"]
    _now = staticmethod(time.monotonic)

    def __init__(self, expiry=60, group_expiry=86400, capacity=100, channel_capacity=None):
        self.expiry = expiry
        self.group_expiry = group_expiry
        self.capacity = capacity
        self.channel_capacity = self.compile_capacities(channel_capacity or {})
        self.client_prefix = uuid.uuid4().hex
        self._queues = {}  # non-local name -> _Queue
        self._live = OrderedDict()  # seq -> (expires_at, non-local name), oldest first
        self._seq = count()
        self._groups = {}  # group -> {channel: joined_at}

    # Names and capacities, as Channels' BaseChannelLayer

    def compile_capacities(self, channel_capacity):
        """[(regex, capacity)] from {glob or compiled regex: capacity}."""
        return [
            (p if hasattr(p, "match") else re.compile(fnmatch.translate(p)), value)
            for p, value in channel_capacity.items()
        ]

    def get_capacity(self, channel):
        """The capacity of the first matching channel_capacity pattern, or default."""
        for pattern, capacity in self.channel_capacity:
            if pattern.match(channel):
                return capacity
        return self.capacity

    def require_valid_channel_name(self, name, receive=False):
        _require_name(name, _CHANNEL_NAME, "Channel")
        if receive and "!" in name and not name.endswith("!"):
            raise TypeError("Specific channel names in receive() must end at the !")
        return True

    def require_valid_group_name(self, name):
        return _require_name(name, _GROUP_NAME, "Group")

    def non_local_name(self, name):
        """The part of a name up to and including its "!", or the whole name."""
        return name[: name.find("!") + 1] if "!" in name else name

    # Channel layer API

    async def send(self, channel, message):
        """Queue a message on a channel; ChannelFull past its capacity."""
        assert isinstance(message, dict), "message is not a dict"
        self.require_valid_channel_name(channel)
        assert "__asgi_channel__" not in message
        self._expire()
        key = self.non_local_name(channel)
        queue = self._queues.get(key)
        if len(queue.items if queue else ()) >= self.get_capacity(channel):
            raise ChannelFull(channel)
        if queue is None:
            queue = self._queues[key] = _Queue()
        seq = next(self._seq)
        self._live[seq] = (self._now() + self.expiry, key)
        queue.put(seq, channel, copy_message(message))

    async def receive(self, channel):
        """Wait for the next message on a channel; "x!y" gets only its own."""
        self.require_valid_channel_name(channel)
        key = self.non_local_name(channel)
        _, message = await self._get(key, channel if "!" in channel else None)
        return message

    async def receive_single(self, channel):
        """(channel, message) as channels_redis: "x!" takes the next "x!..." one."""
        self.require_valid_channel_name(channel, receive=True)
        return await self._get(channel, None)

    async def new_channel(self, prefix="specific"):
        """A new process-specific channel name."""
        return f"{prefix}.{self.client_prefix}!{uuid.uuid4().hex}"

    async def flush(self):
        """Drop every message and group; receivers already waiting keep waiting."""
        self._live.clear()
        self._groups.clear()
        for key, queue in list(self._queues.items()):
            queue.items.clear()
            queue.by_name.clear()
            self._drop_if_idle(key, queue)

    async def close(self):
        """Nothing to release: the layer holds no connections."""

    # Groups extension

    async def group_add(self, group, channel):
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        self._groups.setdefault(group, {})[channel] = self._now()

    async def group_discard(self, group, channel):
        self.require_valid_channel_name(channel)
        self.require_valid_group_name(group)
        members = self._groups.get(group, {})
        members.pop(channel, None)
        if not members:
            self._groups.pop(group, None)

    async def group_send(self, group, message):
        """Send to each member of a group; full channels are skipped, as in Channels."""
        assert isinstance(message, dict), "message is not a dict"
        self.require_valid_group_name(group)
        joined_after = self._now() - self.group_expiry
        for channel, joined_at in list(self._groups.get(group, {}).items()):
            if joined_at < joined_after:
                await self.group_discard(group, channel)
                continue
            with suppress(ChannelFull):
                await self.send(channel, message)

    # Internals

    async def _get(self, key, channel):
        queue = self._queues.get(key) or self._queues.setdefault(key, _Queue())
        queue.receivers += 1
        try:
            while True:
                self._expire()
                taken = queue.take(channel)
                if taken is not None:
                    seq, name, message = taken
                    del self._live[seq]
                    return name, message
                await queue.wait(channel)
        finally:
            queue.receivers -= 1
            self._drop_if_idle(key, queue)

    def _expire(self):
        """Drop expired messages: with one expiry for all, they are the oldest."""
        now = self._now()
        while self._live:
            seq = next(iter(self._live))
            expires_at, key = self._live[seq]
            if expires_at > now:
                return
            del self._live[seq]
            queue = self._queues[key]
            queue.remove(seq)
            self._drop_if_idle(key, queue)

    def _drop_if_idle(self, key, queue):
        if not queue.items and not queue.receivers and self._queues.get(key) is queue:
            del self._queues[key]


def _require_name(name, regex, kind):
    valid = isinstance(name, str) and len(name) < MAX_NAME_LENGTH
    if not (valid and regex.match(name)):
        raise TypeError(f"{kind} name must be a str shorter than {MAX_NAME_LENGTH} of "
                        f"ASCII alphanumerics, hyphens, underscores or periods: {name!r}")
    return True
