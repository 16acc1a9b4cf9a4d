"""A real control plane from exactly what the program renders (issue 10, tier 3).

The 3+3 program is evaluated under the mocks (real crypto); every file of the etcd, kube-apiserver,
kube-controller-manager and kube-scheduler deploy steps of each controller, and of worker-0's
kubelet and kube-proxy steps, is written under a scratch root per node; each service starts with
the ExecStart of its rendered unit, only its file paths moved into that root and its binary taken
from the source build (tests/upstream/build.py). Each node is a network namespace of its own with
its KTHW internal IP, behind a bridge inside one test namespace (tests/netns.py); controller-0
also holds the load balancer's public address, so the worker's and the stack's kubeconfigs are
used as rendered. Processes run with their node's name as hostname, and with /var/lib, /var/log
and /run as throwaway tmpfs and /proc/sys and /sys read-only, so a default path or a global
sysctl (kube-proxy's conntrack settings, the kubelet's kernel tunables) never reaches the host.

Expected stops, told apart from config errors by their exact messages:
- kubelet on a cgroup v1 host (this VM): its config validation fails with KUBELET_CGROUP_V1 as the
  only error; on a cgroup v2 host it gets further and stops at KUBELET_NO_RUNTIME (no containerd).
- kube-proxy, after it loaded and validated its config and found its Node through the API:
  KUBE_PROXY_SYSCTLS (it may not set the global conntrack sysctls here).
"""

from __future__ import annotations

import base64
import datetime
import json
import re
import shlex
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from components import artifacts, config, etcd, versions, worker
from components.addons import ENCRYPTION_PREFIX
from components.config import NodeSpec
from tests import harness, netns, upstream
from tests.netns import Lab, Process, require_ip
from tests.tools import directives

HA = {"controllerCount": "3", "workerCount": "3"}
CONTROLLERS = {"controller-0": "10.240.0.10", "controller-1": "10.240.0.11", "controller-2": "10.240.0.12"}
WORKER, WORKER_IP = "worker-0", "10.240.0.20"
OTHER_WORKER = "worker-1"
# The operator's workstation: the outer namespace's own address on the bridge.
OPERATOR = "10.240.0.254"
PREFIX = 24
CONTROL_SERVICES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
WORKER_SERVICES = ("kubelet", "kube-proxy")
STARTUP_TIMEOUT = 150
EXIT_TIMEOUT = 60
# How long one member's membership script (retried) and its ready step may take on a loaded machine.
ETCD_JOIN_TIMEOUT = 90

KUBELET_CGROUP_V1 = re.compile(
    r"failed to validate kubelet configuration, error: kubelet is configured to not run on a host using cgroup v1\. "
    r"cgroup v1 support is unsupported and will be removed in a future release, path:"
)
KUBELET_NO_RUNTIME = re.compile(
    r'validate CRI v1 runtime API for endpoint \\?"unix:///var/run/containerd/containerd\.sock'
)
KUBE_PROXY_SYSCTLS = re.compile(
    r"could not set conntrack parameters from kube-proxy configuration: .*read-only file system"
)
# Absolute paths in a flag or a config file that belong under the node's root; the look-behind keeps
# URLs (unix:///var/run/...) and base64 runs out.
_NODE_PATH = re.compile(r"(?<![\w./+-])/(?:etc|var|run)/[\w./-]*")

# Inside the node's namespaces: hostname = node name, private /var/lib, /var/log and /run, and
# read-only /proc/sys and /sys (ip netns exec mounted that sysfs for this network namespace).
SANDBOX = """set -e
echo "$1" >/proc/sys/kernel/hostname
shift
for dir in /var/lib /var/log /run; do mount -t tmpfs -o mode=0755 kthw-sandbox "$dir"; done
mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys /proc/sys
mount -o remount,bind,ro /sys /sys
exec "$@"
"""
ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


# --- the rendered files, under a root per node -----------------------------------------------------


def into_root(root: Path, text: str) -> str:
    """`text` with every node path (/etc/..., /var/..., /run/...) moved under `root`; nothing else changes."""
    return _NODE_PATH.sub(lambda m: f"{root}{m.group(0)}", text)


def deploy_step(rec: harness.Recording, node: str, service: str) -> harness.Recorded:
    """The deploy step that installs `service`'s unit on `node`."""
    unit = f"/etc/systemd/system/{service}.service"
    found = [
        r
        for r in rec.of_type("command:remote:Command")
        if f"-{node}-" in r.name and r.name.endswith(f"-{service}") and "stdin" in r.inputs
    ]
    assert len(found) == 1 and unit in harness.bundle(found[0]), f"no single deploy step of {service} on {node}"
    return found[0]


def write_bundle(files: dict[str, tuple[str, int]], root: Path) -> None:
    """Write a deploy bundle under `root`, paths inside config files moved too (PEM files as they are)."""
    for path, (content, mode) in files.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content if "-----BEGIN" in content else into_root(root, content))
        target.chmod(mode)


def unit_command(unit: str, root: Path, bin_dir: Path) -> list[str]:
    """ExecStart as argv: the built binary for /usr/local/bin/<name>, every path argument under `root`."""
    (line,) = directives(unit)["ExecStart"]
    binary, *args = shlex.split(line)
    assert binary.startswith(f"{artifacts.BIN_DIR}/"), binary
    return [str(bin_dir / Path(binary).name), *(into_root(root, arg) for arg in args)]


