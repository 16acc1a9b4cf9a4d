"""One VM of the cluster (KTHW ch. 3), controller or worker, and the SSH gate its bootstrap waits on."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
from pulumi_gcp import compute

from components import remote, ssh_gate
from components.config import CUSTOM_MACHINE_TYPE, ClusterConfig, ConfigErrors, NodeSpec, boot_disk_type, machine_family

BOOT_DISK_GB = 20
# KTHW also grants compute-rw, storage-ro, service-management and service-control so its nodes can
# look themselves up with gcloud; this program injects every such value, so nodes keep only what
# the guest agent's logging and monitoring need.
SCOPES = ("logging-write", "monitoring")
# Each controller's etcd data lives on a disk of its own that outlives the VM (see Node). SSD-backed
# balanced PD: etcd is sensitive to fsync latency, and 10 GB is far above its default 2 GB quota.
ETCD_DISK_GB = 10
ETCD_DISK_TYPE = "pd-balanced"
ETCD_DEVICE_NAME = "etcd"
# GCE names an attached disk's device after its device name.
ETCD_DEVICE = f"/dev/disk/by-id/google-{ETCD_DEVICE_NAME}"


# GCE refuses to create, or to start after a machine type change, a VM whose type is retired.
RETIRED_STATES = ("OBSOLETE", "DELETED")


# machineTypes.list has no custom types: a zone offers them where it offers a predefined type of the
# family, so a custom type is looked up by that one (GCE's own limits on its vCPUs and memory are
# not checked here).
FAMILY_PROBES = {"e2": "e2-standard-2", "n1": "n1-standard-1", "n2": "n2-standard-2", "n2d": "n2d-standard-2"}


def listed_machine_type(machine_type: str) -> str:
    """The type whose presence in the zone's list shows that the zone offers `machine_type`."""
    if CUSTOM_MACHINE_TYPE.match(machine_type):
        return FAMILY_PROBES[machine_family(machine_type)]  # config admits custom types of these only
    return machine_type


def machine_type_filter(machine_type: str) -> str:
    """The machineTypes.list filter that finds exactly this type (or, for a custom one, its family's)."""
    return f"name = {listed_machine_type(machine_type)}"


def check_offered(
    machine_type: str, zone: str, found: Sequence[compute.outputs.GetMachineTypesMachineTypeResult]
) -> str:
    """`machine_type` if the zone lists it and it is not retired; else the problem, as GCE would refuse it."""
    match = [m for m in found if m.name == listed_machine_type(machine_type)]
    if not match:
        raise ConfigErrors(
            [
                f"kthw:machineType (or its per-role override) = {machine_type!r} is invalid: zone {zone} offers "
                f"no such machine type (`gcloud compute machine-types list --zones {zone}` lists them)"
            ]
        )
    retired = [d.state for d in match[0].deprecateds or [] if d.state in RETIRED_STATES]
    if retired:
        raise ConfigErrors([f"kthw:machineType = {machine_type!r} is invalid: GCE marks it {retired[0]} in {zone}"])
    return machine_type


def offered_machine_type(config: ClusterConfig, machine_type: str) -> pulumi.Output[str]:
    """The machine type, once GCE's list for the zone has it: read in preview as in update.

    An instance takes its machine type from this Output, so a type GCE would reject fails the
    program before the instance is registered: the provider stops a VM before setMachineType and
    does not start it again when that call fails (resourceComputeInstanceUpdate).
    """
    found = compute.get_machine_types_output(
        filter=machine_type_filter(machine_type), zone=config.zone, project=config.project
    )
    return found.machine_types.apply(lambda types: check_offered(machine_type, config.zone, types))


@dataclass(frozen=True)
class NodeArgs:
    """A node's spec, where it attaches, and the SSH key pair the program manages."""

    config: ClusterConfig
    spec: NodeSpec
    subnet: pulumi.Input[str]
    ssh_public_key: pulumi.Input[str]
    ssh_private_key: pulumi.Input[str]
    # The account the VM runs as, always by name: the provider re-sends the last email it knows
    # when none is given, so an omitted one would keep a VM on an account the program deleted.
    # The program's own account (controllers, when etcd snapshots go to a bucket) or the
    # project's default compute account, limited by SCOPES.
    service_account_email: pulumi.Input[str]
    # The machine type, checked against the zone's list (offered_machine_type); spec.machine_type if None.
    machine_type: pulumi.Input[str] | None = None
    # Whether the account writes snapshots to the bucket (the storage-rw scope on top of SCOPES).
    writes_backups: bool = False
    # What the instance waits for before it is created or replaced: the previous controller's
    # etcd member being healthy again, so controllers are replaced one at a time.
    after: Sequence[pulumi.Resource] = ()


