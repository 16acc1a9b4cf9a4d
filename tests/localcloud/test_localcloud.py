"""The local cloud tier's foundation: nodes from the cached image behave like fresh GCE instances."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.localcloud.image import Image
from tests.localcloud.net import Namespace
from tests.localcloud.nspawn import Machine
from tests.localcloud.ssh import Client, KeyPair
from tests.localcloud.vm import VM, Accel, Instance

pytestmark = pytest.mark.localcloud

USER = "kthw"
# Boot to SSH under TCG on a loaded 2-core machine took 70-135 s; bounded well above that.
BOOT_TIMEOUT = 420.0
MACHINE_BOOT_TIMEOUT = 60.0


def _keys(workdir: Path) -> tuple[KeyPair, KeyPair, str]:
    """The test user's key, a second user's key, and `ssh-keys` metadata naming both (as project-wide keys add)."""
    (workdir / "kthw").mkdir()
    (workdir / "alice").mkdir()
    key = KeyPair.generate(workdir / "kthw", "kthw@localcloud-test")
    other = KeyPair.generate(workdir / "alice", "alice@localcloud-test")
    return key, other, f"{USER}:{key.public}\nalice:{other.public}\n"


def _wait(client: Client, started: float, timeout: float, console: Path) -> float:
    """Seconds from start to the first successful SSH login; the console's tail if it never comes."""
    try:
        return client.wait(started + timeout) - started
    except TimeoutError as error:
        tail = console.read_text(errors="replace")[-4000:] if console.exists() else "(no console)"
        raise AssertionError(f"{error}\n--- console tail ---\n{tail}") from error


def _assert_like_a_gce_instance(client: Client, instance: Instance, other: KeyPair, cgroup: str) -> None:
    """What the program relies on from a fresh instance, checked over SSH as the metadata's user."""
    facts = client.run(
        "hostname; sudo -n true && echo sudo-ok; stat -fc %T /sys/fs/cgroup;"
        " timeout 120 systemctl is-system-running --wait;"
        " ip -4 -o addr show scope global | awk '{print $4}' | sort; ip route show default;"
        " cloud-init status --wait",
        timeout=180,
    )
    lines = facts.stdout.splitlines()
    assert lines[:4] == [instance.name, "sudo-ok", cgroup, "running"], facts
    assert lines[4:6] == [f"{instance.internal_ip}/24", f"{instance.external_ip}/32"], facts
    assert lines[6].startswith("default via 10.240.0.1 "), facts
    assert lines[7] == "status: done", facts
    # The external address answers inside the namespace, as GCE's 1:1 NAT would make it.
    outside = Client(client.namespace, client.key, USER, instance.external_ip).run("hostname", timeout=30)
    assert outside.stdout.strip() == instance.name, outside
    # The second user exists, may sudo, and holds its own key only: the test's key does not open it.
    alice = client.run("id -nG alice; sudo -n cat ~alice/.ssh/authorized_keys", timeout=30)
    assert alice.stdout.splitlines() == ["alice kthw-sudoers", other.public], alice
    refused = Client(client.namespace, client.key, "alice", instance.internal_ip).run("true", timeout=30)
    assert refused.returncode == 255, refused


