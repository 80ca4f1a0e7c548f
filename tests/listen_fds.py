"""Exec a program the way systemd-socket-activate does: `listen_fds.py FDS NAMES|- -- ARGV...`.

FDS (comma-separated: inherited fd numbers, or bind:HOST:PORT for a UDP socket bound here,
in this process's network namespace) move to 3, 4, ...; LISTEN_FDS, LISTEN_FDNAMES and
LISTEN_PID (this process's pid, which the exec keeps) are set.
"""

import fcntl
import os
import socket
import sys


def socket_fd(spec):
    """An inherited fd number, or the fd of a new UDP socket bound to bind:HOST:PORT."""
    if not spec.startswith("bind:"):
        return int(spec)
    host, _, port = spec[len("bind:"):].rpartition(":")
    host = host.strip("[]")
    skt = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    skt.bind((host, int(port)))
    return skt.detach()


def main(argv):
    fds = [socket_fd(spec) for spec in argv[1].split(",") if spec]
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in fds]  # out of the way of 3, 4, ...
    for fd in fds:
        os.close(fd)
    for target, fd in enumerate(high, 3):
        os.dup2(fd, target)  # inheritable, as systemd passes them
        os.close(fd)
    os.environ["LISTEN_FDS"] = str(len(fds))
    if argv[2] != "-":
        os.environ["LISTEN_FDNAMES"] = argv[2]
    os.environ["LISTEN_PID"] = str(os.getpid())
    os.execv(argv[4], argv[4:])


if __name__ == "__main__":
    main(sys.argv)
