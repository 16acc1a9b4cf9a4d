"""Control-plane bootstrap (KTHW ch. 8): units, scheduler config and health script against real tools; the wiring."""

from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml
from cryptography import x509
from pulumi_command import remote as command_remote

from components import config as config_module
from components import control_plane as cp
from components import etcd, remote
from components.config import ClusterConfig
from components.kubeconfig import encryption_config_output
from components.machine import Rejoin
from components.pki import Pki, PkiArgs
from platforms import gcp
from platforms.gcp.api_frontend import render_in_service_script, seconds_to_leave
from platforms.gcp.node import ETCD_DEVICE
from tests.harness import Recording, bundle, run_components
from tests.tools import directives, shellcheck, verify_unit

GCP = {"gcp:region": "us-west1", "gcp:zone": "us-west1-c", "gcp:project": "kthw-test"}
CONFIG = config_module.load({"controllerCount": 3, "workerCount": 1}, GCP)
CONTROLLERS = CONFIG.controllers
PUBLIC = "203.0.113.7"
UNITS: dict[str, Callable[[ClusterConfig], str]] = {
    "kube-apiserver": lambda c: cp.render_api_server_unit(c, c.controllers[0], PUBLIC),
    "kube-controller-manager": cp.render_controller_manager_unit,
    "kube-scheduler": cp.render_scheduler_unit,
    "etcd": lambda c: etcd.render_etcd_unit(c, c.controllers[0]),
}


# --- unit parsing ----------------------------------------------------------------------------------


def exec_start(unit: str) -> tuple[str, list[tuple[str, str | None]]]:
    """ExecStart's binary and its flags in order: --flag=value, --flag value, or a bare --flag (None)."""
    (command,) = directives(unit)["ExecStart"]
    binary, *tokens = shlex.split(command)
    flags: list[tuple[str, str | None]] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        assert token.startswith("--"), f"stray argument {token!r}"
        if "=" in token:
            key, _, value = token.partition("=")
            flags.append((key[2:], value))
        elif i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
            flags.append((token[2:], tokens[i + 1]))
            i += 1
        else:
            flags.append((token[2:], None))
        i += 1
    return binary, flags


def flag_dict(unit: str) -> tuple[str, dict[str, str | None]]:
    binary, flags = exec_start(unit)
    out: dict[str, str | None] = {}
    for key, value in flags:
        assert key not in out, f"--{key} given twice"
        out[key] = value
    return binary, out


# --- units -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", CONTROLLERS, ids=lambda s: s.name)
def test_api_server_unit(spec: config_module.NodeSpec) -> None:
    unit = cp.render_api_server_unit(CONFIG, spec, PUBLIC, seconds_to_leave())
    assert unit.startswith("# kthw: kube-apiserver 1.36.4\n")
    binary, flags = flag_dict(unit)
    assert binary == "/usr/local/bin/kube-apiserver"
    k8s = "/var/lib/kubernetes"
    assert flags == {
        "advertise-address": spec.internal_ip,
        "allow-privileged": "true",
        "audit-log-maxage": "30",
        "audit-log-maxbackup": "10",
        "audit-log-maxsize": "100",
        "audit-log-path": "/var/log/audit.log",
        "audit-policy-file": f"{k8s}/audit-policy.yaml",
        "authorization-mode": "Node,RBAC",
        "bind-address": "0.0.0.0",
        "client-ca-file": f"{k8s}/ca.pem",
        "enable-aggregator-routing": "true",
        "enable-admission-plugins": (
            "NamespaceLifecycle,NodeRestriction,LimitRanger,ServiceAccount,DefaultStorageClass,ResourceQuota"
        ),
        "etcd-cafile": f"{k8s}/ca.pem",
        "etcd-certfile": f"{k8s}/kubernetes.pem",
        "etcd-keyfile": f"{k8s}/kubernetes-key.pem",
        "etcd-servers": "https://10.240.0.10:2379,https://10.240.0.11:2379,https://10.240.0.12:2379",
        "event-ttl": "1h",
        "encryption-provider-config": f"{k8s}/encryption-config.yaml",
        "kubelet-certificate-authority": f"{k8s}/ca.pem",
        "kubelet-client-certificate": f"{k8s}/kubernetes.pem",
        "kubelet-client-key": f"{k8s}/kubernetes-key.pem",
        "kubelet-preferred-address-types": "InternalIP,ExternalIP,Hostname",
        "proxy-client-cert-file": f"{k8s}/front-proxy-client.pem",
        "proxy-client-key-file": f"{k8s}/front-proxy-client-key.pem",
        "requestheader-allowed-names": "front-proxy-client",
        "requestheader-client-ca-file": f"{k8s}/front-proxy-ca.pem",
        "requestheader-extra-headers-prefix": "X-Remote-Extra-",
        "requestheader-group-headers": "X-Remote-Group",
        "requestheader-username-headers": "X-Remote-User",
        "service-account-key-file": f"{k8s}/service-account.pem",
        "service-account-signing-key-file": f"{k8s}/service-account-key.pem",
        "service-account-issuer": "https://203.0.113.7:6443",
        "service-cluster-ip-range": "10.32.0.0/24",
        "service-node-port-range": "30000-32767",
        # Stopping: serve on while the pool drops it (its check relays /readyz), then no 60 s wait for watches.
        "shutdown-delay-duration": "20s",
        "shutdown-send-retry-after": "true",
        "tls-cert-file": f"{k8s}/kubernetes.pem",
        "tls-private-key-file": f"{k8s}/kubernetes-key.pem",
        "v": "2",
    }
    d = directives(unit)
    assert d["Restart"] == ["on-failure"] and d["WantedBy"] == ["multi-user.target"]


