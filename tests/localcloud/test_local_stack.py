"""The local platform end to end: `pulumi up` of a local stack, from nothing to the smoke test, as a user runs it.

The stack is Pulumi.local.yaml (one controller, one worker, the platform's default VM sizes) plus
what the namespace's "internet" needs: the cloud image, binaries and images from the test's mirror
and registry instead of Debian's and the upstream ones. The real CLI runs __main__.py inside the
namespace with every capability dropped, so the qemu VMs, their switch and every SSH step are what
a user without root gets; every remote step runs through the real pulumi-resource-command.

In file order, on one stack: up to the program's own smoke test (its wall time split into the VMs'
boot and the program's own steps), a preview with no changes, the admin kubeconfig from the host
(the namespace: the admin's machine), destroy leaving no VM, process, state or leftover in the
namespace.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from components import versions
from components.config.local import DEFAULT_PORT_BASE
from tests import processes
from tests.localcloud import cloud_image, plane
from tests.localcloud.image import Image
from tests.localcloud.services import (
    MIRROR_URL,
    Services,
    assert_one_worker_smoke_test_passed,
    base_config,
    print_timeline,
)
from tests.localcloud.stack import LocalStack
from tests.localcloud.vm import Accel
from tests.tools import find_tool, skip_or_fail

pytestmark = pytest.mark.localcloud

ROOT = Path(__file__).resolve().parents[2]
NODES = ("controller-0", "worker-0")
# Keys of the gcp platform (the project, placement, the firewall's admin ranges) a local stack has no use for.
GCP_ONLY = ("kthw:adminSourceRanges",)
# Controller-0's SSH port under the default port base (SSH at base + host number).
CONTROLLER_SSH_PORT = DEFAULT_PORT_BASE + 10
ADMIN_API_PORT = DEFAULT_PORT_BASE + 1010


@dataclass
class Local:
    stack: LocalStack
    state_dir: Path
    cache_dir: Path
    image_sha512: str


def shipped_config() -> dict[str, Any]:
    """Pulumi.local.yaml's config: what `pulumi up -s local` starts from."""
    found: dict[str, Any] = yaml.safe_load((ROOT / "Pulumi.local.yaml").read_text())["config"]
    return found


def stack_config(services: Services, image_url: str, image_sha512: str, state: Path, cache: Path) -> dict[str, Any]:
    """The shipped stack, with the namespace's mirror, registry and cloud image, and its state in the test's tmp."""
    base = base_config(1, 1, services.current, services)
    mirrors = {k: v for k, v in base.items() if not k.startswith("gcp:") and k not in GCP_ONLY}
    return {
        **shipped_config(),
        **mirrors,
        "kthw:localImageUrl": image_url,
        "kthw:localImageSha512": image_sha512,
        "kthw:localStateDir": str(state),
        "kthw:localCacheDir": str(cache),
    }


def boot_and_steps(stack: LocalStack, label: str) -> dict[str, float]:
    """An up's wall time split: until every node's SSH gate passed (the VMs' boot), and the program's steps after."""
    steps = [s for s in stack.steps if s.start_ns and s.end_ns]
    zero = min(s.start_ns for s in steps)
    booted = max(s.end_ns for s in steps if s.name.endswith("-ssh-ready"))
    boot = round((booted - zero) / 1e9, 1)
    return {"boot_to_ssh_gates": boot, "program_steps": round(stack.timings[label] - boot, 1)}


@pytest.fixture(scope="module")
def local(
    services: Services, base_image: Image, accel: Accel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Local]:
    for tool in ("setpriv", "kubectl"):
        if find_tool(tool) is None:
            skip_or_fail(f"local stack test: missing {tool}")
    tmp = tmp_path_factory.mktemp("local-stack")
    image = cloud_image.build()
    # The mirror serves the cloud image as cloud.debian.org would.
    served = services.mirror_root / "cloud" / image.path.name
    served.parent.mkdir(exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.link(image.path, served)
    state, cache = tmp / "vms", tmp / "images"
    config = stack_config(services, f"{MIRROR_URL}/cloud/{image.path.name}", image.sha512, state, cache)
    stack = LocalStack.create("local", tmp, services.namespace, base_image, accel, config)
    # The admin's machine without root: no capability at all, as a user's shell has.
    unprivileged = ("setpriv", "--no-new-privs", "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all")
    stack.cli = dataclasses.replace(stack.cli, prefix=(*stack.cli.prefix, *unprivileged))
    try:
        yield Local(stack, state, cache, image.sha512)
    finally:
        processes.kill_naming(str(state))


def test_1_up_from_nothing_ends_with_the_smoke_test_passing(local: Local, figures: dict[str, object]) -> None:
    stack = local.stack
    stack.up("up_local")
    split = boot_and_steps(stack, "up_local")
    figures["local_stack_up_seconds"] = {"total": stack.timings["up_local"], **split}
    print_timeline(stack, "local 1+1 up", figures)
    # The nodes reach the API at the first controller's address on the VMs' switch.
    assert_one_worker_smoke_test_passed(stack, versions.KUBERNETES, "https://10.240.0.10:6443")
    outputs = stack.outputs()
    assert outputs["kubernetes_public_address"] == "127.0.0.1"
    assert outputs["controllers"] == {"controller-0": {"internal_ip": "10.240.0.10", "external_ip": "127.0.0.1"}}
    # Every process the platform started runs without capabilities: the VMs and their switch.
    started = processes.naming(str(local.state_dir))
    assert len(started) >= 3, started
    assert {pid: processes.capabilities(pid) for pid in started} == dict.fromkeys(started, 0), started
    vms = local.state_dir / "vms"
    figures["local_stack_vm_rss_mib"] = {n: processes.rss_mib(int((vms / n / "qemu.pid").read_text())) for n in NODES}
    figures["local_stack_vm_disk_mib"] = {n: (vms / n / "disk.qcow2").stat().st_blocks * 512 // 2**20 for n in NODES}


def test_2_preview_right_after_shows_no_changes(local: Local) -> None:
    local.stack("preview", "--expect-no-changes")


def test_3_the_admin_kubeconfig_works_from_the_host(local: Local) -> None:
    stack = local.stack
    kubeconfig = stack.run_dir / "admin.kubeconfig"
    kubeconfig.touch(mode=0o600)
    kubeconfig.write_text(str(stack.outputs()["admin_kubeconfig"]))
    server = yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
    assert server == f"https://127.0.0.1:{ADMIN_API_PORT}"
    kubectl = str(find_tool("kubectl"))
    argv = stack.namespace.command(kubectl, "--kubeconfig", str(kubeconfig), "--request-timeout=60s", "get", "nodes")
    result = subprocess.run([*argv, "-o", "name"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["node/worker-0"]


def test_4_destroy_leaves_no_vm_process_or_state(local: Local, figures: dict[str, object]) -> None:
    stack = local.stack
    stack.destroy()
    figures["local_stack_destroy_seconds"] = stack.timings["destroy"]
    assert stack.resources() == []
    assert processes.naming(str(local.state_dir)) == {}
    assert not local.state_dir.exists(), sorted(str(p) for p in local.state_dir.rglob("*"))
    # The downloaded image stays cached for the next stack, as Debian's would.
    assert [p.name for p in local.cache_dir.iterdir()] == [f"{local.image_sha512}.img"]
    assert plane.leftovers(stack.namespace.name) == []
