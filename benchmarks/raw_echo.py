"""The baseline: a hand-written Twisted UDP echo on the asyncio reactor, as users would write it."""

import sys

from twisted.internet import asyncioreactor

asyncioreactor.install()

from twisted.internet import protocol, reactor  # noqa: E402


class Echo(protocol.DatagramProtocol):
    noisy = False

    def datagramReceived(self, data, addr):
        try:
            self.transport.write(data, addr)
        except OSError:
            pass  # EAGAIN under load: drop, like the gateway does


def main():
    port = reactor.listenUDP(int(sys.argv[1]) if len(sys.argv) > 1 else 0, Echo(), interface="127.0.0.1",
                             maxPacketSize=65535)
    print(f"raw echo on 127.0.0.1:{port.getHost().port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
