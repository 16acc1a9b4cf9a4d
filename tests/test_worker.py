"""Worker bootstrap (KTHW ch. 9): rendered configs, units and scripts, checked with real tools, and the wiring."""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pulumi
import pytest
import yaml
from pulumi_command import remote as command_remote

from components import bounds, remote, versions, worker
from components import config as config_module
from components.config import ClusterConfig, NodeSpec
from components.pki import CertPair
from tests import upstream
from tests.harness import Recording, bundle, run_components
from tests.tools import directives, shellcheck, skip_or_fail, verify_unit

GCP = {"gcp:region": "us-west1", "gcp:zone": "us-west1-c", "gcp:project": "kthw-test"}
CONFIG = config_module.load({"controllerCount": 3, "workerCount": 3}, GCP)
WORKERS = CONFIG.workers
UNITS = {
    "containerd": worker.render_containerd_unit,
    "kubelet": lambda cfg: worker.render_kubelet_unit(cfg, cfg.workers[0]),
    "kube-proxy": worker.render_kube_proxy_unit,
}


def test_three_workers_with_kthw_pod_cidrs() -> None:
    assert [(w.name, w.internal_ip, w.pod_cidr) for w in WORKERS] == [
        ("worker-0", "10.240.0.20", "10.200.0.0/24"),
        ("worker-1", "10.240.0.21", "10.200.1.0/24"),
        ("worker-2", "10.240.0.22", "10.200.2.0/24"),
    ]


# --- configs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", WORKERS, ids=lambda s: s.name)
def test_kubelet_config(spec: NodeSpec) -> None:
    conf = yaml.safe_load(worker.render_kubelet_config(CONFIG, spec))
    assert conf["apiVersion"] == "kubelet.config.k8s.io/v1beta1"
    assert conf["kind"] == "KubeletConfiguration"
    assert conf["podCIDR"] == spec.pod_cidr
    assert conf["clusterDNS"] == ["10.32.0.10"]
    assert conf["clusterDomain"] == "cluster.local"
    assert conf["authentication"] == {
        "anonymous": {"enabled": False},
        "webhook": {"enabled": True},
        "x509": {"clientCAFile": "/var/lib/kubernetes/ca.pem"},
    }
    assert conf["authorization"] == {"mode": "Webhook"}
    assert conf["tlsCertFile"] == "/var/lib/kubelet/kubelet.pem"
    assert conf["tlsPrivateKeyFile"] == "/var/lib/kubelet/kubelet-key.pem"
    assert conf["cgroupDriver"] == "systemd"
    assert conf["containerRuntimeEndpoint"] == "unix:///run/containerd/containerd.sock"
    assert conf["runtimeRequestTimeout"] == "15m"
    assert conf["registerNode"] is True
    assert conf["resolvConf"] == worker.RESOLV_CONF


def test_kubelet_config_refuses_a_controller() -> None:
    with pytest.raises(ValueError, match="controller-0 is not a worker"):
        worker.render_kubelet_config(CONFIG, CONFIG.controllers[0])


@pytest.mark.parametrize("spec", WORKERS, ids=lambda s: s.name)
def test_kube_proxy_config(spec: NodeSpec) -> None:
    conf = yaml.safe_load(worker.render_kube_proxy_config(CONFIG, spec))
    assert conf == {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": "/var/lib/kube-proxy/kubeconfig"},
        "hostnameOverride": spec.name,
        "mode": "iptables",
        "clusterCIDR": "10.200.0.0/16",
    }


@pytest.mark.parametrize("spec", WORKERS, ids=lambda s: s.name)
def test_node_name_is_the_specs_not_the_hostname(spec: NodeSpec) -> None:
    """kubelet and kube-proxy name their Node after NodeSpec.name, the name on the kubelet's certificate."""
    _, flags = exec_start(worker.render_kubelet_unit(CONFIG, spec))
    assert flags["hostname-override"] == spec.name
    assert yaml.safe_load(worker.render_kube_proxy_config(CONFIG, spec))["hostnameOverride"] == spec.name
    # Whatever the name is, it is taken from the spec as given, not rebuilt from the index.
    renamed = NodeSpec("kthw-dev-worker-7", "worker", 7, "10.240.0.27", "e2-small", "10.200.7.0/24")
    assert exec_start(worker.render_kubelet_unit(CONFIG, renamed))[1]["hostname-override"] == "kthw-dev-worker-7"
    assert yaml.safe_load(worker.render_kube_proxy_config(CONFIG, renamed))["hostnameOverride"] == "kthw-dev-worker-7"


def test_kube_proxy_mode_has_its_package() -> None:
    """kube-proxy's iptables mode needs the iptables binary, which Debian 12 does not install by default."""
    assert worker.kube_proxy_config(CONFIG, WORKERS[0])["mode"] == "iptables"
    assert "iptables" in worker.PACKAGES
    assert "packages=(socat conntrack ipset iptables)" in worker.render_prepare_script(WORKERS[0])


