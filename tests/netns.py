"""Network namespaces for multicast tests: a gateway and a client namespace over one veth pair.

Nothing here touches this machine's real interfaces: the veth ends are
created directly inside namespaces the test owns, with private addresses
that exist only there, and everything is removed in `finally`.
"""

import base64
import contextlib
import functools
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import GatewayProcess, child_env
from tests.support import skip_or_fail, teardown, wait_until

HERE = Path(__file__).resolve().parent
CLIENT = HERE / "nsclient.py"
_counter = itertools.count(1)
# Our namespaces are named ugw<pid of the test run>x<n>g / c (and ugw<pid>probe): nothing else is ever removed.
_OURS = re.compile(r"ugw(\d+)(?:x\d+[gc]|probe)")


def ip(*args, check=True, timeout=10):
    """Run `ip ARGS` and return its stdout; raises with stderr on failure."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


@functools.lru_cache(maxsize=None)
def netns_available():
    """None if `ip netns` works here, else why not."""
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    if os.geteuid() != 0:
        return "ip netns needs root"
    name = f"ugw{os.getpid()}probe"
    try:
        ip("netns", "add", name)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        return f"ip netns does not work here: {exc}"
    ip("netns", "del", name, check=False)
    return None


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftover_namespaces():
    """Remove namespaces of ours whose test run is gone (killed before its teardown); returns their names."""
    if shutil.which("ip") is None or os.geteuid() != 0:
        return []
    names = [line.split()[0] for line in ip("netns", "list", check=False).splitlines() if line.strip()]
    leftover = [name for name in names
                if (match := _OURS.fullmatch(name)) and int(match[1]) != os.getpid() and not _alive(int(match[1]))]
    for name in leftover:
        ip("netns", "del", name, check=False)
    return leftover


class NetnsPair:
    """Two namespaces joined by a veth pair: `gw` (gateway) and `cl` (client)."""

    def __init__(self, n):
        tag = f"ugw{os.getpid()}x{n}"
        self.n = n % 250 + 1
        self.gw, self.cl = f"{tag}g", f"{tag}c"
        self.gw_if, self.cl_if = "vgw", "vcl"
        self.gw4, self.cl4 = f"10.254.{self.n}.1", f"10.254.{self.n}.2"
        self.gw6, self.cl6 = f"fd00:254:{self.n:x}::1", f"fd00:254:{self.n:x}::2"
        self._background = []

    def create(self):
        for ns in (self.gw, self.cl):
            ip("netns", "add", ns)
            # Link-local addresses usable at once: no duplicate address detection.
            self.sh(ns, "sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0", "net.ipv6.conf.all.accept_dad=0")
            ip("-n", ns, "link", "set", "lo", "up")
        self.make_link()
        self.address(self.cl, self.cl_if, self.cl4, self.cl6)

    def make_link(self):
        """(Re)create the veth pair (new ifindexes) with the gateway side addressed and up."""
        ip("link", "add", self.gw_if, "netns", self.gw, "type", "veth", "peer", "name", self.cl_if, "netns", self.cl)
        self.address(self.gw, self.gw_if, self.gw4, self.gw6)

    def address(self, ns, ifname, v4, v6):
        ip("-n", ns, "addr", "add", f"{v4}/24", "dev", ifname)
        ip("-n", ns, "addr", "add", f"{v6}/64", "dev", ifname, "nodad")
        ip("-n", ns, "link", "set", ifname, "up")
        ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", ifname)

    def add_link(self, gw_if="vgw2", cl_if="vcl2", subnet=252):
        """A second veth pair between the same two namespaces; {namespace: (IPv4, IPv6)} of its ends.

        Its addresses are 10.<subnet>.<n>.1/.2 and fd00:<subnet>:<n>::1/::2; the
        route for 224.0.0.0/4 stays on the first pair.
        """
        ip("link", "add", gw_if, "netns", self.gw, "type", "veth", "peer", "name", cl_if, "netns", self.cl)
        addresses = {}
        for ns, ifname, host in ((self.gw, gw_if, 1), (self.cl, cl_if, 2)):
            v4, v6 = f"10.{subnet}.{self.n}.{host}", f"fd00:{subnet}:{self.n:x}::{host}"
            ip("-n", ns, "addr", "add", f"{v4}/24", "dev", ifname)
            ip("-n", ns, "addr", "add", f"{v6}/64", "dev", ifname, "nodad")
            ip("-n", ns, "link", "set", ifname, "up")
            addresses[ns] = (v4, v6)
        self.wait_ready(links=((self.gw, gw_if), (self.cl, cl_if)))
        return addresses

    def add_address(self, ns, v4=None, v6=None):
        """Add secondary addresses to a namespace's veth end."""
        ifname = self.gw_if if ns == self.gw else self.cl_if
        if v4:
            ip("-n", ns, "addr", "add", f"{v4}/24", "dev", ifname)
        if v6:
            ip("-n", ns, "addr", "add", f"{v6}/64", "dev", ifname, "nodad")

    def wait_ready(self, timeout=30.0, links=None):
        """Wait until the link-local addresses of `links` ((namespace, interface) pairs; default both
        ends of the first pair) are usable (not tentative)."""
        links = links or ((self.gw, None), (self.cl, None))
        wait_until(lambda: all(self.link_local(ns, ifname) for ns, ifname in links), timeout,
                   what="IPv6 link-local addresses that are not tentative")

    def link_local(self, ns, ifname=None):
        """The fe80:: address of the namespace's veth end (or of `ifname`), or None while tentative."""
        ifname = ifname or (self.gw_if if ns == self.gw else self.cl_if)
        out = ip("-n", ns, "-6", "addr", "show", "dev", ifname, "scope", "link")
        match = re.search(r"inet6 (fe80::[0-9a-f:]+)/64", out)
        return match.group(1) if match and "tentative" not in out else None

    def ifindex(self, ns, ifname):
        return int(ip("-n", ns, "-o", "link", "show", "dev", ifname).split(":", 1)[0])

    def sh(self, ns, *argv, timeout=10):
        done = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=timeout)
        if done.returncode:
            raise RuntimeError(f"{' '.join(argv)} in {ns}: {done.stderr.strip()}")
        return done.stdout

    def destroy(self):
        """Kill clients left waiting by a failed test and delete both namespaces, each step tried."""
        teardown(*(functools.partial(_kill, proc) for proc in self._background),
                 *(functools.partial(ip, "netns", "del", ns) for ns in (self.gw, self.cl) if self._exists(ns)))

    @staticmethod
    def _exists(ns):
        return any(line.split()[:1] == [ns] for line in ip("netns", "list", check=False).splitlines())

    # -- processes -------------------------------------------------------
    def python(self, ns, *args, timeout=60, env=None):
        """Run `python ARGS` inside `ns` and return its stdout (raises on a non-zero exit)."""
        argv = ["ip", "netns", "exec", ns, sys.executable, *map(str, args)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=child_env(env), cwd=HERE.parent)
        if done.returncode:
            raise RuntimeError(f"{args[0]} in {ns} exited {done.returncode}: {done.stderr.strip()[-2000:]}")
        return done.stdout

    def client(self, *args, ns=None):
        """Run tests/nsclient.py in the client namespace; its result with `data` decoded to bytes."""
        return _client_result(self.python(ns or self.cl, CLIENT, *args))

    def listen(self, *args, ns=None):
        """Start tests/nsclient.py in the background, return once it is bound (and joined)."""
        argv = ["ip", "netns", "exec", ns or self.cl, sys.executable, str(CLIENT), "--ready", *map(str, args)]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
        self._background.append(proc)
        return Listening(proc)