def prepare_state_dirs(unit: str, root: Path) -> None:
    """What systemd does for StateDirectory= before ExecStart (etcd's 0700 data dir); /var/log exists anyway."""
    found = directives(unit)
    mode = int(found.get("StateDirectoryMode", ["0755"])[0], 8)
    for name in found.get("StateDirectory", []):
        (root / "var/lib" / name).mkdir(parents=True, exist_ok=True)
        (root / "var/lib" / name).chmod(mode)
    (root / "var/log").mkdir(parents=True, exist_ok=True)


def test_into_root_moves_node_paths_and_nothing_else() -> None:
    root = Path("/tmp/r")
    assert into_root(root, "--data-dir=/var/lib/etcd") == "--data-dir=/tmp/r/var/lib/etcd"
    assert into_root(root, "kubeconfig: /var/lib/kube-proxy/kubeconfig\n") == (
        "kubeconfig: /tmp/r/var/lib/kube-proxy/kubeconfig\n"
    )
    for untouched in (
        "https://10.240.0.10:2379,https://127.0.0.1:2379",
        "containerRuntimeEndpoint: unix:///var/run/containerd/containerd.sock",
        "client-key-data: LS0tLS1CRUdJTi/etc/var/x==",
        "--service-cluster-ip-range=10.32.0.0/24",
    ):
        assert into_root(root, untouched) == untouched


def test_unit_command_is_the_exec_start_with_paths_moved() -> None:
    unit = "[Service]\nExecStart=/usr/local/bin/etcd \\\n  --name controller-0 \\\n  --data-dir=/var/lib/etcd\n"
    assert unit_command(unit, Path("/r"), Path("/bin-dir")) == [
        "/bin-dir/etcd",
        "--name",
        "controller-0",
        "--data-dir=/r/var/lib/etcd",
    ]


def test_a_missing_ip_tool_fails_under_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netns, "find_tool", lambda _name: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="iproute2"):
        require_ip()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="iproute2"):
        require_ip()


# --- the running control plane ---------------------------------------------------------------------


