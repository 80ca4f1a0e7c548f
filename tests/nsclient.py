"""A bounded UDP test client, run inside a namespace: send at most one datagram, collect replies, print JSON.

    python tests/nsclient.py --to 239.1.2.3 5000 --ifname vcl --data hello --count 1 --timeout 30

Prints one JSON object: {"sent_from": [host, port], "replies": [{"data": b64, "source": [host, port],
"ttl": n, "dst": addr,
"ifname": arrival interface}, ...]}. With --ready it first prints "ready" once bound (and joined).

With --marker HOST PORT DATA MATCH it then sends DATA to HOST:PORT from the same socket and reads
until a reply containing MATCH: "replies" are those that came before it, "marker" is that reply.
A reply to the marker proves anything sent earlier that was going to be answered has been, so
"exactly one reply" or "no reply" needs no fixed window.
"""

import argparse
import base64
import json
import socket
import struct
import sys
import time

IP_PKTINFO, IP_RECVTTL, IP_MULTICAST_ALL = 8, 12, 49


def parse_args(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--family", type=int, choices=(4, 6), default=None)
    parser.add_argument("--bind", default=None, help="local address (default: the wildcard)")
    parser.add_argument("--port", type=int, default=0, help="local port")
    parser.add_argument("--ifname", default=None, help="interface for multicast sends, joins and scopes")
    parser.add_argument("--join", action="append", default=[], help="group to join on --ifname")
    parser.add_argument("--to", nargs=2, metavar=("HOST", "PORT"), default=None)
    parser.add_argument("--ttl", type=int, default=None, help="TTL / hop limit of the datagram sent")
    parser.add_argument("--data", default="hello")
    parser.add_argument("--hex", action="store_true", help="--data is hexadecimal bytes")
    parser.add_argument("--count", type=int, default=1, help="stop after this many replies")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for replies (max 30)")
    parser.add_argument("--marker", nargs=4, metavar=("HOST", "PORT", "DATA", "MATCH"), default=None)
    parser.add_argument("--ready", action="store_true")
    args = parser.parse_args(argv)
    if args.family is None:
        hosts = [h for h in (args.bind, args.to and args.to[0], *args.join) if h]
        args.family = 6 if any(":" in h for h in hosts) else 4
    args.timeout = min(args.timeout, 30.0)
    if args.marker:
        args.count = 1 << 16  # ends at the marker's reply (or the timeout)
    args.data = bytes.fromhex(args.data) if args.hex else args.data.encode()
    return args


def make_socket(args):
    family = socket.AF_INET6 if args.family == 6 else socket.AF_INET
    skt = socket.socket(family, socket.SOCK_DGRAM)
    skt.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ifindex = socket.if_nametoindex(args.ifname) if args.ifname else 0
    if family == socket.AF_INET6:
        skt.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        skt.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
        skt.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        skt.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
        scope = ifindex if args.bind and args.bind.startswith("fe80") else 0
        skt.bind((args.bind or "::", args.port, 0, scope))
    else:
        skt.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
        skt.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        skt.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
        skt.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)
        skt.bind((args.bind or "0.0.0.0", args.port))
    for group in args.join:
        join(skt, family, group, ifindex)
    return skt, ifindex


def join(skt, family, group, ifindex):
    if family == socket.AF_INET6:
        mreq = socket.inet_pton(family, group) + struct.pack("=I", ifindex)
        skt.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
    else:
        mreq = socket.inet_aton(group) + b"\0" * 4 + struct.pack("=i", ifindex)
        skt.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)


def send(skt, args, ifindex, to=None, data=None):
    host, port = to or (args.to[0], int(args.to[1]))
    data = args.data if data is None else data
    multicast = host.startswith("ff") or (":" not in host and 224 <= int(host.split(".")[0]) < 240)
    if skt.family == socket.AF_INET6:
        if multicast:
            skt.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifindex)
        if args.ttl is not None:
            option = socket.IPV6_MULTICAST_HOPS if multicast else socket.IPV6_UNICAST_HOPS
            skt.setsockopt(socket.IPPROTO_IPV6, option, args.ttl)
        host, _, scope = host.partition("%")
        scope_id = socket.if_nametoindex(scope) if scope else (ifindex if host.startswith(("fe80", "ff02")) else 0)
        skt.sendto(data, (host, port, 0, scope_id))
    else:
        if multicast and ifindex:
            mreqn = struct.pack("=4s4si", b"\0" * 4, b"\0" * 4, ifindex)
            skt.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
        if args.ttl is not None:
            option = socket.IP_MULTICAST_TTL if multicast else socket.IP_TTL
            skt.setsockopt(socket.IPPROTO_IP, option, args.ttl)
        skt.sendto(data, (host, port))


def receive(skt, args, until=None):
    """Replies until `count`, the timeout, or one containing `until` (bytes): (replies before it, that one)."""
    replies, deadline = [], time.monotonic() + args.timeout
    while len(replies) < args.count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        skt.settimeout(remaining)
        try:
            data, ancdata, _flags, addr = skt.recvmsg(65535, 256)
        except socket.timeout:
            break
        if until is not None and until in data:
            return replies, describe(data, ancdata, addr)
        replies.append(describe(data, ancdata, addr))
    return replies, None


def describe(data, ancdata, addr):
    reply = {"data": base64.b64encode(data).decode(), "source": [scoped(addr), addr[1]], "ttl": None, "dst": None,
             "ifname": None}
    for level, kind, value in ancdata:
        if level == socket.IPPROTO_IP and kind == socket.IP_TTL:
            reply["ttl"] = struct.unpack("=i", value[:4])[0]
        elif level == socket.IPPROTO_IPV6 and kind == socket.IPV6_HOPLIMIT:
            reply["ttl"] = struct.unpack("=i", value[:4])[0]
        elif level == socket.IPPROTO_IP and kind == IP_PKTINFO:
            reply["dst"] = socket.inet_ntop(socket.AF_INET, value[8:12])
            reply["ifname"] = socket.if_indextoname(struct.unpack("=i", value[:4])[0])
        elif level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO:
            reply["dst"] = socket.inet_ntop(socket.AF_INET6, value[:16])
            reply["ifname"] = socket.if_indextoname(struct.unpack("=I", value[16:20])[0])
    return reply


def scoped(addr):
    if len(addr) > 3 and addr[3] and "%" not in addr[0]:
        return f"{addr[0]}%{socket.if_indextoname(addr[3])}"
    return addr[0]


def main(argv=None):
    args = parse_args(argv if argv is not None else sys.argv[1:])
    skt, ifindex = make_socket(args)
    if args.ready:
        print("ready", flush=True)
    if args.to:
        send(skt, args, ifindex)
    until = None
    if args.marker:
        host, port, data, match = args.marker
        send(skt, args, ifindex, (host, int(port)), data.encode())
        until = match.encode()
    local = skt.getsockname()
    replies, marker = receive(skt, args, until) if args.count else ([], None)
    result = {"sent_from": [scoped(local), local[1]], "replies": replies}
    if args.marker:
        result["marker"] = marker
    print(json.dumps(result), flush=True)
    skt.close()


if __name__ == "__main__":
    main()
