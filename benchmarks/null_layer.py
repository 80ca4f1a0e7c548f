"""A Channels layer that costs nothing: the ceiling of `manage.py runworker` whatever the layer."""

import asyncio
import os
import sys
import time

from channels.layers import BaseChannelLayer

WARM_UP = 1000  # replies before the clock starts (Django's imports, the first thread of sync_to_async)
WINDOW = 64  # unanswered messages at most, as the UDP rows keep 64 datagrams in flight
MESSAGE = {
    "type": "udp.receive",
    "reply_channel": "udp.send.ceiling!x",
    "data": bytes(64),
    "client": ["127.0.0.1", 40000],
    "server": ["127.0.0.1", 9999],
    "listener": "ceiling",
}


class NullLayer(BaseChannelLayer):
    """receive hands out MESSAGE at once (up to WINDOW unanswered); send counts and returns at once.

    After WARM_UP sends it times the next NULL_LAYER_MESSAGES (wall clock and CPU of
    this process, threads included), prints one `ceiling rate R cpu_us C messages N`
    line and ends the process; at NULL_LAYER_BUDGET seconds after the first receive
    it prints what it has and ends the same way.
    """

    extensions = []

    def __init__(self, **config):
        super().__init__()  # the CONFIG of the Django example (hosts, capacities) means nothing here
        self.messages = int(os.environ.get("NULL_LAYER_MESSAGES", "20000"))
        self.budget = float(os.environ.get("NULL_LAYER_BUDGET", "20"))
        self.received = self.sent = 0
        self.started = None  # (wall, cpu) when the warm-up ended
        self.room = asyncio.Event()  # set when a send made room in the window
        self.timer = None
        self.channels_made = 0

    async def receive(self, channel):
        if "!" in channel:  # a consumer's own channel (new_channel): nothing ever comes
            await asyncio.get_running_loop().create_future()
        if self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(self.budget, self.report)
        while self.received - self.sent >= WINDOW:
            self.room.clear()
            await self.room.wait()
        self.received += 1
        return MESSAGE

    async def send(self, channel, message):
        self.sent += 1
        self.room.set()
        if self.sent == WARM_UP:
            self.started = (time.perf_counter(), time.process_time())
        elif self.sent == WARM_UP + self.messages:
            self.report()

    def report(self):
        """Print the rate and CPU per message since the warm-up, then end the process (a benchmark child)."""
        measured = max(0, self.sent - WARM_UP)
        rate = cpu_us = 0.0
        if self.started is not None and measured:
            wall, cpu = time.perf_counter() - self.started[0], time.process_time() - self.started[1]
            rate, cpu_us = measured / wall, 1e6 * cpu / measured
        print(f"ceiling rate {rate:.0f} cpu_us {cpu_us:.0f} messages {measured}", flush=True)
        sys.stderr.flush()
        os._exit(0)

    async def new_channel(self, prefix="null.consumer"):
        self.channels_made += 1
        return f"{prefix}!{self.channels_made}"

    async def flush(self):
        pass  # nothing is stored

    async def group_add(self, group, channel):
        pass

    async def group_discard(self, group, channel):
        pass

    async def group_send(self, group, message):
        pass
