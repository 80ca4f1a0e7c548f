"""Tests for gateway.interfaces: the real loopback interface and fabricated interface tables."""

import socket

import netifaces
import pytest

from gateway import interfaces
from gateway.interfaces import Interface, default_multicast_interfaces, find_interface, list_interfaces
from tests.support import skip_or_fail


def make(name, index, ipv4=(), ipv6=(), *, up=True, multicast=True, loopback=False):
    return Interface(name, index, tuple(ipv4), tuple(ipv6), up=up, multicast=multicast, loopback=loopback)


FAKE = {
    "lo": make("lo", 1, ["127.0.0.1"], ["::1"], multicast=False, loopback=True),
    "eth0": make("eth0", 2, ["192.0.2.2"], ["2001:db8::2", "fe80::1"]),
    "eth1": make("eth1", 3, ["198.51.100.3"], ["fe80::1"]),
    "down0": make("down0", 4, ["203.0.113.4"], ["2001:db8::4"], up=False),
    "nomc0": make("nomc0", 5, ["203.0.113.5"], ["2001:db8::5"], multicast=False),
    "v6only": make("v6only", 6, [], ["2001:db8::6"]),
}


def lo_has_ipv6():
    return "::1" in list_interfaces()["lo"].ipv6


def test_list_interfaces_reads_loopback():
    """The loopback interface is listed with its index, 127.0.0.1 and the loopback flag."""
    lo = list_interfaces()["lo"]
    assert lo.index == socket.if_nametoindex("lo")
    assert "127.0.0.1" in lo.ipv4
    assert lo.loopback and lo.up


def test_list_interfaces_is_read_afresh():
    """Each call reads the host again and returns a new dict."""
    assert list_interfaces() is not list_interfaces()


def test_ipv6_addresses_have_no_scope():
    """Link-local addresses are listed without their "%scope" suffix."""
    for interface in list_interfaces().values():
        assert not any("%" in address for address in interface.ipv6)


@pytest.mark.parametrize("spec", ["lo", "127.0.0.1", "::1"])
def test_find_loopback(spec):
    """The loopback interface is found by name, by 127.0.0.1 and by ::1."""
    if spec == "::1" and not lo_has_ipv6():
        skip_or_fail("lo has no ::1 here (IPv6 disabled)")
    assert find_interface(spec).name == "lo"


@pytest.mark.parametrize("spec", ["nosuch0", "203.0.113.250", "not an address", "", "fe80::1%nosuch0"])
def test_find_unknown_gives_none(spec):
    """An unknown name or an address no interface has gives None."""
    assert find_interface(spec) is None


@pytest.mark.parametrize(
    "spec, name",
    [
        ("eth0", "eth0"),
        ("192.0.2.2", "eth0"),
        ("2001:DB8::2", "eth0"),
        ("fe80::1%eth1", "eth1"),
        ("fe80::1%3", "eth1"),
        ("fe80::1%eth0", "eth0"),
        ("fe80::1", "eth0"),
    ],
)
def test_find_in_given_table(spec, name):
    """Names, addresses in any spelling, and scoped link-local addresses pick their interface."""
    assert find_interface(spec, FAKE).name == name


def test_find_scope_must_hold_the_address():
    """A scoped address is looked for on that interface only."""
    assert find_interface("192.0.2.2%eth1", FAKE) is None
    assert find_interface("fe80::1%lo", FAKE) is None


@pytest.mark.parametrize(
    "family, names",
    [(socket.AF_INET, ["eth0", "eth1"]), (socket.AF_INET6, ["eth0", "eth1", "v6only"])],
)
def test_default_multicast_interfaces_filter(family, names):
    """Only up, multicast-capable, non-loopback interfaces with an address of the family qualify."""
    assert [i.name for i in default_multicast_interfaces(family, FAKE)] == names


def test_default_multicast_interfaces_exclude_loopback():
    """On the real host, loopback is never a default multicast interface."""
    for family in (socket.AF_INET, socket.AF_INET6):
        assert all(not i.loopback for i in default_multicast_interfaces(family))
        assert "lo" not in [i.name for i in default_multicast_interfaces(family)]


def test_addresses_by_family():
    """Interface.addresses picks one family's addresses."""
    eth0 = FAKE["eth0"]
    assert eth0.addresses(socket.AF_INET) == ("192.0.2.2",)
    assert eth0.addresses(socket.AF_INET6) == ("2001:db8::2", "fe80::1")


