"""Machines you already have: the program reaches them over SSH and does on them what GCP's network would.

KTHW's current edition runs on four Debian machines listed in one file; here they are
`kthw:machines`, each with its role, SSH address and internal IP. What a VPC gives a GCE cluster
the machines do themselves: each node routes the other workers' pod subnets (KTHW ch. 11, by
hand in that edition), and the API's address is the one you give (a load balancer you run in
front of the controllers, `kthw:apiAddress`) or the first controller's.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from pathlib import Path

import pulumi
from pulumi_command import remote as command_remote

from components import bounds, remote, ssh_gate
from components.config import ClusterConfig, NodeSpec, SshTarget
from components.machine import ApiEndpoint, FrontEnd, Machine
from components.render import render

TEMPLATES = Path(__file__).parent / "templates"
ROUTES_SCRIPT = "/usr/local/sbin/kthw-pod-routes"
ROUTES_UNIT = "/etc/systemd/system/kthw-pod-routes.service"
# The routing protocol number the pod routes carry (any of 5-254 unused by the system): the script
# removes a route with it that config no longer lists, and leaves every other route alone.
ROUTES_PROTO = 199
# Machines are up already: a host that does not answer fails its gate after this many dials.
DIAL_ATTEMPTS = 10
PER_DIAL_TIMEOUT = 15


def fingerprint(config: ClusterConfig, spec: NodeSpec) -> str:
    """Nothing the program controls replaces or restarts a machine you own."""
    return ""


def pod_routes(config: ClusterConfig, spec: NodeSpec) -> list[tuple[str, str]]:
    """(subnet, via) for every worker's pod subnet but this node's own, in worker order."""
    return [(str(w.pod_cidr), w.internal_ip) for w in config.workers if w.name != spec.name]


def render_routes_script(config: ClusterConfig, spec: NodeSpec) -> str:
    routes = "\n".join(f"{subnet} {via}" for subnet, via in pod_routes(config, spec))
    return render(TEMPLATES / "pod-routes.sh", node=spec.name, proto=ROUTES_PROTO, routes=routes)


def render_routes_unit() -> str:
    return render(TEMPLATES / "kthw-pod-routes.service", script=ROUTES_SCRIPT)


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def api_endpoint(config: ClusterConfig) -> ApiEndpoint:
    """The given load balancer's address; else the first controller, by its internal IP for the nodes
    and by the address the program reaches it at for the admin."""
    first = config.controllers[0]
    given = config.api_address
    outside = given or config.ssh_targets[first.name].host
    node_address = given or first.internal_ip
    extra = sorted({node_address, outside} - {first.internal_ip})
    return ApiEndpoint(
        node_address=node_address,
        public_address=outside,
        certificate_ips=[a for a in extra if _is_ip(a)],
        certificate_dns=[a for a in extra if not _is_ip(a)],
    )


def connection(target: SshTarget, private_key: pulumi.Input[str]) -> command_remote.ConnectionArgs:
    """SSH to a machine that should answer now: a bounded number of dials, each bounded."""
    return command_remote.ConnectionArgs(
        host=target.host,
        port=target.port,
        user=target.user,
        private_key=private_key,
        dial_error_limit=DIAL_ATTEMPTS,
        per_dial_timeout=PER_DIAL_TIMEOUT,
    )


class MachineSetup:
    """What every machine the program does not create gets: its SSH gate and its pod routes."""

    def __init__(self, name: str, config: ClusterConfig, parent: pulumi.Resource) -> None:
        self._name, self._config, self._parent = name, config, parent
        self.routes: list[pulumi.Resource] = []

    def attach(
        self,
        spec: NodeSpec,
        conn: command_remote.ConnectionArgs,
        *,
        triggers: Sequence[pulumi.Input[object]] = (),
        depends_on: Sequence[pulumi.Resource] = (),
        fingerprint: str = "",
        pace: int = bounds.CLOUD_PACE,
    ) -> Machine:
        """Gate the machine reachable at `conn` and route the other workers' pod subnets on it."""
        gate = ssh_gate.gate(
            f"{self._name}-{spec.name}-ssh-ready",
            conn,
            spec.name,
            triggers=list(triggers),
            depends_on=depends_on,
            parent=self._parent,
        )
        host = remote.Host(name=spec.name, connection=conn, ready=gate, pace=pace)
        routes_files = [
            remote.RemoteFile(ROUTES_SCRIPT, render_routes_script(self._config, spec), 0o755),
            remote.RemoteFile(ROUTES_UNIT, render_routes_unit()),
        ]
        self.routes.append(
            remote.deploy(
                f"{self._name}-{spec.name}-pod-routes",
                host,
                parent=self._parent,
                step="pod-routes",
                files=routes_files,
                units=["kthw-pod-routes"],
                secret=False,
            )
        )
        return Machine(spec=spec, host=host, fingerprint=fingerprint)


class MachinesPlatform:
    """Your machines: the key you give, the addresses you list, pod routes on every node."""

    def __init__(self, name: str, config: ClusterConfig, parent: pulumi.Resource) -> None:
        self._config = config
        self._setup = MachineSetup(name, config, parent)
        self.api = api_endpoint(config)
        self.ssh_private_key: pulumi.Output[str] = pulumi.Output.secret(
            pulumi.Config("kthw").require_secret("sshPrivateKey")
        )

    def machine(self, spec: NodeSpec, after: Sequence[pulumi.Resource] = ()) -> Machine:
        target = self._config.ssh_targets[spec.name]
        return self._setup.attach(spec, connection(target, self.ssh_private_key), triggers=[target.host])

    def front_end(self, controllers: Sequence[Machine], ca_cert: pulumi.Input[str]) -> FrontEnd:
        # The API's address is yours (a load balancer) or a controller's own: nothing to build.
        return FrontEnd()

    def network_ready(self) -> Sequence[pulumi.Resource]:
        return list(self._setup.routes)

    def backup_bucket(self) -> str | None:
        return None