@dataclass
class Plane:
    """The lab, every node's root and process, the built binaries, and what startup took."""

    lab: Lab
    rec: harness.Recording
    work: Path
    k8s_bin: Path
    etcd_bin: Path
    public_address: str
    roots: dict[str, Path] = field(default_factory=dict)
    processes: dict[tuple[str, str], Process] = field(default_factory=dict)
    startup_seconds: float = 0.0
    unready: list[str] = field(default_factory=list)  # what startup waited for in vain

    def kubectl(
        self, node: str | None, kubeconfig: Path, *args: str, stdin: str | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        argv = [str(self.k8s_bin / "kubectl"), f"--kubeconfig={kubeconfig}", f"--cache-dir={self.work}/kube-cache"]
        return self.lab.run(node, [*argv, "--request-timeout=20s", *args], stdin=stdin.encode() if stdin else None)

    def admin(self, node: str = "controller-0") -> Path:
        """The admin kubeconfig a controller holds (server https://127.0.0.1:6443), as rendered."""
        return self.roots[node] / "var/lib/kubernetes/admin.kubeconfig"

    def dead(self) -> str:
        """Every control-plane process that has exited, with its log tail: context for any failure."""
        gone = [p.describe(5) for (node, _), p in self.processes.items() if node in CONTROLLERS and not p.alive()]
        return "\n\n".join(gone) or "every control-plane process is running"

    def start(self, node: str, service: str, unit: str, bin_dir: Path, env: Sequence[str] = ()) -> Process:
        """Start the unit's ExecStart in the node's sandbox; `env`: what its EnvironmentFile= holds."""
        root = self.roots[node]
        prepare_state_dirs(unit, root)
        argv = ["unshare", "--uts", "--mount", "--propagation", "private", "sh", "-c", SANDBOX, "sandbox", node]
        argv += unit_command(unit, root, bin_dir)
        process = self.lab.start(
            f"{node}/{service}", node, ["env", "-i", *_env(), *env, *argv], self.work / f"{node}-{service}.log"
        )
        self.processes[(node, service)] = process
        return process


def etcd_script(plane: Plane, node: str, path: str) -> Path:
    """One of etcd's rendered scripts under the node's root, its etcdctl the built one."""
    script = plane.roots[node] / path.lstrip("/")
    script.write_text(script.read_text().replace(etcd.ETCDCTL, str(plane.etcd_bin / "etcdctl")))
    return script


def start_etcd(plane: Plane, node: str, unit: str) -> Process:
    """etcd as systemd starts it: RuntimeDirectory=, ExecStartPre= (retried as Restart= would), the
    EnvironmentFile= it wrote, ExecStart=; then the deploy's ready step, which the next member waits for."""
    root = plane.roots[node]
    found = directives(unit)
    (runtime,) = found["RuntimeDirectory"]
    (root / "run" / runtime).mkdir(parents=True, exist_ok=True)
    (pre,) = found["ExecStartPre"]
    membership = etcd_script(plane, node, pre)
    deadline = time.monotonic() + ETCD_JOIN_TIMEOUT
    while True:
        result = plane.lab.run(node, ["env", "-i", *_env(), "bash", str(membership)], timeout=ETCD_JOIN_TIMEOUT)
        if result.returncode == 0:
            break
        assert time.monotonic() < deadline, f"{node}: ExecStartPre failed: {result.stderr.decode()[-2000:]}"
        time.sleep(1)  # RestartSec, shortened
    (env_file,) = found["EnvironmentFile"]
    written = (root / env_file.lstrip("-").lstrip("/")).read_text().split()
    assert any(line.startswith("ETCD_INITIAL_CLUSTER_STATE=") for line in written), written
    process = plane.start(node, "etcd", unit, plane.etcd_bin, env=written)
    ready = etcd_script(plane, node, etcd.READY_SCRIPT)
    result = plane.lab.run(
        node,
        ["env", "-i", *_env(), f"KTHW_ETCD_READY_TIMEOUT={ETCD_JOIN_TIMEOUT}", "bash", str(ready)],
        timeout=ETCD_JOIN_TIMEOUT + 30,
    )
    assert result.returncode == 0, f"{node}: etcd ready step: {result.stderr.decode()[-2000:]}\n{process.describe(20)}"
    return process


def _env() -> list[str]:
    return [f"{k}={v}" for k, v in ENV.items()]


def _wait(plane: Plane, what: str, check: Callable[[], bool], watched: list[Process], timeout: float) -> None:
    """Poll `check` until it holds; give up early when a watched process exits (tests then say which)."""
    start = time.monotonic()
    while time.monotonic() < start + timeout:
        if check():
            return
        if any(not p.alive() for p in watched):
            break
        time.sleep(0.5)
    plane.unready.append(f"{what} not ready after {time.monotonic() - start:.0f} s")


def _ok(result: subprocess.CompletedProcess[bytes]) -> bool:
    return result.returncode == 0


def _report(request: pytest.FixtureRequest, line: str) -> None:
    """A line on the terminal even while pytest captures output: the tier's timings."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(line)


@pytest.fixture(scope="module")
def plane(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    """Start the whole control plane once for the module; tear it down, namespaces and all, whatever happens."""
    module_start = time.monotonic()
    require_ip()
    k8s_bin, etcd_bin = upstream.require("kubernetes"), upstream.require("etcd")
    rec = harness.cached(HA)
    work = tmp_path_factory.mktemp("real-control-plane")
    lab = Lab()
    plane = Plane(lab, rec, work, k8s_bin, etcd_bin, str(rec.outputs["kubernetes_public_address"]))
    try:
        lab.add_bridge_address(f"{OPERATOR}/{PREFIX}")
        for node, ip in [*CONTROLLERS.items(), (WORKER, WORKER_IP)]:
            lab.add_node(node, f"{ip}/{PREFIX}")
            plane.roots[node] = work / node
        # controller-0 stands in for the load balancer: the public address lives only in the lab.
        lab.add_address("controller-0", f"{plane.public_address}/32")
        lab.add_route(None, f"{plane.public_address}/32", CONTROLLERS["controller-0"])
        lab.add_route(WORKER, f"{plane.public_address}/32", CONTROLLERS["controller-0"])

        units: dict[tuple[str, str], str] = {}
        for node in CONTROLLERS:
            for service in CONTROL_SERVICES:
                files = harness.bundle(deploy_step(rec, node, service))
                write_bundle(files, plane.roots[node])
                units[(node, service)] = files[f"/etc/systemd/system/{service}.service"][0]
        for service in WORKER_SERVICES:
            files = harness.bundle(deploy_step(rec, WORKER, service))
            write_bundle(files, plane.roots[WORKER])
            units[(WORKER, service)] = files[f"/etc/systemd/system/{service}.service"][0]

        start = time.monotonic()
        # As the chained etcd steps do it: controller i starts once controller i-1's ready step
        # passed; each start runs the unit's ExecStartPre (the membership script: found, or
        # `member add` and join) and each member's ready script promotes it if it joined as a learner.
        members = [start_etcd(plane, node, units[(node, "etcd")]) for node in CONTROLLERS]
        _wait(plane, "etcd", lambda: all(_ok(etcd_health(plane, node)) for node in CONTROLLERS), members, 60)
        for node in CONTROLLERS:
            plane.start(node, "kube-apiserver", units[(node, "kube-apiserver")], k8s_bin)
        control = [p for (node, _), p in plane.processes.items() if node in CONTROLLERS]
        _wait(
            plane,
            "API servers",
            lambda: all(_ok(plane.kubectl(n, plane.admin(n), "get", "--raw", "/readyz")) for n in CONTROLLERS),
            control,
            STARTUP_TIMEOUT,
        )
        # Only now: started earlier, kube-controller-manager exits (status 1) because the RBAC
        # binding that lets it read extension-apiserver-authentication does not exist yet; on a
        # node, the unit's Restart=on-failure retries it 5 s later.
        for node in CONTROLLERS:
            for service in ("kube-controller-manager", "kube-scheduler"):
                plane.start(node, service, units[(node, service)], k8s_bin)
        control = [p for (node, _), p in plane.processes.items() if node in CONTROLLERS]
        _wait(plane, "leases", lambda: all(lease_holder(plane, name) for name in LEASES), control, 60)
        plane.startup_seconds = time.monotonic() - start
        _report(request, f"\nreal control plane: started in {plane.startup_seconds:.1f} s")

        yield plane
    finally:
        lab.close()
        _report(request, f"\nreal control plane: module took {time.monotonic() - module_start:.1f} s")


def etcd_health(plane: Plane, node: str) -> subprocess.CompletedProcess[bytes]:
    return plane.lab.run(node, etcdctl(plane, node, "endpoint", "health"))


def etcdctl(plane: Plane, node: str, *args: str) -> list[str]:
    """etcdctl on the node's own member over mutual TLS, with the certificates its etcd step installed."""
    etc = plane.roots[node] / "etc/etcd"
    return [
        str(plane.etcd_bin / "etcdctl"),
        "--endpoints=https://127.0.0.1:2379",
        f"--cacert={etc}/ca.pem",
        f"--cert={etc}/kubernetes.pem",
        f"--key={etc}/kubernetes-key.pem",
        "--command-timeout=10s",
        *args,
    ]


LEASES = ("kube-controller-manager", "kube-scheduler")


def get_system(plane: Plane, kind: str, name: str, output: str) -> subprocess.CompletedProcess[bytes]:
    """`kubectl -n kube-system get KIND NAME -o OUTPUT` as the admin on controller-0."""
    return plane.kubectl("controller-0", plane.admin(), "-n", "kube-system", "get", kind, name, "-o", output)


def lease_holder(plane: Plane, name: str) -> str:
    result = get_system(plane, "lease", name, "jsonpath={.spec.holderIdentity}")
    return result.stdout.decode().strip() if result.returncode == 0 else ""


def _text(result: subprocess.CompletedProcess[bytes]) -> str:
    return (result.stdout + result.stderr).decode(errors="replace")


# What a binary says about a flag or config field it does not know; the kubelet only warns about an
# unknown field ("Using lenient decoding as strict decoding failed"), so a typo would go unnoticed.
REFUSALS = ("unknown flag", "flag provided but not defined", "strict decoding error", "unknown field")


def _refusals(process: Process) -> list[str]:
    log = process.log.read_text(errors="replace")
    return [line for line in log.splitlines() if any(r in line for r in REFUSALS)]


# --- every binary takes its flags and files -------------------------------------------------------


@pytest.mark.parametrize("service", CONTROL_SERVICES)
@pytest.mark.parametrize("node", sorted(CONTROLLERS))
def test_every_service_accepts_its_flags_and_files(plane: Plane, node: str, service: str) -> None:
    process = plane.processes[(node, service)]
    assert process.alive(), process.describe()
    assert not _refusals(process), process.describe()


@pytest.mark.parametrize("service", ["kube-controller-manager", "kube-scheduler"])
def test_secure_ports_delegate_authentication_and_authorization(plane: Plane, service: str) -> None:
    """Without --authentication-kubeconfig and --authorization-kubeconfig they serve, but cannot check callers."""
    for node in CONTROLLERS:
        log = plane.processes[(node, service)].log.read_text(errors="replace")
        assert not re.findall(r"No authenticat\w+-kubeconfig provided.*|No authoriz\w+-kubeconfig provided.*", log)


def test_startup_is_time_boxed(plane: Plane) -> None:
    assert not plane.unready, f"{plane.unready}\n{plane.dead()}"
    assert 0 < plane.startup_seconds < STARTUP_TIMEOUT


def test_etcd_members_form_one_cluster(plane: Plane) -> None:
    for node in CONTROLLERS:
        result = plane.lab.run(node, etcdctl(plane, node, "member", "list", "-w", "json"))
        assert result.returncode == 0, _text(result) + plane.dead()
        members = json.loads(result.stdout)["members"]
        assert sorted(m["name"] for m in members) == sorted(CONTROLLERS)
        assert sorted(u for m in members for u in m["clientURLs"]) == [
            f"https://{ip}:2379" for ip in CONTROLLERS.values()
        ]


# --- the API servers --------------------------------------------------------------------------------


@pytest.mark.parametrize("node", sorted(CONTROLLERS))
@pytest.mark.parametrize("endpoint", ["/livez", "/readyz"])
def test_health_endpoints(plane: Plane, node: str, endpoint: str) -> None:
    # As the health check runs it: the controller's own admin kubeconfig, to 127.0.0.1.
    local = plane.kubectl(node, plane.admin(node), "get", "--raw", endpoint)
    assert local.returncode == 0 and local.stdout.decode().strip() == "ok", _text(local) + plane.dead()
    # From the operator's address, to the controller's internal IP: that IP must be in the serving cert.
    remote = plane.kubectl(
        None, plane.admin(node), f"--server=https://{CONTROLLERS[node]}:6443", "get", "--raw", endpoint
    )
    assert remote.returncode == 0 and remote.stdout.decode().strip() == "ok", _text(remote) + plane.dead()


@pytest.mark.parametrize("name", LEASES)
def test_controller_manager_and_scheduler_hold_their_leases(plane: Plane, name: str) -> None:
    holder = lease_holder(plane, name)
    # The holder identity starts with the hostname, which each node's processes see as their node's name.
    assert re.match(r"controller-[0-2]_", holder), f"lease {name} has holder {holder!r}\n{plane.dead()}"


def test_admin_kubeconfig_reports_the_version(plane: Plane) -> None:
    result = plane.kubectl("controller-0", plane.admin(), "get", "--raw", "/version")
    assert result.returncode == 0, _text(result) + plane.dead()
    assert json.loads(result.stdout)["gitVersion"] == f"v{versions.KUBERNETES}"


def test_service_range_is_the_configured_one(plane: Plane) -> None:
    """Every API server got --service-cluster-ip-range from config: the default ServiceCIDR and the service IP."""
    cidr = plane.kubectl("controller-0", plane.admin(), "get", "servicecidr", "kubernetes", "-o", "json")
    assert cidr.returncode == 0, _text(cidr) + plane.dead()
    assert json.loads(cidr.stdout)["spec"]["cidrs"] == ["10.32.0.0/24"]
    service = plane.kubectl("controller-0", plane.admin(), "get", "service", "kubernetes", "-o", "json")
    assert service.returncode == 0, _text(service)
    assert json.loads(service.stdout)["spec"]["clusterIP"] == "10.32.0.1"


def test_stack_admin_kubeconfig_works_through_the_public_address(plane: Plane) -> None:
    """The exported admin_kubeconfig, as a user gets it: server = the public address, in the serving cert."""
    kubeconfig = plane.work / "stack-admin.kubeconfig"
    kubeconfig.write_text(str(plane.rec.outputs["admin_kubeconfig"]))
    assert f"https://{plane.public_address}:6443" in kubeconfig.read_text()
    result = plane.kubectl(None, kubeconfig, "get", "--raw", "/version")
    assert result.returncode == 0, _text(result) + plane.dead()
    assert json.loads(result.stdout)["gitVersion"] == f"v{versions.KUBERNETES}"


@pytest.mark.parametrize("addon", ["rbac", "coredns"])
def test_addon_manifests_are_accepted_server_side(plane: Plane, addon: str) -> None:
    (step,) = [r for r in plane.rec.of_type("command:remote:Command") if r.name.endswith(f"-addons-{addon}")]
    manifest = str(step.inputs["stdin"])
    result = plane.kubectl("controller-0", plane.admin(), "apply", "--server-side", "-f", "-", stdin=manifest)
    assert result.returncode == 0, _text(result) + plane.dead()
    applied = [line for line in result.stdout.decode().splitlines() if line.strip()]
    assert len(applied) == len(list(yaml.safe_load_all(manifest))), applied
    assert all(line.endswith("serverside-applied") for line in applied), applied


def test_secret_is_encrypted_in_etcd(plane: Plane) -> None:
    """Written through controller-0's API server, read raw from controller-2's member over mTLS."""
    created = plane.kubectl(
        "controller-0", plane.admin(), "create", "secret", "generic", "kthw-real", "--from-literal=key=plain-value"
    )
    assert created.returncode == 0, _text(created) + plane.dead()
    stored = plane.lab.run(
        "controller-2",
        etcdctl(plane, "controller-2", "get", "/registry/secrets/default/kthw-real", "--print-value-only"),
    )
    assert stored.returncode == 0, _text(stored)
    assert stored.stdout.startswith(ENCRYPTION_PREFIX.encode()), f"stored as {stored.stdout[:40]!r}..."
    assert b"plain-value" not in stored.stdout


# --- identities ------------------------------------------------------------------------------------


def _node(name: str) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "status": {
                "addresses": [{"type": "InternalIP", "address": WORKER_IP if name == WORKER else "10.240.0.21"}]
            },
        }
    )


