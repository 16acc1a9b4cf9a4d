"""The network plane with real packets: nodes are plain network namespaces on the local cloud's bridge.

Each node is a namespace with a veth on the bridge, its internal /24, external /32 and the gateway,
like a booted instance; servers and probes are small Python processes inside the namespaces. The
firewall rules come from the program's own registrations (under the SDK mocks), so a rule changed
in components/ changes what these tests see.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from platforms.gcp import api_frontend
from tests import harness
from tests.localcloud import plane
from tests.localcloud.net import BRIDGE, GATEWAY, Namespace
from tests.localcloud.plane import ADMIN_SOURCE, HEALTH_CHECK_SOURCE, Port
from tests.tools import skip_or_fail

PYTHON = sys.executable
# Inside the namespace, an address the admin ranges below leave out.
OUTSIDER = "192.0.2.200"
ADMIN_RANGE = "192.0.2.0/28"  # holds ADMIN_SOURCE, not OUTSIDER
PROGRAM_CONFIG = {"controllerCount": "1", "workerCount": "1", "adminSourceRanges": f'["{ADMIN_RANGE}"]'}
POD_IP = "10.200.0.5"
POD = "pod"  # the pod's pseudo-node: probes and servers address it like a node
HEALTHZ, HEALTHZ_HOST = api_frontend.HEALTH_CHECK_PATH, api_frontend.HEALTH_CHECK_HOST
KINDS = {
    "gcp:compute/firewall:Firewall": "firewall",
    "gcp:compute/route:Route": "route",
    "gcp:compute/httpHealthCheck:HttpHealthCheck": "httpHealthCheck",
    "gcp:compute/targetPool:TargetPool": "targetPool",
    "gcp:compute/forwardingRule:ForwardingRule": "forwardingRule",
    "gcp:compute/instance:Instance": "instance",
}

# A node's services: `NAME PORT...` answers "NAME PEER_IP" on each TCP port; `--health PATH HOST PORT`
# answers HTTP 200 only to GET PATH with that Host header (GCE's legacy check), 404 otherwise.
SERVER = r"""
import socket, sys, threading
name, args = sys.argv[1], sys.argv[2:]
def tcp(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(64); return s
def echo(s):
    while True:
        c, peer = s.accept()
        c.sendall(f"{name} {peer[0]}\n".encode()); c.close()
def health(s, path, host):
    while True:
        c, _ = s.accept()
        head = c.recv(4096).decode(errors="replace").split("\r\n")
        seen = {h.split(":", 1)[0].lower(): h.split(":", 1)[1].strip() for h in head[1:] if ":" in h}
        ok = head[0].startswith(f"GET {path} ") and seen.get("host") == host
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok" if ok else
                  b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        c.close()
if args[0] == "--health":
    s = tcp(int(args[3])); print("ready", flush=True); health(s, args[1], args[2])
socks = [tcp(int(p)) for p in args]
for s in socks[1:]:
    threading.Thread(target=echo, args=(s,), daemon=True).start()
print("ready", flush=True)
echo(socks[0])
"""
# `HOST PORT SOURCE TIMEOUT COUNT PAUSE`: COUNT connections, one line each: "TIME REPLY" or "TIME -".
PROBE = r"""
import socket, sys, time
host, port, source, timeout, count, pause = sys.argv[1:]
for _ in range(int(count)):
    try:
        with socket.create_connection((host, int(port)), float(timeout), (source, 0) if source != "-" else None) as s:
            reply = s.recv(200).decode().strip() or "-"
    except OSError:
        reply = "-"
    print(f"{time.time():.3f} {reply}", flush=True)
    time.sleep(float(pause))
"""
# `HOST SOURCE TIMEOUT`: one ICMP echo; prints "reply" or "-".
PING = r"""
import select, socket, struct, sys, time
host, source, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
def csum(b):
    s = sum(struct.unpack(f"!{len(b)//2}H", b)); s = (s >> 16) + (s & 0xFFFF); return ~(s + (s >> 16)) & 0xFFFF
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
if source != "-":
    s.bind((source, 0))
ident = 0x4B54
head = struct.pack("!BBHHH", 8, 0, 0, ident, 1) + b"kthw"
try:
    s.sendto(struct.pack("!BBHHH", 8, 0, csum(head), ident, 1) + b"kthw", (host, 0))
except PermissionError:  # the namespace's own output hook dropped it
    print("-"); sys.exit(0)
end = time.monotonic() + timeout
while time.monotonic() < end:
    if select.select([s], [], [], end - time.monotonic())[0]:
        data, peer = s.recvfrom(1500)
        icmp = data[(data[0] & 0xF) * 4:]
        if peer[0] == host and icmp[0] == 0 and struct.unpack("!H", icmp[4:6])[0] == ident:
            print("reply"); sys.exit(0)
print("-")
"""


def _run(*argv: str, timeout: float = 30) -> str:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {result.stderr.strip()}")
    return result.stdout


@dataclass
class Node:
    """A namespace standing in for one instance: its port on the bridge and the processes it runs."""

    port: Port
    netns: str


@dataclass
class Cloud:
    """The VPC namespace (net.Namespace plus plane.internet_setup) and the nodes on its bridge."""

    ns: Namespace
    workdir: Path
    nodes: dict[str, Node] = field(default_factory=dict)
    servers: dict[tuple[str, str], subprocess.Popen[str]] = field(default_factory=dict)

    def add_node(self, name: str, internal: str, external: str, tags: tuple[str, ...]) -> Node:
        netns = f"{self.ns.name}-{len(self.nodes)}"
        bridge_port = f"vp{len(self.nodes)}"
        _run("ip", "netns", "add", netns)
        node = Node(Port(name, bridge_port, tags, internal, external), netns)
        self.nodes[name] = node
        _run(
            "ip", "-n", netns, "link", "add", "eth0", "type", "veth", "peer", "name", bridge_port, "netns", self.ns.name
        )
        self.ns.exec_ip("link", "set", bridge_port, "master", BRIDGE)
        self.ns.exec_ip("link", "set", bridge_port, "up")
        for argv in (
            ("link", "set", "lo", "up"),
            ("addr", "add", f"{internal}/24", "dev", "eth0"),
            ("addr", "add", f"{external}/32", "dev", "eth0"),
            ("link", "set", "eth0", "up"),
            ("route", "add", "default", "via", str(GATEWAY.ip), "src", internal),
        ):
            _run("ip", "-n", netns, *argv)
        return node

    def add_pod(self, worker: str, pod_ip: str) -> str:
        """A pod's namespace behind `worker`, which routes its /24 as a CNI bridge would."""
        node = self.nodes[worker]
        netns = f"{node.netns}-pod"
        gateway = str(ipaddress.ip_network(f"{pod_ip}/24", strict=False)[1])
        _run("ip", "netns", "add", netns)
        _run("ip", "-n", node.netns, "link", "add", "pod0", "type", "veth", "peer", "name", "eth0", "netns", netns)
        _run("ip", "-n", node.netns, "addr", "add", f"{gateway}/24", "dev", "pod0")
        _run("ip", "-n", node.netns, "link", "set", "pod0", "up")
        _run("ip", "netns", "exec", node.netns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for argv in (
            ("link", "set", "lo", "up"),
            ("addr", "add", f"{pod_ip}/24", "dev", "eth0"),
            ("link", "set", "eth0", "up"),
            ("route", "add", "default", "via", gateway),
        ):
            _run("ip", "-n", netns, *argv)
        return netns

    def ports(self) -> list[Port]:
        return [n.port for n in self.nodes.values() if n.port.bridge_port]

    def serve(self, where: str, key: str, *args: str) -> None:
        """Start one of SERVER's services, named `where`, in `where`'s namespace and wait until it listens."""
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.netns(where), PYTHON, "-c", SERVER, where, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.servers[where, key] = proc
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready", f"{where} {key} did not start"

    def stop_server(self, where: str, key: str) -> None:
        proc = self.servers.pop((where, key))
        proc.kill()
        proc.wait(timeout=10)

    def netns(self, where: str) -> str:
        return self.ns.name if where == "vpc" else self.nodes[where].netns if where in self.nodes else where

    def probe(self, where: str, host: str, port: int, source: str = "-", *, timeout: float = 1.0) -> str:
        """One TCP connection from `where` (a node, a pod's netns or "vpc"): the reply line, or "-"."""
        out = _run(
            "ip",
            "netns",
            "exec",
            self.netns(where),
            PYTHON,
            "-c",
            PROBE,
            host,
            str(port),
            source,
            str(timeout),
            "1",
            "0",
        )
        return out.split(" ", 1)[1].strip()

    def probes(
        self, where: str, host: str, port: int, count: int, pause: float, source: str = "-"
    ) -> list[tuple[float, str]]:
        argv = [host, str(port), source, "1", str(count), str(pause)]
        out = _run(
            "ip", "netns", "exec", self.netns(where), PYTHON, "-c", PROBE, *argv, timeout=count * (pause + 1.5) + 10
        )
        return [(float(t), r) for t, r in (line.split(" ", 1) for line in out.splitlines())]

    def ping(self, where: str, host: str, source: str = "-") -> bool:
        return _run("ip", "netns", "exec", self.netns(where), PYTHON, "-c", PING, host, source, "1").strip() == "reply"

    def apply(self, resources: dict[str, Any]) -> None:
        plane.apply(self.ns.name, resources, self.ports(), self.workdir)


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[Cloud]:
    """An empty VPC namespace set up as the internet; torn down with every node, pod and process."""
    missing = [
        tool
        for tool in ("ip", "nft", "haproxy")
        if shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None
    ]
    if missing:
        skip_or_fail(f"the network plane needs {missing}: apt-get install iproute2 nftables haproxy")
    if os.geteuid() != 0:
        skip_or_fail("the network plane needs root (network namespaces, nftables)")
    ns = Namespace(name=f"kthw-pl-{os.getpid()}").create()
    made = Cloud(ns, tmp_path)
    try:
        plane.internet_setup(ns.name)
        ns.exec_ip("addr", "add", f"{OUTSIDER}/32", "dev", "lo")
        yield made
    finally:
        try:
            plane.stop(ns.name, tmp_path)
        finally:  # even when stop fails: no namespace or process outlives the test
            for proc in made.servers.values():
                proc.kill()
                proc.wait(timeout=10)
            for node in made.nodes.values():  # a pod's namespace is listed as a node too
                if node.netns in _run("ip", "netns", "list").split():
                    _run("ip", "netns", "del", node.netns)
            ns.destroy()


def program_resources(config: dict[str, str]) -> dict[str, Any]:
    """What the gcp backend would hold after the program's registrations under the mocks: "kind/name" -> record."""
    recording = harness.cached(config)
    # Under the mocks a self link names the Pulumi resource; the gcp backend's names the GCE one.
    gce_name = {r.outputs.get("selfLink"): r.inputs["name"] for r in recording.resources if r.type in KINDS}
    out: dict[str, Any] = {}
    for rec in recording.resources:
        kind = KINDS.get(rec.type)
        if kind is None:
            continue
        inputs = dict(rec.inputs)
        if kind == "forwardingRule":
            inputs["target"] = (
                f"https://www.googleapis.com/compute/v1/projects/p/regions/r/targetPools/{gce_name[inputs['target']]}"
            )
        record: dict[str, Any] = {"id": rec.name, "inputs": inputs}
        if kind == "instance":
            record["networkInterfaces"] = rec.outputs["networkInterfaces"]
        out[f"{kind}/{inputs['name']}"] = record
    return out


def _instances(resources: dict[str, Any]) -> dict[str, tuple[str, str, tuple[str, ...]]]:
    """instance -> (internal IP, external IP, tags), as the program gave them."""
    out = {}
    for key, rec in resources.items():
        if key.startswith("instance/"):
            nic = rec["networkInterfaces"][0]
            out[key.split("/", 1)[1]] = (
                nic["networkIp"],
                nic["accessConfigs"][0]["natIp"],
                tuple(rec["inputs"]["tags"]),
            )
    return out


def _program_cloud(cloud: Cloud, config: dict[str, str], *, health: bool = False) -> dict[str, Any]:
    """The program's resources, a node per instance serving the cluster's ports, and a pod on worker-0.

    With `health`, port 80 is the legacy check's /healthz (for the Host the program names) instead of a plain echo.
    """
    resources = program_resources(config)
    for name, (internal, external, tags) in sorted(_instances(resources).items()):
        cloud.add_node(name, internal, external, tags)
        cloud.serve(name, "tcp", "22", "2379", "6443", "10250", "8080", *([] if health else ["80"]))
        if health:
            cloud.serve(name, "health", "--health", HEALTHZ, HEALTHZ_HOST, "80")
    cloud.nodes[POD] = Node(Port(POD, "", (), POD_IP, ""), cloud.add_pod("worker-0", POD_IP))
    cloud.serve(POD, "tcp", "8080")
    return resources


def test_program_rules_render_in_gce_order() -> None:
    """The deny at 900 comes before the allows at 1000, and only controllers get it (pure)."""
    resources = program_resources(PROGRAM_CONFIG)
    names = [name for name, _ in plane.firewall_rules(resources)]
    assert names[0] == "kubernetes-the-hard-way-deny-etcd-from-workers"
    ports = [
        Port(name, f"vp{i}", tags, internal, external)
        for i, (name, (internal, external, tags)) in enumerate(sorted(_instances(resources).items()))
    ]
    script = plane.render_ruleset(resources, ports)
    controller = script.split("chain to_controller_0 {")[1].split("\n  }")[0]
    worker = script.split("chain to_worker_0 {")[1].split("\n  }")[0]
    assert "deny-etcd" in controller and "deny-etcd" not in worker
    assert controller.index("deny-etcd") < controller.index("allow-internal")
    assert "allow-health-check" in controller and "allow-health-check" not in worker
    # The worker's own external IP, admitted to the API (a per-worker rule of the program).
    assert f"ip saddr {{ {ports[1].external_ip}/32 }} meta l4proto tcp th dport {{ 6443 }}" in controller


def _without(resources: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in resources.items() if k not in keys}


def test_firewall_enforces_the_programs_rules(cloud: Cloud) -> None:
    """Allowed ports connect; unlisted ports and sources do not; the etcd deny wins over allow-internal."""
    resources = _program_cloud(cloud, PROGRAM_CONFIG)
    c, w = cloud.nodes["controller-0"].port, cloud.nodes["worker-0"].port
    cloud.apply(resources)
    # From the admin's internet address (in adminSourceRanges): SSH and the API, nothing else.
    assert cloud.probe("vpc", c.external_ip, 22, ADMIN_SOURCE) == f"controller-0 {ADMIN_SOURCE}"
    assert cloud.probe("vpc", w.external_ip, 6443, ADMIN_SOURCE) == f"worker-0 {ADMIN_SOURCE}"
    assert cloud.probe("vpc", c.external_ip, 2379, ADMIN_SOURCE) == "-"
    assert cloud.probe("vpc", c.external_ip, 10250, ADMIN_SOURCE) == "-"
    # From an internet address outside adminSourceRanges: nothing.
    assert cloud.probe("vpc", c.external_ip, 22, OUTSIDER) == "-"
    # GCE's health checker: port 80 of controllers only.
    assert cloud.probe("vpc", c.internal_ip, 80, HEALTH_CHECK_SOURCE) == f"controller-0 {HEALTH_CHECK_SOURCE}"
    assert cloud.probe("vpc", w.internal_ip, 80, HEALTH_CHECK_SOURCE) == "-"
    assert cloud.probe("vpc", c.internal_ip, 22, HEALTH_CHECK_SOURCE) == "-"
    # Inside the VPC: all TCP passes except etcd's ports from workers and pods to controllers.
    assert cloud.probe("worker-0", c.internal_ip, 6443) == f"controller-0 {w.internal_ip}"
    assert cloud.probe("controller-0", w.internal_ip, 10250) == f"worker-0 {c.internal_ip}"
    assert cloud.probe("controller-0", w.internal_ip, 2379) == f"worker-0 {c.internal_ip}"
    assert cloud.probe("worker-0", c.internal_ip, 2379) == "-"
    assert cloud.probe(POD, c.internal_ip, 6443) == f"controller-0 {POD_IP}"
    assert cloud.probe(POD, c.internal_ip, 2380) == "-"
    # ICMP: from the admin and inside, not from outside the admin ranges.
    assert cloud.ping("vpc", c.external_ip, ADMIN_SOURCE)
    assert cloud.ping("worker-0", c.internal_ip)
    assert not cloud.ping("vpc", c.external_ip, OUTSIDER)
    # Dropping the deny rule (as a changed program would) opens etcd to the worker.
    cloud.apply(_without(resources, "firewall/kubernetes-the-hard-way-deny-etcd-from-workers"))
    assert cloud.probe("worker-0", c.internal_ip, 2379) == f"controller-0 {w.internal_ip}"


def test_return_traffic_of_an_allowed_connection_passes(cloud: Cloud) -> None:
    """Stateful like GCE: a controller's outgoing connection gets its replies, though no rule admits them."""
    resources = _program_cloud(cloud, PROGRAM_CONFIG)
    c = cloud.nodes["controller-0"].port
    cloud.serve("vpc", "tcp", "9000")
    cloud.apply(resources)
    assert cloud.probe("controller-0", ADMIN_SOURCE, 9000) == f"vpc {c.internal_ip}"
    # The same address and a port the controller serves, as a new connection: no rule allows it.
    assert cloud.probe("vpc", c.internal_ip, 8080, ADMIN_SOURCE) == "-"
    assert cloud.probe("vpc", c.external_ip, 8080, ADMIN_SOURCE) == "-"


def test_routes_deliver_pod_traffic_through_the_vpc(cloud: Cloud) -> None:
    """The program's Route sends the worker's pod range to the worker; without it the pod is unreachable."""
    resources = _program_cloud(cloud, PROGRAM_CONFIG)
    c = cloud.nodes["controller-0"].port
    routes = [k for k in resources if k.startswith("route/")]
    assert len(routes) == 1
    cloud.apply(_without(resources, *routes))
    assert cloud.probe("controller-0", POD_IP, 8080) == "-"
    cloud.apply(resources)
    assert cloud.probe("controller-0", POD_IP, 8080) == f"pod {c.internal_ip}"
    assert cloud.ping("controller-0", POD_IP)
    # GCE drops routed packets to an instance that may not forward.
    worker = resources["instance/worker-0"]
    no_forwarding = {
        **resources,
        "instance/worker-0": {**worker, "inputs": {**worker["inputs"], "canIpForward": False}},
    }
    cloud.apply(no_forwarding)
    assert cloud.probe("controller-0", POD_IP, 8080) == "-"
    # A default route and a host route, at their priorities: stable across applies.
    extra = {
        f"route/{name}": {
            "id": name,
            "inputs": {"name": name, "destRange": dest, "nextHopIp": "10.240.0.20", "priority": 500},
        }
        for name, dest in (("to-default", "0.0.0.0/0"), ("to-host", "10.99.0.7/32"))
    }
    cloud.apply({**resources, **extra})
    shown = [x for x in plane.leftovers(cloud.ns.name) if x.startswith("route")]
    assert (
        "route 0.0.0.0/0 via 10.240.0.20 metric 500" in shown
        and "route 10.99.0.7/32 via 10.240.0.20 metric 500" in shown
    )
    cloud.apply({**resources, **extra})
    assert [x for x in plane.leftovers(cloud.ns.name) if x.startswith("route")] == shown
    # And a removed route is gone from the namespace.
    cloud.apply(_without(resources, *routes))
    assert cloud.probe("controller-0", POD_IP, 8080) == "-"
    assert not [x for x in plane.leftovers(cloud.ns.name) if x.startswith("route")]


PROGRAM_CONFIG_HA = {**PROGRAM_CONFIG, "controllerCount": "2"}


def _lb_address(resources: dict[str, Any]) -> str:
    (rule,) = [rec["inputs"] for key, rec in resources.items() if key.startswith("forwardingRule/")]
    return str(rule["ipAddress"])


def _until(check: Any, seconds: float) -> None:
    """Poll `check()` until it is true, or fail after `seconds`."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"not true within {seconds}s: {check.__doc__ or check}"
        time.sleep(0.2)


def _fast_checks(resources: dict[str, Any], **changes: int) -> dict[str, Any]:
    """The program's resources with a user's faster health check, so a test takes seconds, not tens of them."""
    (key,) = [k for k in resources if k.startswith("httpHealthCheck/")]
    inputs = {**resources[key]["inputs"], "checkIntervalSec": 1, "timeoutSec": 1, **changes}
    return {**resources, key: {**resources[key], "inputs": inputs}}


def test_load_balancer_keeps_the_clients_address(cloud: Cloud) -> None:
    """Through the proxy the controller sees the client's own address, and the firewall judges it as on GCE."""
    resources = _fast_checks(_program_cloud(cloud, PROGRAM_CONFIG, health=True))
    lb, w = _lb_address(resources), cloud.nodes["worker-0"].port
    cloud.apply(resources)
    applied = time.monotonic()
    # As on GCE, a new backend is unhealthy until healthyThreshold checks pass.
    assert cloud.probe("vpc", lb, 6443, ADMIN_SOURCE) == "-"

    def up() -> bool:
        """the admin reaches controller-0 through the proxy"""
        return cloud.probe("vpc", lb, 6443, ADMIN_SOURCE) == f"controller-0 {ADMIN_SOURCE}"

    _until(up, 10)
    print(f"\nbackend healthy {time.monotonic() - applied:.2f} s after apply (check every 1 s, rise 2)")
    # A worker reaches the public address from its external IP (GCE's 1:1 NAT), which the program admits.
    assert cloud.probe("worker-0", lb, 6443) == f"controller-0 {w.external_ip}"
    # The proxy listens on the forwarding rule's port range only.
    assert cloud.probe("vpc", lb, 22, ADMIN_SOURCE) == "-"
    # Outside adminSourceRanges the controller's firewall drops the proxied connection.
    assert cloud.probe("vpc", lb, 6443, OUTSIDER) == "-"
    # Without the program's per-worker rule the worker's NAT IP is not admitted either.
    worker_rule = "firewall/kubernetes-the-hard-way-allow-api-from-worker-0"
    assert worker_rule in resources
    cloud.apply(_without(resources, worker_rule))
    assert cloud.probe("worker-0", lb, 6443) == "-"
    assert cloud.probe("vpc", lb, 6443, ADMIN_SOURCE) == f"controller-0 {ADMIN_SOURCE}"


def test_load_balancer_follows_the_health_check(cloud: Cloud, record_property: Any) -> None:
    """Only backends whose /healthz answers 200 get connections; a failing one is dropped within its thresholds."""
    resources = _fast_checks(_program_cloud(cloud, PROGRAM_CONFIG_HA, health=True))
    interval, fall = 1, plane.CHECK_DEFAULTS["unhealthyThreshold"]
    lb = _lb_address(resources)
    cloud.stop_server("controller-1", "health")
    cloud.apply(resources)
    _until(lambda: cloud.probe("vpc", lb, 6443, ADMIN_SOURCE).startswith("controller-0"), 10)
    seen = {r.split()[0] for _, r in cloud.probes("vpc", lb, 6443, 10, 0.05, ADMIN_SOURCE)}
    assert seen == {"controller-0"}

    cloud.serve("controller-1", "health", "--health", HEALTHZ, HEALTHZ_HOST, "80")

    def both() -> bool:
        """both controllers get connections"""
        return {r.split()[0] for _, r in cloud.probes("vpc", lb, 6443, 6, 0.05, ADMIN_SOURCE)} == {
            "controller-0",
            "controller-1",
        }

    _until(both, 10)
    cloud.stop_server("controller-0", "health")
    stopped = time.time()
    replies = cloud.probes("vpc", lb, 6443, 60, 0.05, ADMIN_SOURCE)
    last = max((t for t, r in replies if r.startswith("controller-0")), default=stopped)
    after = [r for t, r in replies if t > last]
    assert len(after) >= 10 and all(r.startswith("controller-1") for r in after), replies
    moved = last - stopped
    record_property("failover_seconds", round(moved, 2))
    print(f"\nfailover after the health server stopped: {moved:.2f} s (check every {interval} s, fall {fall})")
    # Down after `fall` failed checks: more than one interval, at most fall intervals and a timeout.
    assert (fall - 1) * interval - 0.3 <= moved <= fall * interval + 1 + 0.5
    # A reload (a changed check) keeps what the checks found: controller-0 stays out, controller-1 in.
    master = plane.proxy_pid(cloud.workdir)
    cloud.apply(_fast_checks(resources, timeoutSec=2))
    assert plane.proxy_pid(cloud.workdir) == master
    assert {r.split()[0] for _, r in cloud.probes("vpc", lb, 6443, 20, 0.05, ADMIN_SOURCE)} == {"controller-1"}


def test_apply_is_idempotent_and_an_empty_stack_leaves_nothing(cloud: Cloud) -> None:
    """Re-applying changes nothing (the proxy keeps its pid); applying no resources removes every rule, route, proxy."""
    resources = _fast_checks(_program_cloud(cloud, PROGRAM_CONFIG, health=True))
    cloud.apply(resources)
    ruleset = _run("ip", "netns", "exec", cloud.ns.name, "nft", "-s", "list", "ruleset")
    before = [x for x in plane.leftovers(cloud.ns.name) if not x.startswith("haproxy")]
    master = plane.proxy_pid(cloud.workdir)
    assert master is not None and f"haproxy pid {master}" in plane.leftovers(cloud.ns.name)
    assert {item.split()[0] for item in before} == {"nft", "route", "address"}, before
    cloud.apply(resources)
    assert [x for x in plane.leftovers(cloud.ns.name) if not x.startswith("haproxy")] == before
    assert _run("ip", "netns", "exec", cloud.ns.name, "nft", "-s", "list", "ruleset") == ruleset
    # A changed pool reloads the running proxy (same master pid) with the new members.
    lb = _lb_address(resources)
    _until(lambda: cloud.probe("vpc", lb, 6443, ADMIN_SOURCE).startswith("controller-0"), 15)
    (pool_key,) = [k for k in resources if k.startswith("targetPool/")]
    pool = resources[pool_key]
    cloud.apply({**resources, pool_key: {**pool, "inputs": {**pool["inputs"], "instances": []}}})
    assert plane.proxy_pid(cloud.workdir) == master
    assert cloud.probe("vpc", lb, 6443, ADMIN_SOURCE) == "-"
    plane.apply(cloud.ns.name, {}, [], cloud.workdir)
    # This process started it, and reaped it: no zombie (checked before another subprocess call,
    # with which Python's subprocess module would reap it anyway).
    assert not Path(f"/proc/{master}").exists()
    assert plane.leftovers(cloud.ns.name) == []
    # With no firewall the worker reaches etcd again: no rule of the old stack filters anything.
    assert cloud.probe("worker-0", cloud.nodes["controller-0"].port.internal_ip, 2379).startswith("controller-0")


def _firewall(name: str, **inputs: Any) -> tuple[str, dict[str, Any]]:
    return f"firewall/{name}", {"id": name, "inputs": {"name": name, "network": "vpc", **inputs}}


GCE_SEMANTICS = dict(
    [
        # Source tags match the tagged instance's internal IP; ports as a range.
        _firewall(
            "allow-db-to-web",
            allows=[{"protocol": "tcp", "ports": ["8000-8010"]}],
            sourceTags=["db"],
            targetTags=["web"],
        ),
        # Same priority as the allow: GCE lets the deny win.
        _firewall(
            "deny-8005",
            denies=[{"protocol": "tcp", "ports": ["8005"]}],
            sourceRanges=["10.240.0.0/24"],
            targetTags=["web"],
            priority=1000,
        ),
        # A lower priority (larger number) allows everything to db, but only when nothing above denies.
        _firewall(
            "allow-all-to-db",
            allows=[{"protocol": "all"}],
            sourceRanges=["0.0.0.0/0"],
            targetTags=["db"],
            priority=2000,
        ),
        _firewall("deny-db-9000", denies=[{"protocol": "tcp", "ports": ["9000"]}], targetTags=["db"], priority=1999),
        # A smaller number wins over that deny, whatever the verdicts.
        _firewall(
            "allow-plain-db-9000",
            allows=[{"protocol": "tcp", "ports": ["9000"]}],
            sourceRanges=["10.240.0.52/32"],
            targetTags=["db"],
            priority=500,
        ),
        _firewall("disabled-allow-all", allows=[{"protocol": "all"}], sourceRanges=["0.0.0.0/0"], disabled=True),
    ]
)


def test_rules_follow_gce_semantics(cloud: Cloud) -> None:
    """Tags, ranges, priorities (deny wins a tie), sourceless rules, disabled rules and the implied deny."""
    web = cloud.add_node("web-0", "10.240.0.50", "198.51.100.50", ("web",))
    db = cloud.add_node("db-0", "10.240.0.51", "198.51.100.51", ("db",))
    plain = cloud.add_node("plain-0", "10.240.0.52", "198.51.100.52", ())
    for name in ("web-0", "db-0", "plain-0"):
        cloud.serve(name, "tcp", "8001", "8005", "8011", "9000", "9001")
    cloud.apply(GCE_SEMANTICS)
    assert cloud.probe("db-0", web.port.internal_ip, 8001) == f"web-0 {db.port.internal_ip}"
    assert cloud.probe("db-0", web.port.internal_ip, 8011) == "-"  # outside the range
    assert cloud.probe("db-0", web.port.internal_ip, 8005) == "-"  # deny wins at equal priority
    assert cloud.probe("plain-0", web.port.internal_ip, 8001) == "-"  # no db tag
    # A source tag is the instance's internal IP, not its external one.
    assert cloud.probe("db-0", web.port.internal_ip, 8001, db.port.external_ip) == "-"
    assert cloud.probe("plain-0", db.port.internal_ip, 9001) == f"db-0 {plain.port.internal_ip}"
    assert cloud.probe("vpc", db.port.external_ip, 9001, OUTSIDER) == f"db-0 {OUTSIDER}"
    assert cloud.probe("web-0", db.port.internal_ip, 9000) == "-"  # the sourceless deny at 1999
    assert cloud.probe("plain-0", db.port.internal_ip, 9000) == f"db-0 {plain.port.internal_ip}"  # the allow at 500
    assert cloud.ping("web-0", db.port.internal_ip)  # "all" covers ICMP
    # Untagged, no rule targets it but the disabled one: the implied deny.
    assert cloud.probe("db-0", plain.port.internal_ip, 8001) == "-"
    assert not cloud.ping("db-0", plain.port.internal_ip)
    # GCE matches ingress by instance, not by address: a packet bridged to plain-0 for an address
    # it routes (as a worker routes its pods') meets plain-0's rules, here the implied deny.
    _run("ip", "-n", plain.netns, "addr", "add", "10.99.0.1/32", "dev", "lo")
    _run("ip", "-n", db.netns, "route", "add", "10.99.0.1/32", "via", plain.port.internal_ip)
    assert cloud.probe("db-0", "10.99.0.1", 8001) == "-"
    plane.apply(cloud.ns.name, {}, [], cloud.workdir)  # no instance, no rule: the path itself works
    assert cloud.probe("db-0", "10.99.0.1", 8001) == f"plain-0 {db.port.internal_ip}"


def test_haproxy_config_follows_the_programs_load_balancer() -> None:
    """The forwarding rule's address and port, the pool's members, the legacy check with GCE's defaults (pure)."""
    resources = program_resources(PROGRAM_CONFIG_HA)
    ports = [
        Port(name, f"vp{i}", tags, internal, external)
        for i, (name, (internal, external, tags)) in enumerate(sorted(_instances(resources).items()))
    ]
    config = plane.render_haproxy(resources, ports)
    assert config is not None
    assert f"bind {_lb_address(resources)}:6443\n" in config
    check = " check port 80 inter 5s rise 2 fall 2 disabled"
    assert f"server controller-0 10.240.0.10{check}\n" in config
    assert f"server controller-1 10.240.0.11{check}\n" in config
    assert "worker-0" not in config
    assert f"uri {HEALTHZ} ver HTTP/1.1 hdr Host {HEALTHZ_HOST}\n" in config
    assert "timeout check 5s" in config
    assert f"source {HEALTH_CHECK_SOURCE} usesrc clientip" in config
    # Without host and path GCE asks for "/" with the public IP as Host; without a check, no checking.
    (check_key,) = [k for k in resources if k.startswith("httpHealthCheck/")]
    bare = {**resources, check_key: {"inputs": {"name": resources[check_key]["inputs"]["name"]}}}
    assert f"uri / ver HTTP/1.1 hdr Host {_lb_address(resources)}\n" in (plane.render_haproxy(bare, ports) or "")
    unchecked = plane.render_haproxy(_without(resources, check_key), ports) or ""
    assert "server controller-0 10.240.0.10\n" in unchecked and "httpchk" not in unchecked
    assert (
        plane.render_haproxy(_without(resources, *[k for k in resources if k.startswith("forwardingRule/")]), ports)
        is None
    )
