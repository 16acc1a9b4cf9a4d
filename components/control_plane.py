"""The control-plane bootstrap (KTHW ch. 8): kube-apiserver, kube-controller-manager and kube-scheduler."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pulumi

from components import artifacts, remote
from components.config import ClusterConfig, NodeSpec
from components.kubeconfig import ADMIN_USER, CONTROLLER_MANAGER_USER, SCHEDULER_USER, kubeconfig_output
from components.pki import CertPair, Pki
from components.render import render, to_yaml

# Node file paths (the brief's fixed contract).
K8S_DIR = "/var/lib/kubernetes"
CA_FILE = f"{K8S_DIR}/ca.pem"
CA_KEY_FILE = f"{K8S_DIR}/ca-key.pem"
CERT_FILE = f"{K8S_DIR}/kubernetes.pem"
KEY_FILE = f"{K8S_DIR}/kubernetes-key.pem"
SERVICE_ACCOUNT_CERT = f"{K8S_DIR}/service-account.pem"
SERVICE_ACCOUNT_KEY = f"{K8S_DIR}/service-account-key.pem"
ENCRYPTION_CONFIG = f"{K8S_DIR}/encryption-config.yaml"
CONTROLLER_MANAGER_KUBECONFIG = f"{K8S_DIR}/kube-controller-manager.kubeconfig"
SCHEDULER_KUBECONFIG = f"{K8S_DIR}/kube-scheduler.kubeconfig"
ADMIN_KUBECONFIG = f"{K8S_DIR}/admin.kubeconfig"
SCHEDULER_CONFIG = "/etc/kubernetes/config/kube-scheduler.yaml"
AUDIT_LOG = "/var/log/audit.log"
UNIT_DIR = "/etc/systemd/system"
KUBECTL = f"{artifacts.BIN_DIR}/kubectl"

API_PORT = 6443
# Components on a controller reach their own API server, never the load balancer: GCP hands a
# backend's traffic to its own forwarding rule back to itself, which fails half the time.
LOCAL_SERVER = f"https://127.0.0.1:{API_PORT}"
UNITS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
ARTIFACTS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
# How long the health check waits for the API server to answer /healthz and /readyz.
HEALTH_TIMEOUT_SECONDS = 300


# --- pure renderers: config in, file content out (tests call these directly) --------------------


def _controller(spec: NodeSpec) -> NodeSpec:
    if spec.role != "controller":
        raise ValueError(f"{spec.name} is not a controller")
    return spec


def service_account_issuer(public_address: str) -> str:
    """The issuer URL in service account tokens: the API's public address, as KTHW sets it."""
    if not public_address:
        raise ValueError("the API's public address is empty")
    return f"https://{public_address}:{API_PORT}"


def render_api_server_unit(config: ClusterConfig, spec: NodeSpec, public_address: str) -> str:
    """kube-apiserver.service for one controller; its version comment restarts it on an upgrade."""
    return render(
        "control-plane/kube-apiserver.service",
        version=config.versions.kubernetes,
        advertise_address=_controller(spec).internal_ip,
        audit_log=AUDIT_LOG,
        ca_file=CA_FILE,
        cert_file=CERT_FILE,
        key_file=KEY_FILE,
        etcd_servers=config.etcd_servers,
        encryption_config=ENCRYPTION_CONFIG,
        service_account_cert=SERVICE_ACCOUNT_CERT,
        service_account_key=SERVICE_ACCOUNT_KEY,
        service_account_issuer=service_account_issuer(public_address),
        service_cidr=config.service_cidr,
    )


def render_controller_manager_unit(config: ClusterConfig) -> str:
    """kube-controller-manager.service."""
    return render(
        "control-plane/kube-controller-manager.service",
        version=config.versions.kubernetes,
        cluster_cidr=config.cluster_cidr,
        ca_file=CA_FILE,
        ca_key_file=CA_KEY_FILE,
        kubeconfig=CONTROLLER_MANAGER_KUBECONFIG,
        service_account_key=SERVICE_ACCOUNT_KEY,
        service_cidr=config.service_cidr,
    )


def render_scheduler_unit(config: ClusterConfig) -> str:
    """kube-scheduler.service: everything but its config file's path lives in that file."""
    return render(
        "control-plane/kube-scheduler.service", version=config.versions.kubernetes, config_file=SCHEDULER_CONFIG
    )


def scheduler_config() -> dict[str, Any]:
    """The KubeSchedulerConfiguration (kubescheduler.config.k8s.io/v1) as a dict."""
    return {
        "apiVersion": "kubescheduler.config.k8s.io/v1",
        "kind": "KubeSchedulerConfiguration",
        "clientConnection": {"kubeconfig": SCHEDULER_KUBECONFIG},
        "leaderElection": {"leaderElect": True},
    }


def render_scheduler_config() -> str:
    """/etc/kubernetes/config/kube-scheduler.yaml."""
    return to_yaml(scheduler_config())


def render_health_script(spec: NodeSpec) -> str:
    """healthy.sh: wait for the three services and for the local API server's /healthz and /readyz."""
    return render(
        "control-plane/healthy.sh",
        node=_controller(spec).name,
        units=" ".join(UNITS),
        kubectl=KUBECTL,
        kubeconfig=ADMIN_KUBECONFIG,
        timeout_seconds=HEALTH_TIMEOUT_SECONDS,
    )


