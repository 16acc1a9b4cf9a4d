"""A local `gcp` provider plugin (pulumi-gcp 10.x): the compute resources the program registers.

Resources live in a `Backend`, a JSON file under the test's directory, so that a later tier can
put real machines behind the same calls (`create_instance`, `delete_instance`, ...). Outputs look
like GCE's: ids and self links from project/region/zone/name, a numeric instance id, and each
instance's "external" NAT IP from TEST-NET-2 (198.51.100.0/24), the static address from TEST-NET-3
(203.0.113.0/24), both stable per name. What GCE cannot change in place forces a replacement, as
ForceNew does in the Terraform provider pulumi-gcp wraps; everything else is an update.
"""

from __future__ import annotations

import ipaddress
import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tests.engine.providers.base import Kind, LocalProvider, load, serve

VERSION = "10.2.0"
STATE_ENV = "KTHW_ENGINE_GCP_STATE"
# Optional "package.module:Class", a Backend subclass (real VMs): what the plugin creates instances with.
BACKEND_ENV = "KTHW_ENGINE_GCP_BACKEND"
API = "https://www.googleapis.com/compute/v1/"
INSTANCE_IPS = ipaddress.IPv4Network("198.51.100.0/24")
ADDRESS_IPS = ipaddress.IPv4Network("203.0.113.0/24")


