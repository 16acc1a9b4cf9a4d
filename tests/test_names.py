"""kthw:clusterName: every GCE name derives from it, so two stacks can share a project; the default is KTHW's."""

from __future__ import annotations

import re

import yaml

from components import config
from tests.conftest import HA
from tests.harness import Recording, bundle, cached

DEV = {**HA, "clusterName": "dev"}
STAGING = {**HA, "clusterName": "staging"}

# KTHW's own names for its 3 + 3 cluster (docs/03-compute-resources, 08, 11), unchanged by default.
KTHW_NAMES = {
    ("network", "kubernetes-the-hard-way"),
    ("subnetwork", "kubernetes"),
    ("firewall", "kubernetes-the-hard-way-allow-internal"),
    ("firewall", "kubernetes-the-hard-way-allow-external"),
    ("firewall", "kubernetes-the-hard-way-deny-etcd-from-workers"),
    ("firewall", "kubernetes-the-hard-way-allow-health-check"),
    ("firewall", "kubernetes-the-hard-way-allow-api-from-worker-0"),
    ("firewall", "kubernetes-the-hard-way-allow-api-from-worker-1"),
    ("firewall", "kubernetes-the-hard-way-allow-api-from-worker-2"),
    ("address", "kubernetes-the-hard-way"),
    ("httpHealthCheck", "kubernetes"),
    # KTHW's name and, beyond KTHW, a digest of its members' instance ids (here as zeros).
    ("targetPool", "kubernetes-target-pool-00000000"),
    ("forwardingRule", "kubernetes-forwarding-rule"),
    ("route", "kubernetes-route-10-200-0-0-24"),
    ("route", "kubernetes-route-10-200-1-0-24"),
    ("route", "kubernetes-route-10-200-2-0-24"),
    ("instance", "controller-0"),
    ("instance", "controller-1"),
    ("instance", "controller-2"),
    ("instance", "worker-0"),
    ("instance", "worker-1"),
    ("instance", "worker-2"),
    # Beyond KTHW: each controller's etcd disk, named after its VM.
    ("disk", "controller-0-etcd"),
    ("disk", "controller-1-etcd"),
    ("disk", "controller-2-etcd"),
    # Beyond KTHW: each VM's static external address, named after the cluster and the VM.
    *(("address", f"kubernetes-the-hard-way-{node}-{i}") for node in ("controller", "worker") for i in range(3)),
}


def gce_names(recording: Recording) -> set[tuple[str, str]]:
    """(kind, name) of every GCP resource registered: gcp:compute/instance:Instance -> instance."""
    found = set()
    for r in recording.resources:
        if r.type.startswith("gcp:"):
            assert r.inputs.get("name"), f"{r.name} ({r.type}) has no explicit GCE name"
            kind, name = r.type.split("/")[1].split(":")[0], r.inputs["name"]
            if kind == "targetPool":
                name = re.sub(r"-[0-9a-f]{8}$", "-" + "0" * config.TARGET_POOL_DIGEST_LENGTH, name)
            found.add((kind, name))
    return found


def test_the_default_keeps_kthws_names_exactly(ha: Recording) -> None:
    assert gce_names(ha) == KTHW_NAMES


def test_another_name_prefixes_every_gce_name() -> None:
    names = gce_names(cached(DEV))
    assert {name for _, name in names} == set(
        config.GceNames("dev").every_name(3, ["10.200.0.0/24", "10.200.1.0/24", "10.200.2.0/24"])
    )
    assert ("instance", "dev-controller-0") in names and ("instance", "dev-worker-2") in names
    assert ("route", "dev-route-10-200-2-0-24") in names
    assert ("firewall", "dev-allow-api-from-worker-1") in names
    assert ("subnetwork", "dev") in names and ("httpHealthCheck", "dev") in names
    assert all(name.startswith("dev") for _, name in names)


def test_two_stacks_with_different_names_share_no_gce_name(ha: Recording) -> None:
    default, dev, staging = ({n for _, n in gce_names(r)} for r in (ha, cached(DEV), cached(STAGING)))
    assert default & dev == set()
    assert default & staging == set()
    assert dev & staging == set()


def test_node_names_certificates_and_kubeconfigs_follow_the_cluster_name() -> None:
    recording = cached(DEV)
    csr = recording.by_name("kthw-pki-dev-worker-1-csr")
    assert csr.inputs["subject"]["commonName"] == "system:node:dev-worker-1"
    assert csr.inputs["dnsNames"] == ["dev-worker-1"]
    files = bundle(recording.by_name("kthw-dev-worker-1-bootstrap-kubelet"))
    kubeconfig = yaml.safe_load(files["/var/lib/kubelet/kubeconfig"][0])
    assert [u["name"] for u in kubeconfig["users"]] == ["system:node:dev-worker-1"]
    assert set(recording.outputs["workers"]) == {"dev-worker-0", "dev-worker-1", "dev-worker-2"}
    assert set(recording.outputs["controllers"]) == {"dev-controller-0", "dev-controller-1", "dev-controller-2"}
    pool = recording.of_type("gcp:compute/targetPool:TargetPool")[0]
    assert pool.inputs["instances"] == [f"us-west1-c/dev-controller-{i}" for i in range(3)]
    instance = recording.by_name("kthw-dev-worker-0-instance")
    assert instance.inputs["tags"] == ["dev", "worker"]
    assert recording.by_name("kthw-network-allow-external").inputs["targetTags"] == ["dev"]


def test_the_etcd_cluster_names_members_by_node_name() -> None:
    cfg = config.load(
        {"clusterName": "dev", "controllerCount": "2"}, {"gcp:region": "us-west1", "gcp:zone": "us-west1-c"}
    )
    assert (
        cfg.etcd_initial_cluster
        == "dev-controller-0=https://10.240.0.10:2380,dev-controller-1=https://10.240.0.11:2380"
    )