def test_a_stopping_api_server_serves_until_the_pool_has_dropped_it() -> None:
    delay = cp.shutdown_delay_seconds(CONFIG, seconds_to_leave())
    assert delay > seconds_to_leave()
    # Nothing balancing the API servers (machines, local): nothing to wait for.
    assert cp.shutdown_delay_seconds(CONFIG, 0) == 0
    # systemd's default TimeoutStopSec (90 s) must cover the delay and the drain that follows (2 s with
    # --shutdown-send-retry-after), or systemd would kill it mid-shutdown.
    assert delay + 2 < 90
    # One controller: no other backend takes its requests, so the delay would only lengthen the outage.
    single = config_module.load({"controllerCount": 1, "workerCount": 1}, GCP)
    _, flags = flag_dict(cp.render_api_server_unit(single, single.controllers[0], PUBLIC, seconds_to_leave()))
    assert flags["shutdown-delay-duration"] == "0s" and flags["shutdown-send-retry-after"] == "true"


def test_api_server_unit_refuses_a_worker_and_an_empty_address() -> None:
    with pytest.raises(ValueError, match="worker-0"):
        cp.render_api_server_unit(CONFIG, CONFIG.workers[0], PUBLIC)
    with pytest.raises(ValueError, match="public address"):
        cp.render_api_server_unit(CONFIG, CONTROLLERS[0], "")


def test_controller_manager_unit() -> None:
    unit = cp.render_controller_manager_unit(CONFIG)
    assert unit.startswith("# kthw: kube-controller-manager 1.36.4\n")
    binary, flags = flag_dict(unit)
    assert binary == "/usr/local/bin/kube-controller-manager"
    kubeconfig = "/var/lib/kubernetes/kube-controller-manager.kubeconfig"
    assert flags == {
        "bind-address": "0.0.0.0",
        "cluster-cidr": "10.200.0.0/16",
        "cluster-name": "kubernetes",
        "cluster-signing-cert-file": "/var/lib/kubernetes/ca.pem",
        "cluster-signing-key-file": "/var/lib/kubernetes/ca-key.pem",
        "kubeconfig": kubeconfig,
        "authentication-kubeconfig": kubeconfig,
        "authorization-kubeconfig": kubeconfig,
        "leader-elect": "true",
        "root-ca-file": "/var/lib/kubernetes/ca.pem",
        "service-account-private-key-file": "/var/lib/kubernetes/service-account-key.pem",
        "service-cluster-ip-range": "10.32.0.0/24",
        "use-service-account-credentials": "true",
        "v": "2",
    }
    # Routes, not the node IPAM controller, hand out pod CIDRs (KTHW ch. 11).
    assert "allocate-node-cidrs" not in flags


