"""tests/localcloud/mirror.py: the program's own install scripts fetch every upstream build from the served mirror."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from components import artifacts, config, control_plane, versions, worker
from tests import upstream
from tests.localcloud import mirror
from tests.localcloud.conftest import _missing
from tests.localcloud.net import GATEWAY, Namespace
from tests.upstream import build

ADDRESS = str(GATEWAY.ip)
REGION = {"gcp:region": "us-west1", "gcp:zone": "us-west1-c"}
CONTROLLER = ("etcd", *control_plane.ARTIFACTS)
WORKER = worker.ARTIFACTS


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def built() -> mirror.Mirror:
    return mirror.build_mirror()


@pytest.fixture
def netns() -> Iterator[Namespace]:
    """A namespace of this test's own with the local cloud's bridge (10.240.0.1/24), deleted afterwards."""
    if shutil.which("ip") is None or shutil.which("nsenter") is None:
        _missing("the mirror tests need ip (iproute2) and nsenter (util-linux)")
    if os.geteuid() != 0:
        _missing("the mirror tests need root (network namespaces)")
    ns = Namespace(name=f"kthw-mirror-{uuid.uuid4().hex[:8]}").create()
    try:
        yield ns
    finally:
        ns.destroy()


@pytest.fixture
def url(netns: Namespace, built: mirror.Mirror, tmp_path: Path) -> Iterator[str]:
    server = mirror.serve_mirror(netns.name, ADDRESS, mirror.PORT, built.root, log=tmp_path / "http.log")
    try:
        yield f"http://{ADDRESS}:{mirror.PORT}"
    finally:
        server.kill()
        server.wait()


def run_install(ns: Namespace, script: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    """The rendered script, unprivileged-style (KTHW_ROOT/KTHW_CACHE), run inside the namespace."""
    path = tmp / "install.sh"
    path.write_text(script)
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env |= {"KTHW_ROOT": str(tmp / "root"), "KTHW_CACHE": str(tmp / "cache"), "KTHW_SUDO": ""}
    return subprocess.run(
        mirror.netns_command(ns.name, "bash", str(path)), capture_output=True, text=True, env=env, timeout=300
    )


def stack(m: mirror.Mirror, url: str, **overrides: object) -> config.ClusterConfig:
    return config.load({**m.config(url), **overrides}, REGION)


def built_file(binary: str) -> Path:
    """The file tests/upstream/build.py built that `binary` on a node must be."""
    for recipe_name, names in mirror.SOURCES.values():
        if binary in names:
            return upstream.require(recipe_name) / binary
    raise KeyError(binary)


def test_mirror_holds_every_artifact_at_its_release_url_with_the_release_layout(built: mirror.Mirror) -> None:
    cfg = config.load({}, REGION)
    assert sorted(built.digests) == sorted(artifacts.NAMES)
    for name in artifacts.NAMES:
        a = artifacts.artifact(cfg, name)
        path = built.root / a.url.removeprefix("https://")
        assert sha256(path) == built.digests[name], name
        if a.kind == "tar":
            with tarfile.open(path) as tar:
                members = {m.name: m for m in tar.getmembers()}
            for member in a.members:
                if not member.endswith("*"):
                    assert members[member].isfile() and members[member].mode == 0o755, (name, member)
            assert {m.mtime for m in members.values()} == {0} and {m.uid for m in members.values()} == {0}
            assert list(members) == sorted(members), f"{name}: members not sorted"
    etcd_tar = built.root / artifacts.artifact(cfg, "etcd").url.removeprefix("https://")
    with tarfile.open(etcd_tar) as tar:
        names = tar.getnames()
    assert f"etcd-v{versions.ETCD}-linux-amd64/etcdctl" in names


def test_a_rebuild_gives_the_same_digests(built: mirror.Mirror, tmp_path: Path) -> None:
    """Reproducible tarballs: a second `pulumi up` against a rebuilt mirror must see the same kthw:binaryDigests."""
    digests, _ = mirror._build_into(tmp_path / "again", versions.KUBERNETES)
    assert digests == built.digests


def test_a_controller_and_a_worker_install_every_binary_from_the_served_mirror(
    netns: Namespace, built: mirror.Mirror, url: str, tmp_path: Path
) -> None:
    cfg = stack(built, url)
    assert cfg.binary_mirror == url
    for role, names in (("controller-0", CONTROLLER), ("worker-0", WORKER)):
        work = tmp_path / role
        work.mkdir()
        result = run_install(netns, artifacts.install_script(cfg, role, names), work)
        assert result.returncode == 0, result.stderr
        installed = {p.name: p for p in (work / "root").rglob("*") if p.is_file()}
        expected = {b for n in names for b in mirror.SOURCES[n][1]}
        assert set(installed) == expected, result.stdout
        for binary, path in installed.items():
            assert sha256(path) == sha256(built_file(binary)), binary
        where = {str(p.relative_to(work / "root").parent) for p in installed.values()}
        assert where <= {"usr/local/bin", "opt/cni/bin"}
    kubelet = subprocess.run(
        [str(tmp_path / "worker-0/root/usr/local/bin/kubelet"), "--version"], capture_output=True, text=True
    )
    assert kubelet.stdout.strip() == f"Kubernetes v{versions.KUBERNETES}"
    etcd_version = subprocess.run(
        [str(tmp_path / "controller-0/root/usr/local/bin/etcd"), "--version"], capture_output=True, text=True
    )
    assert f"etcd Version: {versions.ETCD}" in etcd_version.stdout
    # A second run downloads nothing new and installs nothing: every file is up to date.
    again = run_install(netns, artifacts.install_script(cfg, "worker-0", WORKER), tmp_path / "worker-0")
    assert again.returncode == 0, again.stderr
    lines = again.stdout.splitlines()
    assert lines and all(line.endswith("is up to date") for line in lines), again.stdout


def test_a_digest_mistyped_by_one_character_fails_loudly(
    netns: Namespace, built: mirror.Mirror, url: str, tmp_path: Path
) -> None:
    good = built.digests["kubelet"]
    typo = good[:10] + ("0" if good[10] != "0" else "1") + good[11:]
    cfg = stack(built, url, binaryDigests={**built.digests, "kubelet": typo})
    result = run_install(netns, artifacts.install_script(cfg, "worker-0", WORKER), tmp_path)
    assert result.returncode != 0
    assert f"install kubelet: SHA-256 mismatch for {url}/dl.k8s.io/" in result.stderr
    assert f"expected {typo}, got {good}" in result.stderr
    assert not (tmp_path / "root").exists(), "a bad download must install nothing"


def test_the_previous_kubernetes_patch_is_served_from_its_own_build(
    netns: Namespace, tmp_path: Path, built: mirror.Mirror
) -> None:
    """The bump scenario's start: 1.36.3's own binaries under its own URLs and digests, beside 1.36.4's."""
    previous = build.PREVIOUS_KUBERNETES
    root = tmp_path / "mirror"
    first = mirror.build_mirror(root)
    older = mirror.build_mirror(root, kubernetes_version=previous)
    assert first.digests == built.digests
    for name in artifacts.NAMES:
        changed = older.digests[name] != first.digests[name]
        assert changed == (name in artifacts.KUBERNETES_BINARIES), name
    with mirror.served(netns.name, ADDRESS, mirror.PORT, root) as served_url:
        cfg = stack(older, served_url)
        result = run_install(netns, artifacts.install_script(cfg, "worker-0", ["kubelet"]), tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"installed {tmp_path}/root/usr/local/bin/kubelet ({previous})" in result.stdout
    kubelet = subprocess.run(
        [str(tmp_path / "root/usr/local/bin/kubelet"), "--version"], capture_output=True, text=True
    )
    assert kubelet.stdout.strip() == f"Kubernetes v{previous}"


def test_a_kubernetes_release_with_no_build_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no build of kubernetes 1\.36\.99 .*add a recipe"):
        mirror.build_mirror(tmp_path / "mirror", kubernetes_version="1.36.99")


def test_warm_build_costs_next_to_nothing(built: mirror.Mirror, tmp_path: Path) -> None:
    start = time.monotonic()
    again = mirror.build_mirror(tmp_path / "linked")
    elapsed = time.monotonic() - start
    assert again.digests == built.digests
    assert elapsed < 2.0, f"a warm mirror took {elapsed:.2f}s"
    print(f"\nmirror warm build into a new root: {elapsed:.2f}s")
