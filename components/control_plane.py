"""The control-plane bootstrap (KTHW ch. 8): kube-apiserver, kube-controller-manager and kube-scheduler."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pulumi

from components import artifacts, bounds, remote
from components.config import AUDIT_OFF, ClusterConfig, NodeSpec
from components.kubeconfig import ADMIN_USER, CONTROLLER_MANAGER_USER, SCHEDULER_USER, kubeconfig_output
from components.machine import Rejoin
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
FRONT_PROXY_CA_FILE = f"{K8S_DIR}/front-proxy-ca.pem"
PROXY_CLIENT_CERT = f"{K8S_DIR}/front-proxy-client.pem"
PROXY_CLIENT_KEY = f"{K8S_DIR}/front-proxy-client-key.pem"
AUDIT_POLICY = f"{K8S_DIR}/audit-policy.yaml"
ENCRYPTION_CONFIG = f"{K8S_DIR}/encryption-config.yaml"
CONTROLLER_MANAGER_KUBECONFIG = f"{K8S_DIR}/kube-controller-manager.kubeconfig"
SCHEDULER_KUBECONFIG = f"{K8S_DIR}/kube-scheduler.kubeconfig"
ADMIN_KUBECONFIG = f"{K8S_DIR}/admin.kubeconfig"
SCHEDULER_CONFIG = "/etc/kubernetes/config/kube-scheduler.yaml"
AUDIT_LOG = "/var/log/audit.log"
# Rotation of the audit log: days a rotated file is kept, how many are kept, and the size (MB) that rotates.
AUDIT_LOG_MAXAGE = 30
AUDIT_LOG_MAXBACKUP = 10
AUDIT_LOG_MAXSIZE = 100
UNIT_DIR = "/etc/systemd/system"
KUBECTL = f"{artifacts.BIN_DIR}/kubectl"

API_PORT = 6443
# Components on a controller reach their own API server, never the load balancer: GCP hands a
# backend's traffic to its own forwarding rule back to itself, which fails half the time.
LOCAL_SERVER = f"https://127.0.0.1:{API_PORT}"
UNITS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
# Seconds added to the time the load balancer takes to drop a failing backend: how long a stopping
# API server keeps serving after its /readyz turned red (--shutdown-delay-duration).
SHUTDOWN_DELAY_MARGIN_SECONDS = 5
ARTIFACTS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")


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


# Requests nobody needs in an audit trail, and which would drown it: health probes, and the reads and
# lease renewals the system components make every few seconds per node.
_AUDIT_NOISE: tuple[dict[str, Any], ...] = (
    {"level": "None", "nonResourceURLs": ["/healthz*", "/livez*", "/readyz*", "/version"]},
    {"level": "None", "resources": [{"group": "", "resources": ["events"]}, {"group": "events.k8s.io"}]},
    {
        "level": "None",
        "users": ["system:kube-proxy"],
        "verbs": ["watch"],
        "resources": [
            {"group": "", "resources": ["endpoints", "services", "services/status"]},
            {"group": "discovery.k8s.io", "resources": ["endpointslices"]},
        ],
    },
    # users and userGroups in one rule must both match, so nodes and named components are two rules.
    {
        "level": "None",
        "userGroups": ["system:nodes"],
        "verbs": ["get", "watch", "update"],
        "resources": [{"group": "coordination.k8s.io", "resources": ["leases"]}],
    },
    {
        "level": "None",
        "users": ["system:kube-controller-manager", "system:kube-scheduler", "system:apiserver"],
        "verbs": ["get", "watch", "update"],
        "resources": [
            {"group": "coordination.k8s.io", "resources": ["leases"]},
            {"group": "", "resources": ["endpoints"]},
        ],
    },
)
# Bodies of these hold secrets or credentials: never more than who touched what.
_AUDIT_METADATA_ONLY: dict[str, Any] = {
    "level": "Metadata",
    "resources": [
        {"group": "", "resources": ["secrets", "configmaps", "serviceaccounts/token"]},
        {"group": "authentication.k8s.io", "resources": ["tokenreviews"]},
    ],
}
# Who granted what to whom: the request bodies of every RBAC change.
_AUDIT_RBAC_CHANGES: dict[str, Any] = {
    "level": "Request",
    "verbs": ["create", "update", "patch", "delete", "deletecollection"],
    "resources": [{"group": "rbac.authorization.k8s.io"}],
}


def audit_policy(level: str) -> dict[str, Any]:
    """The audit Policy (audit.k8s.io/v1): first matching rule wins, `level` catches the rest."""
    if level == AUDIT_OFF:
        raise ValueError("auditing is off: there is no policy")
    return {
        "apiVersion": "audit.k8s.io/v1",
        "kind": "Policy",
        # Every request would otherwise be logged twice, once on arrival and once when answered.
        "omitStages": ["RequestReceived"],
        "rules": [*_AUDIT_NOISE, _AUDIT_METADATA_ONLY, _AUDIT_RBAC_CHANGES, {"level": level}],
    }


def render_audit_policy(config: ClusterConfig) -> str:
    """/var/lib/kubernetes/audit-policy.yaml for kthw:auditLevel."""
    return to_yaml(audit_policy(config.audit_level))


def audit_flags(config: ClusterConfig) -> dict[str, str]:
    """kube-apiserver's audit flags: none when auditing is off (no policy means no events anyway)."""
    if not config.audit_enabled:
        return {}
    return {
        "audit-log-maxage": str(AUDIT_LOG_MAXAGE),
        "audit-log-maxbackup": str(AUDIT_LOG_MAXBACKUP),
        "audit-log-maxsize": str(AUDIT_LOG_MAXSIZE),
        "audit-log-path": AUDIT_LOG,
        "audit-policy-file": AUDIT_POLICY,
    }


