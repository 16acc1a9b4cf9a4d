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
# What nginx asks the API server when the check asks for /healthz: /readyz fails as soon as an API
# server begins to shut down (--shutdown-delay-duration) while it still serves, and until a
# starting one is ready, so the pool stops and starts sending it requests at the right moments.
UPSTREAM_HEALTH_PATH = "/readyz"
# GCE's defaults for a legacy HTTP health check, which the check below keeps: one probe every
# interval, each given the timeout; a backend leaves the pool after UNHEALTHY_THRESHOLD failures in
# a row and comes back after HEALTHY_THRESHOLD successes.
CHECK_INTERVAL_SECONDS = 5
CHECK_TIMEOUT_SECONDS = 5
HEALTHY_THRESHOLD = 2
UNHEALTHY_THRESHOLD = 2
# Where Google's legacy health checkers come from (target pools use only these).
HEALTH_CHECK_SOURCE_RANGES = ("209.85.152.0/22", "209.85.204.0/22", "35.191.0.0/16")
# Only controllers serve the API, so only they open :80 to the checkers.
CONTROLLER_TAG = "controller"
# conf.d/*.conf is included by the stock nginx.conf of Debian and Ubuntu.
HEALTHZ_SITE_PATH = "/etc/nginx/conf.d/kthw-healthz.conf"
# The cluster CA nginx verifies the API server with: its own copy, so the proxy needs no control plane
# step before it (and one controller's proxy, and so its health, never waits for another's).
API_CA_FILE = "/etc/nginx/kthw-api-ca.pem"


def seconds_to_leave() -> int:
    """The longest a failing backend stays in the pool: the failed probes in a row, the last one timing out."""
    return UNHEALTHY_THRESHOLD * CHECK_INTERVAL_SECONDS + CHECK_TIMEOUT_SECONDS


def seconds_to_join() -> int:
    """How long a backend must answer healthy before the pool surely sends it requests again.

    The successes in a row, each one interval apart, plus one interval for where in its period the
    first probe falls.
    """
    return HEALTHY_THRESHOLD * CHECK_INTERVAL_SECONDS + CHECK_INTERVAL_SECONDS


def render_healthz_site(
    *,
    server_name: str = HEALTH_CHECK_HOST,
    upstream: str = f"https://127.0.0.1:{API_PORT}",
    ca_file: str = API_CA_FILE,
    tls_name: str = "kubernetes",
) -> str:
    """The nginx site relaying the health check's plain-HTTP /healthz to the local API server's TLS /readyz.

    `tls_name` is a DNS name on the API server's certificate (KTHW's `kubernetes`): nginx verifies
    the upstream against it because the proxy target is an IP address.
    """
    return render(
        "api-frontend/healthz.conf",
        server_name=server_name,
        path=HEALTH_CHECK_PATH,
        upstream=upstream,
        upstream_path=UPSTREAM_HEALTH_PATH,
        ca_file=ca_file,
        tls_name=tls_name,
    )


def render_in_service_script(
    node: str,
    *,
    url: str = f"http://127.0.0.1:{HEALTH_CHECK_PORT}{HEALTH_CHECK_PATH}",
    hold_seconds: int | None = None,
    timeout_seconds: int = bounds.IN_SERVICE_SECONDS,
) -> str:
    """in-service.sh: wait until the health check, asked as the load balancer asks it, has answered ok
    long enough for the pool to send this controller requests again (keywords for tests)."""
    return render(
        "api-frontend/in-service.sh",
        node=node,
        url=url,
        host=HEALTH_CHECK_HOST,
        hold_seconds=seconds_to_join() if hold_seconds is None else hold_seconds,
        timeout_seconds=timeout_seconds,
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
    ca_cert: pulumi.Input[str]  # the cluster CA, which nginx verifies the API server with
    worker_addresses: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)  # worker -> external IP


class ApiFrontend(pulumi.ComponentResource):
    """A TCP network load balancer on the public address, spreading :6443 over healthy controllers."""

    def __init__(self, name: str, args: ApiFrontendArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kthw:index:ApiFrontend", name, None, opts)
        cfg, names = args.config, args.config.names
        # Explicit cloud names are fixed by config, so a replacement must delete the old one first.
        named = pulumi.ResourceOptions(parent=self, delete_before_replace=True)

        site = render_healthz_site()
        # One per controller, in controller order: each controller's control plane waits on its own
        # before the next controller restarts (ControlPlaneNode's in-service step).
        self.proxies: list[pulumi.Resource] = []
        for host in args.controllers:
            install = remote.run(f"{name}-{host.name}-nginx", host, install_nginx_script(host.name), parent=self)
            # nginx loads the CA as it starts: the CA travels with the site. Until the API server
            # answers, the check fails, which is what the pool should see.
            proxy = remote.deploy(
                f"{name}-{host.name}-healthz-proxy",
                host,
                parent=self,
                step="healthz-proxy",
                files=[remote.RemoteFile(HEALTHZ_SITE_PATH, site), remote.RemoteFile(API_CA_FILE, args.ca_cert)],
                units=["nginx"],
                secret=False,  # a config file and a certificate: keep the step's output readable
                depends_on=[install],
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
