"""components/artifacts.py: the artifact table, and the install script run for real against a local mirror."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from components import artifacts, config, versions  # noqa: E402
from tests.tools import require_tool  # noqa: E402

GCP = {"gcp:region": "us-west1", "gcp:zone": "us-west1-c"}
NODE = "controller-0"

# Versions nobody pins, so the script must read the checksum files the fake mirror publishes.
UNPINNED = {
    "kubernetesVersion": "1.99.0",
    "etcdVersion": "3.9.9",
    "containerdVersion": "2.9.9",
    "runcVersion": "1.9.9",
    "cniVersion": "1.9.9",
    "crictlVersion": "1.99.9",
}
K8S_BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kubelet", "kube-proxy")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def exe(name: str) -> bytes:
    return f"#!/bin/sh\necho fake {name}\n".encode()


def tarball(members: dict[str, tuple[bytes, int]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path, (data, mode) in members.items():
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def put(mirror: Path, url: str, data: bytes) -> None:
    path = mirror / url.removeprefix("https://")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the table ----------------------------------------------------------------------------------


def default_config(**kthw: object) -> config.ClusterConfig:
    return config.load(kthw, GCP)


def test_default_versions_are_pinned_where_digests_are_published() -> None:
    cfg = default_config()
    expected_pins = {
        "kubectl": "8b8f088da2dab964f853b38464033b1be15ede2839eca751482357c45abdd05a",
        "kubelet": "cf2562db46c48ab84cc3791540778ee7fb1a0a008529adbb434723dd02ed8b4b",
        "etcd": "ffe840ff9295808e88cce2794a18a5ac87f12a5203c8314d0bf6aa119b41bac5",
        "containerd": "9d68969855fbf676cdb8ed758e420fb048d61f984f61de3e53eddfebe484d168",
        "runc": "f6ae8efc0fa40079e1475e97cbe9d1bd3f106a28d6af78a11d9f1bd565515e60",
        "cni-plugins": "b98f74a0f8522f0a83867178729c1aa70f2158f90c45a2ca8fa791db1c76b303",
        "crictl": "83855e114566a8a8c44c548d515670f51de3a5e1da8b2effb59870e2f10c25a3",
    }
    for name, digest in expected_pins.items():
        assert artifacts.artifact(cfg, name).checksum == digest, name
    # No published pin for these at 1.36.4: dl.k8s.io's digest file beside the binary.
    for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy"):
        a = artifacts.artifact(cfg, name)
        assert not a.pinned
        assert a.checksum == f"https://dl.k8s.io/v{versions.KUBERNETES}/bin/linux/amd64/{name}.sha256"


def test_default_urls_and_install_locations() -> None:
    cfg = default_config()
    a = {n: artifacts.artifact(cfg, n) for n in artifacts.NAMES}
    assert a["kubelet"].url == "https://dl.k8s.io/v1.36.4/bin/linux/amd64/kubelet"
    assert (a["kubelet"].kind, a["kubelet"].dest, a["kubelet"].members) == ("file", "/usr/local/bin", ("kubelet",))
    assert a["etcd"].url == "https://github.com/etcd-io/etcd/releases/download/v3.6.14/etcd-v3.6.14-linux-amd64.tar.gz"
    assert a["etcd"].members == tuple(f"etcd-v3.6.14-linux-amd64/{b}" for b in ("etcd", "etcdctl", "etcdutl"))
    assert a["containerd"].url == (
        "https://github.com/containerd/containerd/releases/download/v2.3.4/containerd-2.3.4-linux-amd64.tar.gz"
    )
    assert a["runc"].url == "https://github.com/opencontainers/runc/releases/download/v1.4.3/runc.amd64"
    assert a["runc"].members == ("runc",)
    assert a["cni-plugins"].url == (
        "https://github.com/containernetworking/plugins/releases/download/v1.9.1/cni-plugins-linux-amd64-v1.9.1.tgz"
    )
    assert a["cni-plugins"].dest == "/opt/cni/bin"
    assert a["crictl"].url == (
        "https://github.com/kubernetes-sigs/cri-tools/releases/download/v1.36.0/crictl-v1.36.0-linux-amd64.tar.gz"
    )
    assert all(x.dest == "/usr/local/bin" for n, x in a.items() if n != "cni-plugins")


def test_other_versions_use_the_published_checksum_files() -> None:
    cfg = default_config(**UNPINNED)
    got = {n: artifacts.artifact(cfg, n).checksum for n in artifacts.NAMES}
    assert got["kubelet"] == "https://dl.k8s.io/v1.99.0/bin/linux/amd64/kubelet.sha256"
    assert got["etcd"] == "https://github.com/etcd-io/etcd/releases/download/v3.9.9/SHA256SUMS"
    assert got["containerd"] == (
        "https://github.com/containerd/containerd/releases/download/v2.9.9/containerd-2.9.9-linux-amd64.tar.gz.sha256sum"
    )
    assert got["runc"] == "https://github.com/opencontainers/runc/releases/download/v1.9.9/runc.sha256sum"
    assert got["cni-plugins"] == (
        "https://github.com/containernetworking/plugins/releases/download/v1.9.9/cni-plugins-linux-amd64-v1.9.9.tgz.sha256"
    )
    assert got["crictl"] == (
        "https://github.com/kubernetes-sigs/cri-tools/releases/download/v1.99.9/crictl-v1.99.9-linux-amd64.tar.gz.sha256"
    )


def test_mirror_replaces_the_scheme_for_binaries_and_checksum_files() -> None:
    cfg = default_config(binaryMirror="https://mirror.example.com/kthw/", kubernetesVersion="1.99.0")
    a = artifacts.artifact(cfg, "kubelet")
    assert a.url == "https://mirror.example.com/kthw/dl.k8s.io/v1.99.0/bin/linux/amd64/kubelet"
    assert a.checksum == "https://mirror.example.com/kthw/dl.k8s.io/v1.99.0/bin/linux/amd64/kubelet.sha256"
    script = artifacts.install_script(cfg, NODE, ["kubelet"])
    assert "https://dl.k8s.io" not in script


def test_unknown_or_empty_names_are_refused() -> None:
    cfg = default_config()
    with pytest.raises(KeyError, match="kubeadm"):
        artifacts.install_script(cfg, NODE, ["kubeadm"])
    with pytest.raises(ValueError):
        artifacts.install_script(cfg, NODE, [])


def test_version_change_changes_the_script() -> None:
    # The remote command re-runs only when its script changes; the version must be in it.
    a = artifacts.install_script(default_config(), NODE, ["kubelet"])
    b = artifacts.install_script(default_config(kubernetesVersion="1.36.5"), NODE, ["kubelet"])
    assert a != b and "v1.36.5" in b


@pytest.mark.parametrize("mirror", [None, "http://127.0.0.1:8080/m"])
def test_rendered_script_passes_shellcheck(tmp_path: Path, mirror: str | None) -> None:
    kthw: dict[str, object] = {"binaryMirror": mirror} if mirror else {}
    script = tmp_path / "install.sh"
    script.write_text(artifacts.install_script(default_config(**kthw), NODE, artifacts.NAMES))
    result = subprocess.run([require_tool("shellcheck"), "-s", "bash", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# --- the script, run for real -------------------------------------------------------------------


class Mirror:
    """A directory served over HTTP on loopback, laid out as <mirror>/<host>/<path>."""

    def __init__(self, base: Path, url: str) -> None:
        self.base, self.url = base, url

    def config(self, **kthw: object) -> config.ClusterConfig:
        return default_config(binaryMirror=self.url, **kthw)


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mirror]:
    base = tmp_path_factory.mktemp("mirror")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(base)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield Mirror(base, f"http://127.0.0.1:{port}")
    finally:
        server.kill()
        server.wait()


def publish_unpinned(m: Mirror) -> dict[str, bytes]:
    """Fake releases at UNPINNED versions, each with its project's checksum file; returns path -> bytes."""
    cfg = default_config(**UNPINNED)
    installed: dict[str, bytes] = {}

    def up(name: str) -> str:
        return artifacts.artifact(cfg, name).url

    for b in K8S_BINARIES:
        data = exe(b)
        put(m.base, up(b), data)
        put(m.base, up(b) + ".sha256", sha256(data).encode())  # the digest alone, as dl.k8s.io
        installed[f"/usr/local/bin/{b}"] = data

    etcd = {b: exe(b) for b in ("etcd", "etcdctl", "etcdutl")}
    etcd_tar = tarball(
        {f"etcd-v3.9.9-linux-amd64/{b}": (d, 0o755) for b, d in etcd.items()}
        | {"etcd-v3.9.9-linux-amd64/README.md": (b"docs\n", 0o644)}
    )
    put(m.base, up("etcd"), etcd_tar)
    sums = (
        f"{sha256(b'other')}  etcd-v3.9.9-darwin-amd64.zip\n"
        f"{sha256(etcd_tar)}  etcd-v3.9.9-linux-amd64.tar.gz\n"
        f"{sha256(b'arm')}  etcd-v3.9.9-linux-arm64.tar.gz\n"
    )
    put(m.base, "https://github.com/etcd-io/etcd/releases/download/v3.9.9/SHA256SUMS", sums.encode())
    installed |= {f"/usr/local/bin/{b}": d for b, d in etcd.items()}

    ctrd = {b: exe(b) for b in ("containerd", "containerd-shim-runc-v2", "ctr")}
    ctrd_tar = tarball({f"bin/{b}": (d, 0o755) for b, d in ctrd.items()})
    put(m.base, up("containerd"), ctrd_tar)
    put(m.base, up("containerd") + ".sha256sum", f"{sha256(ctrd_tar)}  containerd-2.9.9-linux-amd64.tar.gz\n".encode())
    installed |= {f"/usr/local/bin/{b}": d for b, d in ctrd.items()}

    runc = exe("runc")
    put(m.base, up("runc"), runc)
    runc_sums = f"{sha256(b'arm64')}  runc.arm64\n{sha256(runc)}  runc.amd64\n"
    put(m.base, "https://github.com/opencontainers/runc/releases/download/v1.9.9/runc.sha256sum", runc_sums.encode())
    installed["/usr/local/bin/runc"] = runc

    cni = {b: exe(b) for b in ("bridge", "host-local", "loopback")}
    cni_tgz = tarball({f"./{b}": (d, 0o755) for b, d in cni.items()} | {"./LICENSE": (b"Apache-2.0\n", 0o644)})
    put(m.base, up("cni-plugins"), cni_tgz)
    put(m.base, up("cni-plugins") + ".sha256", f"{sha256(cni_tgz)}  cni-plugins-linux-amd64-v1.9.9.tgz\n".encode())
    installed |= {f"/opt/cni/bin/{b}": d for b, d in cni.items()}

    crictl = exe("crictl")
    crictl_tar = tarball({"crictl": (crictl, 0o755)})
    put(m.base, up("crictl"), crictl_tar)
    put(m.base, up("crictl") + ".sha256", f"{sha256(crictl_tar)}\n".encode())
    installed["/usr/local/bin/crictl"] = crictl
    return installed


