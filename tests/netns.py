"""Network namespaces and processes for the real-upstream tier: a test namespace, a namespace per node behind it.

One outer namespace, made per run under a unique name, holds a bridge; each node gets a namespace
of its own, joined to that bridge by a veth pair whose outer end lives in the outer namespace, so
no interface in the host's namespace is created and no packet can leave. Every process the tier
starts runs through `ip netns exec` in one of these namespaces; `close()` SIGKILLs each (and
anything else still inside a namespace this lab made) and deletes the namespaces.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.tools import find_tool, skip_or_fail


def require_ip() -> str:
    """The `ip` tool and root, which namespaces need: a test without them skips, and fails under CI=true."""
    ip = find_tool("ip")
    if ip is None:
        skip_or_fail("the ip tool (iproute2) is not installed")
    if os.geteuid() != 0:
        skip_or_fail("network namespaces need root")
    return ip


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


@dataclass
class Process:
    """A started process, the namespace it runs in, and the file that holds its stdout and stderr."""

    name: str
    namespace: str
    popen: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 25) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def describe(self, lines: int = 25) -> str:
        """Its state and its log's tail, for assertion messages."""
        state = "running" if self.alive() else f"exited with {self.popen.returncode}"
        return f"{self.name} ({state}); log {self.log}:\n{self.tail(lines)}"

    def kill(self) -> None:
        if self.alive():
            os.kill(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=30)


@dataclass
class Lab:
    """The outer test namespace with its bridge, and the node namespaces plugged into it."""

    name: str = field(default_factory=lambda: f"kthw-{uuid.uuid4().hex[:8]}")
    nodes: dict[str, str] = field(default_factory=dict)  # node name -> its namespace
    processes: list[Process] = field(default_factory=list)

    def __post_init__(self) -> None:
        _ip("netns", "add", self.name)
        try:
            _ip("-n", self.name, "link", "set", "lo", "up")
            _ip("-n", self.name, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.name, "link", "set", "br0", "up")
        except RuntimeError:
            self.close()
            raise

    def add_bridge_address(self, cidr: str) -> None:
        """An address for the outer namespace itself on the bridge: the operator's workstation."""
        _ip("-n", self.name, "addr", "add", cidr, "dev", "br0")

    def add_node(self, node: str, cidr: str) -> str:
        """A namespace for `node` with loopback and `cidr` on its eth0, plugged into the bridge."""
        namespace = f"{self.name}-{node}"
        _ip("netns", "add", namespace)
        self.nodes[node] = namespace
        outer = f"v{len(self.nodes)}"
        _ip("-n", self.name, "link", "add", outer, "type", "veth", "peer", "name", "eth0", "netns", namespace)
        _ip("-n", self.name, "link", "set", outer, "master", "br0", "up")
        _ip("-n", namespace, "link", "set", "lo", "up")
        _ip("-n", namespace, "addr", "add", cidr, "dev", "eth0")
        _ip("-n", namespace, "link", "set", "eth0", "up")
        return namespace

    def add_address(self, node: str, cidr: str) -> None:
        """Another address on a node's eth0 (the load balancer's public address on a controller)."""
        _ip("-n", self.nodes[node], "addr", "add", cidr, "dev", "eth0")

    def add_route(self, node: str | None, destination: str, via: str) -> None:
        """A route in a node's namespace (None: the outer one); routes never point outside the lab."""
        _ip("-n", self.nodes[node] if node else self.name, "route", "add", destination, "via", via)

    def command(self, node: str | None, argv: Sequence[str]) -> list[str]:
        """argv run inside a node's namespace (None: the outer one)."""
        return ["ip", "netns", "exec", self.nodes[node] if node else self.name, *argv]

    def run(
        self, node: str | None, argv: Sequence[str], *, stdin: bytes | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(self.command(node, argv), input=stdin, capture_output=True, timeout=timeout)

    def start(self, name: str, node: str, argv: Sequence[str], log: Path) -> Process:
        """Start argv in the node's namespace, in a session of its own, its output into `log`."""
        with log.open("wb") as out:
            popen = subprocess.Popen(
                self.command(node, argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd="/",  # as systemd starts a service
                start_new_session=True,
            )
        process = Process(name, self.nodes[node], popen, log)
        self.processes.append(process)
        return process

    def close(self) -> None:
        """SIGKILL every process started here and any left in the lab's namespaces; delete the namespaces."""
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
                process.kill()
        namespaces = [*self.nodes.values(), self.name]
        for namespace in namespaces:
            # Children a process forked before it died (none expected) would keep the namespace alive.
            pids = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
        deadline = time.monotonic() + 10
        for namespace in namespaces:
            while subprocess.run(["ip", "netns", "delete", namespace], capture_output=True).returncode != 0:
                if time.monotonic() > deadline or not Path(f"/run/netns/{namespace}").exists():
                    break
                time.sleep(0.2)