@pytest.fixture(scope="module")
def kubelet_identity(plane: Plane) -> Path:
    """worker-0's kubelet kubeconfig as its deploy step wrote it (server = the public address)."""
    return plane.roots[WORKER] / "var/lib/kubelet/kubeconfig"


@pytest.fixture(scope="module")
def worker_node(plane: Plane, kubelet_identity: Path) -> subprocess.CompletedProcess[bytes]:
    """worker-0 registers its own Node, as its kubelet would."""
    return plane.kubectl(WORKER, kubelet_identity, "create", "-f", "-", stdin=_node(WORKER))


def test_kubelet_identity_may_register_and_read_its_own_node(
    plane: Plane, kubelet_identity: Path, worker_node: subprocess.CompletedProcess[bytes]
) -> None:
    assert worker_node.returncode == 0, _text(worker_node) + plane.dead()
    got = plane.kubectl(WORKER, kubelet_identity, "get", "node", WORKER, "-o", "jsonpath={.metadata.name}")
    assert got.returncode == 0 and got.stdout.decode() == WORKER, _text(got)
    whoami = plane.kubectl(WORKER, kubelet_identity, "auth", "whoami", "-o", "json")
    assert whoami.returncode == 0, _text(whoami)
    user = json.loads(whoami.stdout)["status"]["userInfo"]
    assert user["username"] == f"system:node:{WORKER}" and "system:nodes" in user["groups"], user


