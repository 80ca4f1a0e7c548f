"""Multicast over two interfaces at once (two veth pairs between the namespaces), and a join the kernel
refuses with ENODEV because the interface went away between the check and the join."""

import os

import pytest

from tests.netns import ip
from tests.processes import child_env

pytestmark = pytest.mark.netns
G4, G6 = "239.1.2.5", "ff15::1235"

APP = '''
from gateway.consumer import UDPConsumer


class Announcer(UDPConsumer):
    """b"announce": sends b"announcement" to m.out, then replies b"done"; anything else is echoed."""

    async def udp_receive(self, message):
        if message["data"] == b"announce":
            await self.send_to("m.out", b"announcement")
            await self.reply(message, b"done")
        else:
            await self.reply(message, message["data"])


application = Announcer.as_asgi()
'''

# Imported by the gateway process (sitecustomize): once the test creates the trigger file, the next
# interface check deletes extra0 right after listing it, so the join by its index meets a device
# that no longer exists and the kernel answers ENODEV, as in a real race with a hot-unplug.
RACE = '''
import os
import subprocess

from gateway import interfaces

_list = interfaces.list_interfaces


def list_interfaces():
    found = _list()
    trigger = os.environ["UDPGATEWAY_TEST_TRIGGER"]
    if os.path.exists(trigger) and "extra0" in found and found["extra0"].ipv4:
        os.unlink(trigger)
        subprocess.run(["ip", "link", "del", "extra0"], check=True)
    return found


interfaces.list_interfaces = list_interfaces
'''


def test_announcement_goes_out_on_every_joined_interface(pair, run_gateway):
    """With groups joined on two interfaces, one send_channel message reaches each group on each
    interface, sent from that interface's own address; requests on both interfaces are answered."""
    second = pair.add_link()
    second_gw4, second_gw6 = second[pair.gw]
    gateway = run_gateway(
        "application: announcer:application\nlisteners:\n"
        f"  - {{name: m, type: multicast, port: 5030, groups: [{G4}, '{G6}'], interfaces: [{pair.gw_if}, vgw2], "
        "send_channel: m.out}\n", modules={"announcer": APP})
    for family in ("IPv4", "IPv6"):
        assert f"joined on {pair.gw_if} (index" in gateway.wait_for(f"listener m: {G4 if family == 'IPv4' else G6}")
    line4 = gateway.wait_for(f"listener m: {G4} joined on")
    assert pair.gw_if in line4 and "vgw2" in line4
    watchers = {(group, ifname): pair.listen("--port", 5030, "--join", group, "--ifname", ifname, "--count", 2,
                                             "--timeout", 5)
                for group in (G4, G6) for ifname in (pair.cl_if, "vcl2")}
    result = pair.client("--to", pair.gw4, 5030, "--data", "announce", "--timeout", 10)
    assert [r["data"] for r in result["replies"]] == [b"done"]
    heard = {key: sorted((r["ifname"], r["source"][0].split("%")[0]) for r in w.result()["replies"]
                         if r["data"] == b"announcement") for key, w in watchers.items()}
    # IPv4 memberships are per interface: each watcher hears its own link only, from that link's address.
    assert heard[(G4, pair.cl_if)] == [(pair.cl_if, pair.gw4)], heard
    assert heard[(G4, "vcl2")] == [("vcl2", second_gw4)], heard
    # An IPv6 socket hears its group on any interface: each watcher heard it once on each link.
    for ifname in (pair.cl_if, "vcl2"):
        assert [arrived for arrived, _source in heard[(G6, ifname)]] == sorted([pair.cl_if, "vcl2"]), (heard, gateway.log_text())
    for host in (pair.gw4, second_gw4, pair.gw6, second_gw6):
        assert [r["data"] for r in pair.client("--to", host, 5030, "--data", "hi")["replies"]] == [b"hi"]


def test_join_refused_with_enodev_is_logged_once_and_skipped(pair, run_gateway, tmp_path):
    """A join the kernel refuses with ENODEV (the interface vanished after it was listed) gives one
    line naming the interface and the cause; the listener keeps serving on its other interface."""
    ip("-n", pair.gw, "link", "add", "extra0", "type", "veth", "peer", "name", "extra1")
    ip("-n", pair.gw, "link", "set", "extra0", "up")  # no IPv4 address yet: not joined at startup
    (tmp_path / "sitecustomize.py").write_text(RACE)
    trigger = tmp_path / "trigger"
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), child_env()["PYTHONPATH"]]),
           "UDPGATEWAY_TEST_TRIGGER": str(trigger)}
    gateway = run_gateway("application: announcer:application\nlimits: {interface_poll: 0.2}\nlisteners:\n"
                          f"  - {{name: m, type: multicast, port: 5031, groups: [{G4}], "
                          f"interfaces: [{pair.gw_if}, extra0]}}\n", modules={"announcer": APP}, env=env)
    assert "extra0" not in gateway.wait_for(f"listener m: {G4} joined on {pair.gw_if}")
    trigger.touch()
    ip("-n", pair.gw, "addr", "add", f"10.251.{pair.n}.1/24", "dev", "extra0")
    line = gateway.wait_for("cannot join", 30)
    assert f"cannot join {G4} on extra0: the interface no longer exists (No such device); skipped" in line
    assert not trigger.exists()
    assert [r["data"] for r in pair.client("--to", G4, 5031, "--ifname", pair.cl_if)["replies"]] == [b"hello"]
    assert gateway.count("cannot join") == 1
    assert "Traceback" not in gateway.log_text()
