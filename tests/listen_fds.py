"""Exec a program the way systemd-socket-activate does: `listen_fds.py FDS NAMES|- -- ARGV...`.

FDS (comma-separated, as inherited) move to 3, 4, ...; LISTEN_FDS, LISTEN_FDNAMES and
LISTEN_PID (this process's pid, which the exec keeps) are set.
"""

import fcntl
import os
import sys


def main(argv):
    fds = [int(fd) for fd in argv[1].split(",") if fd]
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
