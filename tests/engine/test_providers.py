"""The local provider plugins' own rules, called in-process: what replaces, what updates, what is secret."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest
from pulumi.provider.experimental.property_value import PropertyValue
from pulumi.provider.experimental.provider import (
    ConfigureRequest,
    CreateRequest,
    DeleteRequest,
    DiffRequest,
    InvokeRequest,
    ReadRequest,
    UpdateRequest,
)

from tests.engine.providers import command, gce_catalog, gcp, tls
from tests.engine.providers.base import INPUTS, UNKNOWN, UNKNOWN_WIRE, LocalProvider, plain, wrap

INSTANCE = "gcp:compute/instance:Instance"


def urn(token: str, name: str) -> str:
    return f"urn:pulumi:dev::kthw::{token}::{name}"


def inputs(values: dict[str, Any]) -> dict[str, PropertyValue]:
    return {k: wrap(v) for k, v in values.items()}


def create(provider: LocalProvider, token: str, name: str, values: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    response = asyncio.run(provider.create(CreateRequest(urn(token, name), inputs(values), 60, False)))
    return str(response.resource_id), dict(response.properties)


def diff(provider: LocalProvider, token: str, state: dict[str, Any], values: dict[str, Any]) -> tuple[bool, list[str]]:
    response = asyncio.run(provider.diff(DiffRequest(urn(token, "x"), "id", state, inputs(values), [])))
    return bool(response.changes), sorted(response.replaces)


@pytest.fixture
def cloud(tmp_path: Path) -> tuple[LocalProvider, gcp.Backend]:
    backend = gcp.Backend(tmp_path / "gcp.json")
    provider = gcp.provider(backend)
    config = {"project": "p", "region": "us-west1", "zone": "us-west1-c"}
    asyncio.run(provider.configure(ConfigureRequest({}, inputs(config), True, True)))
    return provider, backend


VM = {
    "name": "worker-0",
    "project": "p",
    "zone": "us-west1-c",
    "machineType": "e2-medium",
    "allowStoppingForUpdate": True,
    "bootDisk": {"initializeParams": {"image": "debian-12", "size": 20}},
    "networkInterfaces": [{"subnetwork": "s", "networkIp": "10.240.0.20", "accessConfigs": [{}]}],
    "metadata": {"ssh-keys": "kthw:ssh-ed25519 AAAA"},
}


def update(
    provider: LocalProvider, token: str, state: dict[str, Any], values: dict[str, Any], preview: bool = False
) -> dict[str, Any]:
    request = UpdateRequest(urn(token, "x"), "id", state, inputs(values), 60, [], preview)
    return dict(asyncio.run(provider.update(request)).properties)


def nat_ip(state: dict[str, Any]) -> str:
    return str(plain(state["networkInterfaces"])[0]["accessConfigs"][0]["natIp"])


ADDRESS = "gcp:compute/address:Address"


def test_every_create_and_every_start_gets_a_new_ephemeral_ip(cloud: tuple[LocalProvider, gcp.Backend]) -> None:
    """GCE gives an ephemeral external IP back on stop and deletion, and hands out another one."""
    provider, backend = cloud
    vm_id, state = create(provider, INSTANCE, "w", VM)
    assert vm_id == "projects/p/zones/us-west1-c/instances/worker-0"
    first = nat_ip(state)
    assert first.startswith("198.51.100.")
    # A machine type change: the plan cannot know the next IP and keeps the old one...
    planned = update(provider, INSTANCE, state, {**VM, "machineType": "e2-small"}, preview=True)
    assert nat_ip(planned) == first
    # ... while GCE stops the VM, sets the type and starts it on a new one.
    updated = update(provider, INSTANCE, state, {**VM, "machineType": "e2-small"})
    assert plain(updated["instanceId"]) == plain(state["instanceId"])
    assert plain(updated["currentStatus"]) == "RUNNING"
    second = nat_ip(updated)
    assert second != first and backend.resources()["instance/worker-0"]["inputs"]["machineType"] == "e2-small"
    # A service account change stops and starts it too.
    account = {
        **VM,
        "machineType": "e2-small",
        "serviceAccount": {"email": "a@p.iam.gserviceaccount.com", "scopes": []},
    }
    moved = update(provider, INSTANCE, updated, account)
    third = nat_ip(moved)
    assert third not in (first, second)
    # Metadata changes on a running VM: same IP.
    again = update(provider, INSTANCE, moved, {**account, "metadata": {"ssh-keys": "other"}})
    assert nat_ip(again) == third
    asyncio.run(provider.delete(DeleteRequest(urn(INSTANCE, "w"), vm_id, again, 60)))
    assert backend.resources() == {}
    # A replacement (delete, create) gets yet another one.
    _, replaced = create(provider, INSTANCE, "w", VM)
    assert nat_ip(replaced) not in (first, second, third)
    # Creates, deletes, stops and starts are logged in order, with times, for ordering checks.
    events = backend.instance_events()
    assert [e["operation"] for e in events] == ["create", "stop", "start", "stop", "start", "delete", "create"]
    assert [e["at"] for e in events] == sorted(e["at"] for e in events)


def test_a_given_nat_ip_must_be_a_reserved_address_and_survives_stop_and_start(
    cloud: tuple[LocalProvider, gcp.Backend],
) -> None:
    provider, _ = cloud
    with pytest.raises(gcp.GceError, match="was not found in region 'us-west1'"):
        create(provider, INSTANCE, "w", {**VM, "networkInterfaces": [{"accessConfigs": [{"natIp": "203.0.113.77"}]}]})
    address_id, address = create(provider, ADDRESS, "a", {"name": "worker-0", "project": "p", "region": "us-west1"})
    static = str(plain(address["address"]))
    pinned = {
        **VM,
        "networkInterfaces": [{"subnetwork": "s", "networkIp": "10.240.0.20", "accessConfigs": [{"natIp": static}]}],
    }
    _, state = create(provider, INSTANCE, "w", pinned)
    assert nat_ip(state) == static
    assert nat_ip(update(provider, INSTANCE, state, {**pinned, "machineType": "e2-standard-2"})) == static
    # Nobody else may use it, and it cannot be released while a VM holds it.
    other = {**pinned, "name": "worker-1", "networkInterfaces": [{"accessConfigs": [{"natIp": static}]}]}
    with pytest.raises(gcp.GceError, match="already being used"):
        create(provider, INSTANCE, "w1", other)
    with pytest.raises(gcp.GceError, match="resourceInUseByAnotherResource"):
        asyncio.run(provider.delete(DeleteRequest(urn(ADDRESS, "a"), address_id, address, 60)))


def test_an_ephemeral_ip_becomes_static_in_place(cloud: tuple[LocalProvider, gcp.Backend]) -> None:
    """Access configs change on a running VM (deleteAccessConfig, addAccessConfig): no stop, no replacement."""
    provider, backend = cloud
    _, state = create(provider, INSTANCE, "w", VM)
    _, address = create(provider, ADDRESS, "a", {"name": "worker-0", "project": "p", "region": "us-west1"})
    static = str(plain(address["address"]))
    pinned = {
        **VM,
        "networkInterfaces": [{"subnetwork": "s", "networkIp": "10.240.0.20", "accessConfigs": [{"natIp": static}]}],
    }
    assert diff(provider, INSTANCE, state, pinned) == (True, [])
    assert nat_ip(update(provider, INSTANCE, state, pinned, preview=True)) == static
    assert nat_ip(update(provider, INSTANCE, state, pinned)) == static
    assert [e["operation"] for e in backend.instance_events()] == ["create"]


@pytest.mark.parametrize(
    "change",
    [{"machineType": "e2-small"}, {"serviceAccount": {"scopes": ["cloud-platform"]}}],
    ids=["machine-type", "service-account"],
)
def test_a_change_that_needs_a_stop_is_refused_without_allow_stopping_for_update(
    cloud: tuple[LocalProvider, gcp.Backend], change: dict[str, Any]
) -> None:
    provider, backend = cloud
    running = {k: v for k, v in VM.items() if k != "allowStoppingForUpdate"}
    _, state = create(provider, INSTANCE, "w", running)
    update(provider, INSTANCE, state, {**running, **change}, preview=True)  # the plan says nothing yet
    with pytest.raises(gcp.GceError, match=r"requires stopping it\. To acknowledge this, please set allow_stopping"):
        update(provider, INSTANCE, state, {**running, **change})
    record = backend.resources()["instance/worker-0"]
    assert record["status"] == "RUNNING" and record["inputs"]["machineType"] == "e2-medium"


@pytest.mark.parametrize(
    ("machine_type", "refusal"),
    [
        ("e2-standrad-2", "Machine type with name 'e2-standrad-2' does not exist in zone 'us-west1-c'"),
        ("m3-megamem-64", "Machine type with name 'm3-megamem-64' does not exist in zone 'us-west1-c'"),
        ("n4-standard-2", "Machine type n4-standard-2 does not support disk type pd-standard"),
    ],
)
def test_a_machine_type_gce_refuses_leaves_the_vm_terminated(
    cloud: tuple[LocalProvider, gcp.Backend], machine_type: str, refusal: str
) -> None:
    """resourceComputeInstanceUpdate stops the VM, then setMachineType fails, and nothing starts it again."""
    provider, backend = cloud
    _, state = create(provider, INSTANCE, "w", VM)
    with pytest.raises(gcp.GceError, match=refusal):
        update(provider, INSTANCE, state, {**VM, "machineType": machine_type})
    assert backend.resources()["instance/worker-0"]["status"] == "TERMINATED"
    assert [e["operation"] for e in backend.instance_events()] == ["create", "stop"]
    # GCE refuses the same at creation (a new N4 VM would get a Hyperdisk boot disk unless told otherwise).
    with pytest.raises(gcp.GceError, match=refusal):
        create(provider, INSTANCE, "w2", {**_boot(type="pd-standard"), "name": "worker-1", "machineType": machine_type})


def test_an_omitted_account_email_keeps_the_last_one(cloud: tuple[LocalProvider, gcp.Backend]) -> None:
    """service_account.email is Optional+Computed: the provider re-sends the email it has when none is given."""
    provider, backend = cloud
    _, state = create(provider, INSTANCE, "w", VM)
    assert plain(state["serviceAccount"])["email"] == gcp.default_service_account("p")
    own = {**VM, "serviceAccount": {"email": "backup@p.iam.gserviceaccount.com", "scopes": ["storage-rw"]}}
    state = update(provider, INSTANCE, state, own)
    without = {**VM, "serviceAccount": {"scopes": ["logging-write"]}}
    assert diff(provider, INSTANCE, state, without) == (True, [])
    state = update(provider, INSTANCE, state, without)
    assert backend.resources()["instance/worker-0"]["serviceAccount"]["email"] == "backup@p.iam.gserviceaccount.com"
    # Named, the default account is a change again.
    named = {**VM, "serviceAccount": {"email": gcp.default_service_account("p"), "scopes": ["logging-write"]}}
    update(provider, INSTANCE, state, named)
    assert backend.resources()["instance/worker-0"]["serviceAccount"]["email"] == gcp.default_service_account("p")


def _boot(**params: Any) -> dict[str, Any]:
    return {**VM, "bootDisk": {"initializeParams": {"image": "debian-12", "size": 20, **params}}}


@pytest.mark.parametrize(
    ("change", "replaces"),
    [
        # The image spelled another way names the image the disk was made from (DiskImageDiffSuppress).
        (_boot(image="debian-cloud/debian-12"), None),
        (_boot(image="projects/debian-cloud/global/images/family/debian-12"), None),
        (_boot(image="family/debian-12"), None),
        (_boot(image="debian/debian-12"), None),
        (_boot(image="debian-cloud/debian-12-v20260101"), None),
        (_boot(image="debian-cloud/debian-11"), ["bootDisk"]),
        (_boot(image="ubuntu-os-cloud/ubuntu-2404-lts-amd64"), ["bootDisk"]),
        # Size: disks.resize in place; the type replaces, unless it is what GCE chose (Optional+Computed).
        (_boot(size=30), []),
        (_boot(type="pd-standard"), None),
        (_boot(type="pd-balanced"), ["bootDisk"]),
        ({**VM, "canIpForward": True}, []),
        ({**VM, "machineType": "zones/us-west1-c/machineTypes/e2-medium"}, None),  # CompareResourceNames
        ({**VM, "machineType": "e2-small"}, []),
        ({**VM, "tags": ["worker"]}, []),
        ({**VM, "zone": "us-west1-b"}, ["zone"]),
        ({**VM, "name": "worker-9"}, ["name"]),
        (
            {**VM, "networkInterfaces": [{"subnetwork": "s", "networkIp": "10.240.0.29", "accessConfigs": [{}]}]},
            ["networkInterfaces"],
        ),
        ({**VM, "networkInterfaces": [{"subnetwork": "t", "networkIp": "10.240.0.20", "accessConfigs": [{}]}]}, []),
        ({**VM, "networkInterfaces": [{"subnetwork": "s", "networkIp": "10.240.0.20", "accessConfigs": []}]}, []),
        ({**VM, "networkInterfaces": [{}, {}]}, ["networkInterfaces"]),
    ],
)
def test_what_replaces_an_instance_and_what_updates_it(
    cloud: tuple[LocalProvider, gcp.Backend], change: dict[str, Any], replaces: list[str] | None
) -> None:
    provider, _ = cloud
    _, state = create(provider, INSTANCE, "w", VM)
    expected = (False, []) if replaces is None else (True, replaces)
    assert diff(provider, INSTANCE, state, change) == expected


def test_a_boot_disk_grows_in_place_and_gce_refuses_to_shrink_it(cloud: tuple[LocalProvider, gcp.Backend]) -> None:
    """The provider resizes the boot disk (no ForceNew on initialize_params.size); GCE cannot make it smaller."""
    provider, backend = cloud
    _, state = create(provider, INSTANCE, "w", VM)
    grown = update(provider, INSTANCE, state, _boot(size=30))
    assert plain(grown["bootDisk"])["initializeParams"]["size"] == 30
    assert diff(provider, INSTANCE, grown, _boot(size=10)) == (True, [])
    with pytest.raises(gcp.GceError, match="Requested disk size cannot be smaller than the current size"):
        update(provider, INSTANCE, grown, _boot(size=10))
    assert [e["operation"] for e in backend.instance_events()] == ["create"]


def test_a_disk_grows_in_place_and_a_shrink_or_a_new_type_replaces(cloud: tuple[LocalProvider, gcp.Backend]) -> None:
    provider, _ = cloud
    token = "gcp:compute/disk:Disk"
    disk = {"name": "controller-0-etcd", "project": "p", "zone": "us-west1-c", "size": 10, "type": "pd-balanced"}
    _, state = create(provider, token, "d", disk)
    assert diff(provider, token, state, {**disk, "size": 20}) == (True, [])
    assert diff(provider, token, state, {**disk, "size": 5}) == (True, ["size"])  # IsDiskShrinkage
    assert diff(provider, token, state, {**disk, "type": "pd-ssd"}) == (True, ["type"])
    assert diff(provider, token, state, {**disk, "description": "etcd"}) == (True, ["description"])


def test_a_deleted_vm_leaves_every_target_pool(cloud: tuple[LocalProvider, gcp.Backend]) -> None:
    """What GCE does; the provider's pool diff sees no change when a VM comes back under the same name."""
    provider, backend = cloud
    vm_id, vm = create(provider, INSTANCE, "w", VM)
    pool = {
        "name": "kubernetes-target-pool",
        "project": "p",
        "region": "us-west1",
        "instances": ["us-west1-c/worker-0"],
    }
    _, pool_state = create(provider, "gcp:compute/targetPool:TargetPool", "tp", pool)
    asyncio.run(provider.delete(DeleteRequest(urn(INSTANCE, "w"), vm_id, vm, 60)))
    create(provider, INSTANCE, "w", VM)
    assert backend.resources()["targetPool/kubernetes-target-pool"]["inputs"]["instances"] == []
    assert diff(provider, "gcp:compute/targetPool:TargetPool", pool_state, pool) == (False, [])


