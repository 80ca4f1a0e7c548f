"""Speed of the data path's in-process parts at scale: the memory layer and the reply token table.

    python benchmarks/core_bench.py            # the full run (seconds)
    python benchmarks/core_bench.py --smoke    # a tenth of it; what CI runs

The tests check that the work per call does not grow with the number of
channels or clients (by counting the entries each call looks at); this
prints how long that work takes on this machine. No socket is opened.
"""

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.layers import InMemoryChannelLayer  # noqa: E402
from gateway.tokens import TokenTable  # noqa: E402

MSG = {"type": "udp.send", "data": b"x"}


class _Clock:
    now = 0.0

    def seconds(self):
        return self.now


async def layer_traffic(channels, rounds):
    """Seconds for `rounds` × (send, receive, specific send, receive_single) with `channels` channels held."""
    layer = InMemoryChannelLayer()
    for i in range(channels):
        await layer.send(f"c{i}", MSG)
    started = time.perf_counter()
    for _ in range(rounds):
        await layer.send("hot", MSG)
        await layer.receive("hot")
        await layer.send("p.x!hot", MSG)
        await layer.receive_single("p.x!")
    return time.perf_counter() - started


def token_table(entries):
    """Seconds for `entries` new tokens, as many lookups, one eviction and a prune of all of them."""
    clock = _Clock()
    table = TokenTable(max_entries=entries, ttl=60, clock=clock)
    started = time.perf_counter()
    tokens = [table.token_for(("echo", ("10.0.0.1", i)), i) for i in range(entries)]
    for token in tokens:
        table.lookup(token)
    table.token_for("one more", -1)
    clock.now += 60
    table.prune()
    return time.perf_counter() - started


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a tenth of the sizes: checks it runs")
    args = parser.parse_args(argv)
    scale = 10 if args.smoke else 1
    channels, rounds, entries = 20_000 // scale, 20_000 // scale, 100_000 // scale
    seconds = asyncio.run(layer_traffic(channels, rounds))
    print(f"memory layer: {4 * rounds} operations with {channels} channels held in {seconds:.3f} s "
          f"({4 * rounds / seconds:,.0f}/s)")
    seconds = token_table(entries)
    print(f"token table: {entries} tokens, {entries} lookups and a prune of {entries} in {seconds:.3f} s "
          f"({(3 * entries) / seconds:,.0f} operations/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
