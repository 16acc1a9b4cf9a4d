"""Cluster add-ons and the smoke test: kubelet RBAC (KTHW ch. 8), CoreDNS (ch. 12), metrics-server, ch. 13."""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import yaml

from components import bounds, images, remote
from components.config import ClusterConfig
from components.control_plane import AUDIT_LOG
from components.kubeconfig import ENCRYPTION_KEY_NAME
from components.machine import API_PORT
from components.pki import CertPair
from components.render import render, to_yaml

NAMESPACE = "kube-system"
CLUSTER_DOMAIN = "cluster.local"
DNS_LABELS = {"k8s-app": "kube-dns"}
# What kubeadm 1.36 installs (its CoreDNSVersion constant); the Corefile below is 1.14's stock one.
COREDNS_IMAGE = "registry.k8s.io/coredns/coredns:v1.14.2"

# The API server reaches kubelets as user "kubernetes" (the CN of its certificate, KTHW ch. 4).
APISERVER_KUBELET_USER = "kubernetes"
KUBELET_API_ROLE = "system:kube-apiserver-to-kubelet"

# The metrics API (kthw:metricsServer): registry.k8s.io's release of kthw:metricsServerVersion, by digest.
METRICS_SERVER_REPOSITORY = images.REPOSITORIES[images.METRICS_SERVER]
METRICS_SERVER_PORT = 10250
METRICS_SERVER_CERTS = "metrics-server-certs"
METRICS_SERVER_CERTS_DIR = "/etc/metrics-server"
METRICS_ROLLOUT = f"{NAMESPACE}/metrics-server"

SMOKE_SECRET = "kthw-smoke"
SMOKE_DEPLOYMENT = "kthw-smoke"
SMOKE_DNS_POD = "kthw-smoke-dns"
SMOKE_NGINX_IMAGE = "nginx:1.28"
# KTHW ch. 12 pins busybox 1.28: later busybox nslookup builds mishandle search domains.
SMOKE_BUSYBOX_IMAGE = "busybox:1.28"
# How a secret is stored in etcd under the encryption config (aescbc provider, key "key1").
ENCRYPTION_PREFIX = f"k8s:enc:aescbc:v1:{ENCRYPTION_KEY_NAME}:"


