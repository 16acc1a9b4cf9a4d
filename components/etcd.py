"""The etcd bootstrap (KTHW ch. 7): one member per controller, on a disk that outlives the VM."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
from pulumi_command import remote as command_remote

from components import artifacts, bounds, remote
from components.config import ClusterConfig, NodeSpec
from components.pki import CertPair
from components.render import render

# Node file paths. etcd serves, peers and checks clients with the API server's "kubernetes"
# certificate, as KTHW does.
CONFIG_DIR = "/etc/etcd"
CA_FILE = f"{CONFIG_DIR}/ca.pem"
CERT_FILE = f"{CONFIG_DIR}/kubernetes.pem"
KEY_FILE = f"{CONFIG_DIR}/kubernetes-key.pem"
# A platform's etcd disk (Machine.etcd_device) is mounted here; etcd's data dir and the snapshots
# live on it, so both survive the VM. Without one they live on the boot disk, at the same paths.
MOUNT_POINT = "/var/lib/etcd"
MOUNT_UNIT = "var-lib-etcd.mount"  # systemd's name for a mount at MOUNT_POINT
DATA_DIR = f"{MOUNT_POINT}/data"
BACKUP_DIR = f"{MOUNT_POINT}/backups"
UNIT_PATH = "/etc/systemd/system/etcd.service"
ENV_FILE = "/run/etcd/membership.env"  # RuntimeDirectory=etcd: gone at every stop
ETCDCTL = f"{artifacts.BIN_DIR}/etcdctl"
ETCDUTL = f"{artifacts.BIN_DIR}/etcdutl"
SCRIPT_DIR = "/usr/local/sbin"
MEMBERSHIP_SCRIPT = f"{SCRIPT_DIR}/kthw-etcd-membership"
READY_SCRIPT = f"{SCRIPT_DIR}/kthw-etcd-ready"
LEAVE_SCRIPT = f"{SCRIPT_DIR}/kthw-etcd-leave"
RESTORE_SCRIPT = f"{SCRIPT_DIR}/kthw-etcd-restore"
BACKUP_SCRIPT = f"{SCRIPT_DIR}/kthw-etcd-backup"
BACKUP_UNIT_DIR = "/etc/systemd/system"
# "This controller has been part of a cluster": one marker on the boot disk, one on the etcd disk
# (beside the data dir, not in it). The founder founds only while neither exists, so a founder
# that lost one disk after a power loss waits for the others instead of founding a second cluster.
FOUNDED_MARKERS = ("/var/lib/kthw/etcd-founded", f"{MOUNT_POINT}/kthw-founded")
CLUSTER_TOKEN = "etcd-cluster-0"
CLIENT_PORT = 2379
PEER_PORT = 2380
LOCAL_URL = f"https://127.0.0.1:{CLIENT_PORT}"
# How long a member may take to be healthy and caught up after a (re)start before `pulumi up` fails.
READY_TIMEOUT_S = 600
# Snapshots: hourly, the newest day of them kept on the etcd disk (a snapshot is about the size of
# the database, a few MB to a few hundred for a KTHW-sized cluster).
BACKUP_SCHEDULE = "hourly"
BACKUP_KEEP = 24


def _controller(spec: NodeSpec) -> NodeSpec:
    if spec.role != "controller":
        raise ValueError(f"{spec.name} is not a controller; etcd runs on controllers only")
    return spec


def client_url(spec: NodeSpec) -> str:
    return f"https://{spec.internal_ip}:{CLIENT_PORT}"


def peer_url(spec: NodeSpec) -> str:
    return f"https://{spec.internal_ip}:{PEER_PORT}"


def _others(config: ClusterConfig, spec: NodeSpec) -> str:
    return ",".join(client_url(c) for c in config.controllers if c.name != spec.name)


def _tls(etcdctl_timeout: int = bounds.ETCDCTL_TIMEOUT_SECONDS) -> dict[str, object]:
    """etcdctl, its credentials, and how long one call may take (`timeout` around it)."""
    return {
        "etcdctl": ETCDCTL,
        "etcdctl_timeout": etcdctl_timeout,
        "ca_file": CA_FILE,
        "cert_file": CERT_FILE,
        "key_file": KEY_FILE,
    }


def render_etcd_unit(config: ClusterConfig, spec: NodeSpec) -> str:
    """etcd.service for one controller; its version comment restarts etcd when the version changes.

    Membership flags (--initial-cluster, --initial-cluster-state) are not here: the membership
    script decides them at every start (ExecStartPre), so a unit never claims a state that is false.
    """
    _controller(spec)
    return render(
        "etcd/etcd.service",
        version=config.versions.etcd,
        member=spec.name,
        ip=spec.internal_ip,
        ca_file=CA_FILE,
        cert_file=CERT_FILE,
        key_file=KEY_FILE,
        cluster_token=CLUSTER_TOKEN,
        data_dir=DATA_DIR,
        mount_point=MOUNT_POINT,
        membership_script=MEMBERSHIP_SCRIPT,
        env_file=ENV_FILE,
    )


def render_membership_script(config: ClusterConfig, spec: NodeSpec) -> str:
    """ExecStartPre: rejoin from data, join a running cluster (member add), or found it (controller 0 only)."""
    _controller(spec)
    return render(
        "etcd/membership.sh",
        member=spec.name,
        peer_url=peer_url(spec),
        data_dir=DATA_DIR,
        env_file=ENV_FILE,
        # The first controller founds the cluster; every other one joins it, so growing, a fresh
        # cluster and a replaced member all take the same path: one `member add` at a time.
        founder="true" if spec.index == 0 else "false",
        founded_markers=" ".join(FOUNDED_MARKERS),
        peers=_others(config, spec),
        **_tls(),
    )


def render_ready_script(config: ClusterConfig, spec: NodeSpec) -> str:
    """A healthy voting member (a learner is promoted once caught up) that has applied the leader's index."""
    return render(
        "etcd/ready.sh",
        member=_controller(spec).name,
        local_url=LOCAL_URL,
        peers=_others(config, spec),
        timeout=READY_TIMEOUT_S,
        founded_markers=" ".join(FOUNDED_MARKERS),
        **_tls(),
    )


