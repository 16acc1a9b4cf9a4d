"""The KTHW resource table for network and compute (ch. 3, 11), as registered under mocks."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.harness import Recording, cached

GCE_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


def one(recording: Recording, token: str, name: str) -> dict[str, Any]:
    matches = [r for r in recording.of_type(token) if r.inputs.get("name") == name]
    assert len(matches) == 1, f"{len(matches)} {token} named {name}"
    return matches[0].inputs


def test_vpc_and_subnet(ha_modes: Recording) -> None:
    vpc = one(ha_modes, "gcp:compute/network:Network", "kubernetes-the-hard-way")
    assert vpc["autoCreateSubnetworks"] is False
    subnet = one(ha_modes, "gcp:compute/subnetwork:Subnetwork", "kubernetes")
    assert subnet["ipCidrRange"] == "10.240.0.0/24"
    assert subnet["region"] == "us-west1"


def test_internal_firewall(ha_modes: Recording) -> None:
    rule = one(ha_modes, "gcp:compute/firewall:Firewall", "kubernetes-the-hard-way-allow-internal")
    assert rule["network"] == "kubernetes-the-hard-way"
    assert sorted(a["protocol"] for a in rule["allows"]) == ["icmp", "tcp", "udp"]
    assert all("ports" not in a for a in rule["allows"])
    assert rule["sourceRanges"] == ["10.240.0.0/24", "10.200.0.0/16"]


def test_workers_and_pods_cannot_reach_etcd(ha_modes: Recording) -> None:
    rule = one(ha_modes, "gcp:compute/firewall:Firewall", "kubernetes-the-hard-way-deny-etcd-from-workers")
    internal = one(ha_modes, "gcp:compute/firewall:Firewall", "kubernetes-the-hard-way-allow-internal")
    assert rule["denies"] == [{"protocol": "tcp", "ports": ["2379-2380"]}]
    assert rule["sourceRanges"] == ["10.200.0.0/16"]
    assert rule["sourceTags"] == ["worker"]
    assert rule["targetTags"] == ["controller"]
    assert rule["priority"] < internal.get("priority", 1000)
    # the VMs carry the tags the rule matches on
    tags = {r.inputs["name"]: r.inputs["tags"] for r in ha_modes.of_type("gcp:compute/instance:Instance")}
    assert "worker" in tags["worker-0"] and "controller" in tags["controller-0"]


def test_external_firewall_is_limited_to_admin_ranges_and_ports(ha_modes: Recording) -> None:
    rule = one(ha_modes, "gcp:compute/firewall:Firewall", "kubernetes-the-hard-way-allow-external")
    assert rule["allows"] == [{"protocol": "tcp", "ports": ["22", "6443"]}, {"protocol": "icmp"}]
    assert rule["sourceRanges"] == ["0.0.0.0/0"]
    assert rule["targetTags"] == ["kubernetes-the-hard-way"]


def test_admin_source_ranges_reach_the_firewall() -> None:
    recording = cached({"controllerCount": "1", "workerCount": "1", "adminSourceRanges": '["198.51.100.7/32"]'})
    rule = one(recording, "gcp:compute/firewall:Firewall", "kubernetes-the-hard-way-allow-external")
    assert rule["sourceRanges"] == ["198.51.100.7/32"]


def test_static_public_address(ha_modes: Recording) -> None:
    address = one(ha_modes, "gcp:compute/address:Address", "kubernetes-the-hard-way")
    assert address["region"] == "us-west1"
    assert ha_modes.outputs["kubernetes_public_address"]


@pytest.mark.parametrize(
    ("name", "ip", "role"),
    [
        ("controller-0", "10.240.0.10", "controller"),
        ("controller-1", "10.240.0.11", "controller"),
        ("controller-2", "10.240.0.12", "controller"),
        ("worker-0", "10.240.0.20", "worker"),
        ("worker-1", "10.240.0.21", "worker"),
        ("worker-2", "10.240.0.22", "worker"),
    ],
)
def test_instances(ha_modes: Recording, name: str, ip: str, role: str) -> None:
    vm = one(ha_modes, "gcp:compute/instance:Instance", name)
    assert vm["zone"] == "us-west1-c"
    assert vm["machineType"] == "e2-standard-2"
    assert vm["canIpForward"] is True
    assert vm["tags"] == ["kubernetes-the-hard-way", role]
    assert vm["bootDisk"]["initializeParams"]["image"] == "ubuntu-os-cloud/ubuntu-2404-lts-amd64"
    assert vm["bootDisk"]["initializeParams"]["size"] == 20
    assert vm["bootDisk"]["initializeParams"]["type"] == "pd-standard"  # what GCE gives E2 (config.BOOT_DISK_TYPES)
    nic = vm["networkInterfaces"][0]
    assert nic["networkIp"] == ip
    # The node's static address (tests/test_gce_updates.py), unknown in a first preview.
    assert list(nic["accessConfigs"][0]) == ["natIp"]
    assert vm["serviceAccount"]["scopes"] == ["logging-write", "monitoring"]
    metadata = vm["metadata"]
    assert metadata["enable-oslogin"] == "FALSE"
    assert re.fullmatch(r"kthw:ssh-ed25519 \S+\s*", metadata["ssh-keys"]), metadata["ssh-keys"]
    if role == "worker":
        assert metadata["pod-cidr"] == f"10.200.{name.split('-')[1]}.0/24"
    else:
        assert "pod-cidr" not in metadata


def test_pod_routes(ha_modes: Recording) -> None:
    routes = {r.inputs["name"]: r.inputs for r in ha_modes.of_type("gcp:compute/route:Route")}
    assert set(routes) == {f"kubernetes-route-10-200-{i}-0-24" for i in range(3)}
    for i in range(3):
        route = routes[f"kubernetes-route-10-200-{i}-0-24"]
        assert route["destRange"] == f"10.200.{i}.0/24"
        assert route["nextHopIp"] == f"10.240.0.2{i}"
        assert route["network"] == "kubernetes-the-hard-way"


def test_every_cloud_name_is_valid_for_gce(ha: Recording) -> None:
    names = [r.inputs["name"] for r in ha.resources if r.type.startswith("gcp:") and "name" in r.inputs]
    assert names and all(GCE_NAME.match(n) for n in names), names
    per_type = [(r.type, r.inputs["name"]) for r in ha.resources if r.type.startswith("gcp:") and "name" in r.inputs]
    assert len(per_type) == len(set(per_type))


def test_named_cloud_resources_are_deleted_before_replacement(ha: Recording) -> None:
    named = [r for r in ha.resources if r.type.startswith("gcp:") and "name" in r.inputs]
    # The target pool's name changes with its members, so its replacement is made first.
    assert [r.name for r in named if not r.options["delete_before_replace"]] == ["kthw-api-frontend-target-pool"]


def test_every_resource_is_parented_to_its_component(ha: Recording) -> None:
    by_name = {r.name: r for r in ha.resources}
    for r in ha.resources:
        if r.type == "kthw:index:Cluster":
            assert r.parent is None
            continue
        assert r.parent in by_name, f"{r.name} has parent {r.parent}"
        parent = by_name[r.parent]
        assert parent.type.startswith("kthw:index:"), f"{r.name} is parented to {parent.type}"
        assert r.name.startswith(parent.name + "-"), f"{r.name} is not named after its parent {parent.name}"


def test_stack_outputs_name_every_node(ha: Recording) -> None:
    assert set(ha.outputs["controllers"]) == {"controller-0", "controller-1", "controller-2"}
    assert ha.outputs["workers"]["worker-2"]["internal_ip"] == "10.240.0.22"
    assert re.fullmatch(r"203\.0\.113\.\d+", ha.outputs["workers"]["worker-2"]["external_ip"])
    assert "ssh_private_key" in ha.secret_outputs
    assert ha.outputs["ssh_private_key"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----")


def test_small_cluster_has_one_of_each(small: Recording) -> None:
    assert [r.inputs["name"] for r in small.of_type("gcp:compute/instance:Instance")] in (
        ["controller-0", "worker-0"],
        ["worker-0", "controller-0"],
    )
    assert [r.inputs["name"] for r in small.of_type("gcp:compute/route:Route")] == ["kubernetes-route-10-200-0-0-24"]


def test_each_worker_may_reach_the_api_through_the_public_address(ha_modes: Recording) -> None:
    """A narrowed adminSourceRanges must not cut kubelets off: the LB keeps a worker's external IP as source."""
    for name, addresses in ha_modes.outputs["workers"].items():
        rule = one(ha_modes, "gcp:compute/firewall:Firewall", f"kubernetes-the-hard-way-allow-api-from-{name}")
        assert rule["sourceRanges"] == [addresses["external_ip"] + "/32"]
        assert rule["allows"] == [{"protocol": "tcp", "ports": ["6443"]}]
        assert rule["targetTags"] == ["controller"]