BUCKET = "gcp:storage/bucket:Bucket"


def test_bucket_names_are_global_and_a_kept_bucket_can_be_imported(cloud: tuple[LocalProvider, gcp.Backend]) -> None:
    provider, backend = cloud
    bucket = {"name": "snaps", "project": "p", "location": "US-WEST1", "uniformBucketLevelAccess": True}
    backend.put("bucket", "taken", {"id": "1", "inputs": {**bucket, "name": "taken", "project": "someone-else"}})
    with pytest.raises(gcp.GceError, match="The requested bucket name is not available"):
        create(provider, BUCKET, "b", {**bucket, "name": "taken"})
    _, state = create(provider, BUCKET, "b", bucket)
    assert plain(state["url"]) == "gs://snaps"
    assert diff(provider, BUCKET, state, {**bucket, "uniformBucketLevelAccess": False}) == (True, [])
    assert diff(provider, BUCKET, state, {**bucket, "location": "EU"}) == (True, ["location"])
    # retain_on_delete: the engine forgets it, the cloud keeps it; the name is still ours.
    with pytest.raises(gcp.GceError, match="you already own it"):
        create(provider, BUCKET, "b2", bucket)
    read = asyncio.run(provider.read(ReadRequest(urn(BUCKET, "b"), "p/snaps", {}, {})))
    assert read.resource_id == "snaps" and read.inputs is not None
    assert {k: plain(v) for k, v in read.inputs.items()} == bucket
    missing = asyncio.run(provider.read(ReadRequest(urn(BUCKET, "b"), "p/nothing", {}, {})))
    assert not missing.resource_id
    with pytest.raises(gcp.GceError, match=r"does not have storage\.buckets\.get access"):
        asyncio.run(provider.read(ReadRequest(urn(BUCKET, "b"), "p/taken", {}, {})))


