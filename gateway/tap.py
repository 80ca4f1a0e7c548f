"""twistd plugin glue: `twistd -n udpgateway -c gateway.yaml`."""

import os
import sys

from twisted.logger import Logger
from twisted.python import usage

from gateway.loop import ReactorError, install_asyncio_reactor

log = Logger()


class Options(usage.Options):
    optParameters = [
        ["config", "c", "gateway.yaml", "The gateway's YAML config file."],
    ]

    def postOptions(self):
        self["config"] = os.path.abspath(self["config"])


def makeService(options):
    """Validate the config (exit 2 on problems), then build the GatewayService."""
    try:
        reactor = install_asyncio_reactor()
    except ReactorError as exc:
        print(f"udpgateway: {exc}", file=sys.stderr)
        raise SystemExit(2)
    from gateway.service import GatewayService
    from gateway.startup import load_application, load_or_exit

    config = load_or_exit(options["config"])
    app = load_application(config)
    return GatewayService(config, reactor=reactor, app=app, on_fatal=_fatal_exit(reactor), signals=True)


def _fatal_exit(reactor):
    """Print one line, stop cleanly, and exit 1 once the reactor has shut down."""

    def fatal(line):
        # twistd has redirected sys.stderr into its log by now: write to the real one.
        print(f"udpgateway: {line}", file=sys.__stderr__, flush=True)
        log.error("udpgateway: {line}", line=line)
        reactor.addSystemEventTrigger("after", "shutdown", _exit_now, 1)
        reactor.stop()

    return fatal


def _exit_now(status):
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
