"""The etcd bootstrap (KTHW ch. 7): one member of the cluster's etcd on each controller."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi

from components import artifacts, remote
from components.config import ClusterConfig, NodeSpec
from components.pki import CertPair
from components.render import render

# Node file paths (the brief's fixed contract). etcd serves, peers and checks clients with the API
# server's "kubernetes" certificate, as KTHW does.
CONFIG_DIR = "/etc/etcd"
CA_FILE = f"{CONFIG_DIR}/ca.pem"
CERT_FILE = f"{CONFIG_DIR}/kubernetes.pem"
KEY_FILE = f"{CONFIG_DIR}/kubernetes-key.pem"
# The unit's StateDirectory=etcd creates it with mode 0700.
DATA_DIR = "/var/lib/etcd"
UNIT_PATH = "/etc/systemd/system/etcd.service"
CLUSTER_TOKEN = "etcd-cluster-0"
CLIENT_PORT = 2379
PEER_PORT = 2380


def render_etcd_unit(config: ClusterConfig, spec: NodeSpec) -> str:
    """etcd.service for one controller; its version comment restarts etcd when the version changes."""
    if spec.role != "controller":
        raise ValueError(f"{spec.name} is not a controller; etcd runs on controllers only")
    return render(
        "etcd/etcd.service",
        version=config.versions.etcd,
        member=spec.name,
        ip=spec.internal_ip,
        ca_file=CA_FILE,
        cert_file=CERT_FILE,
        key_file=KEY_FILE,
        cluster_token=CLUSTER_TOKEN,
        initial_cluster=config.etcd_initial_cluster,
        data_dir=DATA_DIR,
    )


@dataclass(frozen=True)
class EtcdMemberArgs:
    """One member: config, its controller, where to run, the CA and the "kubernetes" cert it serves with."""

    config: ClusterConfig
    spec: NodeSpec
    host: remote.Host
    ca: CertPair
    server: CertPair


class EtcdMember(pulumi.ComponentResource):
    """Installs etcd on one controller and starts it without waiting for the others (they start in parallel)."""

    started: pulumi.Resource

    def __init__(self, name: str, args: EtcdMemberArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kthw:index:EtcdMember", name, None, opts)
        cfg, spec, host = args.config, args.spec, args.host

        binaries = remote.run(f"{name}-binaries", host, artifacts.install_script(cfg, spec.name, ["etcd"]), parent=self)
        files = [
            remote.RemoteFile(UNIT_PATH, render_etcd_unit(cfg, spec)),
            remote.RemoteFile(CA_FILE, args.ca.cert_pem),
            remote.RemoteFile(CERT_FILE, args.server.cert_pem),
            remote.RemoteFile(KEY_FILE, pulumi.Output.secret(args.server.key_pem), 0o600),
        ]
        # no_block: a Type=notify etcd is not "started" until a quorum exists, so a blocking start of
        # the first member would wait for members that are only started after it.
        self.started = remote.deploy(
            f"{name}-etcd",
            host,
            parent=self,
            step="etcd",
            files=files,
            units=["etcd"],
            no_block=True,
            depends_on=[binaries],
        )
        self.register_outputs(
            {
                "client_url": f"https://{spec.internal_ip}:{CLIENT_PORT}",
                "peer_url": f"https://{spec.internal_ip}:{PEER_PORT}",
            }
        )
