"""Flood process of the benchmark: `flood.py PORT SOURCES RATE SIZE BUDGET` prints "sent N answered M"."""

import sys

from clients import flood_answered, raise_nofile


def main(argv):
    port, sources, rate, size = (int(a) for a in argv[:4])
    raise_nofile()
    sent, answered = flood_answered(port, sources, rate, size, float(argv[4]))
    print(f"sent {sent} answered {answered}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