def test_scheduler_unit_and_config() -> None:
    unit = cp.render_scheduler_unit(CONFIG)
    assert unit.startswith("# kthw: kube-scheduler 1.36.4\n")
    kubeconfig = "/var/lib/kubernetes/kube-scheduler.kubeconfig"
    assert flag_dict(unit) == (
        "/usr/local/bin/kube-scheduler",
        {
            "config": "/etc/kubernetes/config/kube-scheduler.yaml",
            # Flags only: KubeSchedulerConfiguration has no field for them.
            "authentication-kubeconfig": kubeconfig,
            "authorization-kubeconfig": kubeconfig,
            "v": "2",
        },
    )
    assert yaml.safe_load(cp.render_scheduler_config()) == {
        "apiVersion": "kubescheduler.config.k8s.io/v1",
        "kind": "KubeSchedulerConfiguration",
        "clientConnection": {"kubeconfig": "/var/lib/kubernetes/kube-scheduler.kubeconfig"},
        "leaderElection": {"leaderElect": True},
    }


def test_config_values_flow_into_the_units() -> None:
    other = config_module.load(
        {
            "controllerCount": 1,
            "clusterCidr": "10.100.0.0/16",
            "serviceCidr": "10.96.0.0/24",
            "kubernetesVersion": "1.36.5",
        },
        GCP,
    )
    api = cp.render_api_server_unit(other, other.controllers[0], "198.51.100.9")
    _, flags = flag_dict(api)
    assert flags["etcd-servers"] == "https://10.240.0.10:2379"
    assert flags["service-cluster-ip-range"] == "10.96.0.0/24"
    assert flags["service-account-issuer"] == "https://198.51.100.9:6443"
    _, cm = flag_dict(cp.render_controller_manager_unit(other))
    assert cm["cluster-cidr"] == "10.100.0.0/16" and cm["service-cluster-ip-range"] == "10.96.0.0/24"
    for render_unit in UNITS.values():
        assert re.match(r"# kthw: [a-z-]+ (1\.36\.5|3\.6\.14)\n", render_unit(other))


@pytest.mark.parametrize("name", sorted(UNITS))
def test_systemd_analyze_verify(name: str, tmp_path: Path) -> None:
    verify_unit(name, UNITS[name](CONFIG), tmp_path)


# --- the health script -----------------------------------------------------------------------------


def scripts() -> dict[str, str]:
    return {f"healthy-{s.name}": cp.render_health_script(s) for s in CONTROLLERS}


@pytest.mark.parametrize("name", sorted(scripts()))
def test_shellcheck(name: str, tmp_path: Path) -> None:
    shellcheck(scripts()[name], tmp_path, name)


def test_health_script_checks_the_local_api_with_the_admin_kubeconfig() -> None:
    script = cp.render_health_script(CONTROLLERS[1])
    assert 'node="controller-1"' in script
    assert "units=(kube-apiserver kube-controller-manager kube-scheduler)" in script
    assert 'kubeconfig="/var/lib/kubernetes/admin.kubeconfig"' in script
    assert 'kubectl="/usr/local/bin/kubectl"' in script
    assert "timeout=300" in script
    assert "-key" not in script  # the client key stays inside the kubeconfig


