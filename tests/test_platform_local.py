"""The local platform under mocks: VMs as resources, SSH through forwarded ports, the API for the admin at 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from components.config import ConfigErrors
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
