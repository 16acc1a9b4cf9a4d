"""The local provider plugins' own rules, called in-process: what replaces, what updates, what is secret."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from pulumi.provider.experimental.property_value import PropertyValue
from pulumi.provider.experimental.provider import (
    ConfigureRequest,
    CreateRequest,
    DeleteRequest,
    DiffRequest,
    UpdateRequest,
)

from tests.engine.providers import command, gcp, tls
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


def test_instance_gets_a_stable_external_ip_and_gce_replacement_rules(cloud: tuple[LocalProvider, gcp.Backend]) -> None:
    provider, backend = cloud
    vm_id, state = create(provider, INSTANCE, "w", VM)
    assert vm_id == "projects/p/zones/us-west1-c/instances/worker-0"
    nat = plain(state["networkInterfaces"])[0]["accessConfigs"][0]["natIp"]
    assert nat.startswith("198.51.100.")
    assert diff(provider, INSTANCE, state, VM) == (False, [])
    assert diff(provider, INSTANCE, state, {**VM, "machineType": "e2-standard-2"}) == (True, [])
    assert diff(provider, INSTANCE, state, {**VM, "metadata": {"ssh-keys": "other"}}) == (True, [])
    assert diff(provider, INSTANCE, state, {**VM, "zone": "us-west1-b"}) == (True, ["zone"])
    image = {**VM, "bootDisk": {"initializeParams": {"image": "ubuntu", "size": 20}}}
    assert diff(provider, INSTANCE, state, image) == (True, ["bootDisk"])
    # An in-place update keeps the VM's id and address.
    updated = asyncio.run(
        provider.update(
            UpdateRequest(urn(INSTANCE, "w"), vm_id, state, inputs({**VM, "machineType": "e2-small"}), 60, [], False)
        )
    ).properties
    assert plain(updated["instanceId"]) == plain(state["instanceId"])
    assert plain(updated["networkInterfaces"])[0]["accessConfigs"][0]["natIp"] == nat
    assert backend.resources()["instance/worker-0"]["inputs"]["machineType"] == "e2-small"
    asyncio.run(provider.delete(DeleteRequest(urn(INSTANCE, "w"), vm_id, updated, 60)))
    assert backend.resources() == {}
    # The same name gets the same address again.
    _, again = create(provider, INSTANCE, "w", VM)
    assert plain(again["networkInterfaces"])[0]["accessConfigs"][0]["natIp"] == nat
    # Creates and deletes (not updates) are logged in order, with times, for ordering checks.
    events = backend.instance_events()
    assert [(e["operation"], e["instance"]) for e in events] == [
        ("create", "worker-0"),
        ("delete", "worker-0"),
        ("create", "worker-0"),
    ]
    assert [e["at"] for e in events] == sorted(e["at"] for e in events)


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
