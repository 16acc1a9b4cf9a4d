"""The machines platform under mocks: what it asks of your machines, and every bad input told in one line."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from components.config import ConfigErrors
from components.config import load as load_config
from platforms import machines as machines_platform
from tests.harness import Recording, bundle, run_program
from tests.tools import require_tool, shellcheck

KEY = (
    ed25519.Ed25519PrivateKey.generate()
    .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    .decode()
)
MACHINES: list[dict[str, Any]] = [
    {"name": "server", "role": "controller", "address": "192.168.1.10", "internalIp": "10.240.0.10"},
    {"name": "node-0", "role": "worker", "address": "10.240.0.20", "port": 2222},
    {"name": "node-1", "role": "worker", "address": "node-1.lan", "internalIp": "10.240.0.21", "user": "debian"},
]


@pytest.fixture
def secret_key_set() -> Iterator[None]:
    """As the CLI tells the program: kthw:sshPrivateKey is a secret (load reads it outside run_program)."""
    pulumi.runtime.set_all_config({}, secret_keys=["kthw:sshPrivateKey"])
    yield
    pulumi.runtime.set_all_config({}, secret_keys=[])


def stack(machines: list[dict[str, Any]] = MACHINES, **extra: str) -> dict[str, str]:
    return {"platform": "machines", "machines": json.dumps(machines), "sshPrivateKey": KEY, **extra}


@pytest.fixture(scope="module")
def mine() -> Recording:
    return run_program(stack())


def problems(config: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigErrors) as refused:
        run_program(config)
    assert refused.value.registered == []  # type: ignore[attr-defined]
    return refused.value.problems


def cert(recording: Recording, name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(recording.by_name(name).outputs["certPem"].encode())


def test_no_cloud_resource_and_every_node_gated_at_its_own_address(mine: Recording) -> None:
    assert not [r.name for r in mine.resources if r.type.startswith("gcp:")]
    gates = {r.name: r.inputs["connection"] for r in mine.resources if r.name.endswith("-ssh-ready")}
    seen = {name: (c["host"], c["port"], c["user"]) for name, c in gates.items()}
    assert seen == {
        "kthw-server-ssh-ready": ("192.168.1.10", 22, "kthw"),
        "kthw-node-0-ssh-ready": ("10.240.0.20", 2222, "kthw"),
        "kthw-node-1-ssh-ready": ("node-1.lan", 22, "debian"),
    }
    # Machines are up already: a host that never answers fails its gate after a bounded number of dials.
    assert {c["dialErrorLimit"] for c in gates.values()} == {machines_platform.DIAL_ATTEMPTS}
    assert all(c["privateKey"] == KEY for c in gates.values())
    assert "kthw:sshPrivateKey" not in json.dumps(mine.outputs)


def test_nodes_take_their_names_addresses_and_pod_subnets_from_the_list(mine: Recording) -> None:
    assert mine.outputs["controllers"] == {"server": {"internal_ip": "10.240.0.10", "external_ip": "192.168.1.10"}}
    assert mine.outputs["workers"] == {
        "node-0": {"internal_ip": "10.240.0.20", "external_ip": "10.240.0.20"},
        "node-1": {"internal_ip": "10.240.0.21", "external_ip": "node-1.lan"},
    }
    kubelet = cert(mine, "kthw-pki-node-1-cert")
    sans = kubelet.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["10.240.0.21"]
    assert sans.get_values_for_type(x509.DNSName) == ["node-1"]


def test_the_api_is_the_first_controller_inside_and_its_ssh_address_outside(mine: Recording) -> None:
    admin = yaml.safe_load(mine.outputs["admin_kubeconfig"])
    assert admin["clusters"][0]["cluster"]["server"] == "https://192.168.1.10:6443"
    assert mine.outputs["kubernetes_public_address"] == "192.168.1.10"
    sans = cert(mine, "kthw-pki-kubernetes-cert").extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]
    assert ips == ["10.32.0.1", "10.240.0.10", "192.168.1.10", "127.0.0.1"]
    kubelet = bundle(mine.by_name("kthw-node-0-bootstrap-kubelet"))
    kubeconfig = yaml.safe_load(kubelet["/var/lib/kubelet/kubeconfig"][0])
    assert kubeconfig["clusters"][0]["cluster"]["server"] == "https://10.240.0.10:6443"


def test_an_api_address_you_run_is_what_nodes_and_admin_dial() -> None:
    recording = run_program(stack(apiAddress="k8s.lan"))
    admin = yaml.safe_load(recording.outputs["admin_kubeconfig"])
    assert admin["clusters"][0]["cluster"]["server"] == "https://k8s.lan:6443"
    sans = cert(recording, "kthw-pki-kubernetes-cert").extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert "k8s.lan" in sans.value.get_values_for_type(x509.DNSName)


def test_each_node_routes_the_other_workers_pod_subnets(mine: Recording, secret_key_set: None) -> None:
    cfg = load_config({"platform": "machines", "machines": MACHINES, "sshPrivateKey": "x"}, {})
    routes = {n.name: machines_platform.pod_routes(cfg, n) for n in cfg.nodes}
    assert routes == {
        "server": [("10.200.0.0/24", "10.240.0.20"), ("10.200.1.0/24", "10.240.0.21")],
        "node-0": [("10.200.1.0/24", "10.240.0.21")],
        "node-1": [("10.200.0.0/24", "10.240.0.20")],
    }
    steps = {r.name for r in mine.resources if r.name.endswith("-pod-routes")}
    assert steps == {"kthw-server-pod-routes", "kthw-node-0-pod-routes", "kthw-node-1-pod-routes"}
    # The smoke test (pods talking across nodes) waits for every node's routes.
    smoke = mine.by_name("kthw-smoke-test-cluster")
    assert steps <= smoke.depends_on


def test_the_routes_script_adds_replaces_and_removes_only_its_own(tmp_path: Path, secret_key_set: None) -> None:
    """Run against a stand-in `ip` that records calls and shows one stale route of ours and one of someone else."""
    require_tool("bash")
    cfg = load_config({"platform": "machines", "machines": MACHINES, "sshPrivateKey": "x"}, {})
    script = machines_platform.render_routes_script(cfg, cfg.controllers[0])
    shellcheck(script, tmp_path, "pod-routes")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ip").write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {tmp_path}/calls\n'
        f'if [ "$1 $2 $3" = "-4 route show" ]; then echo "10.200.7.0/24 via 10.240.0.27 dev eth0"; fi\n'
    )
    (bin_dir / "ip").chmod(0o755)
    result = subprocess.run(
        ["bash", "-c", script], env={"PATH": f"{bin_dir}:/usr/bin:/bin"}, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    proto = machines_platform.ROUTES_PROTO
    assert calls == [
        f"route replace 10.200.0.0/24 via 10.240.0.20 proto {proto}",
        f"route replace 10.200.1.0/24 via 10.240.0.21 proto {proto}",
        f"-4 route show proto {proto}",
        f"route del 10.200.7.0/24 proto {proto}",
    ]


def test_adding_a_machine_adds_its_steps_and_reroutes_the_others(mine: Recording) -> None:
    grown = run_program(stack([*MACHINES, {"name": "node-2", "role": "worker", "address": "10.240.0.22"}]))
    new = {r.name for r in grown.resources} - {r.name for r in mine.resources}
    assert "kthw-node-2-ssh-ready" in new and "kthw-node-2-bootstrap-kubelet" in new
    before = {r.name: r.inputs for r in mine.resources if r.name.endswith("-pod-routes")}
    after = {r.name: r.inputs for r in grown.resources if r.name.endswith("-pod-routes")}
    assert all(after[name]["stdin"] != inputs["stdin"] for name, inputs in before.items())


def _bad(machines: list[dict[str, Any]], **extra: str) -> list[str]:
    return problems(stack(machines, **extra))


def test_a_machine_listed_twice_is_one_line() -> None:
    listed_twice = "kthw:machines = 'node-0' is invalid: one machine per name: node-0 and node-0 share it"
    # Pasted twice as it is (name, SSH address and internal IP all shared), or with one field edited.
    assert _bad([*MACHINES, MACHINES[1]]) == [listed_twice]
    assert _bad([*MACHINES, {**MACHINES[1], "internalIp": "10.240.0.29"}]) == [listed_twice]
    # One machine under two names: its SSH address (and so its internal IP) is what they share, told once.
    assert _bad([*MACHINES, {"name": "node-2", "role": "worker", "address": "10.240.0.20", "port": 2222}]) == [
        "kthw:machines = '10.240.0.20:2222' is invalid: one machine per SSH address: node-0 and node-2 share it"
    ]


def test_two_machines_with_one_internal_ip_is_one_line() -> None:
    clash = [*MACHINES, {"name": "node-2", "role": "worker", "address": "10.0.0.5", "internalIp": "10.240.0.21"}]
    assert _bad(clash) == [
        "kthw:machines = '10.240.0.21' is invalid: one machine per internal IP: node-1 and node-2 share it"
    ]


def test_an_internal_ip_outside_node_cidr_is_one_line() -> None:
    outside = [MACHINES[0], {"name": "node-0", "role": "worker", "address": "192.168.1.20"}]
    assert _bad(outside) == [
        "kthw:machines[1].internalIp = '192.168.1.20' is invalid: a host address of kthw:nodeCidr (10.240.0.0/24)"
    ]


def test_a_missing_or_plain_key_is_one_line() -> None:
    config = stack()
    del config["sshPrivateKey"]
    assert problems(config) == [
        "kthw:sshPrivateKey = '' is invalid: a private key the machines accept: "
        "pulumi config set --secret kthw:sshPrivateKey < ~/.ssh/id_ed25519"
    ]


def test_role_counts_etcd_refuses_are_one_line() -> None:
    assert _bad(MACHINES[1:]) == ["kthw:machines = '0 controllers' is invalid: 1 to 10 controllers (etcd runs on each)"]
    assert _bad(MACHINES[:1]) == [
        "kthw:machines = '0 workers' is invalid: at least one worker, at most one per /24 (clusterCidr 10.200.0.0/16 "
        "holds 256)"
    ]


def test_every_problem_at_once_with_keys_of_another_platform() -> None:
    bad: list[dict[str, Any]] = [{"name": "Server", "role": "master", "address": "", "extra": 1}, {"role": "worker"}]
    found = _bad(bad, etcdBackupBucket="my-bucket")
    assert found[0].startswith("kthw:machines[0] = ") and "only the fields" in found[0]
    assert found[1] == (
        "kthw:machines[1].name = '' is invalid: a node name: lowercase letters, digits and '-', at most 63"
    )
    assert found[2] == "kthw:etcdBackupBucket = 'my-bucket' is invalid: unset: it is used with kthw:platform gcp only"
    assert len(found) == 3, found