@pytest.mark.parametrize("spec", WORKERS, ids=lambda s: s.name)
def test_cni_conflist(spec: NodeSpec) -> None:
    conf = json.loads(worker.render_cni_conflist(spec))
    assert set(conf) == {"cniVersion", "name", "plugins"}, "a network list, not a single-plugin conf"
    assert conf["cniVersion"] == "1.0.0"
    # The old bridge conf's network name: host-local's leases of running pods carry over an upgrade.
    assert conf["name"] == "bridge"
    bridge, portmap = conf["plugins"]
    assert bridge == {
        "type": "bridge",
        "bridge": "cni0",
        "isGateway": True,
        "ipMasq": True,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": spec.pod_cidr}]], "routes": [{"dst": "0.0.0.0/0"}]},
    }
    assert portmap == {"type": "portmap", "capabilities": {"portMappings": True}}
    # containerd runs the loopback plugin itself for every sandbox; a list entry for it would be wrong.
    assert "loopback" not in [p["type"] for p in conf["plugins"]]
    # Each plugin in the chain (and its IPAM, and containerd's loopback) must be a binary in bin_dirs.
    assert {p["type"] for p in conf["plugins"]} | {bridge["ipam"]["type"], "loopback"} == set(
        worker.CNI_REQUIRED_BINARIES
    )


def test_cni_conflist_is_the_first_file_containerd_reads() -> None:
    """containerd loads the lexically first file in conf_dir; ours beats the old files and common names."""
    assert worker.CNI_CONFLIST.endswith(".conflist")
    others = [*worker.CNI_OBSOLETE_CONFS, "/etc/cni/net.d/10-containerd-net.conflist", "/etc/cni/net.d/10-bridge.conf"]
    assert sorted([worker.CNI_CONFLIST, *others])[0] == worker.CNI_CONFLIST
    assert set(worker.CNI_OBSOLETE_CONFS) == {"/etc/cni/net.d/10-bridge.conf", "/etc/cni/net.d/99-loopback.conf"}


def test_crictl_config() -> None:
    assert yaml.safe_load(worker.render_crictl_config()) == {
        "runtime-endpoint": "unix:///run/containerd/containerd.sock",
        "image-endpoint": "unix:///run/containerd/containerd.sock",
        "timeout": 10,
        "debug": False,
    }
    # crictl and the kubelet talk to the same socket.
    kubelet = worker.kubelet_config(CONFIG, WORKERS[0])
    assert kubelet["containerRuntimeEndpoint"] == worker.crictl_config()["runtime-endpoint"]


def test_containerd_config() -> None:
    conf = tomllib.loads(worker.render_containerd_config())
    assert conf["version"] == 3
    plugins = conf["plugins"]
    assert plugins["io.containerd.cri.v1.images"]["snapshotter"] == "overlayfs"
    runtime = plugins["io.containerd.cri.v1.runtime"]
    assert runtime["containerd"]["default_runtime_name"] == "runc"
    runc = runtime["containerd"]["runtimes"]["runc"]
    assert runc["runtime_type"] == "io.containerd.runc.v2"
    assert runc["options"] == {"BinaryName": "/usr/local/bin/runc", "SystemdCgroup": True}
    assert runtime["cni"] == {"bin_dirs": ["/opt/cni/bin"], "conf_dir": "/etc/cni/net.d"}
    assert plugins["io.containerd.cri.v1.images"]["registry"] == {"config_path": "/etc/containerd/certs.d"}


MIRRORED = config_module.load(
    {
        "controllerCount": 1,
        "workerCount": 2,
        "registryMirrors": {"registry.k8s.io": "http://10.240.0.2:5000", "10.9.8.7:5000": "https://cache.example/v/"},
    },
    {"gcp:region": "us-west1", "gcp:zone": "us-west1-c", "gcp:project": "kthw-test"},
)


def test_hosts_toml_pulls_through_the_mirror() -> None:
    k8s = tomllib.loads(worker.render_hosts_toml("registry.k8s.io", "http://10.240.0.2:5000"))
    assert k8s == {
        "server": "https://registry.k8s.io",
        "host": {"http://10.240.0.2:5000": {"capabilities": ["pull", "resolve"]}},
    }
    # Docker Hub's API lives at registry-1.docker.io, not at the name images use.
    hub = tomllib.loads(worker.render_hosts_toml("docker.io", "https://hub-cache.example"))
    assert hub["server"] == "https://registry-1.docker.io"
    assert list(hub["host"]) == ["https://hub-cache.example"]


def test_registry_files_follow_config() -> None:
    files = {f.path: f.content for f in worker.registry_files(MIRRORED)}
    assert set(files) == {
        "/etc/containerd/certs.d/registry.k8s.io/hosts.toml",
        "/etc/containerd/certs.d/10.9.8.7:5000/hosts.toml",
    }
    custom = tomllib.loads(str(files["/etc/containerd/certs.d/10.9.8.7:5000/hosts.toml"]))
    assert custom["server"] == "https://10.9.8.7:5000"
    assert list(custom["host"]) == ["https://cache.example/v"]  # the trailing slash is dropped
    # Only the known registry without a mirror is cleaned up; a mirrored one is not.
    assert worker.obsolete_registry_files(MIRRORED) == ("/etc/containerd/certs.d/docker.io/hosts.toml",)
    assert worker.registry_files(CONFIG) == []