@pytest.mark.parametrize("shape", ["small", "ha"])
def test_api_load_balancer(shape: str, request: pytest.FixtureRequest) -> None:
    recording: Recording = request.getfixturevalue(shape)
    controllers = 1 if shape == "small" else 3
    check = one(recording, "gcp:compute/httpHealthCheck:HttpHealthCheck", "kubernetes")
    assert (check["host"], check["requestPath"], check["port"]) == (
        "kubernetes.default.svc.cluster.local",
        "/healthz",
        80,
    )
    probes = one(recording, "gcp:compute/firewall:Firewall", "kubernetes-the-hard-way-allow-health-check")
    assert probes["sourceRanges"] == ["209.85.152.0/22", "209.85.204.0/22", "35.191.0.0/16"]
    assert probes["allows"] == [{"protocol": "tcp", "ports": ["80"]}]
    (pool_resource,) = recording.of_type("gcp:compute/targetPool:TargetPool")
    pool = pool_resource.inputs
    assert re.fullmatch(r"kubernetes-target-pool-[0-9a-f]{8}", pool["name"])
    assert pool["instances"] == [f"us-west1-c/controller-{i}" for i in range(controllers)]
    assert pool["region"] == "us-west1"
    rule = one(recording, "gcp:compute/forwardingRule:ForwardingRule", "kubernetes-forwarding-rule")
    assert rule["portRange"] == "6443" and rule["ipProtocol"] == "TCP"
    assert rule["ipAddress"] == recording.outputs["kubernetes_public_address"]
    # one healthz proxy per controller, one bootstrap chain per worker
    names = recording.names()
    assert {f"kthw-api-frontend-controller-{i}-healthz-proxy" for i in range(controllers)} <= names
    workers = 1 if shape == "small" else 3
    for i in range(workers):
        assert {
            f"kthw-worker-{i}-bootstrap-{s}"
            for s in ("prepare", "binaries", "containerd", "kubelet", "kube-proxy", "ready")
        } <= names
