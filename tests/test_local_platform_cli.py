"""The local platform's resources under the real CLI and engine, with VMs that never boot a guest.

The base image is a blank qcow2 served as a file:// URL, so each VM is a real qemu daemon idling
in its firmware: the engine's side of the platform (the dynamic provider's launcher, the
serialized provider, Read after a VM died, destroy) in seconds, where booting is the local cloud
tier's job (tests/localcloud/test_local_stack.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests import processes, pulumi_cli
from tests.pulumi_cli import Cli
from tests.tools import require_tool

PROGRAM = Path(__file__).parent / "localcloud" / "local_program"


def _free_base() -> int:
    """A port base whose three ports (SSH of both nodes, the controller's API) are free on 127.0.0.1 now."""
    for base in range(30000, 32000, 37):
        try:
            with contextlib.ExitStack() as stack:
                for port in (base + 10, base + 20, base + 1010):
                    s = stack.enter_context(socket.socket())
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError("no free port base in 30000-32000")


def _pid(path: Path) -> int:
    return int(path.read_text().split()[0])


def _stack(cli: Cli, tmp_path: Path, vms: Path, images: Path) -> None:
    base = tmp_path / "blank.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"], check=True, timeout=60)
    cli("stack", "init", "local")
    for key, value in {
        "localImageUrl": base.as_uri(),
        "localImageSha512": hashlib.sha512(base.read_bytes()).hexdigest(),
        "localStateDir": str(vms),
        "localCacheDir": str(images),
        "localPortBase": str(_free_base()),
        "localMemoryMb": "1024",
        "localCpus": "1",
        "localDiskGb": "10",
        "localAccel": "tcg",
        "sshPublicKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA kthw",
    }.items():
        cli("config", "set", f"kthw:{key}", value)


def test_up_preview_refresh_after_a_death_and_destroy_under_the_real_engine(tmp_path: Path) -> None:
    for tool in ("qemu-system-x86_64", "qemu-img"):
        require_tool(tool)
    cli = pulumi_cli.isolated_cli(tmp_path)
    for name in ("Pulumi.yaml", "__main__.py"):
        shutil.copy(PROGRAM / name, cli.project / name)
    vms, images = tmp_path / "vms", tmp_path / "images"
    try:
        _stack(cli, tmp_path, vms, images)
        cli("up", "--yes", "--skip-preview")
        pids = {n: _pid(vms / "vms" / n / "qemu.pid") for n in ("controller-0", "worker-0")}
        switch = _pid(vms / "net" / "switch.pid")
        # The plugin that started them has exited with the engine; they run on.
        assert sorted(processes.naming(str(vms))) == sorted([*pids.values(), switch])
        machines = json.loads(cli("stack", "output", "machines", "--json").stdout)
        assert machines["worker-0"]["accel"] == "tcg"
        cli("preview", "--expect-no-changes")

        os.kill(pids["worker-0"], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while pids["worker-0"] in processes.naming(str(vms)):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        refreshed = cli("up", "--refresh", "--yes", "--skip-preview")
        assert "1 created" in refreshed.stdout, refreshed.stdout
        again = _pid(vms / "vms" / "worker-0" / "qemu.pid")
        assert again != pids["worker-0"] and again in processes.naming(str(vms))
        assert _pid(vms / "vms" / "controller-0" / "qemu.pid") == pids["controller-0"]
        cli("preview", "--expect-no-changes")

        cli("destroy", "--yes", "--skip-preview")
        assert processes.naming(str(vms)) == {}
        assert not vms.exists()
        assert len(list(images.iterdir())) == 1, "destroy keeps the downloaded image"
    finally:
        processes.kill_naming(str(vms))