def test_the_lookups_answer_as_the_data_sources_do(cloud: tuple[LocalProvider, gcp.Backend]) -> None:
    provider, _ = cloud

    def invoke(token: str, args: dict[str, Any]) -> dict[str, Any]:
        response = asyncio.run(provider.invoke(InvokeRequest(token, inputs(args))))
        return {k: plain(v) for k, v in (response.return_value or {}).items()}

    types = invoke("gcp:compute/getMachineTypes:getMachineTypes", {"filter": "name = e2-standard-2"})
    assert [(m["name"], m["guestCpus"], m["memoryMb"]) for m in types["machineTypes"]] == [("e2-standard-2", 2, 8192)]
    assert types["zone"] == "us-west1-c"
    assert (
        invoke("gcp:compute/getMachineTypes:getMachineTypes", {"filter": "name = c2-standard-4"})["machineTypes"] == []
    )
    elsewhere = invoke(
        "gcp:compute/getMachineTypes:getMachineTypes", {"filter": "name = c2-standard-4", "zone": "us-west1-a"}
    )
    assert len(elsewhere["machineTypes"]) == 1
    everything = invoke("gcp:compute/getMachineTypes:getMachineTypes", {})["machineTypes"]
    assert {m["name"].split("-")[0] for m in everything} == {"e2", "n1", "n2", "n2d", "t2d", "c2d", "c3", "n4", "c4"}
    # The list has no custom types; GCE takes one wherever its family is offered.
    assert gce_catalog.machine_type_problem("e2-custom-4-8192", "us-west1-c") is None
    assert gce_catalog.machine_type_problem("c2-custom-4-8192", "us-west1-a") is not None
    account = invoke("gcp:compute/getDefaultServiceAccount:getDefaultServiceAccount", {})
    assert account["email"] == gcp.default_service_account("p")
    assert re.fullmatch(r"\d{12}-compute@developer\.gserviceaccount\.com", account["email"])


