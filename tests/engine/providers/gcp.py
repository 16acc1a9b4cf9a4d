"""A local `gcp` provider plugin (pulumi-gcp 10.x): the resources the program registers, and its lookups.

Resources live in a `Backend`, a JSON file under the test's directory, so that a later tier can
put real machines behind the same calls (`create_instance`, `stop_instance`, ...). Outputs look
like GCE's: ids and self links from project/region/zone/name, a numeric instance id, static
addresses from TEST-NET-3 (203.0.113.0/24, stable per name) and ephemeral external IPs from
TEST-NET-2 (198.51.100.0/24, a new one at every create and every start, as GCE hands them out).

What replaces and what updates follows the Terraform google provider that pulumi-gcp wraps
(ForceNew in each resource's schema, CustomizeDiff, DiffSuppressFunc); the compute instance's
update follows resourceComputeInstanceUpdate: a machine type or service account change stops
the VM first, refuses to unless allowStoppingForUpdate is set, and leaves it TERMINATED when
GCE then refuses the change. GCE's own rules are kept where the program can meet them: a zone
offers only some machine types, a machine family takes only some disk types, a VM's NAT IP
must be a reserved address nobody else uses, an address in use cannot be deleted, a deleted VM
leaves every target pool, and bucket names are one namespace for everybody.
"""

from __future__ import annotations

import copy
import hashlib
import ipaddress
import json
import os
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pulumi.provider.experimental.provider import (
    DiffRequest,
    DiffResponse,
    InvokeRequest,
    InvokeResponse,
    PropertyDiff,
    PropertyDiffKind,
    ReadRequest,
    ReadResponse,
)

from tests.engine.providers import gce_catalog
from tests.engine.providers.base import INPUTS, Kind, LocalProvider, has_unknown, load, plain_map, serve, wrap

VERSION = "10.2.0"
STATE_ENV = "KTHW_ENGINE_GCP_STATE"
# Optional "package.module:Class", a Backend subclass (real VMs): what the plugin creates instances with.
BACKEND_ENV = "KTHW_ENGINE_GCP_BACKEND"
API = gce_catalog.API
INSTANCE_IPS = ipaddress.IPv4Network("198.51.100.0/24")
ADDRESS_IPS = ipaddress.IPv4Network("203.0.113.0/24")
INSTANCE = "gcp:compute/instance:Instance"


class GceError(ValueError):
    """What the Compute Engine or Cloud Storage API refused."""


def project_number(project: str) -> str:
    """A stable 12-digit project number for a project id (GCE's are assigned at project creation)."""
    return str(int(hashlib.sha256(project.encode()).hexdigest(), 16) % 10**12).rjust(12, "1")


def default_service_account(project: str) -> str:
    """The project's default compute service account, as getDefaultServiceAccount returns its email."""
    return f"{project_number(project)}-compute@developer.gserviceaccount.com"


def _last(ref: Any) -> str:
    return str(ref).rstrip("/").rsplit("/", 1)[-1]