def render_leave_script(config: ClusterConfig, spec: NodeSpec) -> str:
    """Run on deletion of the member (a shrink, or destroy): `member remove` itself, then stop etcd."""
    endpoints = ",".join([LOCAL_URL, *filter(None, [_others(config, spec)])])
    return render(
        "etcd/leave.sh",
        member=_controller(spec).name,
        peer_url=peer_url(spec),
        endpoints=endpoints,
        systemctl_timeout=bounds.SYSTEMCTL_TIMEOUT_SECONDS,
        **_tls(),
    )


def render_restore_script(spec: NodeSpec) -> str:
    """`kthw-etcd-restore SNAPSHOT`: the snapshot becomes this member's data, as a cluster of one."""
    return render(
        "etcd/restore.sh",
        member=_controller(spec).name,
        peer_url=peer_url(spec),
        data_dir=DATA_DIR,
        etcdutl=ETCDUTL,
        cluster_token=CLUSTER_TOKEN,
    )


def render_backup_script(spec: NodeSpec, bucket: str | None) -> str:
    """The snapshot the timer takes: kept by count on the etcd disk, copied to the bucket when one is set."""
    return render(
        "etcd/backup.sh",
        member=_controller(spec).name,
        local_url=LOCAL_URL,
        backup_dir=BACKUP_DIR,
        keep=BACKUP_KEEP,
        bucket=bucket or "",
        **bounds.CURL.template_values(),
        probe_connect_timeout=bounds.PROBE_CURL.connect_timeout,
        probe_max_time=bounds.PROBE_CURL.max_time,
        **_tls(bounds.ETCD_SNAPSHOT_TIMEOUT_SECONDS),
    )


def render_backup_units(config: ClusterConfig) -> dict[str, str]:
    """etcd-backup.service and etcd-backup.timer, by file name."""
    return {
        "etcd-backup.service": render(
            "etcd/etcd-backup.service",
            version=config.versions.etcd,
            mount_point=MOUNT_POINT,
            backup_script=BACKUP_SCRIPT,
        ),
        "etcd-backup.timer": render("etcd/etcd-backup.timer", schedule=BACKUP_SCHEDULE),
    }


def render_mount_unit(device: str) -> str:
    return render("etcd/var-lib-etcd.mount", device=device, mount_point=MOUNT_POINT)


def render_disk_script(spec: NodeSpec, device: str) -> str:
    """Format the etcd disk only if it has no filesystem, and mount it before etcd starts."""
    return render(
        "etcd/disk.sh",
        node=_controller(spec).name,
        device=device,
        mount_point=MOUNT_POINT,
        data_dir=DATA_DIR,
        unit_name=MOUNT_UNIT,
        mount_unit=render_mount_unit(device).rstrip("\n"),
        systemctl_timeout=bounds.SYSTEMCTL_TIMEOUT_SECONDS,
    )


