"""The worker bootstrap (KTHW ch. 9): containerd, runc, CNI plugins, kubelet and kube-proxy on one worker."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pulumi

from components import artifacts, bounds, remote
from components.config import ClusterConfig, NodeSpec
from components.kubeconfig import KUBE_PROXY_USER, kubeconfig_output, kubelet_user
from components.pki import CertPair
from components.render import render, to_yaml

# Node file paths (the brief's fixed contract).
CA_PATH = "/var/lib/kubernetes/ca.pem"
KUBELET_CERT = "/var/lib/kubelet/kubelet.pem"
KUBELET_KEY = "/var/lib/kubelet/kubelet-key.pem"
KUBELET_KUBECONFIG = "/var/lib/kubelet/kubeconfig"
KUBELET_CONFIG = "/var/lib/kubelet/kubelet-config.yaml"
KUBE_PROXY_KUBECONFIG = "/var/lib/kube-proxy/kubeconfig"
KUBE_PROXY_CONFIG = "/var/lib/kube-proxy/kube-proxy-config.yaml"
CONTAINERD_CONFIG = "/etc/containerd/config.toml"
# containerd's registry host directory: <dir>/<registry>/hosts.toml per kthw:registryMirrors entry.
REGISTRY_CONFIG_PATH = "/etc/containerd/certs.d"
# The registries the cluster's images come from (pause, CoreDNS, metrics-server from registry.k8s.io;
# the smoke test's nginx and busybox from docker.io): a hosts.toml of these that config no longer
# asks for is removed, so dropping a mirror takes effect.
KNOWN_REGISTRIES = ("docker.io", "registry.k8s.io")
# Docker Hub's registry API is not served at docker.io itself.
REGISTRY_SERVERS = {"docker.io": "https://registry-1.docker.io"}
CNI_CONF_DIR = "/etc/cni/net.d"
# containerd's CRI plugin loads only the lexically first file of conf_dir (max_conf_num = 1): the
# "05-" prefix sorts ahead of the "10-" names other installers use.
CNI_CONFLIST = f"{CNI_CONF_DIR}/05-kthw-bridge.conflist"
# The single-plugin files earlier versions wrote; "10-bridge.conf" would sort first if left behind.
CNI_OBSOLETE_CONFS = (f"{CNI_CONF_DIR}/10-bridge.conf", f"{CNI_CONF_DIR}/99-loopback.conf")
# The name the old 10-bridge.conf had: host-local keeps its address leases under
# /var/lib/cni/networks/<name>, so on an upgraded worker the pods still running keep their
# addresses out of the pool new pods draw from.
CNI_NETWORK_NAME = "bridge"
# Pod loopback is not part of the network list: containerd sets up every sandbox's lo itself, by
# running the "loopback" plugin from bin_dirs (its use_internal_loopback defaults to false), so the
# CNI plugins tarball must bring that binary along with the chain's.
CNI_CHAIN = ("bridge", "portmap")
CNI_REQUIRED_BINARIES = ("bridge", "host-local", "portmap", "loopback")
CNI_BIN_DIR = artifacts.CNI_BIN_DIR
RUNC_PATH = f"{artifacts.BIN_DIR}/runc"
UNIT_DIR = "/etc/systemd/system"
CONTAINERD_ENDPOINT = "unix:///run/containerd/containerd.sock"
CRICTL_CONFIG = "/etc/crictl.yaml"
# Seconds crictl waits for containerd before giving up (its own default is 2, too short on a busy node).
CRICTL_TIMEOUT_SECONDS = 10
# The kubelet's resolvConf: a link prepare.sh points at systemd-resolved's upstream list where
# resolved runs (Ubuntu; its 127.0.0.53 stub is unreachable from pods, which would make CoreDNS
# forward to itself) and at /etc/resolv.conf where it does not (Debian 12 has no
# /run/systemd/resolve/resolv.conf, and a missing resolvConf fails every pod sandbox).
RESOLV_CONF = "/var/lib/kubelet/resolv.conf"

KUBE_PROXY_MODE = "iptables"
# KTHW ch. 9's OS packages: socat for `kubectl port-forward`, conntrack and ipset for kube-proxy, and
# iptables for kube-proxy's iptables mode and the portmap plugin (optional on Debian 12, so not a given).
PACKAGES = ("socat", "conntrack", "ipset", "iptables")
# nf_conntrack too: kube-proxy sets nf_conntrack_max as it starts and exits if the module is not
# loaded yet (seen on the local cloud: a fresh worker's first kube-proxy start failed).
KERNEL_MODULES = ("overlay", "br_netfilter", "nf_conntrack")
SYSCTLS = (("net.bridge.bridge-nf-call-iptables", "1"), ("net.ipv4.ip_forward", "1"))
ARTIFACTS = ("containerd", "runc", "cni-plugins", "crictl", "kubelet", "kube-proxy", "kubectl")
# The kubelet's own health endpoint (KubeletConfiguration's healthzBindAddress and healthzPort defaults).
KUBELET_HEALTHZ = "http://127.0.0.1:10248/healthz"
# Rolling changes: the upgrade slots are Leases kube-system/kthw-worker-upgrade-N, and two
# annotations on each Node say which configuration it runs and that the program cordoned it.
SLOT_NAMESPACE = "kube-system"
SLOT_PREFIX = "kthw-worker-upgrade-"
APPLIED_ANNOTATION = "kthw/applied"
CORDONED_ANNOTATION = "kthw/cordoned"
# The drain and uncordon steps run on a controller, as the admin (its kubeconfig talks to its own API server).
ADMIN_KUBECTL = "sudo /usr/local/bin/kubectl --kubeconfig /var/lib/kubernetes/admin.kubeconfig"
# The CNI spec version KTHW uses; CNI plugins 1.9 and containerd 2.x's libcni read 0.1.0 through 1.1.0.
CNI_SPEC_VERSION = "1.0.0"


# --- pure renderers: config in, file content out (tests call these directly) --------------------


def _worker(spec: NodeSpec) -> NodeSpec:
    if spec.role != "worker" or not spec.pod_cidr:
        raise ValueError(f"{spec.name} is not a worker with a pod CIDR")
    return spec


def _pod_cidr(spec: NodeSpec) -> str:
    return str(_worker(spec).pod_cidr)


def cni_conflist(spec: NodeSpec) -> dict[str, Any]:
    """The worker's pod network as one CNI network list: a bridge with host-local IPAM, then portmap."""
    return {
        "cniVersion": CNI_SPEC_VERSION,
        "name": CNI_NETWORK_NAME,
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": True,
                "ipMasq": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": _pod_cidr(spec)}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            # hostPort support: containerd passes the pod's port mappings to plugins with this capability.
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def render_cni_conflist(spec: NodeSpec) -> str:
    """05-kthw-bridge.conflist."""
    return json.dumps(cni_conflist(spec), indent=2) + "\n"


def crictl_config() -> dict[str, Any]:
    """/etc/crictl.yaml: crictl talks to containerd's socket instead of probing (and warning about) others."""
    return {
        "runtime-endpoint": CONTAINERD_ENDPOINT,
        "image-endpoint": CONTAINERD_ENDPOINT,
        "timeout": CRICTL_TIMEOUT_SECONDS,
        "debug": False,
    }


def render_crictl_config() -> str:
    """/etc/crictl.yaml."""
    return to_yaml(crictl_config())


def render_containerd_config() -> str:
    """/etc/containerd/config.toml for containerd 2.x (config version 3).

    A template rather than a dict: the file is static apart from three paths, TOML is outside the
    dicts-for-YAML/JSON rule, and a stdlib TOML writer does not exist (tomllib only reads); tests
    parse the result with tomllib.
    """
    return render(
        "worker/containerd-config.toml",
        runc_path=RUNC_PATH,
        cni_bin_dir=CNI_BIN_DIR,
        cni_conf_dir=CNI_CONF_DIR,
        registry_config_path=REGISTRY_CONFIG_PATH,
    )


def hosts_toml_path(registry: str) -> str:
    """Where containerd looks for `registry`'s hosts.toml."""
    return f"{REGISTRY_CONFIG_PATH}/{registry}/hosts.toml"


def render_hosts_toml(registry: str, mirror: str) -> str:
    """<registry>/hosts.toml: pull and resolve `registry`'s images through `mirror` (a template, as config.toml)."""
    server = REGISTRY_SERVERS.get(registry, f"https://{registry}")
    return render("worker/hosts.toml", registry=registry, server=server, mirror=mirror)


def registry_files(config: ClusterConfig) -> list[remote.RemoteFile]:
    """One hosts.toml per kthw:registryMirrors entry."""
    return [remote.RemoteFile(hosts_toml_path(r), render_hosts_toml(r, m)) for r, m in config.registry_mirrors]


def obsolete_registry_files(config: ClusterConfig) -> tuple[str, ...]:
    """The hosts.toml of each known registry config has no mirror for (left from an earlier mirror)."""
    mirrored = {r for r, _ in config.registry_mirrors}
    return tuple(hosts_toml_path(r) for r in KNOWN_REGISTRIES if r not in mirrored)


def kubelet_config(config: ClusterConfig, spec: NodeSpec) -> dict[str, Any]:
    """The worker's KubeletConfiguration as a dict."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": CA_PATH},
        },
        "authorization": {"mode": "Webhook"},
        "cgroupDriver": "systemd",  # matches SystemdCgroup in containerd's config
        "clusterDomain": "cluster.local",
        "clusterDNS": [config.cluster_dns_ip],
        "containerRuntimeEndpoint": CONTAINERD_ENDPOINT,
        "failSwapOn": True,  # prepare.sh turns swap off
        "podCIDR": _pod_cidr(spec),
        # In the config, not as --register-node: kubelet flags that have a config field are deprecated.
        "registerNode": True,
        "resolvConf": RESOLV_CONF,
        "runtimeRequestTimeout": "15m",
        "tlsCertFile": KUBELET_CERT,
        "tlsPrivateKeyFile": KUBELET_KEY,
    }


def render_kubelet_config(config: ClusterConfig, spec: NodeSpec) -> str:
    """/var/lib/kubelet/kubelet-config.yaml."""
    return to_yaml(kubelet_config(config, spec))


def kube_proxy_config(config: ClusterConfig, spec: NodeSpec) -> dict[str, Any]:
    """The worker's KubeProxyConfiguration as a dict."""
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": KUBE_PROXY_KUBECONFIG},
        # The Node it serves is the certificate's name, not whatever the image calls its host.
        "hostnameOverride": _worker(spec).name,
        "mode": KUBE_PROXY_MODE,
        "clusterCIDR": config.cluster_cidr,
    }


