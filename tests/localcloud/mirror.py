"""The local cloud's binary mirror: the upstream builds laid out as the releases' URLs, and an HTTP server for them.

The program fetches https://HOST/PATH as MIRROR/HOST/PATH (kthw:binaryMirror) and, for a digest
given in kthw:binaryDigests, checks that digest instead of the pinned one: the mirror serves what
tests/upstream/build.py built from source, in the shape each project publishes (single files, or
tarballs with the release's member paths), and `Mirror.digests` vouches for exactly those files.
Tarballs are reproducible (sorted members, fixed mtime and owner, a gzip header without time or
name), so a second build gives the same digests and a second `pulumi up` changes nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import gzip
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

from components import artifacts, config, versions
from tests import upstream
from tests.localcloud.image import cache_root
from tests.upstream import build

# Where the lead's namespace serves the mirror: the bridge's own address (net.GATEWAY), port 8080.
PORT = 8080
# The recipe (tests/upstream/build.py) that builds each artifact's files, and those files' names.
SOURCES: dict[str, tuple[str, tuple[str, ...]]] = {
    "etcd": ("etcd", ("etcd", "etcdctl", "etcdutl")),
    "kube-apiserver": ("kubernetes", ("kube-apiserver",)),
    "kube-controller-manager": ("kubernetes", ("kube-controller-manager",)),
    "kube-scheduler": ("kubernetes", ("kube-scheduler",)),
    "kubectl": ("kubernetes", ("kubectl",)),
    "kubelet": ("kubernetes", ("kubelet",)),
    "kube-proxy": ("kubernetes", ("kube-proxy",)),
    "containerd": ("containerd", ("containerd", "containerd-shim-runc-v2", "ctr")),
    "runc": ("runc", ("runc",)),
    "cni-plugins": ("cni-plugins", ("bridge", "host-local", "loopback", "portmap")),
    "crictl": ("crictl", ("crictl",)),
}
# Each Kubernetes release the mirror can serve, and the upstream build that made its binaries.
KUBERNETES_BUILDS = {versions.KUBERNETES: "kubernetes", build.PREVIOUS_KUBERNETES: "kubernetes-previous"}
# Likewise for containerd (the workers-only bump of issue 18).
CONTAINERD_BUILDS = {versions.CONTAINERD: "containerd", build.NEXT_CONTAINERD: "containerd-next"}
# Speed over size: the mirror is read over a local bridge, and a cold build must stay well under a minute.
GZIP_LEVEL = 1
_REGION = {"gcp:region": "us-west1", "gcp:zone": "us-west1-c"}
_T = TypeVar("_T")


@dataclass(frozen=True)
class Mirror:
    """A laid-out mirror: its directory and the SHA-256 of every artifact file in it (kthw:binaryDigests)."""

    root: Path
    digests: dict[str, str]
    kubernetes_version: str
    containerd_version: str = versions.CONTAINERD

    def config(self, url: str) -> dict[str, object]:
        """The stack config for a mirror served at `url`: kthw:binaryMirror, kthw:binaryDigests, the versions."""
        found: dict[str, object] = {
            "binaryMirror": url,
            "binaryDigests": dict(self.digests),
            "kubernetesVersion": self.kubernetes_version,
        }
        if self.containerd_version != versions.CONTAINERD:
            found["containerdVersion"] = self.containerd_version
        return found


def _release_config(kubernetes_version: str, containerd_version: str = versions.CONTAINERD) -> config.ClusterConfig:
    """The program's config at its default versions (Kubernetes and containerd may differ), without a mirror."""
    return config.load({"kubernetesVersion": kubernetes_version, "containerdVersion": containerd_version}, _REGION)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _tar_info(name: str, *, mode: int, size: int = 0, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.mtime = kind, mode, size, 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_tarball(out: Path, files: dict[str, Path], dirs: tuple[str, ...] = ()) -> None:
    """A reproducible .tar.gz: `dirs` then `files` (member name -> source), sorted, owner 0, mtime 0."""
    tmp = out.with_name(out.name + ".part")
    with (
        tmp.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=GZIP_LEVEL) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar,
    ):
        for d in sorted(dirs):
            tar.addfile(_tar_info(d, mode=0o755, kind=tarfile.DIRTYPE))
        for name, source in sorted(files.items()):
            with source.open("rb") as f:
                tar.addfile(_tar_info(name, mode=0o755, size=source.stat().st_size), f)
    tmp.replace(out)