# --- the component ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ControlPlaneArgs:
    """One controller's config, where to run, the API's public address, the PKI, and the etcd it needs."""

    config: ClusterConfig
    spec: NodeSpec
    host: remote.Host
    public_address: pulumi.Input[str]
    pki: Pki
    encryption_config: pulumi.Input[str]  # secret YAML
    # The etcd ready steps it waits for: the cluster passes its own controller's member.
    etcd_members: Sequence[pulumi.Resource]


class ControlPlaneNode(pulumi.ComponentResource):
    """Bootstraps one controller's control plane: binaries, one deploy per service, then a health check."""

    healthy: pulumi.Resource

    def __init__(self, name: str, args: ControlPlaneArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kthw:index:ControlPlaneNode", name, None, opts)
        cfg, spec, host, pki = args.config, _controller(args.spec), args.host, args.pki

        # Needs nothing but the node: downloads while etcd starts.
        binaries = remote.run(
            f"{name}-binaries", host, artifacts.install_script(cfg, spec.name, ARTIFACTS), parent=self
        )

        def kubeconfig(user: str, client: CertPair) -> pulumi.Output[str]:
            return kubeconfig_output(server=LOCAL_SERVER, user=user, ca=pki.ca, client=client)

        unit = pulumi.Output.from_input(args.public_address).apply(
            lambda address: render_api_server_unit(cfg, spec, address)
        )
        api_server_files = [
            remote.RemoteFile(f"{UNIT_DIR}/kube-apiserver.service", unit),
            remote.RemoteFile(CA_FILE, pki.ca.cert_pem),
            remote.RemoteFile(CERT_FILE, pki.api_server.cert_pem),
            remote.RemoteFile(KEY_FILE, pulumi.Output.secret(pki.api_server.key_pem), 0o600),
            remote.RemoteFile(SERVICE_ACCOUNT_CERT, pki.service_account.cert_pem),
            remote.RemoteFile(SERVICE_ACCOUNT_KEY, pulumi.Output.secret(pki.service_account.key_pem), 0o600),
            remote.RemoteFile(ENCRYPTION_CONFIG, pulumi.Output.secret(args.encryption_config), 0o600),
            # For the health check here, and for kubectl in later steps on this controller.
            remote.RemoteFile(ADMIN_KUBECONFIG, kubeconfig(ADMIN_USER, pki.admin), 0o600),
        ]
        api_server = remote.deploy(
            f"{name}-kube-apiserver",
            host,
            parent=self,
            step="kube-apiserver",
            files=api_server_files,
            units=["kube-apiserver"],
            depends_on=[binaries, *args.etcd_members],
        )

        # ca.pem and service-account-key.pem are the API server's files too. This step runs after
        # the API server's so the two never write one path at once; its own stamp (deploy.sh) still
        # restarts this service when a shared file changes, though the API server's step wrote it first.
        controller_manager_files = [
            remote.RemoteFile(f"{UNIT_DIR}/kube-controller-manager.service", render_controller_manager_unit(cfg)),
            remote.RemoteFile(CA_FILE, pki.ca.cert_pem),
            remote.RemoteFile(CA_KEY_FILE, pulumi.Output.secret(pki.ca.key_pem), 0o600),
            remote.RemoteFile(SERVICE_ACCOUNT_KEY, pulumi.Output.secret(pki.service_account.key_pem), 0o600),
            remote.RemoteFile(
                CONTROLLER_MANAGER_KUBECONFIG, kubeconfig(CONTROLLER_MANAGER_USER, pki.controller_manager), 0o600
            ),
        ]
        controller_manager = remote.deploy(
            f"{name}-kube-controller-manager",
            host,
            parent=self,
            step="kube-controller-manager",
            files=controller_manager_files,
            units=["kube-controller-manager"],
            depends_on=[binaries, api_server],
        )

        scheduler_files = [
            remote.RemoteFile(f"{UNIT_DIR}/kube-scheduler.service", render_scheduler_unit(cfg)),
            remote.RemoteFile(SCHEDULER_CONFIG, render_scheduler_config()),
            remote.RemoteFile(SCHEDULER_KUBECONFIG, kubeconfig(SCHEDULER_USER, pki.scheduler), 0o600),
        ]
        scheduler = remote.deploy(
            f"{name}-kube-scheduler",
            host,
            parent=self,
            step="kube-scheduler",
            files=scheduler_files,
            units=["kube-scheduler"],
            depends_on=[binaries, api_server],
        )

        # Re-run whenever any service's files change (a deploy restarted it): `systemctl restart`
        # returns before an API server with a bad flag or file gives up.
        self.healthy = remote.run(
            f"{name}-healthy",
            host,
            render_health_script(spec),
            parent=self,
            triggers=[remote.fingerprint(api_server_files + controller_manager_files + scheduler_files)],
            depends_on=[api_server, controller_manager, scheduler],
        )
        self.register_outputs({"internal_ip": spec.internal_ip, "local_server": LOCAL_SERVER})