def render_kube_proxy_config(config: ClusterConfig, spec: NodeSpec) -> str:
    """/var/lib/kube-proxy/kube-proxy-config.yaml."""
    return to_yaml(kube_proxy_config(config, spec))


def render_containerd_unit(config: ClusterConfig) -> str:
    """containerd.service; its version comment restarts containerd when the version changes."""
    return render("worker/containerd.service", version=config.versions.containerd)


def render_kubelet_unit(config: ClusterConfig, spec: NodeSpec) -> str:
    """kubelet.service: every setting but the two paths and the node name lives in kubelet-config.yaml."""
    return render(
        "worker/kubelet.service",
        version=config.versions.kubernetes,
        config_path=KUBELET_CONFIG,
        kubeconfig_path=KUBELET_KUBECONFIG,
        node_name=_worker(spec).name,
        node_ip=_worker(spec).internal_ip,
    )


def render_kube_proxy_unit(config: ClusterConfig) -> str:
    """kube-proxy.service."""
    return render("worker/kube-proxy.service", version=config.versions.kubernetes, config_path=KUBE_PROXY_CONFIG)


def render_prepare_script(
    spec: NodeSpec, *, apt_timeout: int = bounds.APT_CALL_TIMEOUT_SECONDS, apt_attempts: int = bounds.APT_ATTEMPTS
) -> str:
    """prepare.sh: packages, swap off, kernel modules, sysctls and the kubelet's resolv.conf link."""
    return render(
        "worker/prepare.sh",
        node=spec.name,
        packages=" ".join(PACKAGES),
        modules=" ".join(KERNEL_MODULES),
        sysctls=" ".join(f"{key}={value}" for key, value in SYSCTLS),
        resolv_conf=RESOLV_CONF,
        **bounds.apt_values(timeout=apt_timeout, attempts=apt_attempts),
    )