class _Dumper(yaml.SafeDumper):
    """safe_dump, with multi-line strings (the Corefile) as readable literal blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def _dump(objects: Sequence[Mapping[str, Any]]) -> str:
    return yaml.dump_all(objects, Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def _meta(
    name: str,
    *,
    namespace: str | None = None,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    if labels:
        meta["labels"] = dict(labels)
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


# --- manifests -----------------------------------------------------------------------------------


def render_apiserver_to_kubelet_rbac() -> str:
    """KTHW ch. 8: let the API server (user "kubernetes") use the kubelet API for exec, logs and metrics."""
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": _meta(
            KUBELET_API_ROLE,
            labels={"kubernetes.io/bootstrapping": "rbac-defaults"},
            annotations={"rbac.authorization.kubernetes.io/autoupdate": "true"},
        ),
        "rules": [
            {
                "apiGroups": [""],
                "resources": ["nodes/proxy", "nodes/stats", "nodes/log", "nodes/spec", "nodes/metrics"],
                "verbs": ["*"],
            }
        ],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": _meta("system:kube-apiserver"),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": KUBELET_API_ROLE},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": APISERVER_KUBELET_USER}],
    }
    return _dump([role, binding])


def render_corefile() -> str:
    """CoreDNS's Corefile: cluster.local and reverse zones from the API, the rest to the node's resolver."""
    return render("addons/Corefile", domain=CLUSTER_DOMAIN)


def render_coredns(config: ClusterConfig) -> str:
    """KTHW ch. 12: CoreDNS as the cluster DNS, serving on the kube-dns service at config.cluster_dns_ip."""
    service_account = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta("coredns", namespace=NAMESPACE, labels=DNS_LABELS),
    }
    cluster_role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": _meta("system:coredns", labels={**DNS_LABELS, "kubernetes.io/bootstrapping": "rbac-defaults"}),
        "rules": [
            {
                "apiGroups": [""],
                "resources": ["endpoints", "services", "pods", "namespaces"],
                "verbs": ["list", "watch"],
            },
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
        ],
    }
    cluster_role_binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": _meta("system:coredns", labels={**DNS_LABELS, "kubernetes.io/bootstrapping": "rbac-defaults"}),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:coredns"},
        "subjects": [{"kind": "ServiceAccount", "name": "coredns", "namespace": NAMESPACE}],
    }
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta("coredns", namespace=NAMESPACE, labels=DNS_LABELS),
        "data": {"Corefile": render_corefile()},
    }
    container = {
        "name": "coredns",
        "image": COREDNS_IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "args": ["-conf", "/etc/coredns/Corefile"],
        "resources": {"limits": {"memory": "170Mi"}, "requests": {"cpu": "100m", "memory": "70Mi"}},
        "volumeMounts": [{"name": "config-volume", "mountPath": "/etc/coredns", "readOnly": True}],
        "ports": [
            {"name": "dns", "containerPort": 53, "protocol": "UDP"},
            {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
            {"name": "metrics", "containerPort": 9153, "protocol": "TCP"},
        ],
        # Port 53 is privileged: keep only the one capability that binds it.
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
        },
        # `health` answers while the process lives; `ready` once every plugin (the API watch) is synced.
        "livenessProbe": {
            "httpGet": {"path": "/health", "port": 8080, "scheme": "HTTP"},
            "initialDelaySeconds": 60,
            "timeoutSeconds": 5,
            "successThreshold": 1,
            "failureThreshold": 5,
        },
        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181, "scheme": "HTTP"}},
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta("coredns", namespace=NAMESPACE, labels={**DNS_LABELS, "kubernetes.io/name": "CoreDNS"}),
        "spec": {
            "replicas": 2,
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "selector": {"matchLabels": dict(DNS_LABELS)},
            "template": {
                "metadata": {"labels": dict(DNS_LABELS)},
                "spec": {
                    "priorityClassName": "system-cluster-critical",
                    "serviceAccountName": "coredns",
                    "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"}],
                    "nodeSelector": {"kubernetes.io/os": "linux"},
                    # Two replicas on two workers: losing one node keeps DNS up.
                    "affinity": {
                        "podAntiAffinity": {
                            "preferredDuringSchedulingIgnoredDuringExecution": [
                                {
                                    "weight": 100,
                                    "podAffinityTerm": {
                                        "labelSelector": {"matchLabels": dict(DNS_LABELS)},
                                        "topologyKey": "kubernetes.io/hostname",
                                    },
                                }
                            ]
                        }
                    },
                    "containers": [container],
                    # The cluster's own DNS must not resolve through itself: use the node's resolver.
                    "dnsPolicy": "Default",
                    "volumes": [
                        {
                            "name": "config-volume",
                            "configMap": {"name": "coredns", "items": [{"key": "Corefile", "path": "Corefile"}]},
                        }
                    ],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(
            "kube-dns",
            namespace=NAMESPACE,
            labels={**DNS_LABELS, "kubernetes.io/cluster-service": "true", "kubernetes.io/name": "CoreDNS"},
            annotations={"prometheus.io/port": "9153", "prometheus.io/scrape": "true"},
        ),
        "spec": {
            "selector": dict(DNS_LABELS),
            "clusterIP": config.cluster_dns_ip,
            "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP"},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                {"name": "metrics", "port": 9153, "protocol": "TCP"},
            ],
        },
    }
    return _dump([service_account, cluster_role, cluster_role_binding, config_map, deployment, service])


def metrics_server_image(config: ClusterConfig) -> str:
    """repository:tag@digest of the configured version: kthw:imageDigests' digest, else the pinned one."""
    return images.reference(images.METRICS_SERVER, config.versions.metrics_server, dict(config.image_digests))


def render_metrics_server(config: ClusterConfig, ca_cert_pem: str) -> str:
    """metrics-server's objects; its APIService trusts the cluster CA that signed metrics-server's serving cert."""
    return render(
        "addons/metrics-server.yaml",
        version=config.versions.metrics_server,
        image=metrics_server_image(config),
        port=METRICS_SERVER_PORT,
        certs_dir=METRICS_SERVER_CERTS_DIR,
        certs_secret=METRICS_SERVER_CERTS,
        ca_bundle=base64.b64encode(ca_cert_pem.encode()).decode(),
    )


def metrics_server_certs(ca_cert_pem: str, cert_pem: str, key_pem: str) -> dict[str, Any]:
    """The Secret metrics-server mounts: its serving pair, and the cluster CA it checks kubelets against."""
    files = {"ca.crt": ca_cert_pem, "tls.crt": cert_pem, "tls.key": key_pem}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": _meta(METRICS_SERVER_CERTS, namespace=NAMESPACE, labels={"k8s-app": "metrics-server"}),
        "data": {name: base64.b64encode(content.encode()).decode() for name, content in files.items()},
    }


