"""Issue 17, section 3, under mocks: what the program does about Compute Engine's update semantics.

Node addresses that survive a stop and start, machine types checked before any VM stops, a service
account always named, a kept snapshot bucket that can be adopted, and a target pool that follows
replaced controllers. The engine tier (tests/engine/) shows the same against the local gcp plugin,
which models what GCE and the provider do (tests/engine/providers/gcp.py).
"""

from __future__ import annotations

from typing import Any

import pytest

from components import config
from components.config import ConfigErrors
from tests.conftest import HA
from tests.engine.providers import gcp
from tests.harness import Recording, bundle, cached, run_program

ADDRESS = "gcp:compute/address:Address"
INSTANCE = "gcp:compute/instance:Instance"
DEFAULT_ACCOUNT = gcp.default_service_account("kthw-test")


def _instance(rec: Recording, node: str) -> dict[str, Any]:
    (vm,) = [r.inputs for r in rec.of_type(INSTANCE) if r.inputs["name"] == node]
    return vm


# --- 1. stable node addresses ---------------------------------------------------------------------


def test_every_node_has_a_static_address_named_from_the_cluster(ha_modes: Recording) -> None:
    addresses = {r.inputs["name"]: r for r in ha_modes.of_type(ADDRESS)}
    nodes = [f"controller-{i}" for i in range(3)] + [f"worker-{i}" for i in range(3)]
    assert set(addresses) == {"kubernetes-the-hard-way", *(f"kubernetes-the-hard-way-{n}" for n in nodes)}
    for node in nodes:
        address = addresses[f"kubernetes-the-hard-way-{node}"]
        assert address.inputs["region"] == "us-west1" and address.inputs["addressType"] == "EXTERNAL"
        assert address.options["delete_before_replace"]
        nics = _instance(ha_modes, node)["networkInterfaces"]
        # The VM's NAT IP is that address, not an ephemeral one GCE may change.
        assert len(nics) == 1 and set(nics[0]["accessConfigs"][0]) == {"natIp"}
        vm = next(r for r in ha_modes.of_type(INSTANCE) if r.inputs["name"] == node)
        assert address.name in vm.depends_on


def test_the_address_is_what_names_the_node_everywhere() -> None:
    rec = cached(HA)
    ip = {r.inputs["name"]: r.outputs["address"] for r in rec.of_type(ADDRESS)}
    worker = ip["kubernetes-the-hard-way-worker-1"]
    assert _instance(rec, "worker-1")["networkInterfaces"][0]["accessConfigs"][0]["natIp"] == worker
    assert rec.outputs["workers"]["worker-1"]["external_ip"] == worker
    # The worker's API firewall rule, its kubelet certificate's SAN and every step's SSH host.
    rule = rec.by_name("kthw-api-frontend-allow-api-from-worker-1")
    assert rule.inputs["sourceRanges"] == [f"{worker}/32"]
    csr = rec.by_name("kthw-pki-worker-1-csr")
    assert worker in csr.inputs["ipAddresses"]
    # Every step but the drain and uncordon, which run on controller-0 as the admin.
    on_admin = ("kthw-worker-1-bootstrap-drain", "kthw-worker-1-bootstrap-uncordon")
    steps = [
        r
        for r in rec.of_type("command:remote:Command")
        if r.name.startswith("kthw-worker-1-") and r.name not in on_admin
    ]
    assert steps and {r.inputs["connection"]["host"] for r in steps} == {worker}
    controller = rec.outputs["controllers"]["controller-0"]["external_ip"]
    assert {rec.by_name(n).inputs["connection"]["host"] for n in on_admin} == {controller}


def test_another_cluster_name_prefixes_the_addresses() -> None:
    names = {r.inputs["name"] for r in cached({**HA, "clusterName": "dev"}).of_type(ADDRESS)}
    assert "dev-controller-0" in names and "dev-worker-2" in names and "dev" in names


# --- 2. machine types GCE would refuse ------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("n4-standard-2", "the N4 family takes Hyperdisk only"),
        ("c4-standard-4", "the C4 family takes Hyperdisk only"),
        ("t2a-standard-2", "the T2A family is Arm"),
        ("e3-standard-2", "a machine type of a family the program runs on (e2, n1"),
        ("c2-custom-4-8192", "a custom machine type of a family that has them (e2, n1, n2, n2d)"),
    ],
)
def test_a_machine_family_the_disks_or_binaries_cannot_use_is_refused(value: str, why: str) -> None:
    for key in ("machineType", "controllerMachineType", "workerMachineType"):
        with pytest.raises(ConfigErrors) as error:
            config.load({key: value}, {"gcp:region": "us-west1", "gcp:zone": "us-west1-c"})
        assert f"kthw:{key} = {value!r} is invalid: {why}" in str(error.value)


@pytest.mark.parametrize(
    ("machine_type", "disk_type"),
    [
        ("e2-standard-2", "pd-standard"),
        ("n2d-standard-4", "pd-standard"),
        ("c3-standard-4", "pd-balanced"),
        # Custom types: looked up by a predefined type of their family (the list has no custom ones).
        ("e2-custom-4-8192", "pd-standard"),
        ("custom-2-4096", "pd-standard"),
    ],
)
def test_the_boot_disk_type_is_explicit_and_what_gce_gives_that_family(machine_type: str, disk_type: str) -> None:
    rec = cached({"controllerCount": "1", "workerCount": "1", "machineType": machine_type})
    for node in ("controller-0", "worker-0"):
        params = _instance(rec, node)["bootDisk"]["initializeParams"]
        assert params["type"] == disk_type