def render_ready_script(
    spec: NodeSpec,
    *,
    pace: int = bounds.CLOUD_PACE,
    timeout_seconds: int = bounds.WORKER_READY_SECONDS,
    kubectl_timeout: int = bounds.KUBECTL_CALL_TIMEOUT_SECONDS,
    units: Sequence[str] = ("containerd", "kubelet", "kube-proxy"),
    cni_bin_dir: str = CNI_BIN_DIR,
    kubelet_healthz: str = KUBELET_HEALTHZ,
) -> str:
    """ready.sh: check the CNI plugins, wait for containerd, kubelet and kube-proxy, the kubelet's own
    /healthz, then for the node to be Ready.

    Its bounds are `pace` times the keywords', which exist for tests: they run the script with
    short bounds against stand-ins.
    """
    timeout_seconds, kubectl_timeout = timeout_seconds * pace, kubectl_timeout * pace
    return render(
        "worker/ready.sh",
        node=spec.name,
        units=" ".join(units),
        kubelet_healthz=kubelet_healthz,
        timeout_seconds=timeout_seconds,
        kubectl_timeout=kubectl_timeout,
        systemctl_timeout=bounds.SYSTEMCTL_TIMEOUT_SECONDS,
        kubeconfig=KUBELET_KUBECONFIG,
        cni_plugins=" ".join(CNI_REQUIRED_BINARIES),
        cni_bin_dir=cni_bin_dir,
    )