def shutdown_delay_seconds(config: ClusterConfig, seconds_to_leave: int) -> int:
    """How long a stopping API server keeps serving with /readyz failing, so the pool drops it first.

    `seconds_to_leave` is the longest the front end keeps a failing backend (0: nothing balances the
    API servers). With one controller there is no other backend to take its requests: the delay
    would only lengthen the outage, so it is 0.
    """
    if len(config.controllers) == 1 or seconds_to_leave <= 0:
        return 0
    return seconds_to_leave + SHUTDOWN_DELAY_MARGIN_SECONDS


def render_api_server_unit(
    config: ClusterConfig, spec: NodeSpec, public_address: str, seconds_to_leave: int = 0
) -> str:
    """kube-apiserver.service for one controller; its version comment restarts it on an upgrade."""
    return render(
        "control-plane/kube-apiserver.service",
        version=config.versions.kubernetes,
        advertise_address=_controller(spec).internal_ip,
        audit_flags="".join(f"  --{flag}={value} \\\n" for flag, value in audit_flags(config).items()),
        ca_file=CA_FILE,
        front_proxy_ca=FRONT_PROXY_CA_FILE,
        proxy_client_cert=PROXY_CLIENT_CERT,
        proxy_client_key=PROXY_CLIENT_KEY,
        cert_file=CERT_FILE,
        key_file=KEY_FILE,
        etcd_servers=config.etcd_servers,
        encryption_config=ENCRYPTION_CONFIG,
        service_account_cert=SERVICE_ACCOUNT_CERT,
        service_account_key=SERVICE_ACCOUNT_KEY,
        service_account_issuer=service_account_issuer(public_address),
        service_cidr=config.service_cidr,
        shutdown_delay=shutdown_delay_seconds(config, seconds_to_leave),
    )


def leader_election(pace: int) -> dict[str, str]:
    """Leader election's lease, renew deadline and retry period at `pace`; {} at the cloud's (the defaults)."""
    if pace == bounds.CLOUD_PACE:
        return {}
    return {
        "leaseDuration": f"{bounds.LEADER_LEASE_SECONDS * pace}s",
        "renewDeadline": f"{bounds.LEADER_RENEW_SECONDS * pace}s",
        "retryPeriod": f"{bounds.LEADER_RETRY_SECONDS * pace}s",
    }


def render_controller_manager_unit(config: ClusterConfig, pace: int = bounds.CLOUD_PACE) -> str:
    """kube-controller-manager.service; on a slow node its leader election is slower too, so that a
    renewal the API server answers late does not end the process."""
    flags = {"leaseDuration": "lease-duration", "renewDeadline": "renew-deadline", "retryPeriod": "retry-period"}
    timing = "".join(f" --leader-elect-{flags[k]}={v}" for k, v in leader_election(pace).items())
    return render(
        "control-plane/kube-controller-manager.service",
        leader_election_timing=timing,
        version=config.versions.kubernetes,
        cluster_cidr=config.cluster_cidr,
        ca_file=CA_FILE,
        ca_key_file=CA_KEY_FILE,
        kubeconfig=CONTROLLER_MANAGER_KUBECONFIG,
        service_account_key=SERVICE_ACCOUNT_KEY,
        service_cidr=config.service_cidr,
    )