@pytest.fixture
def fake_netifaces(monkeypatch):
    """netifaces and if_nametoindex answering for two made-up interfaces."""
    table = {
        "lo": {netifaces.AF_INET: [{"addr": "127.0.0.1"}], netifaces.AF_INET6: [{"addr": "::1"}]},
        "wlan9": {
            netifaces.AF_INET: [{"addr": "192.0.2.9"}],
            netifaces.AF_INET6: [{"addr": "fe80::9%wlan9"}, {"addr": "2001:db8::9"}],
        },
        "gone0": None,
    }

    def ifaddresses(name):
        if table[name] is None:
            raise ValueError("You must specify a valid interface name.")
        return table[name]

    monkeypatch.setattr(netifaces, "interfaces", lambda: list(table))
    monkeypatch.setattr(netifaces, "ifaddresses", ifaddresses)
    monkeypatch.setattr(socket, "if_nametoindex", lambda name: {"lo": 1, "wlan9": 9}[name])
    return table


def test_flags_from_sysfs(fake_netifaces, monkeypatch):
    """Flags come from /sys/class/net/<name>/flags: IFF_UP, IFF_LOOPBACK, IFF_MULTICAST."""
    flags = {"lo": 0x9, "wlan9": 0x1002}
    monkeypatch.setattr(interfaces, "_read_flags", flags.get)
    found = list_interfaces()
    assert found["lo"] == make("lo", 1, ["127.0.0.1"], ["::1"], up=True, multicast=False, loopback=True)
    assert found["wlan9"] == make("wlan9", 9, ["192.0.2.9"], ["fe80::9", "2001:db8::9"], up=False)


def test_vanished_interface_is_skipped(fake_netifaces, monkeypatch):
    """An interface that disappears while being read is left out."""
    monkeypatch.setattr(interfaces, "_read_flags", lambda name: 0x1003)
    assert set(list_interfaces()) == {"lo", "wlan9"}


def test_unreadable_flags_assume_up_and_multicast(fake_netifaces, monkeypatch):
    """Without sysfs, interfaces count as up and multicast; loopback by name or by address."""
    monkeypatch.setattr(interfaces, "_read_flags", lambda name: None)
    found = list_interfaces()
    assert found["lo"].loopback and found["lo"].up and found["lo"].multicast
    assert not found["wlan9"].loopback and found["wlan9"].up and found["wlan9"].multicast


def test_loopback_by_address_when_flags_unreadable(monkeypatch):
    """An interface not named "lo" but holding 127.0.0.1 counts as loopback without sysfs."""
    monkeypatch.setattr(netifaces, "interfaces", lambda: ["lo0"])
    monkeypatch.setattr(netifaces, "ifaddresses", lambda name: {netifaces.AF_INET: [{"addr": "127.0.0.1"}]})
    monkeypatch.setattr(socket, "if_nametoindex", lambda name: 1)
    monkeypatch.setattr(interfaces, "_read_flags", lambda name: None)
    assert list_interfaces()["lo0"].loopback


def test_read_flags_of_loopback():
    """The real loopback's sysfs flags say up and loopback."""
    flags = interfaces._read_flags("lo")
    if flags is None:
        skip_or_fail("no /sys/class/net here")
    assert flags & interfaces.IFF_UP and flags & interfaces.IFF_LOOPBACK


@pytest.mark.parametrize("spec, name", [("127.0.0.2", "lo"), ("127.255.255.254", "lo"), ("128.0.0.1", None),
                                        ("::2", None), ("127.0.0.2%eth0", None)])
def test_any_of_127_0_0_0_8_belongs_to_loopback_on_linux(spec, name, monkeypatch):
    """On Linux every address of 127.0.0.0/8 is local (lo's 127.0.0.1/8 route), so lo owns them all."""
    monkeypatch.setattr(interfaces, "LINUX", True)
    found = find_interface(spec, FAKE)
    assert (found.name if found else None) == name
    monkeypatch.setattr(interfaces, "LINUX", False)
    assert find_interface("127.0.0.2", FAKE) is None


def test_real_host_127_0_0_2_is_loopback():
    """On this (Linux) host 127.0.0.2 is found on the loopback interface."""
    if not interfaces.LINUX:
        pytest.skip("only Linux answers on all of 127.0.0.0/8")
    assert find_interface("127.0.0.2").loopback


@pytest.mark.skipif(not interfaces.LINUX, reason="/proc/sys is Linux's")
def test_read_sysctl_reads_proc_sys():
    """read_sysctl reads a net sysctl as /proc/sys shows it, and gives None for unknown or non-net names."""
    with open("/proc/sys/net/core/rmem_max") as file:
        assert interfaces.read_sysctl("net.core.rmem_max") == int(file.read())
    assert interfaces.read_sysctl("net.ipv4.no_such_sysctl") is None
    assert interfaces.read_sysctl("kernel.pid_max") is None
    assert interfaces.read_sysctl("net.ipv4/../../kernel.pid_max") is None