def render_rollout_script(
    config: ClusterConfig,
    spec: NodeSpec,
    action: str,
    fingerprint: str,
    *,
    pace: int = bounds.CLOUD_PACE,
    kubectl: str = ADMIN_KUBECTL,
    drain_seconds: int = bounds.DRAIN_SECONDS,
    turn_seconds: int = bounds.WORKER_TURN_SECONDS,
    kubectl_timeout: int = bounds.KUBECTL_CALL_TIMEOUT_SECONDS,
) -> str:
    """rollout.sh for `action` "drain" (before a worker's services restart) or "uncordon" (after its ready step).

    `fingerprint` is what the worker's restarting steps install. The bounds are `pace` (the slower of
    the worker's and the admin controller's) times the keywords', which exist for tests: they run the
    script against a real API server with their own kubectl and short bounds.
    """
    if action not in ("drain", "uncordon"):
        raise ValueError(f"unknown rollout action {action!r}")
    drain_seconds, turn_seconds, kubectl_timeout = drain_seconds * pace, turn_seconds * pace, kubectl_timeout * pace
    return render(
        "worker/rollout.sh",
        node=_worker(spec).name,
        action=action,
        fingerprint=fingerprint,
        namespace=SLOT_NAMESPACE,
        prefix=SLOT_PREFIX,
        slots=config.max_unavailable_workers,
        lease_seconds=turn_seconds,
        stall_seconds=turn_seconds,
        drain_seconds=drain_seconds,
        kubectl=kubectl,
        kubectl_timeout=kubectl_timeout,
        timeout_seconds=bounds.WORKER_SLOT_WAIT_SECONDS,
        applied_annotation=APPLIED_ANNOTATION,
        cordoned_annotation=CORDONED_ANNOTATION,
    )


# --- the component ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerArgs:
    """One worker's config, where to run, the API's public address, its certificates, and what to wait for."""

    config: ClusterConfig
    spec: NodeSpec
    host: remote.Host
    public_address: pulumi.Input[str]
    ca: CertPair
    kubelet: CertPair
    kube_proxy: CertPair
    # The control plane and its front end: kubelets and kube-proxies start after them.
    control_plane_ready: Sequence[pulumi.Resource]
    # The controller whose admin credentials drain and uncordon this worker (controller-0).
    admin: remote.Host