@dataclass(frozen=True)
class EtcdMemberArgs:
    """One member: config, its controller, where to run, the CA and the cert it serves with, what it waits for."""

    config: ClusterConfig
    spec: NodeSpec
    host: remote.Host
    ca: CertPair
    server: CertPair
    # The previous controller's ready step: this member (re)starts only once that one is healthy.
    after: Sequence[pulumi.Resource] = ()
    backup_bucket: str | None = None
    # The disk etcd's data lives on (Machine.etcd_device); None keeps it on the boot disk.
    device: str | None = None
    # What restarts or replaces the controller (Machine.fingerprint): the ready step re-runs on a change.
    fingerprint: str = ""


class EtcdMember(pulumi.ComponentResource):
    """Mounts the etcd disk, installs etcd, (re)starts the member, waits until it is healthy and caught up."""

    started: pulumi.Resource
    leave: pulumi.Resource
    backup: pulumi.Resource

    def __init__(self, name: str, args: EtcdMemberArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kthw:index:EtcdMember", name, None, opts)
        cfg, spec, host = args.config, _controller(args.spec), args.host

        # After the previous member too: moving a member's data off the boot disk (a cluster made
        # before the etcd disk) stops etcd, which must happen on one controller at a time.
        mounts: list[pulumi.Resource] = []
        if args.device:
            disk_script = render_disk_script(spec, args.device)
            mounts.append(remote.run(f"{name}-mount", host, disk_script, parent=self, depends_on=list(args.after)))
        binaries = remote.run(f"{name}-binaries", host, artifacts.install_script(cfg, spec.name, ["etcd"]), parent=self)
        files = [
            remote.RemoteFile(UNIT_PATH, render_etcd_unit(cfg, spec)),
            remote.RemoteFile(CA_FILE, args.ca.cert_pem),
            remote.RemoteFile(CERT_FILE, args.server.cert_pem),
            remote.RemoteFile(KEY_FILE, pulumi.Output.secret(args.server.key_pem), 0o600),
            remote.RemoteFile(MEMBERSHIP_SCRIPT, render_membership_script(cfg, spec), 0o755),
            remote.RemoteFile(READY_SCRIPT, render_ready_script(cfg, spec), 0o755),
            remote.RemoteFile(LEAVE_SCRIPT, render_leave_script(cfg, spec), 0o755),
            remote.RemoteFile(RESTORE_SCRIPT, render_restore_script(spec), 0o755),
        ]
        # no_block: the ready step below does the waiting, with a clear error and a bounded time.
        # `after`: a restart (new certificate, new version) rolls through the members one at a time.
        deployed = remote.deploy(
            f"{name}-etcd",
            host,
            parent=self,
            step="etcd",
            files=files,
            units=["etcd"],
            no_block=True,
            depends_on=[binaries, *mounts, *args.after],
        )
        # Runs again whenever the member restarts (its files changed) or its VM is stopped or
        # replaced, so whatever waits on it waits for this member to be back.
        self.started = remote.run(
            f"{name}-ready",
            host,
            f"sudo {READY_SCRIPT}\n",
            parent=self,
            triggers=[remote.fingerprint(files), args.fingerprint],
            depends_on=[deployed],
        )
        # Leaving is a resource of its own that VM replacement does not replace (no replace_with,
        # no triggers): its delete runs only when the controller leaves the config (or on destroy),
        # and it runs before the VM's deletion because it depends on the VM (its connection).
        self.leave = command_remote.Command(
            f"{name}-leave",
            connection=host.connection,
            # Logged (the default): its lines capped, as every logged step's are.
            create=remote.capped(
                f"echo 'kthw: {spec.name}: etcd member; it leaves the cluster before its VM is deleted'"
            ),
            delete=remote.capped(f"sudo {LEAVE_SCRIPT}\n"),
            add_previous_output_in_env=False,
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[self.started],
                custom_timeouts=pulumi.CustomTimeouts(
                    create=remote.STEP_TIMEOUT, update=remote.STEP_TIMEOUT, delete=remote.STEP_TIMEOUT
                ),
            ),
        )

        backup_units = render_backup_units(cfg)
        self.backup = remote.deploy(
            f"{name}-backup",
            host,
            parent=self,
            step="etcd-backup",
            files=[
                remote.RemoteFile(BACKUP_SCRIPT, render_backup_script(spec, args.backup_bucket), 0o755),
                *(remote.RemoteFile(f"{BACKUP_UNIT_DIR}/{n}", text) for n, text in backup_units.items()),
            ],
            units=["etcd-backup.timer"],
            secret=False,
            depends_on=[self.started],
        )
        self.register_outputs({"client_url": client_url(spec), "peer_url": peer_url(spec)})
