"""Linux socket options Python's socket module lacks, and their struct packing."""

import errno
import ipaddress
import socket
import struct
import sys

LINUX = sys.platform.startswith("linux")


def _option(name, linux_number):
    """The socket module's constant, else its Linux number on Linux, else None (unavailable)."""
    return getattr(socket, name, linux_number if LINUX else None)


# From <linux/in.h> and <linux/in6.h>; Python 3.11 exports none of the
# IPv4 ones (https://github.com/python/cpython/issues/75989). Elsewhere the
# numbers differ, so an option Python does not export there is None.
IP_PKTINFO = _option("IP_PKTINFO", 8)
IP_MULTICAST_ALL = _option("IP_MULTICAST_ALL", 49)
IP_ADD_SOURCE_MEMBERSHIP = _option("IP_ADD_SOURCE_MEMBERSHIP", 39)
IP_DROP_SOURCE_MEMBERSHIP = _option("IP_DROP_SOURCE_MEMBERSHIP", 40)
MCAST_JOIN_SOURCE_GROUP = _option("MCAST_JOIN_SOURCE_GROUP", 46)
MCAST_LEAVE_SOURCE_GROUP = _option("MCAST_LEAVE_SOURCE_GROUP", 47)
IPV6_MULTICAST_ALL = _option("IPV6_MULTICAST_ALL", 29)
IPV6_RECVPKTINFO = _option("IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO = _option("IPV6_PKTINFO", 50)


def setopt(skt, level, option, value):
    """setsockopt, raising OSError(ENOPROTOOPT) for an option this platform lacks (None)."""
    if option is None:
        raise OSError(errno.ENOPROTOOPT, "this platform lacks the socket option")
    skt.setsockopt(level, option, value)

IN_PKTINFO = struct.Struct("=I4s4s")  # ipi_ifindex, ipi_spec_dst, ipi_addr
IN6_PKTINFO = struct.Struct("=16sI")  # ipi6_addr, ipi6_ifindex
_SOCKADDR_STORAGE = 128
# struct group_source_req: a 32-bit interface index padded to the 8-byte
# alignment of the two sockaddr_storage members that follow it.
GROUP_SOURCE_REQ = struct.Struct(f"=I4x{_SOCKADDR_STORAGE}s{_SOCKADDR_STORAGE}s")


def family_of(address):
    """socket.AF_INET or AF_INET6 for a textual address (a %scope is allowed)."""
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def packed(address):
    """The network-order bytes of an address, dropping any %scope."""
    return ipaddress.ip_address(address.split("%", 1)[0]).packed


def ip_mreqn(group, ifindex):
    """struct ip_mreqn for IP_ADD_MEMBERSHIP by interface index."""
    return struct.pack("=4s4si", packed(group), b"\0" * 4, ifindex)


def ipv6_mreq(group, ifindex):
    """struct ipv6_mreq for IPV6_JOIN_GROUP / IPV6_LEAVE_GROUP."""
    return struct.pack("=16sI", packed(group), ifindex)


def sockaddr_storage(address):
    """A sockaddr_in / sockaddr_in6 (port 0) padded to sockaddr_storage."""
    if family_of(address) == socket.AF_INET:
        raw = struct.pack("=H2x4s8x", socket.AF_INET, packed(address))
    else:
        raw = struct.pack("=H2xI16sI", socket.AF_INET6, 0, packed(address), 0)
    return raw.ljust(_SOCKADDR_STORAGE, b"\0")


def group_source_req(ifindex, group, source):
    """struct group_source_req for MCAST_JOIN_SOURCE_GROUP (either family; Linux layout)."""
    return GROUP_SOURCE_REQ.pack(ifindex, sockaddr_storage(group), sockaddr_storage(source))


def in_pktinfo(ifindex, spec_dst):
    """Ancillary data choosing the outgoing interface and source of an IPv4 send."""
    return IN_PKTINFO.pack(ifindex, packed(spec_dst), b"\0" * 4)


def in6_pktinfo(ifindex, source):
    """Ancillary data choosing the outgoing interface and source of an IPv6 send."""
    return IN6_PKTINFO.pack(packed(source), ifindex)


def parse_pktinfo(ancdata):
    """(destination, ifindex, spec_dst) from recvmsg ancillary data, or Nones."""
    for level, kind, data in ancdata:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO:
            ifindex, spec_dst, addr = IN_PKTINFO.unpack(data[: IN_PKTINFO.size])
            return socket.inet_ntop(socket.AF_INET, addr), ifindex, socket.inet_ntop(socket.AF_INET, spec_dst)
        if level == socket.IPPROTO_IPV6 and kind == IPV6_PKTINFO:
            addr, ifindex = IN6_PKTINFO.unpack(data[: IN6_PKTINFO.size])
            return socket.inet_ntop(socket.AF_INET6, addr), ifindex, None
    return None, None, None


def ancillary_space():
    """Buffer size for one pktinfo control message of either family."""
    return socket.CMSG_SPACE(max(IN_PKTINFO.size, IN6_PKTINFO.size))