def metrics_server_manifests(config: ClusterConfig, ca_cert_pem: str, cert_pem: str, key_pem: str) -> str:
    """The Secret first (the Deployment mounts it), then the rest: one stream for one `kubectl apply`."""
    certs = to_yaml(metrics_server_certs(ca_cert_pem, cert_pem, key_pem))
    return certs + "---\n" + render_metrics_server(config, ca_cert_pem)


def render_smoke_manifests() -> str:
    """KTHW ch. 13's nginx deployment and ch. 12's busybox DNS lookup, in the default namespace."""
    labels = {"app": SMOKE_DEPLOYMENT}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(SMOKE_DEPLOYMENT, namespace="default", labels=labels),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [{"name": "nginx", "image": SMOKE_NGINX_IMAGE, "ports": [{"containerPort": 80}]}]
                },
            },
        },
    }
    dns_pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _meta(SMOKE_DNS_POD, namespace="default", labels={"app": SMOKE_DNS_POD}),
        "spec": {
            # One lookup, then the pod ends: its phase is the verdict, its log the evidence.
            "restartPolicy": "Never",
            "containers": [
                {"name": "busybox", "image": SMOKE_BUSYBOX_IMAGE, "command": ["nslookup", "kubernetes.default"]}
            ],
        },
    }
    return _dump([deployment, dns_pod])


# --- scripts -------------------------------------------------------------------------------------


def apply_script(node: str, step: str, rollout: str = "", pace: int = bounds.CLOUD_PACE) -> str:
    """Apply the manifest on stdin as admin on a controller; wait for `namespace/deployment` if given."""
    return render(
        "addons/apply.sh",
        node=node,
        step=step,
        rollout=rollout,
        apply_seconds=bounds.APPLY_RETRY_SECONDS * pace,
        rollout_seconds=bounds.DNS_ROLLOUT_SECONDS * pace,
        kubectl_timeout=bounds.KUBECTL_CALL_TIMEOUT_SECONDS * pace,
    )


def smoke_test_script(
    config: ClusterConfig,
    node: str,
    *,
    pace: int = bounds.CLOUD_PACE,
    check_seconds: int = bounds.SMOKE_CHECK_SECONDS,
    kubectl_timeout: int = bounds.KUBECTL_CALL_TIMEOUT_SECONDS,
) -> str:
    """KTHW ch. 13's checks from a controller; the smoke manifests go on its stdin.

    Each check waits at most `pace` times `check_seconds`; tests render short bounds.
    """
    check_seconds, kubectl_timeout = check_seconds * pace, kubectl_timeout * pace
    return render(
        "addons/smoke-test.sh",
        node=node,
        workers=" ".join(w.name for w in config.workers),
        service_ip=config.kubernetes_service_ip,
        dns_ip=config.cluster_dns_ip,
        secret=SMOKE_SECRET,
        deployment=SMOKE_DEPLOYMENT,
        dns_pod=SMOKE_DNS_POD,
        encryption_prefix=ENCRYPTION_PREFIX,
        # Empty turns a check off: no audit log to look in, no metrics API to ask.
        audit_log=AUDIT_LOG if config.audit_enabled else "",
        metrics="true" if config.metrics_server else "",
        check_seconds=check_seconds,
        kubectl_timeout=kubectl_timeout,
        etcdctl_timeout=bounds.ETCDCTL_TIMEOUT_SECONDS,
    )


def public_probe_script(
    config: ClusterConfig, node: str, *, pace: int = bounds.CLOUD_PACE, probe_seconds: int = bounds.PUBLIC_PROBE_SECONDS
) -> str:
    """curl the API's /version through the load balancer; the public address goes on stdin."""
    probe_seconds *= pace
    return render(
        "addons/public-probe.sh",
        node=node,
        kubernetes_version=config.versions.kubernetes,
        port=API_PORT,
        probe_seconds=probe_seconds,
        curl_connect_timeout=bounds.PROBE_CURL.connect_timeout,
        curl_max_time=bounds.PROBE_CURL.max_time,
    )


