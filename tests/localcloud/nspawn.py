"""Nodes as systemd-nspawn machines from the image's tree: native-speed systemd and sshd, no kubelet.

systemd and sshd boot in seconds, but the container shares the host's kernel and cgroups (v1
hybrid here; runc fails inside), so this suits controllers, never workers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.localcloud.image import Image
from tests.localcloud.net import BRIDGE, Namespace
from tests.localcloud.vm import Instance


@dataclass
class Machine:
    """One booted nspawn machine on the namespace's bridge, its writes on a tmpfs over the shared tree."""

    instance: Instance
    image: Image
    namespace: Namespace
    workdir: Path
    # Block devices as (host path, guest path): a persistent disk, as GCE attaches it.
    devices: tuple[tuple[str, str], ...] = ()
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    started: float = field(default=0.0, init=False)

    @property
    def console(self) -> Path:
        return self.workdir / "console.log"

    def start(self) -> Machine:
        meta = self.workdir / "metadata"
        meta.mkdir(parents=True, exist_ok=True)
        for key, value in self.instance.metadata().items():
            (meta / key).write_text(value)
        # nsenter, not `ip netns exec`: the latter remounts /sys, hiding the cgroup mounts nspawn needs.
        argv = [
            "nsenter",
            f"--net=/run/netns/{self.namespace.name}",
            "systemd-nspawn",
            "--quiet",
            "--register=no",
            "--keep-unit",
            "--boot",
            f"--directory={self.image.tree}",
            "--volatile=overlay",
            f"--machine={self.instance.name}",
            f"--network-bridge={BRIDGE}",
            f"--bind-ro={meta}:/run/kthw/metadata",
            *(f"--bind={host}:{guest}" for host, guest in self.devices),
        ]
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self.console.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def stop(self) -> None:
        """SIGTERM asks nspawn for an orderly shutdown; if that hangs, kill the container's init (its PID namespace)."""
        if self.process is None or self.process.poll() is not None:
            return
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        inits = [int(p) for p in children.read_text().split()] if children.exists() else []
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            for pid in inits:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.process.kill()
            self.process.wait(timeout=30)