def _run_health(tmp_path: Path, kubectl_answer: str, timeout: int) -> subprocess.CompletedProcess[str]:
    """healthy.sh against stand-ins: sudo runs its arguments, systemctl says active, kubectl answers as told."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stubs = {
        "sudo": 'exec "$@"',
        "systemctl": "exit 0",
        "journalctl": "echo journal-of-$2",
        "kubectl": f'echo "$@" >>{tmp_path}/kubectl.log; {kubectl_answer}',
    }
    for stub, body in stubs.items():
        (bin_dir / stub).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / stub).chmod(0o755)
    script = cp.render_health_script(
        CONTROLLERS[2], timeout_seconds=timeout, kubectl_timeout=10, kubectl=str(bin_dir / "kubectl")
    )
    path = tmp_path / "healthy.sh"
    path.write_text(script)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    return subprocess.run(["bash", str(path)], capture_output=True, text=True, env=env, timeout=60)


def test_health_script_passes_when_healthz_and_readyz_are_ok(tmp_path: Path) -> None:
    result = _run_health(tmp_path, "echo ok", 30)
    assert result.returncode == 0, result.stderr
    assert "kthw: controller-2: control-plane health:" in result.stdout
    calls = (tmp_path / "kubectl.log").read_text().splitlines()
    assert calls == [
        "--kubeconfig /var/lib/kubernetes/admin.kubeconfig --request-timeout=10s get --raw /healthz",
        "--kubeconfig /var/lib/kubernetes/admin.kubeconfig --request-timeout=10s get --raw /readyz",
    ]


def test_health_script_fails_naming_node_step_and_last_answer(tmp_path: Path) -> None:
    result = _run_health(tmp_path, 'echo "[-]etcd failed: reason withheld"; exit 1', 4)
    assert result.returncode != 0
    assert "kthw: controller-2: control-plane health: /healthz is not ok after 4s" in result.stderr
    assert "last answer: [-]etcd failed: reason withheld" in result.stderr
    assert "journal-of-kube-apiserver" in result.stderr


# --- the components under mocks -------------------------------------------------------------------


def build(cfg: ClusterConfig = CONFIG) -> Recording:
    """The real Pki, one EtcdMember and one ControlPlaneNode per controller, each on its own gate."""

    def program() -> None:
        pki = Pki(
            "pki",
            PkiArgs(
                config=cfg,
                api=gcp.api_endpoint(PUBLIC),
                worker_certificate_ips={w.name: ["198.51.100.50"] for w in cfg.workers},
            ),
        )
        hosts = {}
        for spec in cfg.controllers:
            connection = command_remote.ConnectionArgs(host=f"198.51.100.{spec.index}", user="kthw")
            gate = command_remote.Command(f"{spec.name}-gate", connection=connection, create="true")
            hosts[spec.name] = remote.Host(spec.name, connection, gate)
        # As the cluster wires them: each member (re)starts after the previous one is ready.
        members: list[etcd.EtcdMember] = []
        for spec in cfg.controllers:
            after = [members[-1].started] if members else []
            members.append(
                etcd.EtcdMember(
                    f"{spec.name}-etcd",
                    etcd.EtcdMemberArgs(
                        cfg, spec, hosts[spec.name], ca=pki.ca, server=pki.api_server, after=after, device=ETCD_DEVICE
                    ),
                )
            )
        encryption = encryption_config_output(pki.encryption_key)
        # As the cluster wires them: each control plane (re)starts after the previous one is back in the pool.
        planes: list[cp.ControlPlaneNode] = []
        proxies = {
            spec.name: command_remote.Command(
                f"{spec.name}-healthz-proxy", connection=hosts[spec.name].connection, create="true"
            )
            for spec in cfg.controllers
        }
        rejoin = Rejoin(
            proxies=proxies, in_service_script=render_in_service_script, seconds_to_leave=seconds_to_leave()
        )
        for spec in cfg.controllers:
            planes.append(
                cp.ControlPlaneNode(
                    f"{spec.name}-cp",
                    cp.ControlPlaneArgs(
                        config=cfg,
                        spec=spec,
                        host=hosts[spec.name],
                        public_address=pulumi.Output.from_input(PUBLIC),
                        pki=pki,
                        encryption_config=encryption,
                        etcd_members=[members[spec.index].started],
                        after=[p.in_service for p in planes[-1:]],
                        rejoin=rejoin,
                    ),
                )
            )

    return run_components(program)


@pytest.fixture(scope="module")
def wired() -> Recording:
    return build()


CP_STEPS = ("binaries", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "healthy", "in-service")
# The steps that restart a service.
CP_RESTARTS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")


def test_components_register_their_steps(wired: Recording) -> None:
    for spec in CONTROLLERS:
        n = spec.name
        assert wired.by_name(f"{n}-etcd").type == "kthw:index:EtcdMember"
        assert wired.by_name(f"{n}-cp").type == "kthw:index:ControlPlaneNode"
        for step in ("mount", "binaries", "etcd", "ready", "leave", "backup"):
            assert wired.by_name(f"{n}-etcd-{step}").type == "command:remote:Command"
            assert wired.by_name(f"{n}-etcd-{step}").parent == f"{n}-etcd"
        for step in CP_STEPS:
            assert wired.by_name(f"{n}-cp-{step}").type == "command:remote:Command"
            assert wired.by_name(f"{n}-cp-{step}").parent == f"{n}-cp"


@pytest.mark.parametrize("spec", CONTROLLERS, ids=lambda s: s.name)
def test_dependency_wiring(wired: Recording, spec: config_module.NodeSpec) -> None:
    n = spec.name
    every_etcd = {f"{c.name}-etcd-etcd" for c in CONTROLLERS}
    assert {f"{n}-gate"} <= wired.by_name(f"{n}-etcd-binaries").depends_on
    assert {f"{n}-gate", f"{n}-etcd-binaries", f"{n}-etcd-mount"} <= wired.by_name(f"{n}-etcd-etcd").depends_on
    # Members (re)start one at a time: each after the previous controller's member is ready again.
    previous = {f"controller-{spec.index - 1}-etcd-ready"} if spec.index else set()
    others = {a for a in wired.ancestors(f"{n}-etcd-etcd") if not a.startswith((f"{n}-", "pki"))}
    assert previous <= wired.by_name(f"{n}-etcd-etcd").depends_on
    # ... and on no controller after it.
    assert {"-".join(a.split("-")[:2]) for a in others} == {f"controller-{i}" for i in range(spec.index)}
    assert {f"{n}-etcd-etcd"} <= wired.by_name(f"{n}-etcd-ready").depends_on
    # Downloads run while etcd starts; the API server starts once its own member is healthy.
    assert not wired.ancestors(f"{n}-cp-binaries") & every_etcd
    assert {f"{n}-etcd-ready", f"{n}-cp-binaries", f"{n}-gate"} <= wired.by_name(f"{n}-cp-kube-apiserver").depends_on
    # The controller manager and scheduler start once the API server is ready (its RBAC bootstrapped).
    assert {f"{n}-cp-kube-apiserver"} <= wired.by_name(f"{n}-cp-kube-apiserver-ready").depends_on
    ready_script = wired.by_name(f"{n}-cp-kube-apiserver-ready").inputs["create"]
    assert "units=(kube-apiserver)" in ready_script and "/readyz" in ready_script
    for step in ("kube-controller-manager", "kube-scheduler"):
        assert {f"{n}-cp-binaries", f"{n}-cp-kube-apiserver-ready"} <= wired.by_name(f"{n}-cp-{step}").depends_on
    assert {f"{n}-cp-kube-apiserver", f"{n}-cp-kube-controller-manager", f"{n}-cp-kube-scheduler"} <= wired.by_name(
        f"{n}-cp-healthy"
    ).depends_on
    # Back in the load balancer's pool: after its health and its own health-check proxy.
    assert {f"{n}-cp-healthy", f"{n}-healthz-proxy"} <= wired.by_name(f"{n}-cp-in-service").depends_on
    # One controller's control plane at a time: each restart waits for the previous controller's
    # control plane to be back in the pool, and for no later controller's.
    for step in CP_RESTARTS:
        deps = wired.by_name(f"{n}-cp-{step}").depends_on
        assert ({f"controller-{spec.index - 1}-cp-in-service"} if spec.index else set()) <= deps
        later = tuple(f"{c.name}-cp-" for c in CONTROLLERS if c.index > spec.index)
        assert not [a for a in wired.ancestors(f"{n}-cp-{step}") if a.startswith(later)]
    if spec.index:
        assert f"controller-{spec.index - 1}-cp-in-service" in wired.ancestors(f"{n}-cp-healthy")


@pytest.mark.parametrize("spec", CONTROLLERS, ids=lambda s: s.name)
def test_etcd_deploy(wired: Recording, spec: config_module.NodeSpec) -> None:
    rec = wired.by_name(f"{spec.name}-etcd-etcd")
    assert "stdin" in rec.secret_paths
    files = bundle(rec)
    assert {path: mode for path, (_, mode) in files.items()} == {
        "/etc/systemd/system/etcd.service": 0o644,
        "/etc/etcd/ca.pem": 0o644,
        "/etc/etcd/kubernetes.pem": 0o644,
        "/etc/etcd/kubernetes-key.pem": 0o600,
        "/usr/local/sbin/kthw-etcd-membership": 0o755,
        "/usr/local/sbin/kthw-etcd-ready": 0o755,
        "/usr/local/sbin/kthw-etcd-leave": 0o755,
        "/usr/local/sbin/kthw-etcd-restore": 0o755,
    }
    assert files["/etc/systemd/system/etcd.service"][0] == etcd.render_etcd_unit(CONFIG, spec)
    assert files["/usr/local/sbin/kthw-etcd-membership"][0] == etcd.render_membership_script(CONFIG, spec)
    assert "PRIVATE KEY" in files["/etc/etcd/kubernetes-key.pem"][0]
    create = str(rec.inputs["create"])
    assert "--no-block" in create and "PRIVATE KEY" not in create
    assert "etcd-v3.6.14-linux-amd64.tar.gz" in str(wired.by_name(f"{spec.name}-etcd-binaries").inputs["create"])


@pytest.mark.parametrize("spec", CONTROLLERS, ids=lambda s: s.name)
def test_control_plane_deploys(wired: Recording, spec: config_module.NodeSpec) -> None:
    n, k8s = spec.name, "/var/lib/kubernetes"
    binaries = str(wired.by_name(f"{n}-cp-binaries").inputs["create"])
    for binary in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl"):
        assert f"/v1.36.4/bin/linux/amd64/{binary} " in binaries

    api = wired.by_name(f"{n}-cp-kube-apiserver")
    assert "stdin" in api.secret_paths
    files = bundle(api)
    assert {path: mode for path, (_, mode) in files.items()} == {
        "/etc/systemd/system/kube-apiserver.service": 0o644,
        f"{k8s}/ca.pem": 0o644,
        f"{k8s}/kubernetes.pem": 0o644,
        f"{k8s}/kubernetes-key.pem": 0o600,
        f"{k8s}/service-account.pem": 0o644,
        f"{k8s}/service-account-key.pem": 0o600,
        f"{k8s}/encryption-config.yaml": 0o600,
        f"{k8s}/admin.kubeconfig": 0o600,
        f"{k8s}/front-proxy-ca.pem": 0o644,
        f"{k8s}/front-proxy-client.pem": 0o644,
        f"{k8s}/front-proxy-client-key.pem": 0o600,
        f"{k8s}/audit-policy.yaml": 0o644,
    }
    assert files[f"{k8s}/audit-policy.yaml"][0] == cp.render_audit_policy(CONFIG)
    proxy_ca = x509.load_pem_x509_certificate(files[f"{k8s}/front-proxy-ca.pem"][0].encode())
    proxy_client = x509.load_pem_x509_certificate(files[f"{k8s}/front-proxy-client.pem"][0].encode())
    proxy_client.verify_directly_issued_by(proxy_ca)
    assert proxy_client.subject.rfc4514_string().startswith("CN=front-proxy-client")
    assert "PRIVATE KEY" in files[f"{k8s}/front-proxy-client-key.pem"][0]
    unit = cp.render_api_server_unit(CONFIG, spec, PUBLIC, seconds_to_leave())
    assert files["/etc/systemd/system/kube-apiserver.service"][0] == unit
    encryption = yaml.safe_load(files[f"{k8s}/encryption-config.yaml"][0])
    assert encryption["kind"] == "EncryptionConfiguration"
    admin = yaml.safe_load(files[f"{k8s}/admin.kubeconfig"][0])
    assert admin["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:6443"
    assert admin["users"][0]["name"] == "admin"
    assert "PRIVATE KEY" not in str(api.inputs["create"])

    cm_files = bundle(wired.by_name(f"{n}-cp-kube-controller-manager"))
    assert {path: mode for path, (_, mode) in cm_files.items()} == {
        "/etc/systemd/system/kube-controller-manager.service": 0o644,
        f"{k8s}/ca.pem": 0o644,
        f"{k8s}/ca-key.pem": 0o600,
        f"{k8s}/service-account-key.pem": 0o600,
        f"{k8s}/kube-controller-manager.kubeconfig": 0o600,
    }
    # The shared files carry the same content in both steps.
    assert cm_files[f"{k8s}/ca.pem"] == files[f"{k8s}/ca.pem"]
    assert cm_files[f"{k8s}/service-account-key.pem"] == files[f"{k8s}/service-account-key.pem"]
    cm = yaml.safe_load(cm_files[f"{k8s}/kube-controller-manager.kubeconfig"][0])
    assert cm["users"][0]["name"] == "system:kube-controller-manager"
    assert cm["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:6443"

    sched = wired.by_name(f"{n}-cp-kube-scheduler")
    sched_files = bundle(sched)
    assert set(sched_files) == {
        "/etc/systemd/system/kube-scheduler.service",
        "/etc/kubernetes/config/kube-scheduler.yaml",
        f"{k8s}/kube-scheduler.kubeconfig",
    }
    assert sched_files[f"{k8s}/kube-scheduler.kubeconfig"][1] == 0o600
    sk = yaml.safe_load(sched_files[f"{k8s}/kube-scheduler.kubeconfig"][0])
    assert sk["users"][0]["name"] == "system:kube-scheduler"

    healthy = wired.by_name(f"{n}-cp-healthy")
    (trigger,) = healthy.inputs["triggers"]
    assert "triggers" not in healthy.secret_paths and re.fullmatch(r"[0-9a-f]{64}", trigger)
    assert healthy.inputs["create"] == remote.capped(cp.render_health_script(spec))


def test_api_server_serves_no_alpha_apis() -> None:
    """KTHW's --runtime-config=api/all=true would switch on every alpha API: needless attack surface."""
    unit = cp.render_api_server_unit(CONFIG, CONTROLLERS[0], PUBLIC)
    assert "--runtime-config" not in unit