def render_scheduler_unit(config: ClusterConfig) -> str:
    """kube-scheduler.service: its config file, and the kubeconfig that checks callers of its secure port."""
    return render(
        "control-plane/kube-scheduler.service",
        version=config.versions.kubernetes,
        config_file=SCHEDULER_CONFIG,
        kubeconfig=SCHEDULER_KUBECONFIG,
    )


def scheduler_config(pace: int = bounds.CLOUD_PACE) -> dict[str, Any]:
    """The KubeSchedulerConfiguration (kubescheduler.config.k8s.io/v1) as a dict."""
    return {
        "apiVersion": "kubescheduler.config.k8s.io/v1",
        "kind": "KubeSchedulerConfiguration",
        "clientConnection": {"kubeconfig": SCHEDULER_KUBECONFIG},
        "leaderElection": {"leaderElect": True, **leader_election(pace)},
    }


def render_scheduler_config(pace: int = bounds.CLOUD_PACE) -> str:
    """/etc/kubernetes/config/kube-scheduler.yaml."""
    return to_yaml(scheduler_config(pace))


def render_health_script(
    spec: NodeSpec,
    *,
    pace: int = bounds.CLOUD_PACE,
    timeout_seconds: int = bounds.CONTROL_PLANE_HEALTH_SECONDS,
    kubectl_timeout: int = bounds.KUBECTL_CALL_TIMEOUT_SECONDS,
    kubectl: str = KUBECTL,
    kubeconfig: str = ADMIN_KUBECONFIG,
    units: Sequence[str] = UNITS,
) -> str:
    """healthy.sh: wait for `units` (the three services) and for the local API server's /healthz and /readyz.

    Its bounds are `pace` times the keywords', which exist for tests: they run the script with
    short bounds against a real kubectl.
    """
    timeout_seconds, kubectl_timeout = timeout_seconds * pace, kubectl_timeout * pace
    return render(
        "control-plane/healthy.sh",
        node=_controller(spec).name,
        units=" ".join(units),
        kubectl=kubectl,
        kubeconfig=kubeconfig,
        timeout_seconds=timeout_seconds,
        kubectl_timeout=kubectl_timeout,
        systemctl_timeout=bounds.SYSTEMCTL_TIMEOUT_SECONDS,
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
    # The previous controller's in-service step: this controller's services restart only after it.
    after: Sequence[pulumi.Resource] = ()
    # How the front end drops and takes back this controller; None: nothing balances the API servers.
    rejoin: Rejoin | None = None


class ControlPlaneNode(pulumi.ComponentResource):
    """Bootstraps one controller's control plane: binaries, one deploy per service, a health check, and
    the wait until the load balancer sends it requests again.

    Every step that restarts a service waits for the previous controller's in-service step, so a
    change (a version bump, a certificate rotation) restarts one controller's control plane at a
    time, and the next only once the pool serves from this one again.
    """

    healthy: pulumi.Resource
    in_service: pulumi.Resource

    def __init__(self, name: str, args: ControlPlaneArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kthw:index:ControlPlaneNode", name, None, opts)
        cfg, spec, host, pki = args.config, _controller(args.spec), args.host, args.pki

        # Needs nothing but the node: downloads while etcd starts.
        binaries = remote.run(
            f"{name}-binaries", host, artifacts.install_script(cfg, spec.name, ARTIFACTS), parent=self
        )

        def kubeconfig(user: str, client: CertPair) -> pulumi.Output[str]:
            return kubeconfig_output(server=LOCAL_SERVER, user=user, ca=pki.ca, client=client)

        rejoin = args.rejoin
        seconds_to_leave = rejoin.seconds_to_leave if rejoin else 0
        unit = pulumi.Output.from_input(args.public_address).apply(
            lambda address: render_api_server_unit(cfg, spec, address, seconds_to_leave)
        )
        api_server_files = [
            remote.RemoteFile(f"{UNIT_DIR}/kube-apiserver.service", unit),
            remote.RemoteFile(CA_FILE, pki.ca.cert_pem),
            remote.RemoteFile(CERT_FILE, pki.api_server.cert_pem),
            remote.RemoteFile(KEY_FILE, pulumi.Output.secret(pki.api_server.key_pem), 0o600),
            remote.RemoteFile(SERVICE_ACCOUNT_CERT, pki.service_account.cert_pem),
            remote.RemoteFile(SERVICE_ACCOUNT_KEY, pulumi.Output.secret(pki.service_account.key_pem), 0o600),
            remote.RemoteFile(ENCRYPTION_CONFIG, pulumi.Output.secret(args.encryption_config), 0o600),
            # The aggregation layer: whom to believe in X-Remote-* headers, and who the API server is to
            # aggregated API servers.
            remote.RemoteFile(FRONT_PROXY_CA_FILE, pki.front_proxy_ca.cert_pem),
            remote.RemoteFile(PROXY_CLIENT_CERT, pki.front_proxy_client.cert_pem),
            remote.RemoteFile(PROXY_CLIENT_KEY, pulumi.Output.secret(pki.front_proxy_client.key_pem), 0o600),
            # For the health check here, and for kubectl in later steps on this controller.
            remote.RemoteFile(ADMIN_KUBECONFIG, kubeconfig(ADMIN_USER, pki.admin), 0o600),
        ]
        if cfg.audit_enabled:
            # In this step's bundle: a policy change restarts the API server and nothing else.
            api_server_files.append(remote.RemoteFile(AUDIT_POLICY, render_audit_policy(cfg)))
        api_server = remote.deploy(
            f"{name}-kube-apiserver",
            host,
            parent=self,
            step="kube-apiserver",
            files=api_server_files,
            units=["kube-apiserver"],
            depends_on=[binaries, *args.etcd_members, *args.after],
        )
        # The controller manager and the scheduler read the request-header CA's configmap as they
        # start; started before the API server has bootstrapped its RBAC roles, each exits once
        # (forbidden) and systemd restarts it. So they wait for the API server's /readyz (seen on
        # the local cloud: a fresh controller-manager's first start failed).
        api_server_ready = remote.run(
            f"{name}-kube-apiserver-ready",
            host,
            render_health_script(spec, pace=host.pace, units=("kube-apiserver",)),
            parent=self,
            triggers=[remote.fingerprint(api_server_files)],
            depends_on=[api_server],
        )

        # ca.pem and service-account-key.pem are the API server's files too. This step runs after
        # the API server's so the two never write one path at once; its own stamp (deploy.sh) still
        # restarts this service when a shared file changes, though the API server's step wrote it first.
        controller_manager_files = [
            remote.RemoteFile(
                f"{UNIT_DIR}/kube-controller-manager.service", render_controller_manager_unit(cfg, host.pace)
            ),
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
            depends_on=[binaries, api_server_ready, *args.after],
        )

        scheduler_files = [
            remote.RemoteFile(f"{UNIT_DIR}/kube-scheduler.service", render_scheduler_unit(cfg)),
            remote.RemoteFile(SCHEDULER_CONFIG, render_scheduler_config(host.pace)),
            remote.RemoteFile(SCHEDULER_KUBECONFIG, kubeconfig(SCHEDULER_USER, pki.scheduler), 0o600),
        ]
        scheduler = remote.deploy(
            f"{name}-kube-scheduler",
            host,
            parent=self,
            step="kube-scheduler",
            files=scheduler_files,
            units=["kube-scheduler"],
            depends_on=[binaries, api_server_ready, *args.after],
        )

        # Re-run whenever any service's files change (a deploy restarted it): `systemctl restart`
        # returns before an API server with a bad flag or file gives up.
        restarts = remote.fingerprint(api_server_files + controller_manager_files + scheduler_files)
        self.healthy = remote.run(
            f"{name}-healthy",
            host,
            render_health_script(spec, pace=host.pace),
            parent=self,
            triggers=[restarts],
            depends_on=[api_server, controller_manager, scheduler],
        )
        # Back behind the load balancer: what the next controller's restarts wait for. Without one,
        # healthy is in service.
        self.in_service: pulumi.Resource = self.healthy
        if rejoin is not None:
            self.in_service = remote.run(
                f"{name}-in-service",
                host,
                rejoin.in_service_script(spec.name),
                parent=self,
                triggers=[restarts],
                depends_on=[self.healthy, *([rejoin.proxies[spec.name]] if spec.name in rejoin.proxies else [])],
            )
        self.register_outputs({"internal_ip": spec.internal_ip, "local_server": LOCAL_SERVER})