def test_subnet_expands_in_place_and_recreates_otherwise(cloud: tuple[LocalProvider, gcp.Backend]) -> None:
    provider, _ = cloud
    token = "gcp:compute/subnetwork:Subnetwork"
    subnet = {
        "name": "kubernetes",
        "project": "p",
        "region": "us-west1",
        "network": "n",
        "ipCidrRange": "10.240.0.0/24",
    }
    _, state = create(provider, token, "s", subnet)
    assert plain(state["gatewayAddress"]) == "10.240.0.1"
    assert diff(provider, token, state, {**subnet, "ipCidrRange": "10.240.0.0/20"}) == (True, [])
    assert diff(provider, token, state, {**subnet, "ipCidrRange": "10.241.0.0/24"}) == (True, ["ipCidrRange"])
    assert diff(provider, token, state, {**subnet, "description": "x"}) == (True, ["description"])


@pytest.mark.parametrize(
    ("token", "values", "change", "replaces"),
    [
        # What the program sets on each kind, against the provider's schema (ForceNew or not).
        ("gcp:compute/network:Network", {"autoCreateSubnetworks": False}, {"autoCreateSubnetworks": True}, True),
        ("gcp:compute/network:Network", {}, {"description": "x"}, True),
        ("gcp:compute/firewall:Firewall", {"network": "n", "priority": 1000}, {"priority": 900}, False),
        (
            "gcp:compute/firewall:Firewall",
            {"network": "n", "sourceRanges": ["0.0.0.0/0"]},
            {"targetTags": ["a"]},
            False,
        ),
        ("gcp:compute/firewall:Firewall", {"network": "n"}, {"network": "m"}, False),
        ("gcp:compute/address:Address", {"region": "us-west1"}, {"addressType": "INTERNAL"}, True),
        ("gcp:compute/route:Route", {"network": "n", "destRange": "10.200.0.0/24"}, {"nextHopIp": "10.240.0.21"}, True),
        ("gcp:compute/httpHealthCheck:HttpHealthCheck", {"port": 80}, {"requestPath": "/livez"}, False),
        ("gcp:compute/targetPool:TargetPool", {"region": "us-west1"}, {"instances": ["us-west1-c/c-0"]}, False),
        ("gcp:compute/targetPool:TargetPool", {"region": "us-west1"}, {"sessionAffinity": "CLIENT_IP"}, True),
        ("gcp:compute/forwardingRule:ForwardingRule", {"region": "us-west1"}, {"target": "t2"}, False),
        ("gcp:compute/forwardingRule:ForwardingRule", {"region": "us-west1"}, {"portRange": "443"}, True),
        ("gcp:compute/forwardingRule:ForwardingRule", {"region": "us-west1"}, {"ipAddress": "203.0.113.9"}, True),
    ],
)
def test_each_kind_replaces_or_updates_as_the_provider_does(
    cloud: tuple[LocalProvider, gcp.Backend], token: str, values: dict[str, Any], change: dict[str, Any], replaces: bool
) -> None:
    provider, _ = cloud
    base = {"name": "r", "project": "p", **values}
    _, state = create(provider, token, "r", base)
    assert diff(provider, token, state, {**base, **change}) == (True, sorted(change) if replaces else [])