# --- audit logging and the aggregation layer (beyond KTHW) ------------------------------------------

AUDIT_FLAGS = {"audit-log-maxage", "audit-log-maxbackup", "audit-log-maxsize", "audit-log-path", "audit-policy-file"}
# audit.k8s.io/v1 PolicyRule's fields and GroupResources' fields; the API server refuses any other.
POLICY_RULE_FIELDS = {
    "level", "users", "userGroups", "verbs", "resources", "namespaces", "nonResourceURLs", "omitStages",
    "omitManagedFields",
}  # fmt: skip
GROUP_RESOURCES_FIELDS = {"group", "resources", "resourceNames"}


def audit_off() -> ClusterConfig:
    return config_module.load({"controllerCount": 3, "workerCount": 1, "auditLevel": "off"}, GCP)


def test_audit_off_drops_every_audit_flag_and_nothing_else() -> None:
    _, on = flag_dict(cp.render_api_server_unit(CONFIG, CONTROLLERS[0], PUBLIC))
    _, off = flag_dict(cp.render_api_server_unit(audit_off(), CONTROLLERS[0], PUBLIC))
    assert on.keys() >= AUDIT_FLAGS
    assert not [flag for flag in off if flag.startswith("audit-")]
    assert {k: v for k, v in on.items() if k not in AUDIT_FLAGS} == off
    with pytest.raises(ValueError, match="off"):
        cp.audit_policy("off")


