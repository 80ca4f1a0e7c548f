"""A bare channel-layer round trip, no gateway: `client` sends and waits for replies, `worker` answers them.

    python benchmarks/layer_roundtrip.py worker BACKEND REDIS_URL
    python benchmarks/layer_roundtrip.py client BACKEND REDIS_URL PINGS COUNT WINDOW BUDGET
    python benchmarks/layer_roundtrip.py preload BACKEND REDIS_URL COUNT REPLY_CHANNEL

The worker receives `bench.receive` with the layer's own receive and
answers each message with one layer send (up to 64 at once, as
`udpgateway worker` would); the client prints its figures in one line.
`preload` leaves COUNT `udp.receive` messages (64 bytes of data, replies
to REPLY_CHANNEL) in Redis for a worker started after it, and prints
`preloaded COUNT`.
"""

import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.layers import make_layer  # noqa: E402

CHANNEL = "bench.receive"
CONFIG = {"channel_capacity": {CHANNEL: 10000, "bench.reply*": 10000}}


async def worker(backend, url):
    layer = make_layer(backend, {"hosts": [url], **CONFIG})
    slots = asyncio.Semaphore(64)
    print("layer worker ready", flush=True)

    async def answer(message):
        try:
            await layer.send(message["reply_channel"], {"type": "bench.reply", "data": message["data"]})
        finally:
            slots.release()

    while True:
        await slots.acquire()
        message = await layer.receive(CHANNEL)
        asyncio.ensure_future(answer(message))


async def client(backend, url, pings, count, window, budget):
    layer = make_layer(backend, {"hosts": [url], **CONFIG})
    reply = await layer.new_channel("bench.reply")
    payload = b"x" * 64
    times = []
    deadline = time.monotonic() + budget
    for _ in range(pings):  # latency: one message in flight
        if time.monotonic() > deadline:
            break
        started = time.perf_counter()
        await layer.send(CHANNEL, {"type": "bench.receive", "data": payload, "reply_channel": reply})
        await asyncio.wait_for(layer.receive(reply), 5)
        times.append((time.perf_counter() - started) * 1e6)
    sent = answered = 0
    cpu = time.process_time()
    started = time.perf_counter()
    deadline = time.monotonic() + budget
    in_flight = asyncio.Semaphore(window)

    async def send_one():
        await layer.send(CHANNEL, {"type": "bench.receive", "data": payload, "reply_channel": reply})

    async def sender():
        nonlocal sent
        while sent < count and time.monotonic() < deadline:
            await in_flight.acquire()
            sent += 1
            asyncio.ensure_future(send_one())

    task = asyncio.ensure_future(sender())
    try:
        while answered < count and time.monotonic() < deadline:
            try:
                await asyncio.wait_for(layer.receive(reply), 2)
            except asyncio.TimeoutError:
                break
            answered += 1
            in_flight.release()
    finally:
        task.cancel()
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    times.sort()
    p50 = statistics.median(times) if times else float("nan")
    p99 = times[int(len(times) * 0.99) - 1] if len(times) > 1 else float("nan")
    print(f"result rate {answered / elapsed:.0f} p50 {p50:.0f} p99 {p99:.0f} answered {answered} sent {sent} cpu {cpu:.3f}",
          flush=True)


async def preload(backend, url, count, reply_channel):
    layer = make_layer(backend, {"hosts": [url], "channel_capacity": {"udp.receive": count}})
    message = {"type": "udp.receive", "reply_channel": reply_channel, "data": bytes(64),
               "client": ["127.0.0.1", 40000], "server": ["127.0.0.1", 9999], "listener": "drain"}
    for first in range(0, count, 500):  # 500 sends at a time: one batch each on our layer
        await asyncio.gather(*(layer.send("udp.receive", message) for _ in range(min(500, count - first))))
    print(f"preloaded {count}", flush=True)


def main(argv):
    if argv[0] == "worker":
        asyncio.run(worker(argv[1], argv[2]))
    elif argv[0] == "preload":
        asyncio.run(preload(argv[1], argv[2], int(argv[3]), argv[4]))
    else:
        backend, url, *numbers = argv[1:]
        pings, count, window = (int(n) for n in numbers[:3])
        asyncio.run(client(backend, url, pings, count, window, float(numbers[3])))


if __name__ == "__main__":
    main(sys.argv[1:])