def _layout(a: artifacts.Artifact, bins: Path, dest: Path) -> None:
    """Write artifact `a` at `dest` as its project publishes it, from the built files in `bins`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    _, names = SOURCES[a.name]
    if a.kind == "file":
        tmp = dest.with_name(dest.name + ".part")
        shutil.copyfile(bins / names[0], tmp)
        tmp.chmod(0o755)
        tmp.replace(dest)
        return
    if a.name == "etcd":
        top = a.members[0].split("/")[0]
        write_tarball(dest, {f"{top}/{n}": bins / n for n in names}, dirs=(top,))
    elif a.name == "containerd":
        write_tarball(dest, {f"bin/{n}": bins / n for n in names}, dirs=("bin",))
    elif a.name == "cni-plugins":
        write_tarball(dest, {f"./{n}": bins / n for n in names}, dirs=("./",))
    elif a.name == "crictl":
        write_tarball(dest, {n: bins / n for n in names})
    else:
        raise KeyError(f"no tarball layout for {a.name}")


def _recipe_for(artifact: str, kubernetes_version: str, containerd_version: str = versions.CONTAINERD) -> str:
    """The upstream build an artifact comes from: Kubernetes' and containerd's from the build of that very release."""
    recipe_name, _ = SOURCES[artifact]
    for product, version, builds in (
        ("kubernetes", kubernetes_version, KUBERNETES_BUILDS),
        ("containerd", containerd_version, CONTAINERD_BUILDS),
    ):
        if recipe_name != product:
            continue
        if version not in builds:
            raise ValueError(
                f"no build of {product} {version} (built: {', '.join(sorted(builds))}):"
                " add a recipe in tests/upstream/build.py"
            )
        return builds[version]
    return recipe_name


def _key(kubernetes_version: str, containerd_version: str = versions.CONTAINERD) -> str:
    """Everything that shapes the mirror: the versions, each recipe's build key, and this module."""
    stamps = {}
    for recipe_name in sorted({_recipe_for(a, kubernetes_version, containerd_version) for a in SOURCES}):
        bins = upstream.require(recipe_name)
        stamps[recipe_name] = (bins.parent / ".recipe").read_text()
    blob = json.dumps(
        {
            "kubernetes": kubernetes_version,
            "versions": [versions.ETCD, containerd_version, versions.RUNC, versions.CNI, versions.CRICTL],
            "recipes": stamps,
            "source": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _build_into(
    directory: Path, kubernetes_version: str, containerd_version: str = versions.CONTAINERD
) -> tuple[dict[str, str], dict[str, str]]:
    """Lay out every artifact under `directory`: (artifact -> digest, artifact -> path under the directory)."""
    cfg = _release_config(kubernetes_version, containerd_version)
    digests: dict[str, str] = {}
    paths: dict[str, str] = {}
    for name in artifacts.NAMES:
        a = artifacts.artifact(cfg, name)
        recipe_name = _recipe_for(name, kubernetes_version, containerd_version)
        relative = a.url.removeprefix("https://")
        _layout(a, upstream.require(recipe_name), directory / relative)
        digests[name] = _sha256(directory / relative)
        paths[name] = relative
    return digests, paths


def _build_cached(
    kubernetes_version: str, containerd_version: str = versions.CONTAINERD
) -> tuple[Path, dict[str, str], dict[str, str]]:
    """The mirror for one set of versions in the cache: (directory, artifact -> digest, artifact -> path)."""
    directory = cache_root() / f"mirror-{_key(kubernetes_version, containerd_version)}"
    stamp = directory / ".kthw-mirror.json"
    if stamp.exists():
        done = json.loads(stamp.read_text())
        return directory, done["digests"], done["paths"]
    shutil.rmtree(directory, ignore_errors=True)
    digests, paths = _build_into(directory, kubernetes_version, containerd_version)
    stamp.write_text(json.dumps({"digests": digests, "paths": paths}, indent=2, sort_keys=True) + "\n")
    return directory, digests, paths


def _link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        have, want = target.stat(), source.stat()
        # The same file, or the copy an earlier call made (copy2 keeps the mtime): nothing to do.
        if target.samefile(source) or (have.st_size, have.st_mtime_ns) == (want.st_size, want.st_mtime_ns):
            return
        target.unlink()
    try:
        os.link(source, target)
    except OSError:  # another filesystem: copy instead
        shutil.copy2(source, target)


def build_mirror(
    root: Path | None = None,
    *,
    kubernetes_version: str = versions.KUBERNETES,
    containerd_version: str = versions.CONTAINERD,
) -> Mirror:
    """The mirror of every artifact the program downloads at its default versions, laid out under `root`.

    The files are built once into the kthw cache (keyed by versions, upstream build keys and this
    module) and hard-linked into `root`; with no `root`, the cache directory itself is the mirror.
    Several calls with one `root` and different Kubernetes or containerd versions fill one mirror
    for a version bump.
    """
    directory, digests, paths = _build_cached(kubernetes_version, containerd_version)
    if root is None:
        return Mirror(directory, digests, kubernetes_version, containerd_version)
    for relative in paths.values():
        _link(directory / relative, root / relative)
    return Mirror(root, digests, kubernetes_version, containerd_version)


# --- serving inside a network namespace -----------------------------------------------------------

_CLONE_NEWNET = 0x40000000


def in_namespace(namespace_name: str, call: Callable[[], _T]) -> _T:
    """Run `call` on a thread that has joined network namespace `namespace_name`: its sockets live there.

    Only that thread switches (setns applies per thread), and it ends with the call.
    """
    result: list[_T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/run/netns/{namespace_name}", os.O_RDONLY)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    errno = ctypes.get_errno()
                    raise OSError(errno, f"setns into {namespace_name}: {os.strerror(errno)}")
            finally:
                os.close(fd)
            result.append(call())
        except BaseException as e:
            error.append(e)

    worker = threading.Thread(target=run, name=f"netns-{namespace_name}")
    worker.start()
    worker.join()
    if error:
        raise error[0]
    return result[0]


def wait_listening(namespace_name: str, address: str, port: int, timeout: float = 15.0) -> None:
    """Return once a TCP connect to address:port succeeds inside the namespace; raise TimeoutError after `timeout`."""

    def probe() -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection((address, port), timeout=1).close()
                return
            except OSError as e:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"nothing listens on {address}:{port} in {namespace_name}: {e}") from e
                time.sleep(0.05)

    in_namespace(namespace_name, probe)


def netns_command(namespace_name: str, *argv: str) -> list[str]:
    """argv run in the namespace (nsenter keeps /sys as it is, which `ip netns exec` remounts)."""
    return ["nsenter", f"--net=/run/netns/{namespace_name}", "--", *argv]


def serve_mirror(
    namespace_name: str, address: str, port: int, root: Path, log: Path | None = None
) -> subprocess.Popen[bytes]:
    """An HTTP server for `root` on address:port inside the namespace, in its own session; returns once it listens.

    The caller owns the address (on the namespace's bridge or lo) and stops the server (kill + wait).
    """
    argv = [sys.executable, "-m", "http.server", "--bind", address, "--directory", str(root), str(port)]
    return start_listening(namespace_name, argv, address, port, log)


def start_listening(
    namespace_name: str, argv: list[str], address: str, port: int, log: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start `argv` inside the namespace, in its own session, and return once address:port listens (else kill it)."""
    with contextlib.ExitStack() as stack:
        out: IO[bytes] | int = stack.enter_context(log.open("ab")) if log else subprocess.DEVNULL
        server = subprocess.Popen(
            netns_command(namespace_name, *argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        wait_listening(namespace_name, address, port)
    except BaseException:
        server.kill()
        server.wait()
        raise
    return server


@contextlib.contextmanager
def served(namespace_name: str, address: str, port: int, root: Path) -> Iterator[str]:
    """serve_mirror as a context: yields the mirror URL, kills the server on exit."""
    server = serve_mirror(namespace_name, address, port, root)
    try:
        yield f"http://{address}:{port}"
    finally:
        server.kill()
        server.wait()


if __name__ == "__main__":
    start = time.monotonic()
    built = build_mirror()
    print(f"mirror: {built.root} in {time.monotonic() - start:.1f}s")
    print(json.dumps(built.digests, indent=2, sort_keys=True))
