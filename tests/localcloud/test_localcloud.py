"""The local cloud tier's foundation: a VM from the cached image behaves like a fresh GCE instance."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.localcloud.image import Image
from tests.localcloud.net import Namespace
from tests.localcloud.ssh import Client, KeyPair
from tests.localcloud.vm import VM, Accel, Instance

pytestmark = pytest.mark.localcloud

USER = "kthw"
# Boot to SSH under TCG on a loaded 2-core machine; far above the measured figure, still bounded.
BOOT_TIMEOUT = 420.0


def _boot(
    instance: Instance, image: Image, accel: Accel, namespace: Namespace, workdir: Path, key: KeyPair
) -> tuple[VM, Client, float]:
    vm = VM(instance, image, accel, namespace, workdir / instance.name).start()
    client = Client(namespace, key, USER, instance.internal_ip)
    try:
        ready = client.wait(time.monotonic() + BOOT_TIMEOUT)
    except TimeoutError as error:
        console = vm.console.read_text(errors="replace")[-4000:] if vm.console.exists() else "(no console)"
        raise AssertionError(f"{instance.name}: {error}\n--- console tail ---\n{console}") from error
    return vm, client, ready - vm.started


def test_vm_boots_like_a_gce_instance(
    base_image: Image,
    accel: Accel,
    namespace: Namespace,
    workdir: Path,
    deadline: float,
    figures: dict[str, object],
) -> None:
    key = KeyPair.generate(workdir, "kthw@localcloud-test")
    # A second user in the same metadata (as project-wide keys add) gets its own key only.
    (workdir / "other").mkdir()
    other = KeyPair.generate(workdir / "other", "alice@test")
    ssh_keys = f"{USER}:{key.public}\nalice:{other.public}\n"
    instance = Instance("controller-0", "10.240.0.10", "203.0.113.10", ssh_keys)
    vm, client, boot_seconds = _boot(instance, base_image, accel, namespace, workdir, key)
    figures[f"boot_to_ssh_seconds_{accel.name}"] = round(boot_seconds, 1)
    try:
        facts = client.run(
            "hostname; sudo -n true && echo sudo-ok; stat -fc %T /sys/fs/cgroup;"
            " timeout 120 systemctl is-system-running --wait;"
            " ip -4 -o addr show scope global | awk '{print $4}' | sort; ip route show default;"
            " cloud-init status --wait",
            timeout=180,
        )
        lines = facts.stdout.splitlines()
        assert lines[0] == "controller-0", facts
        assert lines[1] == "sudo-ok", facts
        assert lines[2] == "cgroup2fs", facts
        assert lines[3] == "running", facts.stdout + vm.console.read_text(errors="replace")[-3000:]
        assert lines[4:6] == ["10.240.0.10/24", "203.0.113.10/32"], facts
        assert lines[6].startswith("default via 10.240.0.1 "), facts
        assert lines[7] == "status: done", facts
        # The external address answers inside the namespace, as GCE's 1:1 NAT would make it.
        outside = Client(namespace, key, USER, instance.external_ip).run("hostname", timeout=30)
        assert outside.stdout.strip() == "controller-0", outside
        alice = client.run("id -nG alice; sudo -n cat ~alice/.ssh/authorized_keys", timeout=30)
        assert alice.stdout.splitlines() == ["alice kthw-sudoers", other.public], alice
        refused = Client(namespace, key, "alice", instance.internal_ip).run("true", timeout=30)
        assert refused.returncode == 255, refused
        # Host keys are made per instance, not baked into the image.
        fingerprint = client.run("ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub", timeout=30)
        assert fingerprint.returncode == 0, fingerprint
    finally:
        vm.stop()