# --- components ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AddonsArgs:
    """Where add-ons are applied (a controller with admin.kubeconfig) and what they wait for."""

    config: ClusterConfig
    host: remote.Host  # controller-0
    depends_on: Sequence[pulumi.Resource]  # the control plane is healthy
    workers_ready: Sequence[pulumi.Resource] = ()  # CoreDNS pods need a Ready worker to run on
    # With kthw:metricsServer: the cluster CA and metrics-server's serving pair (Pki.metrics_server).
    ca_cert: pulumi.Input[str] | None = None
    metrics_server_tls: CertPair | None = None


class Addons(pulumi.ComponentResource):
    """The kubelet-API RBAC, CoreDNS and metrics-server, applied with kubectl on a controller."""

    metrics_server: pulumi.Resource | None

    def __init__(self, name: str, args: AddonsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kthw:index:Addons", name, None, opts)
        host = args.host
        self.rbac = remote.run(
            f"{name}-rbac",
            host,
            apply_script(host.name, "kubelet rbac", pace=host.pace),
            parent=self,
            stdin=render_apiserver_to_kubelet_rbac(),
            depends_on=list(args.depends_on),
        )
        # Waiting for the rollout only makes sense once pods can be scheduled somewhere.
        rollout = f"{NAMESPACE}/coredns" if args.workers_ready else ""
        self.dns = remote.run(
            f"{name}-coredns",
            host,
            apply_script(host.name, "coredns", rollout, host.pace),
            parent=self,
            stdin=render_coredns(args.config),
            depends_on=[self.rbac, *args.depends_on, *args.workers_ready],
        )
        self.metrics_server = None
        if args.config.metrics_server:
            if args.ca_cert is None or args.metrics_server_tls is None:
                raise ValueError("kthw:metricsServer needs AddonsArgs.ca_cert and metrics_server_tls")
            tls = args.metrics_server_tls
            manifests = pulumi.Output.all(args.ca_cert, tls.cert_pem, tls.key_pem).apply(
                lambda pems: metrics_server_manifests(args.config, *pems)
            )
            self.metrics_server = remote.run(
                f"{name}-metrics-server",
                host,
                apply_script(host.name, "metrics-server", METRICS_ROLLOUT if args.workers_ready else "", host.pace),
                parent=self,
                # The Secret carries metrics-server's private key.
                stdin=manifests,
                secret_stdin=True,
                depends_on=[self.rbac, *args.depends_on, *args.workers_ready],
            )
        outputs = {"coredns_image": COREDNS_IMAGE}
        if args.config.metrics_server:
            outputs["metrics_server_image"] = metrics_server_image(args.config)
        self.register_outputs(outputs)


@dataclass(frozen=True)
class SmokeTestArgs:
    """The controller that runs KTHW's smoke test, the worker that probes the public address, and when."""

    config: ClusterConfig
    controller: remote.Host
    probe: remote.Host  # worker-0: not a load balancer backend, so its traffic to the address is balanced
    public_address: pulumi.Input[str]
    depends_on: Sequence[pulumi.Resource]


def smoke_triggers(config: ClusterConfig, depends_on: Sequence[pulumi.Resource]) -> list[pulumi.Input[object]]:
    """What re-runs the smoke test: another version or node set, or a replaced step it depends on.

    An unchanged `pulumi up` leaves the test alone (it takes minutes); a replaced resource gets a
    new id, so rebuilding a node or a bootstrap step tests the cluster again.
    """
    triggers: list[pulumi.Input[object]] = [config.versions.kubernetes, *(n.name for n in config.nodes)]
    triggers.extend(r.id for r in depends_on if isinstance(r, pulumi.CustomResource))
    return triggers


class SmokeTest(pulumi.ComponentResource):
    """KTHW ch. 13 as the last step of `pulumi up`: a failed check fails the update, naming node and check."""

    def __init__(self, name: str, args: SmokeTestArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kthw:index:SmokeTest", name, None, opts)
        cfg = args.config
        triggers = smoke_triggers(cfg, args.depends_on)
        self.cluster_check = remote.run(
            f"{name}-cluster",
            args.controller,
            smoke_test_script(cfg, args.controller.name, pace=args.controller.pace),
            parent=self,
            stdin=render_smoke_manifests(),
            triggers=triggers,
            depends_on=list(args.depends_on),
        )
        self.public_check = remote.run(
            f"{name}-public",
            args.probe,
            public_probe_script(cfg, args.probe.name, pace=args.probe.pace),
            parent=self,
            stdin=args.public_address,
            triggers=[*triggers, args.public_address],
            depends_on=[self.cluster_check, *args.depends_on],
        )
        self.register_outputs({"version": self.public_check.stdout})