def test_registry_mirrors_ship_in_the_containerd_bundle_only() -> None:
    """A mirror change reaches containerd's deploy, so it restarts containerd and nothing else."""
    plain, mirrored = _build(config_module.load({"controllerCount": 1, "workerCount": 2}, GCP)), _build(MIRRORED)
    for spec in MIRRORED.workers:
        files = bundle(mirrored.by_name(f"{spec.name}-containerd"))
        hosts = files["/etc/containerd/certs.d/registry.k8s.io/hosts.toml"]
        assert hosts == (worker.render_hosts_toml("registry.k8s.io", "http://10.240.0.2:5000"), 0o644)
        assert "/etc/containerd/certs.d/10.9.8.7:5000/hosts.toml" in files
        script = str(mirrored.by_name(f"{spec.name}-containerd").inputs["create"])
        assert "/etc/containerd/certs.d/registry.k8s.io/hosts.toml\nOBSOLETE" not in script
        for step in ("kubelet", "kube-proxy", "binaries", "prepare"):
            before, after = plain.by_name(f"{spec.name}-{step}"), mirrored.by_name(f"{spec.name}-{step}")
            assert before.inputs == after.inputs, step
        assert plain.by_name(f"{spec.name}-containerd").inputs != mirrored.by_name(f"{spec.name}-containerd").inputs