@pytest.mark.parametrize("level", ["None", "Metadata", "Request", "RequestResponse"])
def test_audit_policy_shape(level: str) -> None:
    cfg = config_module.load({"auditLevel": level}, GCP)
    policy = yaml.safe_load(cp.render_audit_policy(cfg))
    assert (policy["apiVersion"], policy["kind"]) == ("audit.k8s.io/v1", "Policy")
    assert policy["omitStages"] == ["RequestReceived"]
    assert policy["rules"][-1] == {"level": level}  # the catch-all is the chosen level
    for rule in policy["rules"]:
        assert set(rule) <= POLICY_RULE_FIELDS, rule
        assert rule["level"] in ("None", "Metadata", "Request", "RequestResponse"), rule
        # The API server refuses a rule that names both resources and non-resource URLs.
        assert not ("resources" in rule and "nonResourceURLs" in rule), rule
        for group in rule.get("resources", []):
            assert set(group) <= GROUP_RESOURCES_FIELDS and "group" in group, rule
        assert all(verb == verb.lower() for verb in rule.get("verbs", [])), rule


def _matches(rule: dict[str, Any], request: dict[str, Any]) -> bool:
    """audit.k8s.io/v1 rule matching as the API server's policy checker does it (every given field must match)."""
    if rule.get("users") and request["user"] not in rule["users"]:
        return False
    if rule.get("userGroups") and not set(rule["userGroups"]) & set(request.get("groups", [])):
        return False
    if rule.get("verbs") and request["verb"] not in rule["verbs"]:
        return False
    if "path" in request:
        if "resources" in rule:
            return False
        urls = rule.get("nonResourceURLs")
        return urls is None or any(
            request["path"] == u or (u.endswith("*") and request["path"].startswith(u[:-1])) for u in urls
        )
    if "nonResourceURLs" in rule:
        return False
    if "resources" not in rule:
        return True
    group, resource = request["group"], request["resource"]
    return any(
        g["group"] == group and (not g.get("resources") or resource in g["resources"]) for g in rule["resources"]
    )


