"""`udpgateway check|worker`: argparse, print, exit 0/1/2; the logic lives elsewhere."""

import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="udpgateway", description="UDP behind ASGI/Channels.")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="validate a config file and print a summary")
    check.add_argument("-c", "--config", default="gateway.yaml")
    worker = commands.add_parser("worker", help="run the application against the shared channel layer")
    worker.add_argument("-c", "--config", default="gateway.yaml")
    worker.add_argument("--metrics-port", type=_port, metavar="PORT",
                        help="serve /metrics on this port (0: any free one) instead of the config's metrics.port, "
                             "so a worker can share a gateway's config file on one host")
    worker.add_argument("channels", nargs="*", metavar="CHANNEL",
                        help="channels to consume (default: every listener's channel)")
    args = parser.parse_args(argv)
    return {"check": run_check, "worker": run_worker}[args.command](args)


def run_check(args):
    from gateway.config import describe
    from gateway.startup import load_or_exit

    config = load_or_exit(args.config)
    for line in describe(config):
        print(line)
    return 0


def run_worker(args):
    from gateway.loop import install_asyncio_reactor
    from gateway.startup import load_application, load_or_exit

    config = load_or_exit(args.config, host_checks=False)
    if config.channel_layer.backend == "memory":
        print(f"{args.config}: channel_layer.backend: a worker needs a shared layer (e.g. "
              "channels_redis.core.RedisChannelLayer); memory lives inside one process", file=sys.stderr)
        return 2
    if not config.application:
        print(f"{args.config}: application: required to run a worker", file=sys.stderr)
        return 2
    if args.metrics_port is not None:
        config = _with_metrics_port(config, args.metrics_port)
    reactor = install_asyncio_reactor()
    return _run_service(reactor, config, load_application(config), args.channels)


def _port(text):
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0-65535)")
    return int(text)


def _with_metrics_port(config, port):
    """The config with metrics on `port` (at the file's metrics.bind, or 127.0.0.1 when it has none)."""
    from dataclasses import replace

    from gateway.config import Metrics

    return replace(config, metrics=replace(config.metrics or Metrics(), port=port))


def _run_service(reactor, config, app, channels):
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from gateway.worker import WorkerService

    status = {"code": 0}

    def fatal(line):
        print(f"udpgateway worker: {line}", file=sys.stderr, flush=True)
        status["code"] = 1
        reactor.stop()

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)], redirectStandardIO=False)
    channels = channels or [l.channel for l in config.listeners]
    worker = WorkerService(config, app, channels, reactor=reactor, on_fatal=fatal, signals=True)
    worker.startService()
    reactor.addSystemEventTrigger("before", "shutdown", worker.stopService)
    reactor.run()
    return status["code"]


def entry():
    sys.exit(main())


if __name__ == "__main__":
    entry()