class Backend:
    """The local cloud's state: resources by kind and name, and the addresses it handed out."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # Instance creates, deletes, stops and starts, one JSON object a line, in the order they happened.
        self.events = path.with_name(f"{path.stem}-events.jsonl")
        if not path.exists():
            self._save({"resources": {}, "ips": {}, "next_id": 1000000000000000000, "ephemeral": 0})

    def _load(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.path.read_text())
        return data

    def _save(self, data: dict[str, Any]) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        tmp.replace(self.path)

    def resources(self) -> dict[str, Any]:
        found: dict[str, Any] = self._load()["resources"]
        return found

    def ip(self, pool: ipaddress.IPv4Network, name: str) -> str:
        """The address `name` had before, or the next free one of `pool` (static addresses, stable per name)."""
        data = self._load()
        key = f"{pool}/{name}"
        if key not in data["ips"]:
            taken = {v for k, v in data["ips"].items() if k.startswith(f"{pool}/")}
            data["ips"][key] = next(str(a) for a in list(pool.hosts())[9:] if str(a) not in taken)
            self._save(data)
        address: str = data["ips"][key]
        return address

    def ephemeral_ip(self) -> str:
        """A new ephemeral external IP: never the one just released, never one an instance holds."""
        data = self._load()
        hosts = list(INSTANCE_IPS.hosts())[9:]
        in_use = {
            str(ac.get("natIp"))
            for key, rec in data["resources"].items()
            if key.startswith("instance/")
            for nic in rec.get("networkInterfaces") or []
            for ac in nic.get("accessConfigs") or []
        }
        for step in range(len(hosts)):
            candidate = str(hosts[(data.get("ephemeral", 0) + step) % len(hosts)])
            if candidate not in in_use:
                data["ephemeral"] = data.get("ephemeral", 0) + step + 1
                self._save(data)
                return candidate
        raise GceError("IP_SPACE_EXHAUSTED: no ephemeral external IP is left")

    def reserved_addresses(self) -> dict[str, dict[str, Any]]:
        """Static external addresses by IP: {ip: the address resource's inputs}."""
        data = self._load()
        found = {}
        for key, rec in data["resources"].items():
            if key.startswith("address/"):
                name = key.split("/", 1)[1]
                inputs = rec.get("inputs") or {}
                ip = inputs.get("address") or data["ips"].get(f"{ADDRESS_IPS}/{name}")
                if ip:
                    found[str(ip)] = inputs
        return found

    def put(self, kind: str, name: str, record: dict[str, Any]) -> None:
        data = self._load()
        key = f"{kind}/{name}"
        if key in data["resources"] and data["resources"][key].get("id") != record.get("id"):
            raise ValueError(f"The resource '{name}' already exists ({kind})")
        data["resources"][key] = record
        self._save(data)

    def remove(self, kind: str, name: str) -> None:
        data = self._load()
        data["resources"].pop(f"{kind}/{name}", None)
        self._save(data)

    def event(self, operation: str, name: str) -> None:
        """Append a timestamped instance event (a finished create, delete, stop or start) to `events`."""
        with self.events.open("a") as out:
            out.write(json.dumps({"at": time.time_ns(), "operation": operation, "instance": name}) + "\n")

    def instance_events(self) -> list[dict[str, Any]]:
        if not self.events.exists():
            return []
        return [json.loads(line) for line in self.events.read_text().splitlines() if line]

    def new_id(self) -> str:
        data = self._load()
        data["next_id"] += 7919  # GCE ids are opaque 19-digit numbers
        self._save(data)
        return str(data["next_id"])

    # --- instances: GCE's checks and its addresses -------------------------------------------------

    def check_machine(self, zone: str, machine_type: str, boot_type: str, attached: list[dict[str, Any]]) -> None:
        """GCE's refusals of a machine type: not offered in the zone, or one of the VM's disks it cannot take."""
        problem = gce_catalog.machine_type_problem(machine_type, zone)
        if problem is None:
            disks = self.resources()
            types = [boot_type] + [
                str((disks.get(f"disk/{_last(d.get('source'))}") or {}).get("inputs", {}).get("type") or "pd-standard")
                for d in attached
            ]
            problem = next((p for t in types if (p := gce_catalog.disk_problem(machine_type, t))), None)
        if problem is not None:
            raise GceError(problem)

    def nat_ip(self, instance: str, zone: str, access_config: Mapping[str, Any]) -> str:
        """The access config's NAT IP: a given one must be a static address of the VM's region nobody else uses."""
        wanted = access_config.get("natIp")
        if not wanted:
            return self.ephemeral_ip()
        reserved = self.reserved_addresses().get(str(wanted))
        region = zone.rsplit("-", 1)[0]
        if reserved is None or reserved.get("region", region) != region:
            raise GceError(
                f"Invalid value for field 'resource.networkInterfaces[0].accessConfigs[0].natIP': '{wanted}'. "
                f"The specified external IP address '{wanted}' was not found in region '{region}'."
            )
        for key, rec in self.resources().items():
            held = [
                ac.get("natIp") for nic in rec.get("networkInterfaces") or [] for ac in nic.get("accessConfigs") or []
            ]
            if key.startswith("instance/") and key != f"instance/{instance}" and wanted in held:
                raise GceError(f"The IP address '{wanted}' is already being used by another resource ({key}).")
        return str(wanted)

    def _interfaces(self, name: str, zone: str, inputs: dict[str, Any]) -> list[dict[str, Any]]:
        nics = [dict(n) for n in inputs.get("networkInterfaces") or []]
        for nic in nics:
            nic["accessConfigs"] = [
                {**ac, "natIp": self.nat_ip(name, zone, ac), "networkTier": ac.get("networkTier") or "PREMIUM"}
                for ac in nic.get("accessConfigs") or []
            ]
        return nics

    @staticmethod
    def computed(name: str, zone: str, inputs: dict[str, Any], old: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """What GCE fills in: the boot disk as read back, the account's email (the last one if none is given)."""
        boot = inputs.get("bootDisk") or {}
        params = boot.get("initializeParams") or {}
        old_params = ((old or {}).get("bootDisk") or {}).get("initializeParams") or {}
        machine_type = str(inputs.get("machineType") or "e2-medium")
        project = str(inputs.get("project") or "")
        account = dict(inputs.get("serviceAccount") or {"scopes": []})
        old_email = ((old or {}).get("serviceAccount") or {}).get("email")
        account["email"] = account.get("email") or old_email or default_service_account(project)
        return {
            "bootDisk": {
                **boot,
                "autoDelete": boot.get("autoDelete", True),
                "deviceName": boot.get("deviceName") or "persistent-disk-0",
                "mode": boot.get("mode") or "READ_WRITE",
                "source": f"{API}projects/{project}/zones/{zone}/disks/{name}",
                "initializeParams": {
                    **params,
                    "image": old_params.get("image")
                    or gce_catalog.image_link(str(params.get("image") or "debian-12"), project),
                    "size": params.get("size") or old_params.get("size") or 10,
                    "type": params.get("type")
                    or old_params.get("type")
                    or gce_catalog.default_boot_disk_type(machine_type),
                },
            },
            "serviceAccount": account,
        }

    # The instance calls a VM backend overrides.
    def create_instance(self, name: str, zone: str, inputs: dict[str, Any]) -> dict[str, Any]:
        """Create a VM; returns its record: instance id, status, interfaces with their addresses, computed fields."""
        computed = self.computed(name, zone, inputs)
        machine_type = str(inputs.get("machineType"))
        self.check_machine(
            zone, machine_type, computed["bootDisk"]["initializeParams"]["type"], inputs.get("attachedDisks") or []
        )
        nics = self._interfaces(name, zone, inputs)
        record = {
            "id": self.new_id(),
            "zone": zone,
            "status": "RUNNING",
            "inputs": inputs,
            "networkInterfaces": nics,
            **computed,
        }
        self.put("instance", name, record)
        return record

    def instance(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self.resources()[f"instance/{name}"]
        return found

    def update_instance(self, name: str, inputs: dict[str, Any]) -> dict[str, Any]:
        """Change what GCE changes on a running VM (metadata, tags, disks, the boot disk's size)."""
        record = self.instance(name)
        record.update(self.computed(name, record["zone"], inputs, record))
        record["inputs"] = inputs
        self.put("instance", name, record)
        return dict(record)

    def set_access_configs(self, name: str, inputs: dict[str, Any]) -> dict[str, Any]:
        """Delete and add the access configs (a running VM keeps running): a new NAT IP."""
        record = self.instance(name)
        record["networkInterfaces"] = []  # its old NAT IP is free again
        self.put("instance", name, record)
        record["networkInterfaces"] = self._interfaces(name, record["zone"], inputs)
        self.put("instance", name, record)
        return dict(record)

    def stop_instance(self, name: str) -> None:
        """instances.stop: TERMINATED, and an ephemeral external IP goes back to the pool."""
        record = self.instance(name)
        record["status"] = "TERMINATED"
        for nic in record["networkInterfaces"]:
            for ac in nic.get("accessConfigs") or []:
                if ac.get("natIp") not in self.reserved_addresses():
                    ac["natIp"] = ""
        self.put("instance", name, record)
        self.event("stop", name)

    def set_machine(self, name: str, inputs: dict[str, Any]) -> dict[str, Any]:
        """setMachineType and setServiceAccount on a TERMINATED VM; a type GCE refuses leaves it TERMINATED."""
        record = self.instance(name)
        if record["status"] != "TERMINATED":
            raise GceError(f"The resource 'instances/{name}' is not ready: it must be stopped (TERMINATED)")
        computed = self.computed(name, record["zone"], inputs, record)
        self.check_machine(
            record["zone"],
            str(inputs.get("machineType")),
            computed["bootDisk"]["initializeParams"]["type"],
            inputs.get("attachedDisks") or [],
        )
        record.update(computed)
        record["inputs"] = inputs
        self.put("instance", name, record)
        return dict(record)

    def start_instance(self, name: str) -> dict[str, Any]:
        """instances.start: RUNNING, on a new ephemeral external IP unless its access config names a static one."""
        record = self.instance(name)
        record["status"] = "RUNNING"
        record["networkInterfaces"] = self._interfaces(name, record["zone"], record["inputs"])
        self.put("instance", name, record)
        self.event("start", name)
        return dict(record)

    def delete_instance(self, name: str) -> None:
        """Delete a VM; GCE also drops it from every target pool that listed it."""
        data = self._load()
        record = data["resources"].pop(f"instance/{name}", None)
        zone = (record or {}).get("zone")
        for key, rec in data["resources"].items():
            if key.startswith("targetPool/"):
                members = (rec.get("inputs") or {}).get("instances") or []
                rec["inputs"]["instances"] = [
                    m for m in members if not (_last(m) == name and (zone is None or f"{zone}/" in str(m)))
                ]
        self._save(data)


# --- the compute instance: what its update does, after resourceComputeInstanceUpdate ----------------

# Inputs whose change replaces the VM (ForceNew in the schema) or, below, needs it stopped first.
INSTANCE_FORCE_NEW = frozenset(
    {
        "name",
        "zone",
        "project",
        "guestAccelerators",
        "networkPerformanceConfig",
        "confidentialInstanceConfig",
        "hostname",
    }
)
INSTANCE_STOP = frozenset({"machineType", "minCpuPlatform", "enableDisplay", "shieldedInstanceConfig"})
# A change in place; "stop" and "replace" as above.
UPDATE, STOP, REPLACE = "update", "stop", "replace"
_RANK = {UPDATE: 0, STOP: 1, REPLACE: 2}
STOP_REFUSED = (
    "Changing the machine_type, min_cpu_platform, service_account, enable_display, shielded_instance_config, "
    "scheduling.node_affinities or network_interface.[#d].(network/subnetwork/subnetwork_project) or "
    "advanced_machine_features on a started instance requires stopping it. To acknowledge this, please set "
    "allow_stopping_for_update = true in your config."
)


def _worst(*changes: str | None) -> str | None:
    found = [c for c in changes if c]
    return max(found, key=_RANK.__getitem__) if found else None


def _boot_disk_change(old: Mapping[str, Any], new: Mapping[str, Any]) -> str | None:
    """The boot disk: a new image (by DiskImageDiffSuppress) or type replaces; a new size resizes it in place."""
    change: str | None = None
    old_params, new_params = old.get("initializeParams") or {}, new.get("initializeParams") or {}
    for key, value in new_params.items():
        before = old_params.get(key)
        if value is None or before == value:
            continue
        if key == "image":
            change = _worst(change, None if gce_catalog.same_image(str(before), str(value)) else REPLACE)
        elif key == "type":
            change = _worst(change, None if _last(before) == _last(value) else REPLACE)
        elif key in ("size", "labels"):
            change = _worst(change, UPDATE)  # the provider's disks.resize and setLabels
        else:
            change = _worst(change, REPLACE)
    for key, value in new.items():
        if key == "initializeParams" or value is None or old.get(key) == value:
            continue
        change = _worst(change, UPDATE if key == "autoDelete" else REPLACE)
    return change


def _interfaces_change(old: list[Mapping[str, Any]], new: list[Mapping[str, Any]]) -> str | None:
    """Interfaces: another count replaces; another network or subnetwork needs a stop; new access configs do not."""
    if len(old) != len(new):
        return REPLACE
    change: str | None = None
    for before, after in zip(old, new, strict=True):
        moved = any(
            after.get(k) is not None and _last(after.get(k)) != _last(before.get(k)) for k in ("network", "subnetwork")
        )
        if after.get("networkIp") and after.get("networkIp") != before.get("networkIp"):
            change = _worst(change, STOP if moved else REPLACE)  # forceNewIfNetworkIPNotUpdatable
        if moved:
            change = _worst(change, STOP)
        old_acs, new_acs = before.get("accessConfigs") or [], after.get("accessConfigs") or []
        if len(old_acs) != len(new_acs) or any(
            (ac.get("natIp") and ac.get("natIp") != bc.get("natIp"))
            or (ac.get("networkTier") and ac.get("networkTier") != bc.get("networkTier"))
            for bc, ac in zip(old_acs, new_acs, strict=False)
        ):
            change = _worst(change, UPDATE)  # deleteAccessConfig + addAccessConfig, the VM keeps running
        for key in ("nicType", "queueCount", "networkAttachment"):
            if after.get(key) is not None and after.get(key) != before.get(key):
                change = _worst(change, REPLACE)
        if after.get("aliasIpRanges") is not None and after.get("aliasIpRanges") != before.get("aliasIpRanges"):
            change = _worst(change, UPDATE)
    return change


def _account_change(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> str | None:
    """The service account: its email is Optional+Computed, so an omitted one is no change; scopes are a set."""
    old, new = old or {}, new or {}
    email_changed = bool(new.get("email")) and new.get("email") != old.get("email")
    scopes_changed = sorted(old.get("scopes") or []) != sorted(new.get("scopes") or [])
    return STOP if email_changed or scopes_changed else None


def instance_changes(old: Mapping[str, Any], old_inputs: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, str]:
    """Per changed input: update, stop (setMachineType, setServiceAccount: stop, change, start) or replace.

    `old` is the instance's state (inputs with what GCE filled in), as the provider diffs the
    program's inputs against its state: an omitted Optional+Computed value is no change.
    """
    changes: dict[str, str] = {}
    for key in sorted(set(new) | set(old_inputs)):
        after, before = new.get(key), old.get(key)
        if key not in new:
            change: str | None = REPLACE if key in INSTANCE_FORCE_NEW else UPDATE
        elif key == "bootDisk":
            change = _boot_disk_change(before or {}, after or {})
        elif key == "networkInterfaces":
            change = _interfaces_change(list(before or []), list(after or []))
        elif key == "serviceAccount":
            change = _account_change(before, after)
        elif has_unknown(after):
            change = REPLACE if key in INSTANCE_FORCE_NEW else STOP if key in INSTANCE_STOP else UPDATE
        elif key == "machineType":
            change = STOP if _last(after) != _last(before) else None
        elif after == before:
            change = None
        else:
            change = REPLACE if key in INSTANCE_FORCE_NEW else STOP if key in INSTANCE_STOP else UPDATE
        if change:
            changes[key] = change
    return changes


def _with_old(news: dict[str, Any], olds: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {**news, **{k: olds[k] for k in keys if k in olds}}


class Gcp:
    """The kinds, bound to a backend and the provider's project/region/zone config."""

    def __init__(self, backend: Backend, provider: LocalProvider) -> None:
        self.backend = backend
        self.provider = provider

    def setting(self, key: str) -> str:
        value = self.provider.config.get(key) or os.environ.get(f"GOOGLE_{key.upper()}")
        if not value:
            raise ValueError(f"gcp:{key} is not set")
        return str(value)

    def defaults(self, scope: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
        def fill(inputs: dict[str, Any]) -> dict[str, Any]:
            out = {"project": self.setting("project")}
            if scope == "regional":
                out["region"] = self.setting("region")
            if scope == "zonal":
                out["zone"] = self.setting("zone")
            return out

        return fill

    def kind(
        self,
        token: str,
        collection: str,
        scope: str,
        updatable: set[str],
        extra: Callable[[str, dict[str, Any], bool], dict[str, Any]] | None = None,
        outputs: frozenset[str] = frozenset(),
        before_delete: Callable[[dict[str, Any]], None] | None = None,
        **options: Any,
    ) -> Kind:
        """A kind whose resource is a record in the backend under `collection`, named by its `name` input."""
        # The record kind is the singular: "firewalls" -> "firewall", "addresses" -> "address".
        short = collection[:-2] if collection.endswith("sses") else collection[:-1]

        def path(inputs: dict[str, Any]) -> str:
            where = {
                "global": "global",
                "regional": f"regions/{inputs.get('region')}",
                "zonal": f"zones/{inputs.get('zone')}",
            }
            return f"projects/{inputs['project']}/{where[scope]}/{collection}/{inputs['name']}"

        def computed(name: str, inputs: dict[str, Any], preview: bool) -> dict[str, Any]:
            out = {"selfLink": API + path(inputs)}
            if extra is not None:
                out.update(extra(name, inputs, preview))
            return out

        def create(name: str, inputs: dict[str, Any], preview: bool) -> tuple[str, dict[str, Any]]:
            if "name" not in inputs:
                raise ValueError(f"{token}: this local provider needs an explicit name")
            out = computed(name, inputs, preview)
            if not preview:
                self.backend.put(short, inputs["name"], {"id": self.backend.new_id(), "inputs": inputs})
                out["creationTimestamp"] = "2026-01-01T00:00:00.000-08:00"
            return path(inputs), out

        def update(_id: str, name: str, olds: dict[str, Any], news: dict[str, Any], preview: bool) -> dict[str, Any]:
            out = {k: v for k, v in olds.items() if k not in news}
            out.update(computed(name, news, preview))
            if not preview:
                record = self.backend.resources()[f"{short}/{news['name']}"]
                record["inputs"] = news
                self.backend.put(short, news["name"], record)
            return out

        def delete(_id: str, _name: str, outputs: dict[str, Any]) -> None:
            if before_delete is not None:
                before_delete(outputs)
            self.backend.remove(short, outputs["name"])

        return Kind(
            token=token,
            create=create,
            update=update,
            delete=delete,
            defaults=self.defaults(scope),
            updatable=frozenset(updatable),
            computed=frozenset({"selfLink", "creationTimestamp"}) | outputs,
            **options,
        )

    def instance(self) -> Kind:
        """compute.Instance: created as GCE would; updated in place, stopped and started, or replaced."""

        def path(inputs: dict[str, Any]) -> str:
            return f"projects/{inputs['project']}/zones/{inputs['zone']}/instances/{inputs['name']}"

        def outputs(record: dict[str, Any], inputs: dict[str, Any]) -> dict[str, Any]:
            return {
                "selfLink": API + path(inputs),
                "instanceId": record["id"],
                "networkInterfaces": record["networkInterfaces"],
                "bootDisk": record["bootDisk"],
                "serviceAccount": record["serviceAccount"],
                "currentStatus": record["status"],
                "cpuPlatform": "Intel Broadwell",
            }

        def create(name: str, inputs: dict[str, Any], preview: bool) -> tuple[str, dict[str, Any]]:
            if preview:
                return path(inputs), {"selfLink": API + path(inputs)}
            record = self.backend.create_instance(inputs["name"], inputs["zone"], inputs)
            self.backend.event("create", inputs["name"])
            return path(inputs), outputs(record, inputs)

        def preview_update(olds: dict[str, Any], news: dict[str, Any]) -> dict[str, Any]:
            # The plan keeps what GCE decided (the instance id, an ephemeral NAT IP) unless the
            # program names a new value: after a stop and start GCE picks another ephemeral IP,
            # which no plan can show.
            out = {k: v for k, v in olds.items() if k not in news or k in computed}
            nics = copy.deepcopy(olds.get("networkInterfaces") or [])
            for nic, wanted in zip(nics, news.get("networkInterfaces") or [], strict=False):
                for ac, want in zip(nic.get("accessConfigs") or [], wanted.get("accessConfigs") or [], strict=False):
                    if want.get("natIp"):
                        ac["natIp"] = want["natIp"]
            out["networkInterfaces"] = nics
            out.update(Backend.computed(news["name"], news["zone"], news, olds))
            return out

        def update(_id: str, _name: str, olds: dict[str, Any], news: dict[str, Any], preview: bool) -> dict[str, Any]:
            changes = instance_changes(olds, olds, news)
            if preview:
                return preview_update(olds, news)
            name = news["name"]
            record = self.backend.instance(name)
            old_size = ((olds.get("bootDisk") or {}).get("initializeParams") or {}).get("size")
            new_size = ((news.get("bootDisk") or {}).get("initializeParams") or {}).get("size")
            if old_size and new_size and float(new_size) < float(old_size):
                raise GceError(
                    f"Invalid value for field 'sizeGb': '{new_size}'. Requested disk size cannot be smaller "
                    f"than the current size ({old_size} GB)."
                )
            stop = STOP in changes.values()
            if changes.get("networkInterfaces") == UPDATE:
                self.backend.set_access_configs(name, news)
            # Everything a running VM takes; the machine type and account wait for the stop.
            self.backend.update_instance(name, _with_old(news, olds, ("machineType", "serviceAccount")))
            if stop:
                if record["status"] == "RUNNING" and not news.get("allowStoppingForUpdate"):
                    raise GceError(STOP_REFUSED)
                if record["status"] != "TERMINATED":
                    self.backend.stop_instance(name)
                # Refused here, the VM stays TERMINATED: the provider returns without starting it.
                self.backend.set_machine(name, news)
                if record["status"] == "RUNNING":
                    self.backend.start_instance(name)
            return outputs(self.backend.instance(name), news)

        def delete(_id: str, _name: str, outputs_: dict[str, Any]) -> None:
            self.backend.delete_instance(outputs_["name"])
            self.backend.event("delete", outputs_["name"])

        computed = frozenset(
            {"instanceId", "networkInterfaces", "bootDisk", "serviceAccount", "currentStatus", "cpuPlatform"}
        )

        return Kind(
            token=INSTANCE,
            create=create,
            update=update,
            delete=delete,
            defaults=self.defaults("zonal"),
            computed=computed,
        )

    def bucket(self) -> Kind:
        """storage.Bucket: one namespace for every project; name, location and project replace, the rest updates."""

        def out(inputs: dict[str, Any]) -> dict[str, Any]:
            name = inputs["name"]
            return {
                "selfLink": f"https://www.googleapis.com/storage/v1/b/{name}",
                "url": f"gs://{name}",
                "location": str(inputs.get("location") or "US").upper(),
                "storageClass": inputs.get("storageClass") or "STANDARD",
                "projectNumber": project_number(str(inputs["project"])),
            }

        def create(name: str, inputs: dict[str, Any], preview: bool) -> tuple[str, dict[str, Any]]:
            if preview:
                return inputs["name"], out(inputs)
            held = self.backend.resources().get(f"bucket/{inputs['name']}")
            if held is not None:
                mine = held["inputs"].get("project") == inputs["project"]
                raise GceError(
                    "googleapi: Error 409: Your previous request to create the named bucket succeeded and you "
                    "already own it., conflict"
                    if mine
                    else "googleapi: Error 409: The requested bucket name is not available. The bucket namespace is "
                    "shared by all users of the system. Please select a different name and try again., conflict"
                )
            self.backend.put("bucket", inputs["name"], {"id": self.backend.new_id(), "inputs": inputs})
            return inputs["name"], out(inputs)

        def update(_id: str, _name: str, olds: dict[str, Any], news: dict[str, Any], preview: bool) -> dict[str, Any]:
            if not preview:
                record = self.backend.resources()[f"bucket/{news['name']}"]
                record["inputs"] = news
                self.backend.put("bucket", news["name"], record)
            return out(news)

        def delete(_id: str, _name: str, outputs_: dict[str, Any]) -> None:
            self.backend.remove("bucket", outputs_["name"])

        return Kind(
            token=BUCKET,
            create=create,
            update=update,
            delete=delete,
            defaults=lambda inputs: {"project": self.setting("project"), "forceDestroy": False},
            updatable=frozenset(
                {
                    "uniformBucketLevelAccess",
                    "publicAccessPrevention",
                    "lifecycleRules",
                    "labels",
                    "forceDestroy",
                    "versioning",
                    "storageClass",
                    "softDeletePolicy",
                    "retentionPolicy",
                    "cors",
                    "logging",
                    "website",
                    "encryption",
                }
            ),
            computed=frozenset({"selfLink", "url", "projectNumber"}),
        )

    def read_bucket(self, resource_id: str) -> tuple[str, dict[str, Any]] | None:
        """An import by PROJECT/NAME or NAME: the bucket's state, or None when that project holds no such bucket."""
        project, _, name = resource_id.rpartition("/")
        record = self.backend.resources().get(f"bucket/{name}")
        if record is None:
            return None
        inputs = dict(record["inputs"])
        if project and inputs.get("project") != project:
            raise GceError(f"googleapi: Error 403: the caller does not have storage.buckets.get access to {name}")
        return name, inputs

    def account(self) -> Kind:
        """serviceaccount.Account: accountId (and project) replace; the display name and description update."""

        def out(inputs: dict[str, Any]) -> dict[str, Any]:
            email = f"{inputs['accountId']}@{inputs['project']}.iam.gserviceaccount.com"
            return {
                "email": email,
                "name": f"projects/{inputs['project']}/serviceAccounts/{email}",
                "member": f"serviceAccount:{email}",
                "uniqueId": str(int(hashlib.sha256(email.encode()).hexdigest(), 16) % 10**21),
            }

        def create(name: str, inputs: dict[str, Any], preview: bool) -> tuple[str, dict[str, Any]]:
            found = out(inputs)
            if not preview:
                self.backend.put("serviceAccount", found["email"], {"id": self.backend.new_id(), "inputs": inputs})
            return found["name"], found

        def update(_id: str, _name: str, olds: dict[str, Any], news: dict[str, Any], preview: bool) -> dict[str, Any]:
            return out(news)

        def delete(_id: str, _name: str, outputs_: dict[str, Any]) -> None:
            self.backend.remove("serviceAccount", out(outputs_)["email"])

        return Kind(
            token="gcp:serviceaccount/account:Account",
            create=create,
            update=update,
            delete=delete,
            defaults=lambda inputs: {"project": self.setting("project")},
            updatable=frozenset({"displayName", "description", "disabled"}),
            computed=frozenset({"email", "name", "member", "uniqueId"}),
        )

    def bucket_member(self) -> Kind:
        """storage.BucketIAMMember: every input replaces (one binding member, added and removed whole)."""

        def create(name: str, inputs: dict[str, Any], preview: bool) -> tuple[str, dict[str, Any]]:
            key = f"b/{inputs['bucket']} {inputs['role']} {inputs['member']}"
            if not preview:
                if f"bucket/{inputs['bucket']}" not in self.backend.resources():
                    raise GceError(f"googleapi: Error 404: The specified bucket does not exist: {inputs['bucket']}")
                self.backend.put("bucketIamMember", key, {"id": self.backend.new_id(), "inputs": inputs})
            return key, {"etag": "BwYAAAAAAAA="}

        def delete(resource_id: str, _name: str, _outputs: dict[str, Any]) -> None:
            self.backend.remove("bucketIamMember", resource_id)

        return Kind(
            token="gcp:storage/bucketIAMMember:BucketIAMMember",
            create=create,
            delete=delete,
            computed=frozenset({"etag"}),
        )

    def kinds(self) -> list[Kind]:
        def address(name: str, inputs: dict[str, Any], preview: bool) -> dict[str, Any]:
            if preview:
                return {}
            return {
                "address": inputs.get("address") or self.backend.ip(ADDRESS_IPS, inputs["name"]),
                "addressType": inputs.get("addressType") or "EXTERNAL",
            }

        def address_in_use(outputs: dict[str, Any]) -> None:
            for key, rec in self.backend.resources().items():
                held = [
                    ac.get("natIp") for n in rec.get("networkInterfaces") or [] for ac in n.get("accessConfigs") or []
                ]
                if key.startswith("instance/") and outputs.get("address") in held:
                    raise GceError(
                        f"The address resource '{outputs.get('selfLink')}' is already being used by "
                        f"'{key}', resourceInUseByAnotherResource"
                    )

        def subnet(name: str, inputs: dict[str, Any], preview: bool) -> dict[str, Any]:
            return {"gatewayAddress": str(next(ipaddress.ip_network(inputs["ipCidrRange"]).hosts()))}

        def expands(old: Any, new: Any) -> bool:
            # IsShrinkageIpCidr: GCE expands a subnet's range in place; any other change recreates it.
            try:
                return not ipaddress.ip_network(old).subnet_of(ipaddress.ip_network(new))  # type: ignore[arg-type]
            except (TypeError, ValueError):
                return True

        def shrinks(old: Any, new: Any) -> bool:
            # IsDiskShrinkage: a disk grows in place; a smaller size makes a new disk.
            return old is not None and new is not None and float(new) < float(old)

        firewall_updatable = {
            "allows",
            "denies",
            "sourceRanges",
            "sourceTags",
            "targetTags",
            "priority",
            "description",
            "destinationRanges",
            "disabled",
            "logConfig",
            "sourceServiceAccounts",
            "targetServiceAccounts",
            "network",  # not ForceNew in the provider's schema: sent with the rule's PATCH
        }
        return [
            # Each schema's updatable fields (no ForceNew); a description is ForceNew on most of them.
            self.kind("gcp:compute/network:Network", "networks", "global", {"routingMode", "mtu"}),
            self.kind(
                "gcp:compute/subnetwork:Subnetwork",
                "subnetworks",
                "regional",
                {"privateIpGoogleAccess", "secondaryIpRanges", "logConfig", "stackType", "ipv6AccessType"},
                extra=subnet,
                replace_if={"ipCidrRange": expands},
            ),
            self.kind("gcp:compute/firewall:Firewall", "firewalls", "global", firewall_updatable),
            self.kind(
                "gcp:compute/address:Address",
                "addresses",
                "regional",
                {"labels"},
                extra=address,
                outputs=frozenset({"address", "addressType"}),
                before_delete=address_in_use,
            ),
            self.kind("gcp:compute/route:Route", "routes", "global", set()),
            # A persistent disk (a controller's etcd disk): GCE grows it and relabels it in place.
            self.kind(
                "gcp:compute/disk:Disk",
                "disks",
                "zonal",
                {"size", "labels", "provisionedIops", "provisionedThroughput", "accessMode"},
                replace_if={"size": shrinks},
            ),
            self.kind(
                "gcp:compute/httpHealthCheck:HttpHealthCheck",
                "httpHealthChecks",
                "global",
                {
                    "description",
                    "host",
                    "requestPath",
                    "port",
                    "checkIntervalSec",
                    "timeoutSec",
                    "healthyThreshold",
                    "unhealthyThreshold",
                },
            ),
            self.kind(
                "gcp:compute/targetPool:TargetPool",
                "targetPools",
                "regional",
                {"instances", "healthChecks", "backupPool"},
            ),
            self.kind(
                "gcp:compute/forwardingRule:ForwardingRule",
                "forwardingRules",
                "regional",
                {"target", "labels", "allowGlobalAccess"},
            ),
            self.instance(),
            self.bucket(),
            self.account(),
            self.bucket_member(),
        ]

    # --- lookups (data sources) ---------------------------------------------------------------

    def machine_types(self, args: dict[str, Any]) -> dict[str, Any]:
        """getMachineTypes: machineTypes.list of a zone, with the only filter the program uses (name = X)."""
        zone = str(args.get("zone") or self.setting("zone"))
        project = str(args.get("project") or self.setting("project"))
        text = str(args.get("filter") or "")
        match = re.fullmatch(r'\s*name\s*=\s*"?([a-z0-9-]+)"?\s*', text)
        if text and match is None:
            raise GceError(f"this local gcp plugin reads only 'name = TYPE' filters, not {text!r}")
        found = [m for m in gce_catalog.machine_types(project, zone) if match is None or m["name"] == match.group(1)]
        return {
            "machineTypes": found,
            "filter": text,
            "zone": zone,
            "project": project,
            "id": f"projects/{project}/zones/{zone}/machineTypes/filters/{text}",
        }

    def default_account(self, args: dict[str, Any]) -> dict[str, Any]:
        """getDefaultServiceAccount: the project's Compute Engine default service account."""
        project = str(args.get("project") or self.setting("project"))
        email = default_service_account(project)
        return {
            "email": email,
            "name": f"projects/{project}/serviceAccounts/{email}",
            "id": f"projects/{project}/serviceAccounts/{email}",
            "member": f"serviceAccount:{email}",
            "displayName": "Compute Engine default service account",
            "uniqueId": str(int(project_number(project)) * 1000 + 7),
            "project": project,
        }


BUCKET = "gcp:storage/bucket:Bucket"


class GcpProvider(LocalProvider):
    """The local provider with the gcp plugin's lookups, its import of buckets and the instance's own diff."""

    def __init__(self, backend: Backend) -> None:
        super().__init__([])
        self.gcp = Gcp(backend, self)
        self.kinds = {k.token: k for k in self.gcp.kinds()}
        self.functions: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "gcp:compute/getMachineTypes:getMachineTypes": self.gcp.machine_types,
            "gcp:compute/getDefaultServiceAccount:getDefaultServiceAccount": self.gcp.default_account,
        }

    async def invoke(self, request: InvokeRequest) -> InvokeResponse:
        function = self.functions.get(request.tok)
        if function is None:
            raise ValueError(f"this local provider does not implement {request.tok}")
        result = function(plain_map(request.args))
        return InvokeResponse(return_value={k: wrap(v) for k, v in result.items()})

    async def diff(self, request: DiffRequest) -> DiffResponse:
        if self.kind(request.urn).token != INSTANCE:
            return await super().diff(request)
        state = plain_map(request.old_state)
        old_inputs = state.pop(INPUTS, None) or {}
        new = plain_map(request.new_inputs)
        for key in request.ignore_changes:
            new.pop(key, None)
            old_inputs.pop(key, None)
        changes = instance_changes(state, old_inputs, new)
        detailed = {
            key: PropertyDiff(
                PropertyDiffKind.UPDATE_REPLACE if change == REPLACE else PropertyDiffKind.UPDATE, input_diff=True
            )
            for key, change in changes.items()
        }
        replaces = sorted(k for k, c in changes.items() if c == REPLACE)
        return DiffResponse(changes=bool(changes), replaces=replaces, diffs=sorted(changes), detailed_diff=detailed)

    async def read(self, request: ReadRequest) -> ReadResponse:
        # An import (no state yet): read the bucket the ID names. A refresh keeps what state has.
        if request.properties or self.kind(request.urn).token != BUCKET:
            return await super().read(request)
        found = self.gcp.read_bucket(request.resource_id)
        if found is None:
            return ReadResponse(resource_id=None, properties=None, inputs=None)
        name, inputs = found
        kind = self.kinds[BUCKET]
        _, computed = kind.create(name, inputs, True)
        wrapped = {k: wrap(v) for k, v in inputs.items()}
        return ReadResponse(resource_id=name, properties=self._outputs(kind, wrapped, computed), inputs=wrapped)


def provider(backend: Backend) -> GcpProvider:
    """The gcp plugin's provider over `backend`."""
    return GcpProvider(backend)


def backend_from_env(env: Mapping[str, str]) -> Backend:
    """The backend the plugin's launcher asked for: this JSON-file cloud unless BACKEND_ENV names another."""
    cls = load(env[BACKEND_ENV]) if env.get(BACKEND_ENV) else Backend
    backend = cls(Path(env[STATE_ENV]))
    if not isinstance(backend, Backend):
        raise TypeError(f"{env[BACKEND_ENV]} is not a gcp.Backend")
    return backend


if __name__ == "__main__":
    # Run as __main__, this module's Backend is not the one a backend module subclassed (it imports
    # tests.engine.providers.gcp): serve through that importable copy.
    from tests.engine.providers import gcp as importable

    serve(VERSION, importable.provider(importable.backend_from_env(os.environ)))
