"""The local platform's user-space Ethernet switch: one unix datagram socket, a port per VM socket beside it.

Runs as its own process (`python3 switch.py DIR`), standard library only, without root. Each VM's
cluster NIC is a qemu `-netdev dgram` bound to DIR/<node>.sock that sends every frame to
DIR/switch.sock; the switch learns which socket each source MAC lives behind, forwards unicast
there and floods broadcast, multicast and unknown destinations to every other VM socket in DIR.
Datagram sockets keep frame boundaries, and neither side holds a connection: a VM or the switch
can restart and the other keeps working.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import sys
from pathlib import Path
from types import FrameType

SWITCH_SOCKET = "switch.sock"
PID_FILE = "switch.pid"
# An Ethernet frame without FCS, 1514 bytes at the default MTU; room for jumbo frames too.
MAX_FRAME = 65536
# Errors that mean "nobody listens behind this socket any more": forget it, drop the frame.
_GONE = (errno.ECONNREFUSED, errno.ENOENT, errno.ENOTSOCK)


class Switch:
    """A learning switch between the datagram sockets of one directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / SWITCH_SOCKET
        self.table: dict[bytes, str] = {}  # source MAC -> the socket it came from
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        # A stale socket from a switch that did not exit cleanly (host reboot) would block bind().
        self.path.unlink(missing_ok=True)
        self.sock.bind(str(self.path))
        os.chmod(self.path, 0o600)

    def ports(self) -> list[str]:
        """Every VM socket in the directory: the flood targets, found afresh so a new VM needs no signal."""
        with os.scandir(self.directory) as entries:
            return [e.path for e in entries if e.name.endswith(".sock") and e.name != SWITCH_SOCKET]

    def send(self, frame: bytes, port: str) -> None:
        # Never block on one VM's full queue (a paused guest): drop the frame as a real switch would.
        try:
            self.sock.sendto(frame, socket.MSG_DONTWAIT, port)
        except OSError as error:
            if error.errno in _GONE:
                for mac in [m for m, p in self.table.items() if p == port]:
                    del self.table[mac]
            elif error.errno not in (errno.EAGAIN, errno.ENOBUFS):
                raise

    def forward(self, frame: bytes, source: str) -> None:
        """Learn the frame's source, then send it where its destination lives (or everywhere else)."""
        if len(frame) < 14:
            return
        destination, origin = frame[0:6], frame[6:12]
        if not origin[0] & 1:
            self.table[origin] = source
        target = None if destination[0] & 1 else self.table.get(destination)
        if target is not None:
            if target != source:
                self.send(frame, target)
            return
        for port in self.ports():
            if port != source:
                self.send(frame, port)

    def run(self) -> None:
        while True:
            frame, source = self.sock.recvfrom(MAX_FRAME)
            # An unbound sender has no address to learn or to answer: not one of our VMs.
            if isinstance(source, str) and source:
                self.forward(frame, source)

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)


def main(argv: list[str]) -> int:
    """`switch.py DIR`: serve DIR until SIGTERM, with DIR/switch.pid naming this process."""
    if len(argv) != 2:
        print(f"usage: {argv[0]} DIR", file=sys.stderr)
        return 2
    directory = Path(argv[1]).resolve()
    switch = Switch(directory)
    pid_file = directory / PID_FILE

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    pid_file.write_text(f"{os.getpid()}\n")
    try:
        switch.run()
    finally:
        switch.close()
        with contextlib.suppress(FileNotFoundError):
            if pid_file.read_text().strip() == str(os.getpid()):
                pid_file.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
