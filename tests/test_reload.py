"""SIGHUP reload: the file rewritten in place, a real SIGHUP to a real twistd, then the ports checked."""

import asyncio
import signal
import socket

import pytest
from twisted.logger import formatEvent

from gateway.config import load_config
from gateway.reload import plan, summary
from tests.processes import GatewayProcess
from tests.scaleout import counters
from tests.support import DEADLINE, aio
from tests.test_twistd import udp_exchange

# Replies later, to a reply channel kept from an earlier message: a token issued before the reload.
LATER_APP = """
import asyncio
from gateway.consumer import UDPConsumer

stored = []

class Later(UDPConsumer):
    async def udp_receive(self, message):
        data = message["data"]
        if data == b"later":
            stored.append(message["reply_channel"])
            await self.reply(message, b"stored")
        elif data == b"hang":
            await asyncio.Future()
        elif data == b"now":
            for channel in stored:
                await self.send_to(channel, b"late")
            stored.clear()
            await self.reply(message, b"sent")
        else:
            await self.reply(message, message["data"])

application = Later.as_asgi()
"""
OTHER_APP = LATER_APP.replace('await self.reply(message, message["data"])', 'await self.reply(message, b"other")')


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listeners_yaml(*listeners, app="laterapp:application", extra=""):
    return f"application: {app}\n{extra}listeners:\n" + "".join(f"  - {{{item}}}\n" for item in listeners)


def plain(name, port=0, more=""):
    return f"name: {name}, type: plain, bind: 127.0.0.1, port: {port}" + (f", {more}" if more else "")


@pytest.fixture
def running(tmp_path, processes):
    """start(text) -> (gateway, path): twistd on tmp_path/gateway.yaml with the test apps beside it."""
    (tmp_path / "laterapp.py").write_text(LATER_APP)
    (tmp_path / "otherapp.py").write_text(OTHER_APP)
    path = tmp_path / "gateway.yaml"

    def start(text):
        path.write_text(text)
        return processes.start(GatewayProcess(str(path))), path

    return start


def reload_with(gateway, path, text, expect):
    """Rewrite the file in place, send SIGHUP, and return the log lines of the reload up to its summary."""
    start = gateway.mark()
    path.write_text(text)
    gateway.send_signal(signal.SIGHUP)
    gateway.wait_for(expect, DEADLINE, start=start)
    return gateway.lines[start:]


def last_port(gateway, name):
    return gateway.listeners[name][-1][1]


