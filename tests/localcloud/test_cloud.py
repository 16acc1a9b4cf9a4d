"""The local cloud's instances beyond create and delete: GCE's stop and start (issue 17, section 3.1).

A machine type or service account change makes the provider stop the VM, change it and start it
again; GCE keeps the boot disk and hands the VM a new ephemeral external IP unless its access config
names a static address. `LocalCloud` does the same with a real VM (qemu keeps its overlay disk), and
refuses it for an nspawn machine, whose writes live in memory.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.engine.providers.gcp import GceError
from tests.localcloud import cloud as cloud_module
from tests.localcloud.cloud import LocalCloud, stop_all
from tests.localcloud.image import Image
from tests.localcloud.net import Namespace
from tests.localcloud.ssh import Client, KeyPair
from tests.localcloud.vm import Accel

pytestmark = pytest.mark.localcloud

USER = "kthw"
# Boot to SSH under TCG on a loaded 2-core machine took 70-135 s; bounded well above that.
BOOT_TIMEOUT = 420.0


@pytest.fixture
def cloud(
    namespace: Namespace, base_image: Image, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[LocalCloud]:
    """A LocalCloud in this test's namespace (under TCG unless the test sets ACCEL_ENV first)."""
    run = workdir / "cloud"
    run.mkdir()
    monkeypatch.setenv(cloud_module.NETNS_ENV, namespace.name)
    monkeypatch.setenv(cloud_module.RUN_ENV, str(run))
    monkeypatch.setenv(cloud_module.IMAGE_ENV, str(base_image.root.parent))
    monkeypatch.setenv(cloud_module.MACHINES_ENV, "controller")
    found = LocalCloud(run / "gcp.json")
    try:
        yield found
    finally:
        stop_all(namespace, run)


def _worker(ssh_keys: str) -> dict[str, Any]:
    return {
        "name": "worker-0",
        "project": "p",
        "zone": "us-west1-c",
        "machineType": "e2-medium",
        "tags": ["worker"],
        "metadata": {"ssh-keys": ssh_keys},
        "networkInterfaces": [{"networkIp": "10.240.0.20", "accessConfigs": [{}]}],
    }


def _nat(record: dict[str, Any]) -> str:
    return str(record["networkInterfaces"][0]["accessConfigs"][0]["natIp"])


def test_a_stopped_and_started_vm_keeps_its_disk_and_comes_back_on_a_new_ephemeral_ip(
    cloud: LocalCloud, accel: Accel, namespace: Namespace, workdir: Path, deadline: float, figures: dict[str, object]
) -> None:
    cloud.accel = accel
    key = KeyPair.generate(workdir, "kthw@localcloud-test")
    # GCE denies ingress by default, and the plane enforces firewall rules: let SSH in from the admin.
    ssh = {"allows": [{"protocol": "tcp", "ports": ["22"]}], "sourceRanges": ["0.0.0.0/0"], "targetTags": ["worker"]}
    cloud.put("firewall", "allow-ssh", {"id": "1", "inputs": {"name": "allow-ssh", "network": "n", **ssh}})
    first = _nat(cloud.create_instance("worker-0", "us-west1-c", _worker(f"{USER}:{key.public}\n")))
    started = time.monotonic()
    Client(namespace, key, USER, first).wait(started + BOOT_TIMEOUT)
    marker = Client(namespace, key, USER, first).run("echo kept | sudo tee /var/lib/kthw-marker", timeout=60)
    assert marker.returncode == 0, marker
    overlay = workdir / "cloud" / "nodes" / "worker-0" / "disk.qcow2"

    cloud.stop_instance("worker-0")
    assert "worker-0" not in cloud.nodes() and overlay.exists()
    assert cloud.resources()["instance/worker-0"]["status"] == "TERMINATED"
    restarted = time.monotonic()
    second = _nat(cloud.start_instance("worker-0"))
    assert second != first
    client = Client(namespace, key, USER, second)
    client.wait(restarted + BOOT_TIMEOUT)
    figures["vm_start_after_stop_to_ssh_seconds"] = round(time.monotonic() - restarted, 1)
    # The same disk, on the new address; the old one answers no more.
    assert client.run("cat /var/lib/kthw-marker", timeout=60).stdout == "kept\n"
    assert cloud.nodes()["worker-0"]["external_ip"] == second
    assert Client(namespace, key, USER, first).run("true", timeout=60).returncode != 0

    cloud.delete_instance("worker-0")
    assert not overlay.exists() and cloud.nodes() == {}


def test_an_nspawn_machine_is_not_stopped(cloud: LocalCloud, workdir: Path) -> None:
    """Its writes live in memory (--volatile=overlay): a stop would lose the boot disk, so it is refused."""
    cloud.put("instance", "controller-0", {"id": "1", "zone": "us-west1-c", "status": "RUNNING", "inputs": {}})
    nodes = {"controller-0": {"kind": "machine", "pid": 0, "port": "", "tags": ["controller"]}}
    (workdir / "cloud" / "nodes.json").write_text(json.dumps(nodes))
    with pytest.raises(GceError, match="cannot stop and start it without losing its boot disk"):
        cloud.stop_instance("controller-0")
    assert cloud.resources()["instance/controller-0"]["status"] == "RUNNING"
    (workdir / "cloud" / "nodes.json").write_text("{}")
