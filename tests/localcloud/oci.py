"""Reproducible single-platform (linux/amd64) OCI images written from Python: layer tars, config, manifest, layout.

No image tool is involved: a layer is a tar of `Entry`s (sorted, owner 0 unless given, mtime 0,
gzip without time or name), the config and manifest are canonical JSON, and everything lands in an
OCI image layout (oci-layout, index.json, blobs/sha256/...) whose index names each image by its
reference (org.opencontainers.image.ref.name). Same inputs, same digests.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"
# Every timestamp in an image (tar members, config "created"): the epoch, so rebuilds are identical.
EPOCH = "1970-01-01T00:00:00Z"
GZIP_LEVEL = 1
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Entry:
    """One path in a layer: a file (from `source` or `data`), a directory, or a symlink (`link`)."""

    path: str
    mode: int = 0o644
    source: Path | None = None
    data: bytes | None = None
    link: str | None = None
    directory: bool = False
    uid: int = 0
    gid: int = 0
    # Extended attributes as the image's tar carries them (PAX SCHILY.xattr.*), e.g. file capabilities.
    xattrs: tuple[tuple[str, bytes], ...] = ()

    @property
    def name(self) -> str:
        return self.path.strip("/")


def file_capability(*caps: int) -> bytes:
    """A security.capability xattr (VFS_CAP_REVISION_2) with `caps` permitted and effective, as `setcap +ep` writes."""
    permitted = 0
    for cap in caps:
        permitted |= 1 << cap
    magic_and_effective = 0x02000000 | 0x000001
    words = (magic_and_effective, permitted & 0xFFFFFFFF, 0, permitted >> 32, 0)
    return b"".join(w.to_bytes(4, "little") for w in words)


CAP_NET_BIND_SERVICE = 10


def _tar_info(entry: Entry) -> tarfile.TarInfo:
    info = tarfile.TarInfo(entry.name + ("/" if entry.directory else ""))
    info.mtime = 0
    info.uid, info.gid = entry.uid, entry.gid
    info.uname = info.gname = ""
    info.mode = entry.mode
    if entry.directory:
        info.type = tarfile.DIRTYPE
    elif entry.link is not None:
        info.type, info.linkname = tarfile.SYMTYPE, entry.link
    if entry.xattrs:
        # Every byte of a capability value is below 0x80, so latin-1 text round-trips it through PAX.
        info.pax_headers = {f"SCHILY.xattr.{k}": v.decode("latin-1") for k, v in entry.xattrs}
    return info


def _with_parents(entries: Iterable[Entry]) -> list[Entry]:
    """The entries plus a 0755 directory for every parent not listed, sorted by path."""
    by_name = {e.name: e for e in entries}
    for name in list(by_name):
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            parent = "/".join(parts[:i])
            by_name.setdefault(parent, Entry(parent, 0o755, directory=True))
    return [by_name[n] for n in sorted(by_name)]


@dataclass(frozen=True)
class Blob:
    """A layer as stored (gzip) with its digest and the digest of its uncompressed tar (the config's diff_id)."""

    data: bytes
    digest: str
    diff_id: str


def layer(entries: Iterable[Entry]) -> Blob:
    """A reproducible gzip'd tar of `entries` (parents added, sorted, mtime 0)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in _with_parents(entries):
            info = _tar_info(entry)
            if entry.directory or entry.link is not None:
                tar.addfile(info)
                continue
            content = entry.data if entry.data is not None else entry.source.read_bytes() if entry.source else b""
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    tar_bytes = raw.getvalue()
    packed = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=packed, mtime=0, compresslevel=GZIP_LEVEL) as gz:
        gz.write(tar_bytes)
    data = packed.getvalue()
    return Blob(data, _digest(data), _digest(tar_bytes))


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical(value: Any) -> bytes:
    """JSON with sorted keys and no spaces: the same value always serialises to the same digest."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class ImageSpec:
    """An image to build: its full reference (registry/repository:tag), layers bottom-up, and runtime config."""

    reference: str
    layers: tuple[Blob, ...]
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    user: str = ""
    env: tuple[str, ...] = (f"PATH={DEFAULT_PATH}",)
    working_dir: str = "/"
    exposed_ports: tuple[str, ...] = ()
    stop_signal: str = ""
    labels: dict[str, str] = field(default_factory=dict)


def image_config(spec: ImageSpec) -> dict[str, Any]:
    """The OCI image config: linux/amd64, the runtime settings, the layers' diff_ids."""
    runtime: dict[str, Any] = {"Env": list(spec.env), "WorkingDir": spec.working_dir}
    if spec.entrypoint:
        runtime["Entrypoint"] = list(spec.entrypoint)
    if spec.cmd:
        runtime["Cmd"] = list(spec.cmd)
    if spec.user:
        runtime["User"] = spec.user
    if spec.exposed_ports:
        runtime["ExposedPorts"] = {p: {} for p in spec.exposed_ports}
    if spec.stop_signal:
        runtime["StopSignal"] = spec.stop_signal
    if spec.labels:
        runtime["Labels"] = dict(spec.labels)
    return {
        "architecture": "amd64",
        "os": "linux",
        "created": EPOCH,
        "config": runtime,
        "rootfs": {"type": "layers", "diff_ids": [b.diff_id for b in spec.layers]},
        "history": [
            {"created": EPOCH, "created_by": "kthw local cloud (tests/localcloud/oci.py)"} for _ in spec.layers
        ],
    }


@dataclass(frozen=True)
class Descriptor:
    """A content descriptor: media type, digest, size."""

    media_type: str
    digest: str
    size: int

    def json(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


def write_layout(root: Path, specs: Sequence[ImageSpec]) -> dict[str, Descriptor]:
    """Write `specs` as one OCI image layout at `root`; returns reference -> manifest descriptor."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)

    def put(data: bytes, media_type: str) -> Descriptor:
        digest = _digest(data)
        path = blobs / digest.removeprefix("sha256:")
        if not path.exists():
            path.write_bytes(data)
        return Descriptor(media_type, digest, len(data))

    manifests: dict[str, Descriptor] = {}
    for spec in specs:
        config = put(canonical(image_config(spec)), CONFIG)
        layers = [put(b.data, LAYER) for b in spec.layers]
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": config.json(),
            "layers": [d.json() for d in layers],
        }
        manifests[spec.reference] = put(canonical(manifest), MANIFEST)
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{**d.json(), "annotations": {REF_NAME: ref}} for ref, d in sorted(manifests.items())],
    }
    (root / "oci-layout").write_bytes(canonical({"imageLayoutVersion": "1.0.0"}))
    (root / "index.json").write_bytes(canonical(index))
    return manifests


def read_layout(root: Path) -> dict[str, Descriptor]:
    """reference -> manifest descriptor, from a layout's index.json."""
    index = json.loads((root / "index.json").read_text())
    return {m["annotations"][REF_NAME]: Descriptor(m["mediaType"], m["digest"], m["size"]) for m in index["manifests"]}


def blob_path(root: Path, digest: str) -> Path:
    return root / "blobs" / "sha256" / digest.removeprefix("sha256:")