def run_script(script: str, tmp: Path, root: Path) -> subprocess.CompletedProcess[str]:
    path = tmp / "install.sh"
    path.write_text(script)
    env = dict(os.environ, KTHW_ROOT=str(root), KTHW_CACHE=str(tmp / "cache"), KTHW_SUDO="")
    return subprocess.run(["bash", str(path)], capture_output=True, text=True, env=env, timeout=60)


def files_under(root: Path) -> dict[str, tuple[bytes, int, int]]:
    """Every file under root as /path -> (bytes, mode, mtime_ns)."""
    out: dict[str, tuple[bytes, int, int]] = {}
    if not root.exists():
        return out
    for p in root.rglob("*"):
        if p.is_file():
            st = p.stat()
            out["/" + str(p.relative_to(root))] = (p.read_bytes(), st.st_mode & 0o7777, st.st_mtime_ns)
    return out


def test_installs_every_artifact_verified_by_checksum_files_then_is_a_no_op(mirror: Mirror, tmp_path: Path) -> None:
    expected = publish_unpinned(mirror)
    cfg = mirror.config(**UNPINNED)
    script = artifacts.install_script(cfg, NODE, artifacts.NAMES)
    root = tmp_path / "root"

    first = run_script(script, tmp_path, root)
    assert first.returncode == 0, first.stderr
    got = files_under(root)
    assert {p: (d, mode) for p, (d, mode, _) in got.items()} == {p: (d, 0o755) for p, d in expected.items()}
    assert "/opt/cni/bin/LICENSE" not in got  # only the tarball's executables
    assert f"kthw: {NODE}: install kubelet: installed {root}/usr/local/bin/kubelet (1.99.0)" in first.stdout

    time.sleep(0.01)
    second = run_script(script, tmp_path, root)
    assert second.returncode == 0, second.stderr
    assert files_under(root) == got  # same bytes, modes and mtimes: nothing rewritten
    assert "installed" not in second.stdout
    assert second.stdout.count("is up to date") == len(expected)