def audit_level_of(policy: dict[str, Any], request: dict[str, Any]) -> str:
    return next(r["level"] for r in policy["rules"] if _matches(r, request))


ADMIN = ("admin", ["system:masters"])
KUBELET = ("system:node:worker-0", ["system:nodes"])
# (user, groups, verb, API group, resource) -> the level the policy must give, or None for the catch-all.
AUDIT_CASES: list[tuple[tuple[str, list[str]], str, str, str, str | None]] = [
    # Bodies of secrets, config and tokens are never logged, whatever the catch-all.
    (ADMIN, "get", "", "secrets", "Metadata"),
    (ADMIN, "create", "", "secrets", "Metadata"),
    (ADMIN, "create", "", "configmaps", "Metadata"),
    (KUBELET, "create", "", "serviceaccounts/token", "Metadata"),
    (
        ("system:serviceaccount:kube-system:metrics-server", []),
        "create",
        "authentication.k8s.io",
        "tokenreviews",
        "Metadata",
    ),
    # Who changed RBAC, with what.
    (ADMIN, "create", "rbac.authorization.k8s.io", "clusterrolebindings", "Request"),
    (ADMIN, "delete", "rbac.authorization.k8s.io", "roles", "Request"),
    # Noise.
    (KUBELET, "update", "coordination.k8s.io", "leases", "None"),
    (("system:kube-scheduler", []), "get", "coordination.k8s.io", "leases", "None"),
    (("system:kube-proxy", []), "watch", "discovery.k8s.io", "endpointslices", "None"),
    (KUBELET, "create", "", "events", "None"),
    # The rest takes the chosen level: an RBAC read, a pod, a kubelet deleting a lease.
    (ADMIN, "get", "rbac.authorization.k8s.io", "roles", None),
    (ADMIN, "create", "", "pods", None),
    (KUBELET, "delete", "coordination.k8s.io", "leases", None),
]