class Node(pulumi.ComponentResource):
    """A GCE instance with KTHW's settings and a static external IP, plus the gate every command on it waits for."""

    def __init__(self, name: str, args: NodeArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kthw:index:Node", name, None, opts)
        cfg, spec = args.config, args.spec
        self.spec = spec
        metadata: dict[str, pulumi.Input[str]] = {
            "ssh-keys": pulumi.Output.concat(cfg.ssh_user, ":", args.ssh_public_key),
            # With OS Login on (a common project default) GCE ignores metadata keys, and the
            # SSH gate would wait forever; this VM is reached only with the program's own key.
            "enable-oslogin": "FALSE",
            "block-project-ssh-keys": "TRUE",
        }
        if spec.pod_cidr:
            metadata["pod-cidr"] = spec.pod_cidr

        # A controller's etcd data outlives its VM: the disk is a resource of its own whose inputs
        # (name, zone, size) do not include what replaces a VM (image, machine type), so an image
        # change replaces the instance and re-attaches the same disk. GCE never deletes a disk
        # attached as attached_disks with its instance (autoDelete is false for them). It is
        # neither protected nor retained on delete on purpose: it is deleted only when its
        # controller leaves controllerCount (after the member left the cluster, its data cannot
        # rejoin anyway) or on `pulumi destroy`.
        attached: list[compute.InstanceAttachedDiskArgsDict] = []
        self.etcd_disk: compute.Disk | None = None
        if spec.role == "controller":
            self.etcd_disk = compute.Disk(
                f"{name}-etcd-disk",
                name=cfg.names.etcd_disk(spec.name),
                zone=cfg.zone,
                size=ETCD_DISK_GB,
                type=ETCD_DISK_TYPE,
                opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True),
            )
            attached.append({"source": self.etcd_disk.self_link, "device_name": ETCD_DEVICE_NAME, "mode": "READ_WRITE"})

        # The node's external address is reserved, not ephemeral: GCE hands a VM a new ephemeral IP
        # whenever it stops and starts (a machine type or service account change) or is replaced,
        # and that IP would reach the worker's API firewall rule, the kubelet certificate and every
        # remote step's connection, none of it visible in the preview. An in-use static IPv4
        # address costs what an ephemeral one does.
        self.address = compute.Address(
            f"{name}-address",
            name=cfg.names.node_address(spec.name),
            region=cfg.region,
            address_type="EXTERNAL",
            opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True),
        )
        self.instance = compute.Instance(
            f"{name}-instance",
            name=spec.name,
            zone=cfg.zone,
            machine_type=args.machine_type if args.machine_type is not None else spec.machine_type,
            can_ip_forward=True,  # workers route pod traffic; KTHW sets it on every node
            # The disk type is stated, not left to GCE's per-family default, and config admits only
            # machine families that take it (and the etcd disk's pd-balanced).
            boot_disk={
                "initialize_params": {
                    "image": cfg.image,
                    "size": BOOT_DISK_GB,
                    "type": boot_disk_type(spec.machine_type),
                }
            },
            network_interfaces=[
                {
                    "subnetwork": args.subnet,
                    "network_ip": spec.internal_ip,
                    "access_configs": [{"nat_ip": self.address.address}],
                }
            ],
            service_account={
                "email": args.service_account_email,
                "scopes": [*SCOPES, "storage-rw"] if args.writes_backups else list(SCOPES),
            },
            tags=[cfg.names.network, spec.role],
            metadata=metadata,
            attached_disks=attached or None,
            allow_stopping_for_update=True,
            opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True, depends_on=list(args.after)),
        )
        # What names the node outside it (the worker's API firewall rule, the kubelet certificate,
        # the stack outputs): the reserved address, known before the VM exists.
        self.external_ip: pulumi.Output[str] = self.address.address
        # What its steps connect to: the same address as the VM's interface reports it, so that
        # every step waits for the VM and, on delete, runs before it (an etcd member's leave).
        nat_ip = self.instance.network_interfaces.apply(lambda nics: (nics[0].access_configs or [])[0].nat_ip or "")
        connection = remote.connection(nat_ip, cfg.ssh_user, args.ssh_private_key)
        # A replaced VM answers (on the same address) with an empty disk: the gate, and with it
        # every step that names it in replace_with, runs again.
        self.ssh_ready = ssh_gate.gate(
            f"{name}-ssh-ready", connection, spec.name, triggers=[self.instance.instance_id], parent=self
        )
        self.host = remote.Host(name=spec.name, connection=connection, ready=self.ssh_ready)
        self.register_outputs({"internal_ip": spec.internal_ip, "external_ip": self.external_ip})