def test_containerd_reads_the_config(tmp_path: Path) -> None:
    """The pinned containerd, built from source, loads the rendered version-3 config as it is."""
    binary = upstream.require("containerd") / "containerd"
    version = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=True).stdout
    assert f" v{versions.CONTAINERD} " in version + " ", version
    path = tmp_path / "config.toml"
    path.write_text(worker.render_containerd_config())
    dump = subprocess.run(
        [str(binary), "--config", str(path), "config", "dump"], capture_output=True, text=True, timeout=30
    )
    assert dump.returncode == 0, dump.stderr
    dumped = tomllib.loads(dump.stdout)
    runtime = dumped["plugins"]["io.containerd.cri.v1.runtime"]
    assert runtime["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] is True
    assert runtime["containerd"]["runtimes"]["runc"]["options"]["BinaryName"] == "/usr/local/bin/runc"
    assert runtime["cni"]["bin_dirs"] == ["/opt/cni/bin"]
    assert runtime["cni"]["conf_dir"] == "/etc/cni/net.d"
    # Image pulls look for each registry's hosts.toml (kthw:registryMirrors) there.
    assert dumped["plugins"]["io.containerd.cri.v1.images"]["registry"]["config_path"] == "/etc/containerd/certs.d"
    # The pause image containerd pulls for every pod comes from a registry docs/configuration.md tells mirrors to cover.
    sandbox = dumped["plugins"]["io.containerd.cri.v1.images"]["pinned_images"]["sandbox"]
    assert sandbox == "registry.k8s.io/pause:3.10.2" and sandbox.split("/")[0] in worker.KNOWN_REGISTRIES


# A registry stand-in: it logs each request's path and answers 404, which is all a test of where
# containerd sends its requests needs.
FAKE_REGISTRY = """
import http.server, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        print(self.command, self.path, flush=True)
        self.send_response(404)
        self.end_headers()
    do_HEAD = do_GET
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


def _wait_for(path: Path, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while not path.exists():
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"{path} did not appear:\n{log.read_text()}"
        time.sleep(0.1)


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A short scratch directory: containerd's socket path must fit in a sockaddr_un."""
    with tempfile.TemporaryDirectory(prefix="kthw-ctrd-") as directory:
        yield Path(directory)


def test_containerd_pulls_through_the_rendered_mirror(scratch: Path) -> None:
    """The built containerd's CRI plugin, on the rendered config and hosts.toml, asks the mirror for the image.

    Everything stays on loopback: the registry is 127.0.0.1:9, where nothing listens, so the fallback
    to the upstream server cannot leave the machine either.
    """
    bin_dir = upstream.require("containerd")
    crictl = upstream.require("crictl") / "crictl"
    if os.geteuid() != 0:
        skip_or_fail("containerd's daemon needs root")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    certs = scratch / "certs.d"
    registry = "127.0.0.1:9"
    (certs / registry).mkdir(parents=True)
    (certs / registry / "hosts.toml").write_text(worker.render_hosts_toml(registry, f"http://127.0.0.1:{port}"))
    # The rendered config, its certs.d moved under the scratch directory; NRI off, since its socket
    # is a fixed path under /var/run that a test must not take.
    rendered = worker.render_containerd_config()
    assert f"config_path = '{worker.REGISTRY_CONFIG_PATH}'" in rendered
    conf = rendered.replace(worker.REGISTRY_CONFIG_PATH, str(certs))
    conf += "\n[plugins.'io.containerd.nri.v1.nri']\n  disable = true\n"
    (scratch / "config.toml").write_text(conf)
    sock = scratch / "c.sock"
    registry_log, containerd_log = scratch / "registry.log", scratch / "containerd.log"
    processes: list[subprocess.Popen[bytes]] = []
    try:
        with registry_log.open("wb") as out:
            processes.append(subprocess.Popen([sys.executable, "-c", FAKE_REGISTRY, str(port)], stdout=out))
        with containerd_log.open("wb") as out:
            daemon = subprocess.Popen(
                [str(bin_dir / "containerd"), "--config", str(scratch / "config.toml"), "--root",
                 str(scratch / "root"), "--state", str(scratch / "state"), "--address", str(sock)],
                stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}"),
            )  # fmt: skip
            processes.append(daemon)
        _wait_for(sock, daemon, containerd_log)
        endpoint = f"unix://{sock}"
        pull = subprocess.run(
            [str(crictl), "--config", "/dev/null", "--runtime-endpoint", endpoint, "--image-endpoint", endpoint,
             "--timeout", "20s", "pull", f"{registry}/library/busybox:1.28"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert pull.returncode != 0  # the stand-in has no image
        assert "not found" in pull.stderr, pull.stderr
        # Resolving asks for the manifest (HEAD, then GET where HEAD is refused) on the mirror.
        paths = [line.split(" ", 1)[1] for line in registry_log.read_text().splitlines()]
        assert f"/v2/library/busybox/manifests/1.28?ns={registry.replace(':', '%3A')}" in paths, (
            paths,
            containerd_log.read_text()[-2000:],
        )
    finally:
        for process in processes:
            process.kill()
            process.wait()


# --- units -----------------------------------------------------------------------------------------


def exec_start(unit: str) -> tuple[str, dict[str, str]]:
    """ExecStart's binary and its --flag=value pairs."""
    (line,) = directives(unit)["ExecStart"]
    binary, *args = shlex.split(line)
    flags: dict[str, str] = {}
    for arg in args:
        assert arg.startswith("--") and "=" in arg, f"not a --flag=value: {arg}"
        key, value = arg[2:].split("=", 1)
        assert key not in flags, f"--{key} given twice"
        flags[key] = value
    return binary, flags


def test_kubelet_unit() -> None:
    unit = worker.render_kubelet_unit(CONFIG, WORKERS[1])
    assert unit.startswith("# kthw: kubelet 1.36.4\n")
    binary, flags = exec_start(unit)
    assert binary == "/usr/local/bin/kubelet"
    assert flags == {
        "config": "/var/lib/kubelet/kubelet-config.yaml",
        "hostname-override": "worker-1",
        # The address on the node network, which its serving certificate names.
        "node-ip": WORKERS[1].internal_ip,
        "kubeconfig": "/var/lib/kubelet/kubeconfig",
        "v": "2",
    }
    # Removed in 1.24 and 1.27: either one stops a current kubelet from starting.
    assert "network-plugin" not in unit and "container-runtime=" not in unit
    d = directives(unit)
    assert d["Requires"] == ["containerd.service"] and d["After"] == ["containerd.service"]
    assert d["WantedBy"] == ["multi-user.target"]


def test_kube_proxy_unit() -> None:
    unit = worker.render_kube_proxy_unit(CONFIG)
    assert unit.startswith("# kthw: kube-proxy 1.36.4\n")
    assert exec_start(unit) == ("/usr/local/bin/kube-proxy", {"config": "/var/lib/kube-proxy/kube-proxy-config.yaml"})


def test_containerd_unit() -> None:
    unit = worker.render_containerd_unit(CONFIG)
    assert unit.startswith("# kthw: containerd 2.3.4\n")
    d = directives(unit)
    assert d["ExecStart"] == ["/usr/local/bin/containerd"]
    assert d["ExecStartPre"] == ["/sbin/modprobe overlay"]
    assert d["Delegate"] == ["yes"] and d["KillMode"] == ["process"] and d["Type"] == ["notify"]
    assert d["LimitNOFILE"] == ["1048576"] and d["OOMScoreAdjust"] == ["-999"]


def test_unit_versions_follow_config() -> None:
    newer = config_module.load(
        {"kubernetesVersion": "1.36.5", "containerdVersion": "2.3.5"},
        {"gcp:region": "us-west1", "gcp:zone": "us-west1-c"},
    )
    assert worker.render_kubelet_unit(newer, newer.workers[0]).startswith("# kthw: kubelet 1.36.5\n")
    assert worker.render_kube_proxy_unit(newer).startswith("# kthw: kube-proxy 1.36.5\n")
    assert worker.render_containerd_unit(newer).startswith("# kthw: containerd 2.3.5\n")


@pytest.mark.parametrize("name", sorted(UNITS))
def test_systemd_analyze_verify(name: str, tmp_path: Path) -> None:
    verify_unit(name, UNITS[name](CONFIG), tmp_path)


# --- scripts ---------------------------------------------------------------------------------------


def scripts() -> dict[str, str]:
    rendered: dict[str, str] = {}
    for spec in WORKERS:
        rendered[f"prepare-{spec.name}"] = worker.render_prepare_script(spec)
        rendered[f"ready-{spec.name}"] = worker.render_ready_script(spec)
        for action in ("drain", "uncordon"):
            rendered[f"{action}-{spec.name}"] = worker.render_rollout_script(CONFIG, spec, action, "f" * 64)
    return rendered


@pytest.mark.parametrize("name", sorted(scripts()))
def test_shellcheck(name: str, tmp_path: Path) -> None:
    shellcheck(scripts()[name], tmp_path, name)


def test_prepare_script() -> None:
    script = worker.render_prepare_script(WORKERS[1])
    assert script.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in script
    assert 'node="worker-1"' in script
    assert "packages=(socat conntrack ipset iptables)" in script
    assert "DPkg::Lock::Timeout" in script and "DEBIAN_FRONTEND=noninteractive" in script
    assert "swapoff -a" in script
    assert "for module in overlay br_netfilter nf_conntrack; do" in script
    assert "net.bridge.bridge-nf-call-iptables=1 net.ipv4.ip_forward=1" in script
    assert "/etc/modules-load.d/" in script and "/etc/sysctl.d/" in script
    assert "{{" not in script
    # Every message the script itself prints to stderr names the node and the step.
    messages = [line for line in script.splitlines() if line.rstrip().endswith(">&2")]
    assert len(messages) == 2
    assert all('"kthw: ${node}: worker prepare: ' in line for line in messages), messages


def test_ready_script() -> None:
    script = worker.render_ready_script(WORKERS[2])
    assert 'node="worker-2"' in script
    assert "units=(containerd kubelet kube-proxy)" in script
    assert "--kubeconfig /var/lib/kubelet/kubeconfig" in script
    assert 'echo "kthw: ${node}: worker start: $*" >&2' in script
    assert "journalctl -u" in script and "systemctl_root status --no-pager" in script


def cni_plugins(tmp_path: Path, names: tuple[str, ...] = worker.CNI_REQUIRED_BINARIES) -> Path:
    """A stand-in for /opt/cni/bin holding executables with the given names."""
    cni_bin = tmp_path / "cni-bin"
    cni_bin.mkdir()
    for name in names:
        (cni_bin / name).write_text("#!/bin/sh\n")
        (cni_bin / name).chmod(0o755)
    return cni_bin


def _run_ready(
    tmp_path: Path,
    *,
    active: str,
    ready: str,
    plugins: tuple[str, ...] = worker.CNI_REQUIRED_BINARIES,
    healthz: str = "ok",
) -> subprocess.CompletedProcess[str]:
    """ready.sh (with a zero wait) against stub sudo, systemctl, journalctl, curl and kubectl."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    programs = {
        # sudo runs its command, with the node's kubectl mapped to the stub.
        "sudo": 'if [ "$1" = /usr/local/bin/kubectl ]; then shift; exec kubectl "$@"; fi\nexec "$@"',
        "systemctl": f'if [ "$1" = is-active ]; then exit {active}; fi\necho "status of $*"',
        "journalctl": 'echo "journal of $*"',
        "kubectl": f'printf %s "{ready}"',
        # The kubelet's /healthz: the only URL the script asks.
        "curl": f'[ "${{@: -1}}" = "{worker.KUBELET_HEALTHZ}" ] || exit 7\nprintf %s "{healthz}"',
    }
    for name, body in programs.items():
        (stubs / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (stubs / name).chmod(0o755)
    script = worker.render_ready_script(
        WORKERS[0], timeout_seconds=0, units=("containerd", "kubelet"), cni_bin_dir=str(cni_plugins(tmp_path, plugins))
    )
    return subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": f"{stubs}:/usr/bin:/bin"},
    )


def test_ready_script_passes_when_the_node_is_ready(tmp_path: Path) -> None:
    result = _run_ready(tmp_path, active="0", ready="True")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "kthw: worker-0: worker start: containerd kubelet active; kubelet healthy; node Ready\n"


def test_ready_script_waits_for_the_kubelets_own_health(tmp_path: Path) -> None:
    """The Node may still read Ready from the previous kubelet: the new one must answer its /healthz."""
    result = _run_ready(tmp_path, active="0", ready="True", healthz="[-]syncloop failed")
    assert result.returncode == 1
    assert result.stderr.startswith(
        f"kthw: worker-0: worker start: the kubelet's {worker.KUBELET_HEALTHZ} is not ok after 0s: [-]syncloop failed"
    )


def test_ready_script_names_the_inactive_unit(tmp_path: Path) -> None:
    result = _run_ready(tmp_path, active="3", ready="True")
    assert result.returncode == 1
    assert result.stderr.startswith("kthw: worker-0: worker start: containerd is not active after 0s\n")
    assert "status of status --no-pager --lines=0 kubelet" in result.stderr
    assert "journal of -u kubelet -n 25 --no-pager" in result.stderr


def test_ready_script_names_a_missing_cni_plugin(tmp_path: Path) -> None:
    """containerd needs the loopback binary for every sandbox although no conf names it."""
    result = _run_ready(tmp_path, active="0", ready="True", plugins=("bridge", "host-local", "portmap"))
    assert result.returncode == 1
    assert result.stderr.startswith(
        f"kthw: worker-0: worker start: CNI plugin loopback is missing from {tmp_path}/cni-bin"
    )


def test_ready_script_names_a_node_that_is_not_ready(tmp_path: Path) -> None:
    result = _run_ready(tmp_path, active="0", ready="False")
    assert result.returncode == 1
    assert result.stderr.startswith("kthw: worker-0: worker start: node worker-0 is not Ready in the API server")
    assert "(Ready=False)" in result.stderr


def test_prepare_fstab_edit(tmp_path: Path) -> None:
    """The fstab edit the prepare script makes: swap lines commented out, once, nothing else touched."""
    script = worker.render_prepare_script(WORKERS[0])
    (sed_expr,) = re.findall(r"sudo sed -i -E '([^']+)' /etc/fstab", script)
    fstab = tmp_path / "fstab"
    original = "UUID=abc / ext4 defaults 0 1\n/swapfile none swap sw 0 0\n# /old none swap sw 0 0\n"
    fstab.write_text(original)
    for _ in range(2):
        subprocess.run(["sed", "-i", "-E", sed_expr, str(fstab)], check=True)
    assert fstab.read_text() == (
        "UUID=abc / ext4 defaults 0 1\n# kthw: swap off: /swapfile none swap sw 0 0\n# /old none swap sw 0 0\n"
    )


# --- the component under mocks ---------------------------------------------------------------------


def _build(cfg: ClusterConfig) -> Recording:
    """Three WorkerNodes, each on its own gate, all waiting on one stand-in for the control plane."""

    def program() -> None:
        ca = CertPair(pulumi.Output.from_input("CA-CERT"), pulumi.Output.secret("CA-KEY"))
        control_plane = command_remote.Command(
            "control-plane-ready",
            connection=command_remote.ConnectionArgs(host="198.51.100.100", user="kthw"),
            create="true",
        )
        admin_connection = command_remote.ConnectionArgs(host="198.51.100.10", user="kthw")
        admin_gate = command_remote.Command("controller-0-gate", connection=admin_connection, create="true")
        admin = remote.Host("controller-0", admin_connection, admin_gate)
        for spec in cfg.workers:
            connection = command_remote.ConnectionArgs(host=f"198.51.100.{spec.index}", user="kthw")
            gate = command_remote.Command(f"{spec.name}-gate", connection=connection, create="true")
            worker.WorkerNode(
                spec.name,
                worker.WorkerArgs(
                    config=cfg,
                    spec=spec,
                    host=remote.Host(spec.name, connection, gate),
                    public_address=pulumi.Output.from_input("203.0.113.7"),
                    ca=ca,
                    kubelet=CertPair(
                        pulumi.Output.from_input(f"{spec.name}-CERT"), pulumi.Output.secret(f"{spec.name}-KEY")
                    ),
                    kube_proxy=CertPair(pulumi.Output.from_input("KP-CERT"), pulumi.Output.secret("KP-KEY")),
                    control_plane_ready=[control_plane],
                    admin=admin,
                ),
            )

    return run_components(program)


@pytest.fixture(scope="module")
def wired() -> Recording:
    return _build(CONFIG)


STEPS = ("prepare", "binaries", "drain", "containerd", "kubelet", "kube-proxy", "ready", "uncordon")
# The steps that restart a service: every one waits for the drain.
RESTARTING = ("containerd", "kubelet", "kube-proxy")


def test_component_registers_its_steps(wired: Recording) -> None:
    for spec in WORKERS:
        assert wired.by_name(spec.name).type == "kthw:index:WorkerNode"
        for step in STEPS:
            rec = wired.by_name(f"{spec.name}-{step}")
            assert rec.type == "command:remote:Command"
            assert rec.parent == spec.name


@pytest.mark.parametrize("spec", WORKERS, ids=lambda s: s.name)
def test_dependency_wiring(wired: Recording, spec: NodeSpec) -> None:
    n = spec.name
    deps = {step: wired.by_name(f"{n}-{step}").depends_on for step in STEPS}
    assert {f"{n}-gate"} <= deps["prepare"]
    assert {f"{n}-gate", f"{n}-prepare"} <= deps["binaries"]
    # The drain runs on controller-0 (the admin's credentials), after the binaries and the control plane.
    assert deps["drain"] == {"controller-0-gate", f"{n}-binaries", "control-plane-ready"}
    assert {f"{n}-binaries", f"{n}-drain"} <= deps["containerd"]
    assert {f"{n}-containerd", f"{n}-drain", "control-plane-ready"} <= deps["kubelet"]
    assert {f"{n}-binaries", f"{n}-drain", "control-plane-ready"} <= deps["kube-proxy"]
    assert {f"{n}-kubelet", f"{n}-kube-proxy"} <= deps["ready"]
    assert deps["uncordon"] == {"controller-0-gate", f"{n}-ready", f"{n}-drain"}
    # Every restart happens between the drain and the uncordon.
    for step in RESTARTING:
        assert f"{n}-drain" in wired.ancestors(f"{n}-{step}")
        assert f"{n}-{step}" in wired.ancestors(f"{n}-uncordon")
    # Prerequisites and downloads run while the control plane bootstraps.
    for step in ("prepare", "binaries"):
        assert "control-plane-ready" not in wired.ancestors(f"{n}-{step}")
    # A worker never waits on another worker in the graph: everything upstream is its own, the
    # control plane, or controller-0's gate (where its drain and uncordon run).
    for step in STEPS:
        strangers = {a for a in wired.ancestors(f"{n}-{step}") if not a.startswith(f"{n}-")}
        assert strangers <= {"control-plane-ready", "controller-0-gate"}, strangers


@pytest.mark.parametrize("spec", WORKERS, ids=lambda s: s.name)
def test_deployed_files(wired: Recording, spec: NodeSpec) -> None:
    n = spec.name
    kubelet = wired.by_name(f"{n}-kubelet")
    assert "stdin" in kubelet.secret_paths, "the kubelet bundle carries a private key"
    files = bundle(kubelet)
    assert {path: mode for path, (_, mode) in files.items()} == {
        "/var/lib/kubernetes/ca.pem": 0o644,
        "/var/lib/kubelet/kubelet.pem": 0o644,
        "/var/lib/kubelet/kubelet-key.pem": 0o600,
        "/var/lib/kubelet/kubeconfig": 0o600,
        "/var/lib/kubelet/kubelet-config.yaml": 0o644,
        "/etc/systemd/system/kubelet.service": 0o644,
    }
    assert files["/var/lib/kubelet/kubelet-key.pem"][0] == f"{n}-KEY"
    kubeconfig = yaml.safe_load(files["/var/lib/kubelet/kubeconfig"][0])
    assert kubeconfig["clusters"][0]["cluster"]["server"] == "https://203.0.113.7:6443"
    assert kubeconfig["users"][0]["name"] == f"system:node:{n}"
    assert base64.b64decode(kubeconfig["users"][0]["user"]["client-key-data"]).decode() == f"{n}-KEY"
    assert yaml.safe_load(files["/var/lib/kubelet/kubelet-config.yaml"][0])["podCIDR"] == spec.pod_cidr
    assert f"{n}-KEY" not in str(kubelet.inputs["create"])

    proxy = wired.by_name(f"{n}-kube-proxy")
    assert "stdin" in proxy.secret_paths
    proxy_files = bundle(proxy)
    assert proxy_files["/var/lib/kube-proxy/kubeconfig"][1] == 0o600
    proxy_kubeconfig = yaml.safe_load(proxy_files["/var/lib/kube-proxy/kubeconfig"][0])
    assert proxy_kubeconfig["users"][0]["name"] == "system:kube-proxy"
    assert proxy_kubeconfig["clusters"][0]["cluster"]["server"] == "https://203.0.113.7:6443"
    assert set(proxy_files) == {
        "/var/lib/kube-proxy/kubeconfig",
        "/var/lib/kube-proxy/kube-proxy-config.yaml",
        "/etc/systemd/system/kube-proxy.service",
    }

    containerd = wired.by_name(f"{n}-containerd")
    assert "stdin" not in containerd.secret_paths, "no key material: its log stays readable"
    containerd_files = bundle(containerd)
    assert set(containerd_files) == {
        "/etc/containerd/config.toml",
        "/etc/cni/net.d/05-kthw-bridge.conflist",
        "/etc/crictl.yaml",
        "/etc/systemd/system/containerd.service",
    }
    conflist = json.loads(containerd_files["/etc/cni/net.d/05-kthw-bridge.conflist"][0])
    assert conflist["plugins"][0]["ipam"]["ranges"] == [[{"subnet": spec.pod_cidr}]]
    assert yaml.safe_load(containerd_files["/etc/crictl.yaml"][0])["runtime-endpoint"] == worker.CONTAINERD_ENDPOINT
    # An upgraded worker loses the single-plugin files the conflist replaces.
    script = str(containerd.inputs["create"])
    # So does a registry mirror config no longer asks for (none here).
    assert (
        "/etc/cni/net.d/10-bridge.conf\n/etc/cni/net.d/99-loopback.conf\n"
        "/etc/containerd/certs.d/docker.io/hosts.toml\n/etc/containerd/certs.d/registry.k8s.io/hosts.toml\nOBSOLETE"
    ) in script

    ready = wired.by_name(f"{n}-ready")
    (trigger,) = ready.inputs["triggers"]
    assert "triggers" not in ready.secret_paths and re.fullmatch(r"[0-9a-f]{64}", trigger)


def test_drain_and_uncordon_run_again_exactly_when_a_restart_is_coming(wired: Recording) -> None:
    """Their script carries the fingerprint of the restarting steps' files: it changes when they do."""
    newer = config_module.load(
        {"controllerCount": 3, "workerCount": 3, "kubernetesVersion": "1.36.5"},
        {"gcp:region": "us-west1", "gcp:zone": "us-west1-c", "gcp:project": "kthw-test"},
    )
    bumped = _build(newer)
    mirrors = config_module.load(
        {"controllerCount": 3, "workerCount": 3, "binaryDigests": {"kubelet": "ab" * 32}},
        {"gcp:region": "us-west1", "gcp:zone": "us-west1-c", "gcp:project": "kthw-test"},
    )
    digests_only = _build(mirrors)
    for step in ("drain", "uncordon"):
        before = wired.by_name(f"worker-0-{step}")
        (fingerprint,) = wired.by_name("worker-0-ready").inputs["triggers"]
        assert f'fingerprint="{fingerprint}"' in before.inputs["create"]
        # Readable in the engine's log: a digest, no key.
        assert "create" not in before.secret_paths
        assert bumped.by_name(f"worker-0-{step}").inputs["create"] != before.inputs["create"]
        # New binaries alone restart nothing (the units do not change): no drain.
        assert digests_only.by_name(f"worker-0-{step}").inputs["create"] == before.inputs["create"]


def test_rollout_script_values() -> None:
    script = worker.render_rollout_script(CONFIG, WORKERS[1], "drain", "f" * 64)
    assert 'node="worker-1"' in script and 'action="drain"' in script
    assert 'namespace="kube-system"' in script and 'prefix="kthw-worker-upgrade-"' in script
    assert "slots=1\n" in script and f"drain_seconds={bounds.DRAIN_SECONDS}\n" in script
    assert "sudo /usr/local/bin/kubectl --kubeconfig /var/lib/kubernetes/admin.kubeconfig" in script
    wider = config_module.load(
        {"controllerCount": 3, "workerCount": 3, "maxUnavailableWorkers": 2},
        {"gcp:region": "us-west1", "gcp:zone": "us-west1-c", "gcp:project": "kthw-test"},
    )
    assert "slots=2\n" in worker.render_rollout_script(wider, WORKERS[1], "uncordon", "f" * 64)
    with pytest.raises(ValueError, match="unknown rollout action"):
        worker.render_rollout_script(CONFIG, WORKERS[1], "reboot", "f" * 64)


def test_ready_check_reruns_when_a_worker_file_changes() -> None:
    newer = config_module.load(
        {"controllerCount": 3, "workerCount": 3, "kubernetesVersion": "1.36.5"},
        {"gcp:region": "us-west1", "gcp:zone": "us-west1-c", "gcp:project": "kthw-test"},
    )
    before, after = _build(CONFIG).by_name("worker-0-ready"), _build(newer).by_name("worker-0-ready")
    assert before.inputs["triggers"] != after.inputs["triggers"]
    assert before.inputs["create"] == after.inputs["create"]


def test_program_wiring(ha: Recording) -> None:
    """In the whole program (cluster.py's wiring): workers are independent, and only their services wait."""
    for spec in WORKERS:
        prefix = f"kthw-{spec.name}-bootstrap"
        assert ha.by_name(prefix).type == "kthw:index:WorkerNode"
        others = [w.name for w in WORKERS if w.name != spec.name]
        for step in STEPS:
            ancestors = ha.ancestors(f"{prefix}-{step}")
            assert not [a for a in ancestors if any(o in a for o in others)], step
        # Kubelets never newer than any API server: every restart waits for every control plane,
        # back in the load balancer.
        control_plane = {r.name for r in ha.resources if r.name.endswith("-control-plane-in-service")}
        assert len(control_plane) == len(CONFIG.controllers)
        for step in ("prepare", "binaries"):
            assert not ha.ancestors(f"{prefix}-{step}") & control_plane, step
        for step in ("drain", *RESTARTING):
            assert control_plane <= ha.ancestors(f"{prefix}-{step}"), step


def test_configured_digest_reaches_each_workers_install_step() -> None:
    """Under the mocks, kthw:binaryDigests is what each worker's binaries step checks its kubelet against."""
    digest = "ab" * 32
    cfg = config_module.load({"controllerCount": 1, "workerCount": 2, "binaryDigests": {"kubelet": digest}}, GCP)
    recording = _build(cfg)
    for spec in cfg.workers:
        script = str(recording.by_name(f"{spec.name}-binaries").inputs["create"])
        (line,) = [line for line in script.splitlines() if line.startswith("kubelet ")]
        assert line.split()[4] == digest
        assert "kubelet.sha256" not in script


def test_known_registries_cover_every_image_the_cluster_pulls() -> None:
    """An air-gapped cluster needs a mirror for each; dropping one of these entries removes its hosts.toml."""
    from components import addons

    images = [
        "registry.k8s.io/pause:3.10.2",  # containerd 2.3's default sandbox image (`containerd config default`)
        addons.COREDNS_IMAGE,
        addons.METRICS_SERVER_REPOSITORY,
        addons.SMOKE_NGINX_IMAGE,
        addons.SMOKE_BUSYBOX_IMAGE,
    ]
    # A reference without a registry part (no "." or ":" before the first "/") is Docker Hub's.
    registries = {
        i.split("/")[0] if "/" in i and any(c in i.split("/")[0] for c in ".:") else "docker.io" for i in images
    }
    assert registries == set(worker.KNOWN_REGISTRIES)