class WorkerNode(pulumi.ComponentResource):
    """Bootstraps one worker: prerequisites, binaries, a drain, one deploy per service, a ready check, an uncordon.

    The drain and uncordon steps bracket every step that restarts a service. They run again exactly
    when those steps' files change (a version bump, a certificate rotation), and take turns through
    an upgrade slot inside the cluster, so at most kthw:maxUnavailableWorkers workers are out at a
    time. A fresh worker (not registered yet) skips them, so a new cluster's workers still
    bootstrap side by side: no worker's steps wait for another worker's in the resource graph.
    """

    ready: pulumi.Resource
    schedulable: pulumi.Resource

    def __init__(self, name: str, args: WorkerArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kthw:index:WorkerNode", name, None, opts)
        cfg, spec, host = args.config, args.spec, args.host

        # Neither needs the control plane: they run while it bootstraps.
        prepare = remote.run(f"{name}-prepare", host, render_prepare_script(spec), parent=self)
        # After prepare, so the installer never races apt-get for the dpkg lock.
        binaries = remote.run(
            f"{name}-binaries",
            host,
            artifacts.install_script(cfg, spec.name, ARTIFACTS),
            parent=self,
            depends_on=[prepare],
        )

        # The CNI confs go with containerd: its CRI plugin, not the kubelet, reads them.
        containerd_files = [
            remote.RemoteFile(CONTAINERD_CONFIG, render_containerd_config()),
            remote.RemoteFile(CNI_CONFLIST, render_cni_conflist(spec)),
            remote.RemoteFile(CRICTL_CONFIG, render_crictl_config()),
            remote.RemoteFile(f"{UNIT_DIR}/containerd.service", render_containerd_unit(cfg)),
            *registry_files(cfg),
        ]
        server = pulumi.Output.concat("https://", args.public_address, ":6443")
        kubelet_files = [
            remote.RemoteFile(CA_PATH, args.ca.cert_pem),
            remote.RemoteFile(KUBELET_CERT, args.kubelet.cert_pem),
            remote.RemoteFile(KUBELET_KEY, pulumi.Output.secret(args.kubelet.key_pem), 0o600),
            remote.RemoteFile(
                KUBELET_KUBECONFIG,
                kubeconfig_output(server=server, user=kubelet_user(spec.name), ca=args.ca, client=args.kubelet),
                0o600,
            ),
            remote.RemoteFile(KUBELET_CONFIG, render_kubelet_config(cfg, spec)),
            remote.RemoteFile(f"{UNIT_DIR}/kubelet.service", render_kubelet_unit(cfg, spec)),
        ]
        kube_proxy_files = [
            remote.RemoteFile(
                KUBE_PROXY_KUBECONFIG,
                kubeconfig_output(server=server, user=KUBE_PROXY_USER, ca=args.ca, client=args.kube_proxy),
                0o600,
            ),
            remote.RemoteFile(KUBE_PROXY_CONFIG, render_kube_proxy_config(cfg, spec)),
            remote.RemoteFile(f"{UNIT_DIR}/kube-proxy.service", render_kube_proxy_unit(cfg)),
        ]
        # What the restarting steps install: the drain runs again exactly when a service will restart.
        # After the control plane (kubelets are never newer than API servers, and it uses the API).
        fingerprint = remote.fingerprint(containerd_files + kubelet_files + kube_proxy_files)
        # A turn waits on both ends: evictions and the node's restarts, kubectl on the controller.
        pace = max(host.pace, args.admin.pace)
        drain = remote.run(
            f"{name}-drain",
            args.admin,
            fingerprint.apply(lambda f: render_rollout_script(cfg, spec, "drain", f, pace=pace)),
            parent=self,
            depends_on=[binaries, *args.control_plane_ready],
        )

        containerd = remote.deploy(
            f"{name}-containerd",
            host,
            parent=self,
            step="containerd",
            files=containerd_files,
            obsolete=CNI_OBSOLETE_CONFS + obsolete_registry_files(cfg),
            units=["containerd"],
            secret=False,  # no key material: keep its output readable
            depends_on=[binaries, drain],
        )
        # The kubelet registers its node on start, so it waits for the API behind the public address.
        kubelet = remote.deploy(
            f"{name}-kubelet",
            host,
            parent=self,
            step="kubelet",
            files=kubelet_files,
            units=["kubelet"],
            depends_on=[containerd, drain, *args.control_plane_ready],
        )
        kube_proxy = remote.deploy(
            f"{name}-kube-proxy",
            host,
            parent=self,
            step="kube-proxy",
            files=kube_proxy_files,
            units=["kube-proxy"],
            depends_on=[binaries, drain, *args.control_plane_ready],
        )

        # Re-run the check whenever any service's files change (a deploy restarted something),
        # since `systemctl restart` returns before a crashing kubelet gives up.
        self.ready = remote.run(
            f"{name}-ready",
            host,
            render_ready_script(spec, pace=host.pace),
            parent=self,
            triggers=[fingerprint],
            depends_on=[kubelet, kube_proxy],
        )
        # Pods may come back, and the upgrade slot goes to the next worker.
        self.schedulable = remote.run(
            f"{name}-uncordon",
            args.admin,
            fingerprint.apply(lambda f: render_rollout_script(cfg, spec, "uncordon", f, pace=pace)),
            parent=self,
            depends_on=[self.ready, drain],
        )
        self.register_outputs({"internal_ip": spec.internal_ip, "pod_cidr": spec.pod_cidr})
