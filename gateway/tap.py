"""twistd plugin glue: `twistd -n udpgateway -c gateway.yaml`."""

import os
import sys

from twisted.internet import error
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
    from listeners.activation import exec_environment, listen_fds

    # First, before the application (or a module it imports) could read or inherit LISTEN_*.
    inherited, note = listen_fds(os.environ, os.getpid(), exec_environment())
    config = load_or_exit(options["config"])
    app = load_application(config)
    if note:
        log.warn("{note}", note=note)
    fatal = FailedStart(reactor, getattr(options, "parent", None) or {})
    return GatewayService(config, reactor=reactor, app=app, on_fatal=fatal, signals=True, inherited=inherited)


class FailedStart:
    """A failed start: one line on stderr, the pid file twistd wrote removed, exit status 1, no traceback.

    twistd removes its pid file only when the reactor returns normally and then
    exits 0, so a failed start removes the file itself (only if it holds our pid)
    and ends with os._exit(1): after a clean stop once the reactor runs, at once
    in privilegedStartService (still privileged, before the reactor runs).
    """

    def __init__(self, reactor, twistd_config):
        self._reactor = reactor
        self._twistd_config = twistd_config  # twistd's ServerOptions: pidfile, and statusPipe once daemonized

    def __call__(self, line):
        # twistd has redirected sys.stderr into its log by now: write to the real one.
        print(f"udpgateway: {line}", file=sys.__stderr__, flush=True)
        log.error("udpgateway: {line}", line=line)
        if self._reactor.running:
            self._reactor.addSystemEventTrigger("after", "shutdown", self.exit)
            try:
                self._reactor.stop()
            except error.ReactorNotRunning:
                pass  # already stopping: the trigger still runs
            return
        self._tell_daemon_parent(line)
        self.exit()

    def exit(self):
        remove_own_pidfile(self._twistd_config.get("pidfile"))
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)

    def _tell_daemon_parent(self, line):
        """Without -n the parent waits on a status pipe and prints what it reads."""
        pipe = self._twistd_config.get("statusPipe")
        if pipe is not None:
            os.write(pipe, f"1 {line}".encode("ascii", "backslashreplace")[:100])
            os.close(pipe)


def remove_own_pidfile(path):
    """Remove twistd's pid file if it names this process (never another process's file)."""
    if not path:
        return
    try:
        with open(path) as f:
            if f.read().strip() != str(os.getpid()):
                return
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warn("cannot remove the pid file {path}: {err}", path=path, err=exc.strerror)
