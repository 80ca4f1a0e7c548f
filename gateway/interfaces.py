"""This host's network: interfaces (names, indexes, addresses, flags, through netifaces) and net sysctls."""

import ipaddress
import socket
import sys
from dataclasses import dataclass

import netifaces

# <linux/if.h> interface flags, as /sys/class/net/<name>/flags shows them.
IFF_UP = 0x1
IFF_LOOPBACK = 0x8
IFF_MULTICAST = 0x1000
LINUX = sys.platform.startswith("linux")


@dataclass(frozen=True)
class Interface:
    """One interface as it was when read; addresses without an IPv6 "%scope"."""

    name: str
    index: int
    ipv4: tuple[str, ...]
    ipv6: tuple[str, ...]
    up: bool
    multicast: bool
    loopback: bool

    def addresses(self, family):
        """Its addresses of one family (socket.AF_INET or socket.AF_INET6)."""
        return self.ipv4 if family == socket.AF_INET else self.ipv6 if family == socket.AF_INET6 else ()


def list_interfaces():
    """Every interface of this host, name -> Interface, read afresh on each call."""
    found = {}
    for name in netifaces.interfaces():
        interface = _read_interface(name)
        if interface is not None:
            found[name] = interface
    return found


def find_interface(spec, interfaces=None):
    """The interface named `spec`, or holding address `spec` ("fe80::1%eth0" too); None if none."""
    interfaces = list_interfaces() if interfaces is None else interfaces
    if spec in interfaces:
        return interfaces[spec]
    address, _, scope = spec.partition("%")
    wanted = _parse_ip(address)
    if wanted is None:
        return None
    candidates = interfaces.values()
    if scope:
        candidates = [i for i in candidates if scope in (i.name, str(i.index))]
    for interface in candidates:
        if any(_parse_ip(a) == wanted for a in interface.ipv4 + interface.ipv6):
            return interface
    return _loopback_owner(wanted, candidates)


def _loopback_owner(address, interfaces):
    """On Linux, the loopback interface for any of 127.0.0.0/8, not only the 127.0.0.1 it lists.

    lo's 127.0.0.1/8 puts the whole /8 in the local routing table, so every one of them binds and answers.
    """
    if not (LINUX and address.version == 4 and address.is_loopback):
        return None
    return next((i for i in interfaces if i.loopback and any(_is_loopback(a) for a in i.ipv4)), None)


def default_multicast_interfaces(family, interfaces=None):
    """Up, multicast-capable, non-loopback interfaces with an address of `family`."""
    interfaces = list_interfaces() if interfaces is None else interfaces
    return [
        interface
        for interface in interfaces.values()
        if interface.up and interface.multicast and not interface.loopback and interface.addresses(family)
    ]


def read_sysctl(name):
    """An integer network sysctl such as "net.ipv4.igmp_max_memberships" (Linux /proc/sys), or None."""
    if not LINUX or not name.startswith("net.") or "/" in name:
        return None
    try:
        with open("/proc/sys/" + name.replace(".", "/")) as file:
            return int(file.read().strip())
    except (OSError, ValueError):
        return None


def _read_interface(name):
    """One Interface, or None if it vanished while we read it."""
    try:
        addresses = netifaces.ifaddresses(name)
        index = socket.if_nametoindex(name)
    except (ValueError, OSError):
        return None
    ipv4 = tuple(a["addr"] for a in addresses.get(netifaces.AF_INET, ()) if "addr" in a)
    ipv6 = tuple(a["addr"].partition("%")[0] for a in addresses.get(netifaces.AF_INET6, ()) if "addr" in a)
    flags = _read_flags(name)
    if flags is None:
        loopback = name == "lo" or any(_is_loopback(a) for a in ipv4 + ipv6)
        return Interface(name, index, ipv4, ipv6, up=True, multicast=True, loopback=loopback)
    return Interface(
        name,
        index,
        ipv4,
        ipv6,
        up=bool(flags & IFF_UP),
        multicast=bool(flags & IFF_MULTICAST),
        loopback=bool(flags & IFF_LOOPBACK),
    )


def _read_flags(name):
    """The interface's flags from sysfs (Linux), or None where they cannot be read."""
    try:
        with open(f"/sys/class/net/{name}/flags") as flags:
            return int(flags.read().strip(), 16)
    except (OSError, ValueError):
        return None


def _parse_ip(text):
    """An ipaddress object without scope, or None if `text` is not an address."""
    try:
        return ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        return None


def _is_loopback(text):
    address = _parse_ip(text)
    return address is not None and address.is_loopback
