"""Downloaded binaries: where each comes from, its SHA-256, where it installs, and the script that installs it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from components import bounds
from components.config import ClusterConfig
from components.downloads import NAMES, PINNED, SHA256
from components.render import render

BIN_DIR = "/usr/local/bin"
CNI_BIN_DIR = "/opt/cni/bin"

KUBERNETES_BINARIES = frozenset(
    {"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kubelet", "kube-proxy"}
)


@dataclass(frozen=True)
class Artifact:
    """One download: its URL, how to check it, and which files it puts where.

    `checksum` is either a pinned SHA-256 or the URL of the published checksum file.
    kind "file" installs the download itself as `members[0]`; kind "tar" installs the listed
    tarball members (`dir/*` meaning every executable file directly in dir), each under its basename.
    """

    name: str
    version: str
    kind: str
    url: str
    checksum: str
    dest: str
    members: tuple[str, ...]

    @property
    def pinned(self) -> bool:
        return bool(SHA256.match(self.checksum))


def _mirrored(config: ClusterConfig, url: str) -> str:
    """With a binary mirror, https://host/path is fetched as <mirror>/host/path (air-gapped installs)."""
    if config.binary_mirror is None:
        return url
    return f"{config.binary_mirror}/{url.removeprefix('https://')}"


def _upstream(config: ClusterConfig, name: str) -> tuple[str, str, str, str, str, tuple[str, ...]]:
    """(version, kind, url, checksum file url, dest, members) as each project publishes its release."""
    v = config.versions
    if name in KUBERNETES_BINARIES:
        url = f"https://dl.k8s.io/v{v.kubernetes}/bin/linux/amd64/{name}"
        return v.kubernetes, "file", url, f"{url}.sha256", BIN_DIR, (name,)
    if name == "etcd":
        base = f"https://github.com/etcd-io/etcd/releases/download/v{v.etcd}"
        top = f"etcd-v{v.etcd}-linux-amd64"
        members = tuple(f"{top}/{b}" for b in ("etcd", "etcdctl", "etcdutl"))
        return v.etcd, "tar", f"{base}/{top}.tar.gz", f"{base}/SHA256SUMS", BIN_DIR, members
    if name == "containerd":
        tarball = (
            f"https://github.com/containerd/containerd/releases/download/v{v.containerd}/"
            f"containerd-{v.containerd}-linux-amd64.tar.gz"
        )
        return v.containerd, "tar", tarball, f"{tarball}.sha256sum", BIN_DIR, ("bin/*",)
    if name == "runc":
        base = f"https://github.com/opencontainers/runc/releases/download/v{v.runc}"
        return v.runc, "file", f"{base}/runc.amd64", f"{base}/runc.sha256sum", BIN_DIR, ("runc",)
    if name == "cni-plugins":
        tgz = (
            f"https://github.com/containernetworking/plugins/releases/download/v{v.cni}/"
            f"cni-plugins-linux-amd64-v{v.cni}.tgz"
        )
        # The tarball also holds LICENSE and README.md; "*" takes only the executables.
        return v.cni, "tar", tgz, f"{tgz}.sha256", CNI_BIN_DIR, ("*",)
    if name == "crictl":
        tarball = (
            f"https://github.com/kubernetes-sigs/cri-tools/releases/download/v{v.crictl}/"
            f"crictl-v{v.crictl}-linux-amd64.tar.gz"
        )
        return v.crictl, "tar", tarball, f"{tarball}.sha256", BIN_DIR, ("crictl",)
    raise KeyError(f"unknown artifact {name!r}; known: {', '.join(NAMES)}")


def artifact(config: ClusterConfig, name: str) -> Artifact:
    """The artifact `name` at the version config asks for, fetched from the mirror when one is set.

    A digest from kthw:binaryDigests wins over the pinned one and the published checksum file: the
    user vouches for that file (a local build, their own release), whatever version it claims.
    """
    version, kind, url, checksum_url, dest, members = _upstream(config, name)
    pinned = dict(config.binary_digests).get(name) or PINNED.get((name, version))
    return Artifact(
        name=name,
        version=version,
        kind=kind,
        url=_mirrored(config, url),
        checksum=pinned if pinned else _mirrored(config, checksum_url),
        dest=dest,
        members=members,
    )


def manifest_line(a: Artifact) -> str:
    """One line of the script's manifest: name version kind url checksum dest members (comma-separated)."""
    fields = (a.name, a.version, a.kind, a.url, a.checksum, a.dest, ",".join(a.members))
    for f in fields:
        if not f or any(c.isspace() for c in f):
            raise ValueError(f"artifact {a.name}: field {f!r} is empty or holds whitespace")
    return " ".join(fields)


def install_script(config: ClusterConfig, node: str, names: Sequence[str], *, curl: bounds.Curl = bounds.CURL) -> str:
    """A bash script that downloads, verifies (SHA-256) and installs `names` on `node`, idempotently.

    `curl` bounds every download (tests render short bounds to run a hung download for real).
    """
    if not names:
        raise ValueError("install_script needs at least one artifact name")
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        raise KeyError(f"unknown artifacts {unknown}; known: {', '.join(NAMES)}")
    ordered = [n for n in NAMES if n in set(names)]
    return render(
        "common/install-binaries.sh",
        node=node,
        manifest="\n".join(manifest_line(artifact(config, n)) for n in ordered),
        **curl.template_values(),
    )