class Client:
    """One UDP client socket on loopback with a bounded wait per datagram."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(DEADLINE)

    def ask(self, port, data):
        self.sock.sendto(data, ("127.0.0.1", port))
        return self.sock.recvfrom(65535)

    def close(self):
        self.sock.close()


def test_plan_and_summary(tmp_path):
    """plan() sorts listeners into added, removed, changed and unchanged; summary() says so in one line."""
    path = tmp_path / "g.yaml"
    (tmp_path / "laterapp.py").write_text(LATER_APP)
    (tmp_path / "otherapp.py").write_text(OTHER_APP)
    path.write_text(listeners_yaml(plain("a"), plain("b"), plain("c")))
    old = load_config(str(path))[0]
    path.write_text(listeners_yaml(plain("a"), plain("c", more="channel: c.in"), plain("d"), app="otherapp:application",
                                   extra="limits: {reply_ttl: 5, max_concurrency: 7}\nmetrics: {port: 0}\n"))
    change = plan(old, load_config(str(path))[0])
    assert summary(change) == ("reload: added d, removed b, rebound c, unchanged a; limits reply_ttl applied; "
                               "application change needs a restart; metrics change needs a restart; "
                               "limits.max_concurrency change needs a restart")
    assert change.config.metrics is None
    assert change.config.application == "laterapp:application"
    assert (change.config.limits.reply_ttl, change.config.limits.max_concurrency) == (5.0, 1000)


def test_reload_adds_a_listener(running):
    """A listener added to the file is bound and answers; the one already there keeps its port."""
    gateway, path = running(listeners_yaml(plain("a")))
    a = gateway.port("a")
    reload_with(gateway, path, listeners_yaml(plain("a"), plain("b")), "reload: added b, unchanged a")
    b = last_port(gateway, "b")
    assert udp_exchange(b, b"to b") == (b"to b", ("127.0.0.1", b))
    assert gateway.listeners["a"] == [("127.0.0.1", a)]
    assert udp_exchange(a, b"to a") == (b"to a", ("127.0.0.1", a))


def test_reload_removes_a_listener(running):
    """A listener removed from the file stops answering and frees its port."""
    gateway, path = running(listeners_yaml(plain("a"), plain("b")))
    a, b = gateway.port("a"), gateway.port("b")
    reload_with(gateway, path, listeners_yaml(plain("a")), "reload: removed b, unchanged a")
    client = Client()
    try:
        client.sock.sendto(b"to b", ("127.0.0.1", b))
        assert client.ask(a, b"marker") == (b"marker", ("127.0.0.1", a))  # b would have answered first
    finally:
        client.close()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", b))  # free


def test_reload_rebinds_changed_listeners(running):
    """A listener whose port changed is rebound there (the old port freed); one whose channel changed, in place."""
    old_port, new_port, same = free_port(), free_port(), free_port()
    gateway, path = running(listeners_yaml(plain("a", old_port), plain("c", same)))
    text = listeners_yaml(plain("a", new_port), plain("c", same, "channel: c.in"))
    lines = reload_with(gateway, path, text, "reload: rebound a, c")
    assert f"listener a (plain) on 127.0.0.1:{new_port} -> udp.receive" in "\n".join(lines)
    assert f"listener c (plain) on 127.0.0.1:{same} -> c.in" in "\n".join(lines)
    assert udp_exchange(new_port, b"moved") == (b"moved", ("127.0.0.1", new_port))
    assert udp_exchange(same, b"new channel") == (b"new channel", ("127.0.0.1", same))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", old_port))  # free


def test_unchanged_listener_keeps_socket_and_reply_channels(running):
    """A reply channel issued before the reload still reaches its client through an unchanged listener,
    and one of a rebound listener is dropped as dropped_unknown_token."""
    gateway, path = running(listeners_yaml(plain("a"), plain("c")))
    a, c = gateway.port("a"), gateway.port("c")
    kept, lost = Client(), Client()
    try:
        assert kept.ask(a, b"later") == (b"stored", ("127.0.0.1", a))
        assert lost.ask(c, b"later") == (b"stored", ("127.0.0.1", c))
        lines = reload_with(gateway, path, listeners_yaml(plain("a"), plain("c", more="channel: c.in"), plain("b")),
                            "reload: added b, rebound c, unchanged a")
        assert not any("listener a (plain) on" in line for line in lines)  # a kept its socket
        assert udp_exchange(last_port(gateway, "b"), b"now")[0] == b"sent"  # the app answers both stored channels
        assert kept.sock.recvfrom(100) == (b"late", ("127.0.0.1", a))
        assert lost.ask(a, b"marker") == (b"marker", ("127.0.0.1", a))  # no b"late" came before it
    finally:
        kept.close()
        lost.close()
    assert gateway.stop() == 0
    assert counters(gateway)["dropped_unknown_token"] == 1


def test_bad_file_keeps_the_running_config(running):
    """A file with problems: each logged as one line, nothing changes, the old listeners keep serving."""
    gateway, path = running(listeners_yaml(plain("a")))
    a = gateway.port("a")
    lines = reload_with(gateway, path, listeners_yaml(plain("a"), "name: b, type: plain, bind: 127.0.0.1, port: x",
                                                      plain("c") + ", prot: 1"),
                        "reload: refused, 2 problem(s)")
    text = "\n".join(lines)
    assert "reload: " + str(path) + ": listeners[1].port: expected an integer, got 'x'" in text
    assert "reload: " + str(path) + ": listeners[2].prot: unknown key (did you mean 'port'?)" in text
    assert "still serving with the running config" in text and "Traceback" not in text
    assert udp_exchange(a, b"still") == (b"still", ("127.0.0.1", a))
    assert set(gateway.listeners) == {"a"}


def test_failed_bind_rolls_the_whole_reload_back(running):
    """A bind that fails during a reload undoes it: added ones closed, replaced ones bound again as before."""
    shared, same = free_port(), free_port()
    gateway, path = running(listeners_yaml(plain("w", shared, "reuse_port: true"), plain("c", same)))
    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("127.0.0.1", shared))  # shares w's port; w without reuse_port cannot bind beside it
        text = listeners_yaml(plain("w", shared), plain("c", same, "channel: c.in"), plain("added"))
        lines = reload_with(gateway, path, text, "reload: rolled back, listener w: cannot bind")
    finally:
        holder.close()
    text = "\n".join(lines)
    assert "Address already in use; still serving with the running config" in text
    assert "listener added (plain)" in text  # bound, then closed again
    assert f"listener c (plain) on 127.0.0.1:{same} -> udp.receive" in text  # bound again from its old config
    assert udp_exchange(shared, b"w") == (b"w", ("127.0.0.1", shared))
    assert udp_exchange(same, b"c") == (b"c", ("127.0.0.1", same))
    added = last_port(gateway, "added")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", added))  # closed by the rollback
    # The same reload without the conflict applies.
    reload_with(gateway, path, listeners_yaml(plain("w", shared), plain("added")),
                "reload: added added, removed c, rebound w")


def test_application_change_needs_a_restart_the_rest_applies(running):
    """A changed application is not applied (one line says a restart is needed); the listeners are."""
    gateway, path = running(listeners_yaml(plain("a")))
    text = listeners_yaml(plain("a"), plain("b"), app="otherapp:application", extra="limits: {reply_ttl: 30}\n")
    lines = reload_with(gateway, path, text,
                        "reload: added b, unchanged a; limits reply_ttl applied; application change needs a restart")
    assert any("reload: application changed: not applied, it needs a restart" in line for line in lines)
    b = last_port(gateway, "b")
    assert udp_exchange(b, b"echo") == (b"echo", ("127.0.0.1", b))  # still the running application


def test_sighup_while_stopping_is_ignored(running):
    """SIGHUP during a stop (an application call still draining) is ignored with one line; the stop ends with 0."""
    gateway, path = running(listeners_yaml(plain("a")))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.sendto(b"hang", ("127.0.0.1", gateway.port("a")))
        start = gateway.mark()
        gateway.send_signal(signal.SIGTERM)
        gateway.wait_for("received SIGTERM, stopping", DEADLINE, start=start)
        gateway.send_signal(signal.SIGHUP)
        gateway.wait_for("reload: ignored, the gateway is stopping", DEADLINE, start=start)
        gateway.send_signal(signal.SIGTERM)  # cut the drain short
        assert gateway.wait_exit(DEADLINE) == 0


@aio
async def test_sighup_during_a_reload_is_ignored(gateway):
    """A second SIGHUP while a reload runs is ignored with one line; the first reload completes."""
    from twisted.logger import globalLogPublisher

    service = await gateway(listeners_yaml(plain("a")), laterapp=LATER_APP)
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        service.on_sighup()
        service.on_sighup()
        await asyncio.wait_for(asyncio.shield(service._reloading), DEADLINE)
    finally:
        globalLogPublisher.removeObserver(events.append)
    text = [formatEvent(event) for event in events]
    assert "reload: ignored, a reload is already running" in text
    assert "reload: unchanged a" in text


def test_reload_adopts_the_same_fd_again(tmp_path, processes):
    """A changed listener with `fd` adopts the same inherited socket again: same port, no bind."""
    (tmp_path / "laterapp.py").write_text(LATER_APP)
    path = tmp_path / "gateway.yaml"
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port, fd = sock.getsockname()[1], sock.fileno()
    path.write_text(listeners_yaml(f"name: a, type: plain, fd: {fd}"))
    try:
        gateway = processes.start(GatewayProcess(str(path), pass_fds=[fd]))
    finally:
        sock.close()
    lines = reload_with(gateway, path, listeners_yaml(f"name: a, type: plain, fd: {fd}, channel: a.in"),
                        "reload: rebound a")
    assert f"listener a (plain) on 127.0.0.1:{port} -> a.in" in "\n".join(lines)
    assert udp_exchange(port, b"same socket") == (b"same socket", ("127.0.0.1", port))


@pytest.mark.netns
def test_reload_moves_a_multicast_listener_to_other_groups(pair, run_gateway, tmp_path):
    """A multicast listener whose groups changed is rebound on its port: the new group is answered, the old not."""
    from tests.test_multicast_netns import APP, G4, answer, ask

    path = tmp_path / "mc.yaml"
    text = ("application: nsapp:application\nlisteners:\n"  # APP's JSON answers: past 10 x the requests
            "  - {{name: m, type: multicast, port: 5000, groups: [{}], amplification: null}}\n")
    path.write_text(text.format(G4))
    gateway = run_gateway(path=path, modules={"nsapp": APP})
    assert answer(ask(pair, G4, 5000)[0])[1]["server"] == [G4, 5000]
    reload_with(gateway, path, text.format("239.1.2.4"), "reload: rebound m")
    assert answer(ask(pair, "239.1.2.4", 5000)[0])[1]["server"] == ["239.1.2.4", 5000]
    assert ask(pair, G4, 5000, marker=(pair.gw4, 5000))[0] == []  # the old group is no longer heard