def test_a_second_resource_with_the_same_cloud_name_is_refused(cloud: tuple[LocalProvider, gcp.Backend]) -> None:
    provider, _ = cloud
    token = "gcp:compute/network:Network"
    create(provider, token, "a", {"name": "vpc", "project": "p"})
    with pytest.raises(ValueError, match="already exists"):
        create(provider, token, "b", {"name": "vpc", "project": "p"})


def test_private_key_is_real_and_secret() -> None:
    provider = LocalProvider(tls.KINDS)
    _, state = create(provider, "tls:index/privateKey:PrivateKey", "k", {"algorithm": "ECDSA", "ecdsaCurve": "P256"})
    assert state["privateKeyPem"].is_secret
    assert plain(state["privateKeyPem"]).startswith("-----BEGIN EC PRIVATE KEY-----")
    assert not state["publicKeyPem"].is_secret
    # Same inputs, new resource (a replacement): a new key, never a cached one.
    _, again = create(provider, "tls:index/privateKey:PrivateKey", "k", {"algorithm": "ECDSA", "ecdsaCurve": "P256"})
    assert plain(again["privateKeyPem"]) != plain(state["privateKeyPem"])
    assert diff(provider, "tls:index/privateKey:PrivateKey", state, {"algorithm": "ED25519"}) == (
        True,
        ["algorithm", "ecdsaCurve"],
    )


