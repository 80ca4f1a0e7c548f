"""Plain UDP: `listenUDP` on each bound address; replies go to each datagram's sender."""

from listeners.base import BaseListener


class PlainListener(BaseListener):
    """Receives from anyone; one socket per bound address."""

    kind = "plain"
