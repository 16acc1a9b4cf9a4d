"""The local platform's VMs under the real Pulumi CLI and engine, without root, in a namespace with only loopback.

The program (local_program/) creates the base image (served by the test's mirror on the
namespace's 127.0.0.1), the switch and two VMs booted from tests/localcloud/cloud_image.py's
stand-in for Debian's cloud image. The CLI runs with no capabilities at all (uid 0 without any
capability is no more than a user), so everything it starts proves the platform needs no root.
Heavy: run it under `flock /tmp/kthw-heavy.lock`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from tests import pulumi_cli
from tests.localcloud import cloud_image, mirror
from tests.localcloud.ssh import OPTIONS, KeyPair
from tests.pulumi_cli import Cli
from tests.tools import find_tool, skip_or_fail

PROGRAM = Path(__file__).parent / "local_program"
TOOLS = ("qemu-system-x86_64", "qemu-img", "ssh", "ssh-keygen", "ip", "nsenter", "setpriv", "losetup", "mount")
MIRROR_PORT = 8080
PORT_BASE = 24000
NODES = {"controller-0": "10.240.0.10", "worker-0": "10.240.0.20"}
# One vCPU and the least the platform allows: two VMs share a 2-core host with other work.
MEMORY_MB = 1024
BOOT_SECONDS = 1200


def _namespace_pids(name: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True, check=False).stdout
    return [int(p) for p in out.split()]


@contextlib.contextmanager
def loopback_namespace() -> Iterator[str]:
    """A fresh network namespace with only `lo` up: nothing started in it can reach anything else."""
    name = f"kthw-lp-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, timeout=30)
        yield name
    finally:
        for pid in _namespace_pids(name):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
        subprocess.run(["ip", "netns", "delete", name], check=False, timeout=30)


def _unprivileged_cli(cli: Cli, namespace: str, tmp_path: Path) -> Cli:
    """The CLI run inside the namespace with every capability dropped, able to run dynamic providers."""
    wrapper = tmp_path / "pulumi-unprivileged"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"exec nsenter --net=/run/netns/{namespace} -- setpriv --no-new-privs --inh-caps=-all "
        f'--ambient-caps=-all --bounding-set=-all -- "{cli.binary}" "$@"\n'
    )
    wrapper.chmod(0o755)
    return dataclasses.replace(cli, binary=wrapper)


def _ssh(
    namespace: str, key: KeyPair, port: int, command: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    argv = mirror.netns_command(
        namespace, "ssh", *OPTIONS, "-i", str(key.private), "-p", str(port), "kthw@127.0.0.1", command
    )
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def _wait_ssh(namespace: str, key: KeyPair, port: int, deadline: float) -> float:
    last = ""
    while time.monotonic() < deadline:
        try:
            result = _ssh(namespace, key, port, "true", timeout=30)
        except subprocess.TimeoutExpired:
            last = "ssh timed out"
            continue
        if result.returncode == 0:
            return time.monotonic()
        last = result.stderr.strip()
        time.sleep(2)
    raise TimeoutError(f"no SSH on 127.0.0.1:{port}: {last}")


def _cloud_init_done(namespace: str, key: KeyPair, port: int, deadline: float) -> subprocess.CompletedProcess[str]:
    """`cloud-init status --wait`, again if sshd dropped the session (255) while cloud-init configured it."""
    while True:
        result = _ssh(namespace, key, port, "cloud-init status --wait", timeout=max(deadline - time.monotonic(), 1))
        if result.returncode != 255 or time.monotonic() > deadline:
            return result
        time.sleep(2)


def _processes_naming(text: str) -> list[str]:
    """Every process whose command line contains `text` (the stack's state directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if text in cmdline:
                found.append(f"{entry.name}: {cmdline[:200]}")
    return found


def _cap_eff(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^CapEff:\s*([0-9a-f]+)$", status, re.M)
    assert match, status
    return int(match.group(1), 16)


def _rss_mib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s*(\d+) kB$", status, re.M)
    assert match, status
    return int(match.group(1)) // 1024


def _pid(path: Path) -> int:
    return int(path.read_text().split()[0])


@pytest.fixture
def platform_tools(prerequisites: None) -> None:
    """The local cloud's tools and root (conftest), and what this test adds: setpriv, losetup, mount."""
    missing = [t for t in TOOLS if find_tool(t) is None]
    if missing:
        skip_or_fail(f"local platform test: missing {', '.join(missing)} (apt-get install util-linux mount)")


@pytest.fixture
def bound() -> Iterator[float]:
    """A hard bound on the test (SIGALRM): KTHW_LOCAL_PLATFORM_TIMEOUT seconds, 2400 by default."""
    seconds = int(os.environ.get("KTHW_LOCAL_PLATFORM_TIMEOUT", "2400"))

    def expire(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError(f"the local platform test exceeded {seconds}s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield time.monotonic() + seconds
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_local_platform_boots_two_vms_on_a_switch_without_root(
    platform_tools: None, tmp_path: Path, figures: dict[str, object], bound: float
) -> None:
    deadline = bound
    start = time.monotonic()
    image = cloud_image.build()
    figures["local_image_seconds"] = round(time.monotonic() - start, 1)
    figures["local_image_mib"] = round(image.disk_bytes() / 2**20)
    key = KeyPair.generate(tmp_path, "kthw-local")
    # Not tmp_path/state: that is the CLI's file backend.
    state = tmp_path / "vms"
    cache = tmp_path / "images"
    cli = pulumi_cli.isolated_cli(tmp_path)
    for name in ("Pulumi.yaml", "__main__.py"):
        shutil.copy(PROGRAM / name, cli.project / name)

    with loopback_namespace() as namespace:
        server = mirror.serve_mirror(namespace, "127.0.0.1", MIRROR_PORT, image.path.parent, tmp_path / "mirror.log")
        try:
            pulumi = _unprivileged_cli(cli, namespace, tmp_path)
            pulumi("stack", "init", "local")
            for k, v in {
                "localImageUrl": f"http://127.0.0.1:{MIRROR_PORT}/{image.path.name}",
                "localImageSha512": image.sha512,
                "localStateDir": str(state),
                "localCacheDir": str(cache),
                "localPortBase": str(PORT_BASE),
                "localMemoryMb": str(MEMORY_MB),
                "localCpus": "1",
                "localDiskGb": "10",
                "sshPublicKey": key.public,
            }.items():
                pulumi("config", "set", f"kthw:{k}", v)

            up_start = time.monotonic()
            pulumi("up", "--yes", "--skip-preview", timeout=600)
            figures["local_up_seconds"] = round(time.monotonic() - up_start, 1)
            machines = json.loads(pulumi("stack", "output", "machines", "--json").stdout)
            assert machines["controller-0"]["ssh_port"] == PORT_BASE + 10
            assert machines["controller-0"]["api_port"] == PORT_BASE + 1010
            assert machines["worker-0"]["ssh_port"] == PORT_BASE + 20
            assert machines["worker-0"]["api_port"] is None
            accel = machines["worker-0"]["accel"]
            figures["local_accel"] = accel

            pids = {n: _pid(state / "vms" / n / "qemu.pid") for n in NODES}
            switch_pid = _pid(state / "net" / "switch.pid")
            for pid in [*pids.values(), switch_pid]:
                assert _cap_eff(pid) == 0, f"process {pid} runs with capabilities"

            boot_deadline = min(deadline, time.monotonic() + BOOT_SECONDS)
            ssh_at = {n: _wait_ssh(namespace, key, machines[n]["ssh_port"], boot_deadline) for n in NODES}
            figures["local_boot_to_ssh_seconds"] = {n: round(t - up_start, 1) for n, t in ssh_at.items()}
            for name, ip in NODES.items():
                port = machines[name]["ssh_port"]
                done = _cloud_init_done(namespace, key, port, boot_deadline)
                assert "status: done" in done.stdout, done.stdout + done.stderr
                assert _ssh(namespace, key, port, "hostname").stdout.strip() == name
                addresses = _ssh(namespace, key, port, "ip -4 -o addr show dev cluster").stdout
                assert f"inet {ip}/24" in addresses, addresses
                assert _ssh(namespace, key, port, "sudo -n id -u").stdout.strip() == "0"
            figures["local_boot_to_cloud_init_done_seconds"] = round(time.monotonic() - up_start, 1)
            worker_port = machines["worker-0"]["ssh_port"]
            ping = _ssh(namespace, key, worker_port, f"ping -c 3 -W 5 {NODES['controller-0']}")
            assert ping.returncode == 0, ping.stdout + ping.stderr
            ping = _ssh(namespace, key, machines["controller-0"]["ssh_port"], f"ping -c 3 -W 5 {NODES['worker-0']}")
            assert ping.returncode == 0, ping.stdout + ping.stderr
            figures["local_vm_rss_mib"] = {n: _rss_mib(pid) for n, pid in pids.items()}
            figures["local_vm_disk_mib"] = {
                n: round((state / "vms" / n / "disk.qcow2").stat().st_blocks * 512 / 2**20) for n in NODES
            }

            pulumi("preview", "--expect-no-changes", timeout=300)

            # A VM that dies (host reboot, OOM) is gone on refresh and started again from the disk it kept.
            marker = _ssh(namespace, key, worker_port, "echo kept | sudo tee /var/tmp/kthw-marker && sync")
            assert marker.returncode == 0, marker.stderr
            os.kill(pids["worker-0"], signal.SIGKILL)
            restart = time.monotonic()
            pulumi("up", "--refresh", "--yes", "--skip-preview", timeout=600)
            again = _pid(state / "vms" / "worker-0" / "qemu.pid")
            assert again != pids["worker-0"]
            assert _pid(state / "vms" / "controller-0" / "qemu.pid") == pids["controller-0"], "the live VM restarted"
            _wait_ssh(namespace, key, worker_port, min(deadline, time.monotonic() + BOOT_SECONDS))
            figures["local_restart_to_ssh_seconds"] = round(time.monotonic() - restart, 1)
            kept = _ssh(namespace, key, worker_port, "cat /var/tmp/kthw-marker")
            assert kept.stdout.strip() == "kept", kept.stdout + kept.stderr
            pulumi("preview", "--expect-no-changes", timeout=300)

            pulumi("destroy", "--yes", "--skip-preview", timeout=300)
            assert _processes_naming(str(state)) == []
            assert not state.exists(), sorted(str(p) for p in state.rglob("*"))
            assert [p.name for p in cache.iterdir()] == [f"{image.sha512}.img"]
        finally:
            server.kill()
            server.wait()
            leftovers = _processes_naming(str(state))
            for line in leftovers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(line.split(":")[0]), signal.SIGKILL)