def test_command_runs_create_then_update_and_triggers_replace(tmp_path: Path) -> None:
    record = tmp_path / "commands.jsonl"
    provider = command.CommandProvider([command.kind(command.RecordingExecutor(record))])
    token = command.TOKEN
    values = {"connection": {"host": "198.51.100.10"}, "create": "echo hi", "stdin": "data", "triggers": ["a"]}
    cmd_id, state = create(provider, token, "c", values)
    assert state["connection"].is_secret and plain(state["stdout"]) == ""
    assert INPUTS in state
    assert diff(provider, token, state, values) == (False, [])
    assert diff(provider, token, state, {**values, "stdin": "other"}) == (True, [])
    assert diff(provider, token, state, {**values, "triggers": ["b"]}) == (True, ["triggers"])
    asyncio.run(provider.update(UpdateRequest(urn(token, "c"), cmd_id, state, inputs(values), 60, [], False)))
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    assert [(r["operation"], r["host"], r["script"]) for r in lines] == [
        ("create", "198.51.100.10", "echo hi"),
        ("update", "198.51.100.10", "echo hi"),
    ]
    assert lines[0]["stdin_sha256"] == "3a6eb0790f39ac87c94f3856b2dd2c5d110e6811602261a9a923d3bb23adc8b7"
    assert lines[0]["at"] <= lines[1]["at"]