def test_kubelet_identity_is_refused_another_nodes_objects(
    plane: Plane, kubelet_identity: Path, worker_node: subprocess.CompletedProcess[bytes]
) -> None:
    other = plane.kubectl(WORKER, kubelet_identity, "create", "-f", "-", stdin=_node(OTHER_WORKER))
    assert other.returncode != 0 and "forbidden" in _text(other).lower(), _text(other)
    # The other node, once it exists, is not worker-0's to change.
    made = plane.kubectl("controller-0", plane.admin(), "create", "-f", "-", stdin=_node(OTHER_WORKER))
    assert made.returncode == 0, _text(made)
    label = plane.kubectl(WORKER, kubelet_identity, "label", "node", OTHER_WORKER, "kthw=taken")
    assert label.returncode != 0 and "forbidden" in _text(label).lower(), _text(label)
    # The Node authorizer itself, not admission: no secret unless a pod on this node uses it.
    secret = plane.kubectl(WORKER, kubelet_identity, "auth", "can-i", "get", "secrets/kthw-any", "-n", "kube-system")
    assert secret.returncode != 0 and secret.stdout.decode().startswith("no"), _text(secret)
    own = plane.kubectl(WORKER, kubelet_identity, "auth", "can-i", "patch", f"nodes/{WORKER}", "--subresource=status")
    assert own.stdout.decode().strip() == "yes", _text(own)