def test_pinned_digest_needs_no_checksum_file_and_the_cache_serves_reruns(
    mirror: Mirror, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = exe("kubectl-pinned")
    cfg = mirror.config(kubernetesVersion="1.98.0")
    url = artifacts.artifact(cfg, "kubectl").url.removeprefix(mirror.url + "/")
    put(mirror.base, url, data)  # and no kubectl.sha256 beside it
    monkeypatch.setitem(artifacts.PINNED, ("kubectl", "1.98.0"), sha256(data))
    script = artifacts.install_script(cfg, NODE, ["kubectl"])
    assert sha256(data) in script

    first = run_script(script, tmp_path, tmp_path / "root")
    assert first.returncode == 0, first.stderr
    assert (tmp_path / "root/usr/local/bin/kubectl").read_bytes() == data
    assert (tmp_path / "cache" / f"{sha256(data)}-kubectl").read_bytes() == data

    (mirror.base / url).unlink()  # a fresh root installs from the cache, with the mirror gone
    again = run_script(script, tmp_path, tmp_path / "root2")
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "root2/usr/local/bin/kubectl").read_bytes() == data


def test_wrong_pinned_digest_fails_naming_both_digests_and_installs_nothing(
    mirror: Mirror, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = exe("kubelet-tampered")
    cfg = mirror.config(kubernetesVersion="1.97.0")
    put(mirror.base, artifacts.artifact(cfg, "kubelet").url.removeprefix(mirror.url + "/"), data)
    wrong = sha256(b"the real kubelet")
    monkeypatch.setitem(artifacts.PINNED, ("kubelet", "1.97.0"), wrong)
    root = tmp_path / "root"
    result = run_script(artifacts.install_script(cfg, "worker-1", ["kubelet"]), tmp_path, root)
    assert result.returncode != 0
    assert f"kthw: worker-1: install kubelet: SHA-256 mismatch for {mirror.url}/dl.k8s.io/v1.97.0" in result.stderr
    assert f"expected {wrong}, got {sha256(data)}" in result.stderr
    assert files_under(root) == {}
    assert files_under(tmp_path / "cache") == {}  # a bad download is not cached either


def test_one_bad_artifact_installs_none_of_the_others(mirror: Mirror, tmp_path: Path) -> None:
    cfg = mirror.config(kubernetesVersion="1.96.0")
    for name in ("kubectl", "kubelet"):
        url = artifacts.artifact(cfg, name).url.removeprefix(mirror.url + "/")
        put(mirror.base, url, exe(name))
        # kubelet's published digest does not match what the mirror serves
        digest = sha256(exe(name)) if name == "kubectl" else sha256(b"something else")
        put(mirror.base, url + ".sha256", digest.encode())
    root = tmp_path / "root"
    result = run_script(artifacts.install_script(cfg, NODE, ["kubectl", "kubelet"]), tmp_path, root)
    assert result.returncode != 0
    assert f"kthw: {NODE}: install kubelet: SHA-256 mismatch" in result.stderr
    assert f"expected {sha256(b'something else')}, got {sha256(exe('kubelet'))}" in result.stderr
    assert files_under(root) == {}  # kubectl was fine, but nothing is installed until every digest checks


def test_missing_release_fails_with_the_url_and_status(mirror: Mirror, tmp_path: Path) -> None:
    cfg = mirror.config(kubernetesVersion="1.95.0")
    root = tmp_path / "root"
    result = run_script(artifacts.install_script(cfg, NODE, ["kube-proxy"]), tmp_path, root)
    assert result.returncode != 0
    checksum_url = f"{mirror.url}/dl.k8s.io/v1.95.0/bin/linux/amd64/kube-proxy.sha256"
    assert f"kthw: {NODE}: install kube-proxy: download of {checksum_url} failed" in result.stderr
    assert "404" in result.stderr
    assert files_under(root) == {}


def test_missing_binary_with_a_pinned_digest_fails_with_a_404(
    mirror: Mirror, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = mirror.config(runcVersion="1.0.99")
    monkeypatch.setitem(artifacts.PINNED, ("runc", "1.0.99"), sha256(b"x"))
    result = run_script(artifacts.install_script(cfg, NODE, ["runc"]), tmp_path, tmp_path / "root")
    assert result.returncode != 0
    assert f"kthw: {NODE}: install runc: download of {mirror.url}/github.com/opencontainers/runc" in result.stderr
    assert "404" in result.stderr


def test_tarball_without_the_expected_member_fails_before_installing(mirror: Mirror, tmp_path: Path) -> None:
    cfg = mirror.config(crictlVersion="1.0.98")
    url = artifacts.artifact(cfg, "crictl").url.removeprefix(mirror.url + "/")
    data = tarball({"not-crictl": (b"x", 0o755)})
    put(mirror.base, url, data)
    put(mirror.base, url + ".sha256", sha256(data).encode())
    root = tmp_path / "root"
    result = run_script(artifacts.install_script(cfg, NODE, ["crictl"]), tmp_path, root)
    assert result.returncode != 0
    assert f"kthw: {NODE}: install crictl: crictl-v1.0.98-linux-amd64.tar.gz has no crictl" in result.stderr
    assert files_under(root) == {}