@pytest.mark.parametrize("level", ["None", "Metadata", "RequestResponse"])
def test_audit_policy_levels_per_request(level: str) -> None:
    policy = cp.audit_policy(level)
    for (user, groups), verb, group, resource, want in AUDIT_CASES:
        request = {"user": user, "groups": groups, "verb": verb, "group": group, "resource": resource}
        assert audit_level_of(policy, request) == (want or level), request
    for path in ("/healthz", "/livez", "/readyz/etcd", "/version"):
        assert audit_level_of(policy, {"user": "system:anonymous", "verb": "get", "path": path}) == "None", path
    assert audit_level_of(policy, {"user": "admin", "verb": "get", "path": "/metrics"}) == level


def test_audit_off_deploys_no_policy_and_on_restarts_only_the_api_server() -> None:
    on, off = build(), build(audit_off())
    k8s = "/var/lib/kubernetes"
    for spec in CONTROLLERS:
        assert f"{k8s}/audit-policy.yaml" in bundle(on.by_name(f"{spec.name}-cp-kube-apiserver"))
        assert f"{k8s}/audit-policy.yaml" not in bundle(off.by_name(f"{spec.name}-cp-kube-apiserver"))
        # The front-proxy files stay: the aggregation layer is not tied to auditing.
        assert f"{k8s}/front-proxy-client-key.pem" in bundle(off.by_name(f"{spec.name}-cp-kube-apiserver"))
    # The policy travels in the API server's bundle: the other services' steps are the same either way.
    changed = {r.name for r in on.resources if r.inputs != off.by_name(r.name).inputs}
    steps = ("kube-apiserver", "kube-apiserver-ready", "healthy", "in-service")
    assert changed == {f"{s.name}-cp-{step}" for s in CONTROLLERS for step in steps}


def test_controller_manager_takes_no_requestheader_flags() -> None:
    """It reads the request-header CA from kube-system/extension-apiserver-authentication, as metrics-server does."""
    _, flags = flag_dict(cp.render_controller_manager_unit(CONFIG))
    assert not [f for f in flags if f.startswith(("requestheader-", "proxy-client-"))]


def test_systemd_analyze_verify_api_server_without_audit(tmp_path: Path) -> None:
    verify_unit("kube-apiserver", cp.render_api_server_unit(audit_off(), CONTROLLERS[0], PUBLIC), tmp_path)