def _kill(proc):
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


class Listening:
    """A background nsclient.py; `result()` waits (bounded) for its JSON."""

    def __init__(self, proc):
        self.proc = proc
        line = proc.stdout.readline()  # nsclient prints "ready" or dies
        if line.strip() != "ready":
            self.result()
            raise RuntimeError(f"client did not start: {line!r}")

    def result(self, timeout=60):
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        if self.proc.returncode:
            raise RuntimeError(f"client exited {self.proc.returncode}: {err.strip()[-2000:]}")
        return _client_result(out)


def _client_result(out):
    result = json.loads(out.strip().splitlines()[-1])
    for reply in result["replies"] + [result.get("marker") or {}]:
        if "data" in reply:
            reply["data"] = base64.b64decode(reply["data"])
    return result


@contextlib.contextmanager
def netns_pair():
    """A fresh NetnsPair, skipped (or failed under UDPGATEWAY_REQUIRE_ALL=1) where netns is unavailable."""
    reason = netns_available()
    if reason:
        skip_or_fail(reason)
    pair = NetnsPair(next(_counter))
    try:
        pair.create()
        pair.wait_ready()
        yield pair
    finally:
        pair.destroy()


@pytest.fixture
def pair():
    """A NetnsPair for one test, torn down after it."""
    with netns_pair() as created:
        yield created


@pytest.fixture
def run_gateway(pair, tmp_path):
    """Start gateways in `pair.gw` from YAML text (modules written beside it) or a config `path`;
    each one still running at the end is stopped with SIGTERM and must exit 0."""
    started = []

    def start(text=None, *, path=None, modules=None, env=None, ready=True):
        for module, source in (modules or {}).items():
            (tmp_path / f"{module}.py").write_text(source)
        if path is None:
            path = tmp_path / f"gateway{len(started)}.yaml"
            path.write_text(text)
        process = GatewayProcess(path, env=env, ns=pair.gw)
        started.append(process)
        return process.start(ready=ready)

    yield start
    teardown(*(functools.partial(_stopped_cleanly, process) for process in started))


def _stopped_cleanly(process):
    """Stop a gateway that is still running (SIGTERM, then SIGKILL); it must have exited 0."""
    if process.proc is not None and process.proc.poll() is None:
        status = process.stop()
        assert status == 0, f"gateway exited {status}:\n{process.log_text()}\n" + "\n".join(process.errors)
