"""The local platform under mocks: VMs as resources, SSH through forwarded ports, the API for the admin at 127.0.0.1."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from components import bounds
from components.config import ConfigErrors
from platforms.local import qemu
from tests.harness import Recording, bundle, run_program


def stack(tmp: Path, **extra: str) -> dict[str, str]:
    return {
        "platform": "local",
        "controllerCount": "1",
        "workerCount": "2",
        "localStateDir": str(tmp / "state"),
        "localCacheDir": str(tmp / "cache"),
        **extra,
    }


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Recording:
    return run_program(stack(tmp_path_factory.mktemp("local")))


def test_one_vm_per_node_and_no_cloud(local: Recording) -> None:
    assert not [r.name for r in local.resources if r.type.startswith("gcp:")]
    vms = {r.name: r.inputs for r in local.of_type("pulumi-python:dynamic/kthw-local:VirtualMachine")}
    assert sorted(vms) == ["kthw-local-controller-0", "kthw-local-worker-0", "kthw-local-worker-1"]
    assert {n: (v["ssh_port"], v["api_port"]) for n, v in vms.items()} == {
        "kthw-local-controller-0": (21010, 22010),
        "kthw-local-worker-0": (21020, 0),
        "kthw-local-worker-1": (21021, 0),
    }
    public_key = local.by_name("kthw-ssh-key").outputs["publicKeyOpenssh"].strip()
    assert all(public_key in str(v["seed"]["user-data"]) for v in vms.values())


def test_every_step_reaches_its_vm_through_its_forwarded_port_after_the_vm(local: Recording) -> None:
    for node, port in (("controller-0", 21010), ("worker-0", 21020), ("worker-1", 21021)):
        gate = local.by_name(f"kthw-{node}-ssh-ready")
        connection = gate.inputs["connection"]
        assert (connection["host"], connection["port"], connection["user"]) == ("127.0.0.1", port, "kthw")
        assert f"kthw-local-{node}" in gate.depends_on
        # The VM's id: a new VM behind the node re-runs every step on it.
        assert len(gate.inputs["triggers"]) == 1
        assert f"kthw-{node}-pod-routes" in {r.name for r in local.resources}


def test_the_admin_dials_the_forwarded_port_and_nodes_the_first_controller(local: Recording) -> None:
    admin = yaml.safe_load(local.outputs["admin_kubeconfig"])
    assert admin["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:22010"
    assert local.outputs["kubernetes_public_address"] == "127.0.0.1"
    kubelet = bundle(local.by_name("kthw-worker-1-bootstrap-kubelet"))
    kubeconfig = yaml.safe_load(kubelet["/var/lib/kubelet/kubeconfig"][0])
    assert kubeconfig["clusters"][0]["cluster"]["server"] == "https://10.240.0.10:6443"


def test_controllers_come_one_after_another(tmp_path: Path) -> None:
    """A replaced VM of controller-1 waits for controller-0's etcd member, as a GCE instance does."""
    recording = run_program(stack(tmp_path, controllerCount="3", workerCount="1"))
    assert "kthw-controller-0-etcd-ready" in recording.by_name("kthw-local-controller-1").depends_on


def test_a_bigger_vm_is_a_new_fingerprint_the_preview_warns_about(tmp_path: Path) -> None:
    small = run_program(stack(tmp_path))
    big = run_program(stack(tmp_path, localMemoryMb="4096"))
    assert small.outputs["controller_fingerprints"] != big.outputs["controller_fingerprints"]


def test_bad_local_values_are_one_line_each(tmp_path: Path) -> None:
    with pytest.raises(ConfigErrors) as refused:
        run_program(stack(tmp_path, localMemoryMb="512", localAccel="xen", localStateDir="relative"))
    assert refused.value.problems == [
        "kthw:localStateDir = 'relative' is invalid: an absolute path (empty: the per-user default)",
        "kthw:localMemoryMb = 512 is invalid: at least 1024 (per VM)",
        "kthw:localAccel = 'xen' is invalid: one of auto, kvm, tcg",
    ]


def _bounds_on_nodes(recording: Recording) -> dict[str, object]:
    """What the pace sets on the nodes: leader election's flags and config, and the waits of the ready steps."""
    control_plane = "kthw-controller-0-control-plane"
    unit = bundle(recording.by_name(f"{control_plane}-kube-controller-manager"))
    scheduler = bundle(recording.by_name(f"{control_plane}-kube-scheduler"))
    ready = str(recording.by_name("kthw-worker-0-bootstrap-ready").inputs["create"])
    healthy = str(recording.by_name(f"{control_plane}-healthy").inputs["create"])
    return {
        "lease_flags": sorted(
            re.findall(r"--leader-elect-[a-z-]+=\w+", unit["/etc/systemd/system/kube-controller-manager.service"][0])
        ),
        "scheduler": yaml.safe_load(scheduler["/etc/kubernetes/config/kube-scheduler.yaml"][0])["leaderElection"],
        "worker_ready": re.findall(r"^(?:timeout|kubectl_timeout)=(\d+)$", ready, re.M),
        "control_plane_healthy": re.findall(r"^(?:timeout|kubectl_timeout)=(\d+)$", healthy, re.M),
    }


def test_emulated_vms_get_longer_bounds_and_a_patient_leader_election(tmp_path: Path) -> None:
    """Under TCG everything on a node takes several times as long: kubectl's own start, a lease renewal."""
    found = _bounds_on_nodes(run_program(stack(tmp_path, localAccel="tcg")))
    pace = bounds.EMULATED_PACE
    assert pace > 1
    assert found == {
        "lease_flags": [
            f"--leader-elect-lease-duration={15 * pace}s",
            f"--leader-elect-renew-deadline={10 * pace}s",
            f"--leader-elect-retry-period={2 * pace}s",
        ],
        "scheduler": {
            "leaderElect": True,
            "leaseDuration": f"{15 * pace}s",
            "renewDeadline": f"{10 * pace}s",
            "retryPeriod": f"{2 * pace}s",
        },
        "worker_ready": [str(300 * pace), str(30 * pace)],
        "control_plane_healthy": [str(300 * pace), str(30 * pace)],
    }


def test_vms_under_kvm_keep_the_clouds_bounds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qemu, "kvm_unusable", lambda: None)
    found = _bounds_on_nodes(run_program(stack(tmp_path, localAccel="kvm")))
    assert found == {
        "lease_flags": [],
        "scheduler": {"leaderElect": True},
        "worker_ready": ["300", "30"],
        "control_plane_healthy": ["300", "30"],
    }


def test_asking_for_kvm_where_it_does_not_work_is_one_line_before_any_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(qemu, "kvm_unusable", lambda: "/dev/kvm: Permission denied")
    with pytest.raises(ConfigErrors) as refused:
        run_program(stack(tmp_path, localAccel="kvm", workerCount="1"))
    assert refused.value.problems == ["kthw:localAccel is kvm but /dev/kvm: Permission denied"]