class Backend:
    """The local cloud's state: resources by kind and name, and the addresses it handed out."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # Instance creates and deletes, one JSON object a line, in the order the engine asked for them.
        self.events = path.with_name(f"{path.stem}-events.jsonl")
        if not path.exists():
            self._save({"resources": {}, "ips": {}, "next_id": 1000000000000000000})

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
        """The address `name` had before, or the next free one of `pool` (GCE's are random; stable helps tests)."""
        data = self._load()
        key = f"{pool}/{name}"
        if key not in data["ips"]:
            taken = {v for k, v in data["ips"].items() if k.startswith(f"{pool}/")}
            data["ips"][key] = next(str(a) for a in list(pool.hosts())[9:] if str(a) not in taken)
            self._save(data)
        address: str = data["ips"][key]
        return address

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
        """Append a timestamped instance event (a finished create or delete) to `events`."""
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

    # The instance calls a VM backend overrides.
    def create_instance(self, name: str, zone: str, inputs: dict[str, Any]) -> dict[str, Any]:
        """Create a VM; returns its instance id and its interfaces' addresses."""
        nics = [dict(n) for n in inputs.get("networkInterfaces") or []]
        for nic in nics:
            nic["accessConfigs"] = [
                {**ac, "natIp": ac.get("natIp") or self.ip(INSTANCE_IPS, name), "networkTier": "PREMIUM"}
                for ac in nic.get("accessConfigs") or []
            ]
        record = {"id": self.new_id(), "zone": zone, "status": "RUNNING", "inputs": inputs, "networkInterfaces": nics}
        self.put("instance", name, record)
        return record

    def update_instance(self, name: str, inputs: dict[str, Any]) -> dict[str, Any]:
        """Change what GCE changes in place (machine type after a stop, metadata, tags)."""
        record = self.resources()[f"instance/{name}"]
        record["inputs"] = inputs
        self.put("instance", name, record)
        return dict(record)

    def delete_instance(self, name: str) -> None:
        self.remove("instance", name)


def _region(url: str) -> str:
    return url.rsplit("/", 1)[-1]


class Gcp:
    """The compute kinds, bound to a backend and the provider's project/region/zone config."""

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
        """compute.Instance: name, zone, boot disk, interfaces replace; machine type, metadata, tags update."""

        def path(inputs: dict[str, Any]) -> str:
            return f"projects/{inputs['project']}/zones/{inputs['zone']}/instances/{inputs['name']}"

        def outputs(record: dict[str, Any], inputs: dict[str, Any]) -> dict[str, Any]:
            return {
                "selfLink": API + path(inputs),
                "instanceId": record["id"],
                "networkInterfaces": record["networkInterfaces"],
                "currentStatus": record["status"],
                "cpuPlatform": "Intel Broadwell",
            }

        def create(name: str, inputs: dict[str, Any], preview: bool) -> tuple[str, dict[str, Any]]:
            if preview:
                return path(inputs), {"selfLink": API + path(inputs)}
            record = self.backend.create_instance(inputs["name"], inputs["zone"], inputs)
            self.backend.event("create", inputs["name"])
            return path(inputs), outputs(record, inputs)

        def update(_id: str, _name: str, olds: dict[str, Any], news: dict[str, Any], preview: bool) -> dict[str, Any]:
            changed = {k for k in ("machineType", "serviceAccount") if olds.get(k) != news.get(k)}
            if changed and not news.get("allowStoppingForUpdate"):
                raise ValueError(
                    f"Changing {sorted(changed)} requires stopping the instance: set allowStoppingForUpdate"
                )
            if preview:
                # What GCE decided at creation (the NAT IP above all) survives an in-place update.
                return {k: v for k, v in olds.items() if k not in news or k in computed}
            return outputs(self.backend.update_instance(news["name"], news), news)

        def delete(_id: str, _name: str, outputs_: dict[str, Any]) -> None:
            self.backend.delete_instance(outputs_["name"])
            self.backend.event("delete", outputs_["name"])

        computed = frozenset({"instanceId", "networkInterfaces", "currentStatus", "cpuPlatform"})

        return Kind(
            token="gcp:compute/instance:Instance",
            create=create,
            update=update,
            delete=delete,
            defaults=self.defaults("zonal"),
            updatable=frozenset(
                {
                    "machineType",
                    "metadata",
                    "tags",
                    "labels",
                    "serviceAccount",
                    "allowStoppingForUpdate",
                    "description",
                    "attachedDisks",  # GCE attaches and detaches disks on a running instance
                }
            ),
            computed=computed,
        )

    def kinds(self) -> list[Kind]:
        def address(name: str, inputs: dict[str, Any], preview: bool) -> dict[str, Any]:
            if preview:
                return {}
            return {
                "address": inputs.get("address") or self.backend.ip(ADDRESS_IPS, inputs["name"]),
                "addressType": "EXTERNAL",
            }

        def subnet(name: str, inputs: dict[str, Any], preview: bool) -> dict[str, Any]:
            return {"gatewayAddress": str(next(ipaddress.ip_network(inputs["ipCidrRange"]).hosts()))}

        def expands(old: Any, new: Any) -> bool:
            # GCE expands a subnet's range in place; any other change recreates the subnet.
            try:
                return not ipaddress.ip_network(old).subnet_of(ipaddress.ip_network(new))  # type: ignore[arg-type]
            except (TypeError, ValueError):
                return True

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
        }
        return [
            self.kind("gcp:compute/network:Network", "networks", "global", {"description", "routingMode", "mtu"}),
            self.kind(
                "gcp:compute/subnetwork:Subnetwork",
                "subnetworks",
                "regional",
                {"description", "privateIpGoogleAccess", "secondaryIpRanges", "logConfig"},
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
            ),
            self.kind("gcp:compute/route:Route", "routes", "global", set()),
            # A persistent disk (a controller's etcd disk): GCE grows it and relabels it in place.
            self.kind("gcp:compute/disk:Disk", "disks", "zonal", {"size", "labels", "description"}),
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
            self.kind("gcp:compute/targetPool:TargetPool", "targetPools", "regional", {"instances", "healthChecks"}),
            self.kind("gcp:compute/forwardingRule:ForwardingRule", "forwardingRules", "regional", {"target", "labels"}),
            self.instance(),
        ]


def provider(backend: Backend) -> LocalProvider:
    """The gcp plugin's provider over `backend`."""
    local = LocalProvider([])
    local.kinds = {k.token: k for k in Gcp(backend, local).kinds()}
    return local


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
