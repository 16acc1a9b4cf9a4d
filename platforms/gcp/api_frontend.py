"""The API's front-end load balancer (KTHW ch. 8): health check proxy, target pool, forwarding rule."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
from pulumi_gcp import compute

from components import bounds, remote
from components.config import TARGET_POOL_DIGEST_LENGTH, ClusterConfig
from components.machine import API_PORT
from components.render import render

# The Host header the health check sends, and the server_name nginx answers it on.
HEALTH_CHECK_HOST = "kubernetes.default.svc.cluster.local"
HEALTH_CHECK_PATH = "/healthz"
HEALTH_CHECK_PORT = 80
# Where Google's legacy health checkers come from (target pools use only these).
HEALTH_CHECK_SOURCE_RANGES = ("209.85.152.0/22", "209.85.204.0/22", "35.191.0.0/16")
# Only controllers serve the API, so only they open :80 to the checkers.
CONTROLLER_TAG = "controller"
# conf.d/*.conf is included by the stock nginx.conf of Debian and Ubuntu.
HEALTHZ_SITE_PATH = "/etc/nginx/conf.d/kthw-healthz.conf"
API_CA_FILE = "/var/lib/kubernetes/ca.pem"


def render_healthz_site(
    *,
    server_name: str = HEALTH_CHECK_HOST,
    upstream: str = f"https://127.0.0.1:{API_PORT}",
    ca_file: str = API_CA_FILE,
    tls_name: str = "kubernetes",
) -> str:
    """The nginx site relaying the health check's plain-HTTP /healthz to the local API server's TLS one.

    `tls_name` is a DNS name on the API server's certificate (KTHW's `kubernetes`): nginx verifies
    the upstream against it because the proxy target is an IP address.
    """
    return render(
        "api-frontend/healthz.conf", server_name=server_name, upstream=upstream, ca_file=ca_file, tls_name=tls_name
    )


def install_nginx_script(node: str) -> str:
    """The script that installs nginx on a controller, once."""
    return render("api-frontend/install-nginx.sh", node=node, **bounds.apt_values())


def target_pool_instances(config: ClusterConfig) -> list[str]:
    """The pool's members as GCE names them, "ZONE/NAME", straight from config so preview shows them."""
    return [f"{config.zone}/{c.name}" for c in config.controllers]


def members_digest(instance_ids: Sequence[str]) -> str:
    """A short digest of the controllers' instance ids: part of the target pool's name."""
    return hashlib.sha256("\n".join(instance_ids).encode()).hexdigest()[:TARGET_POOL_DIGEST_LENGTH]


@dataclass(frozen=True)
class ApiFrontendArgs:
    """What the front end needs: the VPC, the reserved address, and the controllers behind it."""

    config: ClusterConfig
    network: pulumi.Input[str]  # the VPC's name
    address: pulumi.Input[str]  # the static external IP
    controllers: Sequence[remote.Host]
    instances: Sequence[compute.Instance]  # the controllers' VMs
    control_plane_healthy: Sequence[pulumi.Resource]
    worker_addresses: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)  # worker -> external IP


class ApiFrontend(pulumi.ComponentResource):
    """A TCP network load balancer on the public address, spreading :6443 over healthy controllers."""

    def __init__(self, name: str, args: ApiFrontendArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kthw:index:ApiFrontend", name, None, opts)
        cfg, names = args.config, args.config.names
        # Explicit cloud names are fixed by config, so a replacement must delete the old one first.
        named = pulumi.ResourceOptions(parent=self, delete_before_replace=True)

        site = render_healthz_site()
        self.proxies: list[pulumi.Resource] = []
        for host in args.controllers:
            install = remote.run(f"{name}-{host.name}-nginx", host, install_nginx_script(host.name), parent=self)
            # nginx loads the API CA when it starts, so the proxy waits for the control plane
            # that put it there; the check is meaningless before the API server runs anyway.
            proxy = remote.deploy(
                f"{name}-{host.name}-healthz-proxy",
                host,
                parent=self,
                step="healthz-proxy",
                files=[remote.RemoteFile(HEALTHZ_SITE_PATH, site)],
                units=["nginx"],
                secret=False,  # a plain config file: keep the step's output readable
                depends_on=[install, *args.control_plane_healthy],
            )
            self.proxies.append(proxy)

        self.health_check = compute.HttpHealthCheck(
            f"{name}-health-check",
            name=names.health_check,
            description="Kubernetes Health Check",
            host=HEALTH_CHECK_HOST,
            request_path=HEALTH_CHECK_PATH,
            port=HEALTH_CHECK_PORT,
            opts=named,
        )
        self.allow_health_check = compute.Firewall(
            f"{name}-allow-health-check",
            name=names.allow_health_check,
            network=args.network,
            allows=[compute.FirewallAllowArgs(protocol="tcp", ports=[str(HEALTH_CHECK_PORT)])],
            source_ranges=list(HEALTH_CHECK_SOURCE_RANGES),
            target_tags=[CONTROLLER_TAG],
            opts=named,
        )
        # Kubelets and kube-proxies reach the API through the public address (KTHW ch. 9), and a
        # network load balancer keeps the client's source: traffic from a worker arrives from its
        # external IP, which a narrowed adminSourceRanges would drop. One rule per worker admits
        # exactly that IP, so adding a worker adds a rule and no worker waits for another's VM.
        self.worker_access: dict[str, compute.Firewall] = {
            worker: compute.Firewall(
                f"{name}-allow-api-from-{worker}",
                name=names.worker_api_firewall(worker),
                network=args.network,
                allows=[compute.FirewallAllowArgs(protocol="tcp", ports=[str(API_PORT)])],
                source_ranges=[pulumi.Output.concat(address, "/32")],
                target_tags=[CONTROLLER_TAG],
                opts=named,
            )
            for worker, address in args.worker_addresses.items()
        }
        # A pool lists its members as ZONE/NAME, and a controller replaced under the same name leaves
        # that list unchanged: the provider adds and removes only what differs between the old and
        # the new list (resourceComputeTargetPoolUpdate), while GCE drops a deleted VM from its
        # pools, so the new VM would never join. The pool's name therefore carries a digest of the
        # controllers' instance ids: a replaced controller makes a new pool with every member, the
        # forwarding rule moves to it in place (setTarget) and the old pool is deleted after, so
        # no explicit-name collision and no moment without a forwarding rule.
        members = pulumi.Output.all(*[i.instance_id for i in args.instances]).apply(
            lambda ids: members_digest([str(i) for i in ids])
        )
        self.target_pool = compute.TargetPool(
            f"{name}-target-pool",
            name=members.apply(names.target_pool_of),
            region=cfg.region,
            health_checks=self.health_check.name,
            instances=target_pool_instances(cfg),
            # The members are named from config, so the pool must wait for the VMs to exist.
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(args.instances)),
        )
        self.forwarding_rule = compute.ForwardingRule(
            f"{name}-forwarding-rule",
            name=names.forwarding_rule,
            region=cfg.region,
            ip_address=args.address,
            ip_protocol="TCP",
            load_balancing_scheme="EXTERNAL",
            port_range=str(API_PORT),
            target=self.target_pool.self_link,
            opts=named,
        )
        # What "the API answers on the public address" waits for.
        self.ready: list[pulumi.Resource] = [
            self.forwarding_rule,
            self.allow_health_check,
            *self.proxies,
        ]
        self.register_outputs(
            {
                "target_pool": self.target_pool.self_link,
                "forwarding_rule": self.forwarding_rule.self_link,
            }
        )