def _foreign_kubeconfig(plane: Plane) -> str:
    """The admin kubeconfig with a client certificate from a CA the cluster never saw (same names)."""
    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str, org: str) -> x509.Name:
        return x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)]
        )

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("Kubernetes", "Kubernetes"))
        .issuer_name(name("Kubernetes", "Kubernetes"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("admin", "system:masters"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    doc = yaml.safe_load(plane.admin().read_text())
    doc["users"][0]["user"] = {
        "client-certificate-data": base64.b64encode(cert.public_bytes(serialization.Encoding.PEM)).decode(),
        "client-key-data": base64.b64encode(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        ).decode(),
    }
    return yaml.safe_dump(doc)


def test_client_certificate_from_another_ca_is_refused(plane: Plane) -> None:
    kubeconfig = plane.work / "foreign.kubeconfig"
    kubeconfig.write_text(_foreign_kubeconfig(plane))
    kubeconfig.chmod(0o600)
    refused = plane.kubectl("controller-0", kubeconfig, "get", "--raw", "/api/v1/namespaces")
    assert refused.returncode != 0 and "Unauthorized" in _text(refused), _text(refused)
    allowed = plane.kubectl("controller-0", plane.admin(), "get", "--raw", "/api/v1/namespaces")
    assert allowed.returncode == 0, _text(allowed)


# --- the worker's binaries on their rendered files ---------------------------------------------------


def _run_until_exit(plane: Plane, service: str, ready: re.Pattern[str] | None = None) -> Process:
    """Start a worker service from its rendered unit and wait for it to stop (or for `ready` in its log)."""
    files = harness.bundle(deploy_step(plane.rec, WORKER, service))
    process = plane.start(WORKER, service, files[f"/etc/systemd/system/{service}.service"][0], plane.k8s_bin)
    deadline = time.monotonic() + EXIT_TIMEOUT
    while process.alive() and time.monotonic() < deadline:
        if ready is not None and ready.search(process.log.read_text(errors="replace")):
            break
        time.sleep(0.5)
    return process


def test_kubelet_accepts_its_flags_and_config(plane: Plane) -> None:
    process = _run_until_exit(plane, "kubelet")
    log = process.log.read_text(errors="replace")
    assert not _refusals(process), _refusals(process)
    expected = KUBELET_CGROUP_V1.search(log) or KUBELET_NO_RUNTIME.search(log)
    assert not process.alive() and expected, f"kubelet did not stop for an expected reason:\n{process.describe()}"


def test_kube_proxy_accepts_its_config_and_finds_its_node(
    plane: Plane, worker_node: subprocess.CompletedProcess[bytes]
) -> None:
    assert worker_node.returncode == 0, _text(worker_node)
    process = _run_until_exit(plane, "kube-proxy")
    log = process.log.read_text(errors="replace")
    assert not _refusals(process), _refusals(process)
    # Through its rendered kubeconfig (public address) it read its Node: config, identity and API all worked.
    assert re.search(rf'Successfully retrieved NodeIPs.*NodeIPs=\["{WORKER_IP}"\]', log), process.describe()
    assert not process.alive() and KUBE_PROXY_SYSCTLS.search(log), process.describe()


# --- day-one features: audit, aggregation, metrics-server -----------------------------------------


def test_audit_log_records_requests_without_secret_bodies(plane: Plane) -> None:
    """The rendered policy loads and records: a secret's creation at Metadata, never its data."""
    created = plane.kubectl(
        "controller-0", plane.admin(), "create", "secret", "generic", "kthw-audited", "--from-literal=key=audit-value"
    )
    assert created.returncode == 0, _text(created) + plane.dead()
    log = plane.roots["controller-0"] / "var/log/audit.log"
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not events:
        lines = log.read_text().splitlines() if log.exists() else []
        events = [e for e in map(json.loads, lines) if e.get("objectRef", {}).get("name") == "kthw-audited"]
        time.sleep(0.5)
    assert events, f"no audit event for secret kthw-audited in {log}"
    create = [e for e in events if e["verb"] == "create"]
    assert create and all(e["level"] == "Metadata" for e in create), create
    assert "audit-value" not in log.read_text()
    assert all("requestObject" not in e for e in events)


def test_front_proxy_is_published_for_aggregated_apis(plane: Plane) -> None:
    """The API server publishes the request-header CA and allowed names that aggregated APIs trust."""
    result = get_system(plane, "configmap", "extension-apiserver-authentication", "json")
    assert result.returncode == 0, _text(result) + plane.dead()
    data = json.loads(result.stdout)["data"]
    assert json.loads(data["requestheader-allowed-names"]) == ["front-proxy-client"]
    assert json.loads(data["requestheader-username-headers"]) == ["X-Remote-User"]
    front_proxy_ca = (plane.roots["controller-0"] / "var/lib/kubernetes/front-proxy-ca.pem").read_text()
    cluster_ca = (plane.roots["controller-0"] / "var/lib/kubernetes/ca.pem").read_text()
    assert data["requestheader-client-ca-file"].strip() == front_proxy_ca.strip()
    assert data["client-ca-file"].strip() == cluster_ca.strip()


def test_metrics_server_manifests_are_accepted_server_side(plane: Plane) -> None:
    """The add-on's Secret, RBAC, Deployment and APIService, validated by the real API server."""
    step = plane.rec.by_name("kthw-addons-metrics-server")
    manifest = str(step.inputs["stdin"])
    kinds = {doc["kind"] for doc in yaml.safe_load_all(manifest) if doc}
    assert {"Deployment", "APIService", "Secret"} <= kinds, kinds
    result = plane.kubectl(
        "controller-0", plane.admin(), "apply", "--server-side", "--dry-run=server", "-f", "-", stdin=manifest
    )
    assert result.returncode == 0, _text(result) + plane.dead()
    assert "apiservice.apiregistration.k8s.io/v1beta1.metrics.k8s.io serverside-applied" in result.stdout.decode()


# --- rolling changes: a worker's drain and uncordon steps against the real API server --------------

# Workers of a larger stack, whose Nodes only these tests create (no kubelet runs for them).
ROLLING = config.load(
    {"controllerCount": "3", "workerCount": "6"},
    {"gcp:region": "us-west1", "gcp:zone": "us-west1-c", "gcp:project": "kthw-test"},
)
FIRST, SECOND, NEVER = ROLLING.workers[3], ROLLING.workers[4], ROLLING.workers[5]


def rollout(
    plane: Plane, spec: NodeSpec, action: str, fingerprint: str, *, turn: int = 600, drain: int = 20
) -> subprocess.CompletedProcess[str]:
    """The rendered drain or uncordon step, run on controller-0 as the step does, with short bounds."""
    kubectl = f"{plane.k8s_bin}/kubectl --kubeconfig {plane.admin()} --cache-dir={plane.work}/kube-cache"
    script = worker.render_rollout_script(
        ROLLING, spec, action, fingerprint, kubectl=kubectl, drain_seconds=drain, turn_seconds=turn, kubectl_timeout=10
    )
    result = plane.lab.run("controller-0", ["env", "-i", *_env(), "bash", "-c", script], timeout=turn + drain + 120)
    return subprocess.CompletedProcess(result.args, result.returncode, result.stdout.decode(), result.stderr.decode())


def node_state(plane: Plane, name: str) -> tuple[str, str, str]:
    """(spec.unschedulable, the applied annotation, the cordoned annotation) of a Node."""
    out = plane.kubectl(
        "controller-0",
        plane.admin(),
        "get",
        "node",
        name,
        "-o",
        "jsonpath={.spec.unschedulable}|{.metadata.annotations.kthw/applied}|{.metadata.annotations.kthw/cordoned}",
    )
    assert out.returncode == 0, _text(out)
    unschedulable, applied, cordoned = out.stdout.decode().split("|")
    return unschedulable, applied, cordoned


def slot_holders(plane: Plane) -> dict[str, str]:
    out = plane.kubectl(
        "controller-0",
        plane.admin(),
        "-n",
        worker.SLOT_NAMESPACE,
        "get",
        "leases",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}={.spec.holderIdentity} {end}",
    )
    assert out.returncode == 0, _text(out)
    pairs = (item.split("=", 1) for item in out.stdout.decode().split())
    return {name: holder for name, holder in pairs if name.startswith(worker.SLOT_PREFIX)}


@pytest.fixture(scope="module")
def rolling_nodes(plane: Plane) -> list[str]:
    names = [FIRST.name, SECOND.name]
    for name in names:
        made = plane.kubectl("controller-0", plane.admin(), "create", "-f", "-", stdin=_node(name))
        assert made.returncode == 0, _text(made)
    return names


def test_a_worker_that_is_not_registered_yet_is_not_drained(plane: Plane) -> None:
    result = rollout(plane, NEVER, "drain", "a" * 64)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"kthw: {NEVER.name}: drain: not registered yet (a new worker): nothing to drain\n"
    assert slot_holders(plane).get(f"{worker.SLOT_PREFIX}0", "") == ""


def test_workers_take_turns_and_a_finished_one_is_left_alone(plane: Plane, rolling_nodes: list[str]) -> None:
    first = rollout(plane, FIRST, "drain", "a" * 64)
    assert first.returncode == 0, first.stderr
    assert first.stdout == f"kthw: {FIRST.name}: drain: cordoned and drained (upgrade slot {worker.SLOT_PREFIX}0)\n"
    assert node_state(plane, FIRST.name) == ("true", "", "true")
    assert slot_holders(plane) == {f"{worker.SLOT_PREFIX}0": FIRST.name}
    # Re-entrant: the same worker's drain again (a retried `pulumi up`) keeps its slot.
    assert rollout(plane, FIRST, "drain", "a" * 64).returncode == 0
    # One slot: the second worker waits, and gives up when nothing moves for a whole turn.
    began = time.monotonic()
    second = rollout(plane, SECOND, "drain", "a" * 64, turn=6)
    assert second.returncode == 1
    assert 6 <= time.monotonic() - began < 60
    assert f"no upgrade slot came free within 6s: held by {FIRST.name} ({worker.SLOT_PREFIX}0, since " in second.stderr
    assert node_state(plane, SECOND.name) == ("", "", "")
    # The first one's turn ends: schedulable again, its configuration recorded, the slot free.
    done = rollout(plane, FIRST, "uncordon", "a" * 64)
    assert done.returncode == 0, done.stderr
    assert node_state(plane, FIRST.name) == ("", "a" * 64, "")
    assert slot_holders(plane) == {f"{worker.SLOT_PREFIX}0": ""}
    # Now the second one gets the slot.
    second = rollout(plane, SECOND, "drain", "a" * 64)
    assert second.returncode == 0, second.stderr
    assert slot_holders(plane) == {f"{worker.SLOT_PREFIX}0": SECOND.name}
    assert rollout(plane, SECOND, "uncordon", "a" * 64).returncode == 0
    # A worker that already runs this configuration (its drain re-run for nothing) is not drained again.
    again = rollout(plane, FIRST, "drain", "a" * 64)
    assert again.stdout == f"kthw: {FIRST.name}: drain: already runs this configuration: nothing to drain\n"
    assert node_state(plane, FIRST.name) == ("", "a" * 64, "")


def test_a_drain_blocked_by_a_budget_fails_naming_the_pod_and_keeps_the_node_out(
    plane: Plane, rolling_nodes: list[str]
) -> None:
    name = FIRST.name
    labels = {"app": "kthw-blocker"}
    objects = json.dumps(
        {
            "apiVersion": "v1",
            "kind": "List",
            "items": [
                {
                    "apiVersion": "policy/v1",
                    "kind": "PodDisruptionBudget",
                    "metadata": {"name": "kthw-blocker", "namespace": "default"},
                    "spec": {"minAvailable": 1, "selector": {"matchLabels": labels}},
                },
                {
                    # One replica bound to the node (a bare pod would make drain refuse at once).
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "metadata": {"name": "kthw-blocker", "namespace": "default"},
                    "spec": {
                        "replicas": 1,
                        "selector": {"matchLabels": labels},
                        "template": {
                            "metadata": {"labels": labels},
                            "spec": {"nodeName": name, "containers": [{"name": "c", "image": "pause"}]},
                        },
                    },
                },
            ],
        }
    )
    made = plane.kubectl("controller-0", plane.admin(), "create", "-f", "-", stdin=objects)
    assert made.returncode == 0, _text(made)

    def get(*args: str) -> str:
        return plane.kubectl("controller-0", plane.admin(), "get", *args).stdout.decode()

    try:
        deadline = time.monotonic() + 60
        pod = ""
        while not pod:
            assert time.monotonic() < deadline, "the ReplicaSet made no pod"
            time.sleep(0.5)
            pod = get("pods", "-l", "app=kthw-blocker", "-o", "jsonpath={.items[0].metadata.name}")
        # No kubelet runs there: report the pod running and ready as one would, so the budget (one
        # of one must stay available) allows no eviction.
        status = {"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}
        patch = ["patch", "pod", pod, "--subresource=status", "--type=merge", "-p", json.dumps(status)]
        patched = plane.kubectl("controller-0", plane.admin(), *patch)
        assert patched.returncode == 0, _text(patched)
        budget = ""
        while budget != "1/0":
            assert time.monotonic() < deadline, f"the budget never counted the pod: {budget}"
            time.sleep(0.5)
            budget = get("pdb", "kthw-blocker", "-o", "jsonpath={.status.currentHealthy}/{.status.disruptionsAllowed}")

        result = rollout(plane, FIRST, "drain", "b" * 64, drain=8)
        assert result.returncode == 1
        assert f"kthw: {name}: drain: could not drain {name} within 8s; it stays cordoned" in result.stderr
        assert f"Pods still on it: default/{pod}[Running]" in result.stderr
        assert "PodDisruptionBudgets allowing no disruption: default/kthw-blocker" in result.stderr
        assert node_state(plane, name) == ("true", "a" * 64, "true")
        assert slot_holders(plane) == {f"{worker.SLOT_PREFIX}0": name}
    finally:
        plane.kubectl("controller-0", plane.admin(), "delete", "-f", "-", "--wait=false", stdin=objects)
        plane.kubectl(
            "controller-0", plane.admin(), "delete", "pods", "-l", "app=kthw-blocker", "--grace-period=0", "--force"
        )
    # Once the pod is gone, the retried step finishes the turn.
    retried = rollout(plane, FIRST, "drain", "b" * 64)
    assert retried.returncode == 0, retried.stderr
    assert rollout(plane, FIRST, "uncordon", "b" * 64).returncode == 0
    assert node_state(plane, name) == ("", "b" * 64, "")


def test_an_admins_cordon_outlives_the_turn(plane: Plane, rolling_nodes: list[str]) -> None:
    name = SECOND.name
    assert plane.kubectl("controller-0", plane.admin(), "cordon", name).returncode == 0
    try:
        assert rollout(plane, SECOND, "drain", "c" * 64).returncode == 0
        assert node_state(plane, name) == ("true", "a" * 64, "")
        done = rollout(plane, SECOND, "uncordon", "c" * 64)
        assert done.returncode == 0, done.stderr
        assert "left cordoned: someone else cordoned it" in done.stdout
        assert node_state(plane, name) == ("true", "c" * 64, "")
    finally:
        plane.kubectl("controller-0", plane.admin(), "uncordon", name)


def test_the_slot_of_a_holder_that_is_gone_is_taken_over_after_it_expires(
    plane: Plane, rolling_nodes: list[str]
) -> None:
    assert rollout(plane, FIRST, "drain", "d" * 64, turn=4).returncode == 0
    # Its worker is removed from the cluster mid-turn: the slot stays held until the lease expires.
    assert plane.kubectl("controller-0", plane.admin(), "delete", "node", FIRST.name).returncode == 0
    time.sleep(5)
    taken = rollout(plane, SECOND, "drain", "d" * 64, turn=4)
    assert taken.returncode == 0, taken.stderr
    assert slot_holders(plane) == {f"{worker.SLOT_PREFIX}0": SECOND.name}
    assert rollout(plane, SECOND, "uncordon", "d" * 64).returncode == 0