def test_vm_boots_like_a_gce_instance_and_reaches_its_neighbour(
    base_image: Image,
    accel: Accel,
    namespace: Namespace,
    workdir: Path,
    deadline: float,
    figures: dict[str, object],
) -> None:
    key, other, ssh_keys = _keys(workdir)
    instance = Instance("worker-0", "10.240.0.20", "203.0.113.20", ssh_keys)
    neighbour = Instance("controller-0", "10.240.0.10", "203.0.113.10", ssh_keys)
    vm = VM(instance, base_image, accel, namespace, workdir / instance.name)
    machine = Machine(neighbour, base_image, namespace, workdir / neighbour.name)
    try:
        vm.start()
        client = Client(namespace, key, USER, instance.internal_ip)
        boot = _wait(client, vm.started, BOOT_TIMEOUT, vm.console)
        figures[f"vm_boot_to_ssh_seconds_{accel.name}"] = round(boot, 1)
        figures[f"vm_boot_to_ssh_cpu_seconds_{accel.name}"] = round(vm.cpu_seconds(), 1)
        _assert_like_a_gce_instance(client, instance, other, "cgroup2fs")
        analyze = client.run("systemd-analyze time", timeout=60)
        figures[f"vm_systemd_analyze_{accel.name}"] = analyze.stdout.strip().splitlines()[0]

        machine.start()
        _wait(
            Client(namespace, key, USER, neighbour.internal_ip), machine.started, MACHINE_BOOT_TIMEOUT, machine.console
        )
        ping = client.run(f"ping -c 3 -W 5 {neighbour.internal_ip}", timeout=60)
        assert ping.returncode == 0 and " 0% packet loss" in ping.stdout, ping
        # Each instance made its own host key (none is baked into the image).
        prints = [
            Client(namespace, key, USER, ip).run("ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub").stdout.split()[1]
            for ip in (instance.internal_ip, neighbour.internal_ip)
        ]
        assert prints[0] != prints[1] and all(p.startswith("SHA256:") for p in prints), prints
    finally:
        machine.stop()
        vm.stop()
    assert not (vm.workdir / "disk.qcow2").exists()


def test_nspawn_machine_boots_like_a_gce_instance(
    base_image: Image, namespace: Namespace, workdir: Path, deadline: float, figures: dict[str, object]
) -> None:
    key, other, ssh_keys = _keys(workdir)
    instance = Instance("controller-1", "10.240.0.11", "203.0.113.11", ssh_keys)
    machine = Machine(instance, base_image, namespace, workdir / instance.name)
    try:
        machine.start()
        client = Client(namespace, key, USER, instance.internal_ip)
        figures["nspawn_boot_to_ssh_seconds"] = round(
            _wait(client, machine.started, MACHINE_BOOT_TIMEOUT, machine.console), 1
        )
        # The host's cgroups (v1 hybrid here) show through: fine for a controller, not a kubelet.
        host_cgroup = "cgroup2fs" if Path("/sys/fs/cgroup/cgroup.controllers").exists() else "tmpfs"
        _assert_like_a_gce_instance(client, instance, other, host_cgroup)
    finally:
        machine.stop()
    assert machine.process is not None and machine.process.returncode is not None


def test_namespace_has_no_way_out(namespace: Namespace) -> None:
    """Only the bridge's own subnets are routed; there is no default route and no link but the bridge and lo."""
    routes = namespace.exec_ip("-4", "route", "show").splitlines()
    assert sorted(r.split()[0] for r in routes) == ["10.240.0.0/24", "203.0.113.0/24"], routes
    links = {line.split(":")[1].strip().split("@")[0] for line in namespace.exec_ip("-o", "link").splitlines()}
    assert links == {"lo", "kthw-br0"}, links


def test_namespace_teardown_stops_a_vm_nobody_stopped(
    base_image: Image, accel: Accel, workdir: Path, deadline: float
) -> None:
    """A test that dies mid-boot still leaves no qemu and no namespace behind."""
    namespace = Namespace(name=f"kthw-lc-teardown-{os.getpid()}").create()
    try:
        vm = VM(Instance("worker-9", "10.240.0.29", "203.0.113.29", ""), base_image, accel, namespace, workdir / "vm")
        vm.start()
        assert vm.process is not None
        # `ip netns exec` enters the namespace and then execs qemu: give it a moment to get there.
        entered = time.monotonic() + 10
        while vm.process.pid not in namespace.pids() and time.monotonic() < entered:
            time.sleep(0.1)
        assert vm.process.pid in namespace.pids()
    finally:
        namespace.destroy()
    assert vm.process.wait(timeout=30) is not None
    assert namespace.name not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