def test_unknowns_cross_the_wire_both_ways() -> None:
    """The engine sends unknowns as rpc.UNKNOWN; a preview answers with the same, never Computed (unmarshalable)."""
    provider = LocalProvider(tls.KINDS)
    request = CreateRequest(
        urn("tls:index/certRequest:CertRequest", "r"), {"privateKeyPem": PropertyValue(UNKNOWN_WIRE)}, 60, True
    )
    response = asyncio.run(provider.create(request))
    assert plain(response.properties["certRequestPem"]) is UNKNOWN
    assert PropertyValue.marshal_map(response.properties)["certRequestPem"] == UNKNOWN_WIRE


class EchoExecutor(command.RecordingExecutor):
    """A stand-in for a later tier's executor: answers with the script."""

    def run(
        self,
        resource: str,
        operation: str,
        connection: dict[str, Any],
        script: str,
        stdin: str | None,
        env: dict[str, str],
        timeout: float | None = None,
    ) -> tuple[str, str]:
        return script, ""


class FixedAddressCloud(gcp.Backend):
    """A stand-in for a VM backend: a cloud whose VMs always come up on one address."""

    def create_instance(self, name: str, zone: str, inputs: dict[str, Any]) -> dict[str, Any]:
        record = super().create_instance(name, zone, inputs)
        record["networkInterfaces"][0]["accessConfigs"][0]["natIp"] = "192.0.2.1"
        return record


def test_a_later_tier_plugs_in_its_executor_and_backend(tmp_path: Path) -> None:
    env = {command.RECORD_ENV: str(tmp_path / "r"), gcp.STATE_ENV: str(tmp_path / "g.json")}
    assert isinstance(command.executor_from_env(env), command.RecordingExecutor)
    assert type(gcp.backend_from_env(env)) is gcp.Backend
    executor = command.executor_from_env({**env, command.EXECUTOR_ENV: f"{__name__}:EchoExecutor"})
    provider = command.CommandProvider([command.kind(executor)])
    _, state = create(provider, command.TOKEN, "c", {"connection": {"host": "h"}, "create": "uname"})
    assert plain(state["stdout"]) == "uname"
    backend = gcp.backend_from_env({**env, gcp.BACKEND_ENV: f"{__name__}:FixedAddressCloud"})
    cloud = gcp.provider(backend)
    asyncio.run(cloud.configure(ConfigureRequest({}, inputs({"project": "p", "zone": "z"}), True, True)))
    _, vm = create(cloud, INSTANCE, "w", VM)
    assert plain(vm["networkInterfaces"])[0]["accessConfigs"][0]["natIp"] == "192.0.2.1"


class LongLineExecutor(command.RecordingExecutor):
    """Answers with one line past the real provider's 64 KiB log reader."""

    def run(
        self,
        resource: str,
        operation: str,
        connection: dict[str, Any],
        script: str,
        stdin: str | None,
        env: dict[str, str],
        timeout: float | None = None,
    ) -> tuple[str, str]:
        return "x" * (command.LOG_LINE_LIMIT + 1), ""


def test_a_logged_line_the_real_provider_would_hang_on_fails_the_step(tmp_path: Path) -> None:
    provider = command.CommandProvider([command.kind(LongLineExecutor(tmp_path / "r"))])
    values = {"connection": {"host": "h"}, "create": "yes | head -c 70000"}
    with pytest.raises(RuntimeError, match="hangs forever on a logged line longer than 65535 bytes"):
        create(provider, command.TOKEN, "c", values)
    # Not logged, the same output is only stored, as the real provider does.
    _, state = create(provider, command.TOKEN, "c", {**values, "logging": "stderr"})
    assert len(plain(state["stdout"])) == command.LOG_LINE_LIMIT + 1