@pytest.mark.parametrize("preview", [True, False], ids=["preview", "update"])
@pytest.mark.parametrize(
    ("key", "value"),
    [("machineType", "e2-standrad-2"), ("workerMachineType", "c2-standard-4"), ("machineType", "n2-standard-3")],
)
def test_a_machine_type_the_zone_does_not_offer_fails_the_program_before_any_vm(
    key: str, value: str, preview: bool
) -> None:
    with pytest.raises(ConfigErrors) as error:
        run_program({"kthw:controllerCount": "1", "kthw:workerCount": "1", f"kthw:{key}": value}, preview=preview)
    assert f"= {value!r} is invalid: zone us-west1-c offers no such machine type" in str(error.value)
    # No VM of that type reached the engine, so none can be stopped for it.
    registered = getattr(error.value, "registered", [])
    assert "kthw-controller-0-address" in registered  # the program ran that far
    assert "kthw-worker-0-instance" not in registered
    assert ("kthw-controller-0-instance" in registered) == (key == "workerMachineType")


def test_each_machine_type_is_looked_up_once_and_feeds_the_instances() -> None:
    rec = cached({**HA, "workerMachineType": "n2-standard-4"})
    assert {_instance(rec, f"worker-{i}")["machineType"] for i in range(3)} == {"n2-standard-4"}
    assert {_instance(rec, f"controller-{i}")["machineType"] for i in range(3)} == {"e2-standard-2"}


# --- 3. the service account, always by name -------------------------------------------------------


def test_without_a_bucket_every_vm_names_the_default_compute_account(ha_modes: Recording) -> None:
    for vm in (r.inputs for r in ha_modes.of_type(INSTANCE)):
        account = vm["serviceAccount"]
        assert account == {"email": DEFAULT_ACCOUNT, "scopes": ["logging-write", "monitoring"]}, vm["name"]


def test_with_a_bucket_controllers_name_theirs_and_workers_the_default_one() -> None:
    rec = cached({**HA, "etcdBackupBucket": "kthw-test-etcd-snapshots"})
    (account,) = rec.of_type("gcp:serviceaccount/account:Account")
    for i in range(3):
        controller = _instance(rec, f"controller-{i}")["serviceAccount"]
        assert controller["email"] == account.outputs["email"] != DEFAULT_ACCOUNT
        assert "storage-rw" in controller["scopes"]
        assert _instance(rec, f"worker-{i}")["serviceAccount"]["email"] == DEFAULT_ACCOUNT


# --- 4. the kept bucket ---------------------------------------------------------------------------


def test_the_bucket_is_created_unless_etcd_backup_bucket_import_adopts_it() -> None:
    made = cached({**HA, "etcdBackupBucket": "kthw-test-etcd-snapshots"})
    (bucket,) = made.of_type("gcp:storage/bucket:Bucket")
    assert bucket.options["import"] is None and bucket.options["retain_on_delete"]
    adopted = cached({**HA, "etcdBackupBucket": "kthw-test-etcd-snapshots", "etcdBackupBucketImport": "true"})
    (bucket,) = adopted.of_type("gcp:storage/bucket:Bucket")
    # The provider's import ID for a bucket: PROJECT/NAME (resourceStorageBucketStateImporter).
    assert bucket.options["import"] == "kthw-test/kthw-test-etcd-snapshots"
    assert bucket.inputs == made.of_type("gcp:storage/bucket:Bucket")[0].inputs


def test_import_without_a_bucket_is_refused() -> None:
    with pytest.raises(ConfigErrors, match="etcdBackupBucketImport = True is invalid: true only with"):
        config.load({"etcdBackupBucketImport": "true"}, {"gcp:region": "us-west1", "gcp:zone": "us-west1-c"})


def test_the_bucket_description_says_names_are_global_and_kept() -> None:
    import yaml

    declared = yaml.safe_load(config.PROJECT_FILE.read_text())["config"]
    text = declared["etcdBackupBucket"]["description"]
    assert "global" in text and "etcdBackupBucketImport" in text and "destroy" in text
    assert declared["etcdBackupBucketImport"]["default"] is False


# --- 5. the target pool follows the controllers' VMs ----------------------------------------------


def test_the_target_pool_is_named_by_its_members_instance_ids() -> None:
    from platforms.gcp.api_frontend import members_digest

    rec = cached(HA)
    (pool,) = rec.of_type("gcp:compute/targetPool:TargetPool")
    ids = [r.outputs["instanceId"] for r in rec.of_type(INSTANCE) if r.inputs["name"].startswith("controller-")]
    assert pool.inputs["name"] == f"kubernetes-target-pool-{members_digest(ids)}"
    # Another instance id (a replaced controller) names another pool, which the engine creates
    # before it moves the forwarding rule and deletes the old one: no delete_before_replace.
    assert members_digest([*ids[:2], "42"]) != members_digest(ids)
    assert not pool.options["delete_before_replace"]
    rule = rec.of_type("gcp:compute/forwardingRule:ForwardingRule")[0]
    assert pool.name in rule.depends_on


def test_every_step_on_a_node_still_waits_for_its_vm() -> None:
    """The SSH host no longer comes from the instance, so the gate must name the VM itself."""
    rec = cached(HA)
    gate = rec.by_name("kthw-worker-0-ssh-ready")
    assert "kthw-worker-0-instance" in gate.depends_on
    kubelet = rec.by_name("kthw-worker-0-bootstrap-kubelet")
    assert "kthw-worker-0-ssh-ready" in rec.ancestors(kubelet.name)
    assert bundle(kubelet)
