"""The local cloud's network: one namespace the test makes, a bridge as the KTHW subnet, a tap per VM."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field

NODE_CIDR = ipaddress.ip_network("10.240.0.0/24")
GATEWAY = ipaddress.ip_interface("10.240.0.1/24")
# Stand-ins for GCE's external addresses (TEST-NET-3): they exist only on this namespace's bridge.
EXTERNAL_CIDR = ipaddress.ip_network("203.0.113.0/24")
BRIDGE = "kthw-br0"


def _ip(*argv: str) -> str:
    result = subprocess.run(["ip", *argv], capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(argv)}: {result.stderr.strip()}")
    return result.stdout


@dataclass
class Namespace:
    """A network namespace holding the bridge; nothing in it routes anywhere but the bridge.

    It has no link to the host (no veth, no default route, no NAT), so no packet can leave it.
    """

    name: str = field(default_factory=lambda: f"kthw-lc-{os.getpid()}")
    taps: list[str] = field(default_factory=list)

    def create(self) -> Namespace:
        _ip("netns", "add", self.name)
        self.exec_ip("link", "set", "lo", "up")
        self.exec_ip("link", "add", BRIDGE, "type", "bridge")
        self.exec_ip("addr", "add", str(GATEWAY), "dev", BRIDGE)
        self.exec_ip("link", "set", BRIDGE, "up")
        # External addresses are on-link on the bridge, as if GCE's 1:1 NAT answered for them.
        self.exec_ip("route", "add", str(EXTERNAL_CIDR), "dev", BRIDGE)
        return self

    def exec_ip(self, *argv: str) -> str:
        return _ip("-n", self.name, *argv)

    def enter(self) -> tuple[str, ...]:
        """What runs a command in the namespace's network only (mounts stay the host's, unlike `command`)."""
        return ("nsenter", f"--net=/run/netns/{self.name}")

    def command(self, *argv: str) -> list[str]:
        """argv run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def add_tap(self, name: str) -> str:
        """A tap device on the bridge, for one VM's NIC."""
        self.exec_ip("tuntap", "add", "dev", name, "mode", "tap")
        self.exec_ip("link", "set", name, "master", BRIDGE)
        self.exec_ip("link", "set", name, "up")
        self.taps.append(name)
        return name

    def pids(self) -> list[int]:
        result = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True, check=False)
        return [int(p) for p in result.stdout.split()]

    def destroy(self) -> None:
        """Kill what still runs in the namespace (only processes this test started there), then delete it."""
        if self.name not in _ip("netns", "list").split():
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self.pids()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 10
            while self.pids() and time.monotonic() < deadline:
                time.sleep(0.2)
            if not self.pids():
                break
        _ip("netns", "del", self.name)

    def __enter__(self) -> Namespace:
        return self.create()

    def __exit__(self, *_: object) -> None:
        self.destroy()
