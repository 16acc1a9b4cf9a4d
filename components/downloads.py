"""What the program downloads: every artifact by name, and the SHA-256 pinned for each at its default version.

Config checks kthw:binaryDigests against these names and artifacts.py builds the downloads from them,
so both import this module and neither imports the other.
"""

from __future__ import annotations

import re

from components import versions

# Every artifact a node may ask for, in the order the script installs them.
NAMES = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kubelet",
    "kube-proxy",
    "containerd",
    "runc",
    "cni-plugins",
    "crictl",
)
# Digests of the default versions, pinned so a compromised mirror cannot also forge the checksum
# file beside the binary (values as kubespray's checksums publish them). Any other version is
# checked against the checksum file its project publishes next to the release.
PINNED: dict[tuple[str, str], str] = {
    ("kubectl", versions.KUBERNETES): "8b8f088da2dab964f853b38464033b1be15ede2839eca751482357c45abdd05a",
    ("kubelet", versions.KUBERNETES): "cf2562db46c48ab84cc3791540778ee7fb1a0a008529adbb434723dd02ed8b4b",
    ("etcd", versions.ETCD): "ffe840ff9295808e88cce2794a18a5ac87f12a5203c8314d0bf6aa119b41bac5",
    ("containerd", versions.CONTAINERD): "9d68969855fbf676cdb8ed758e420fb048d61f984f61de3e53eddfebe484d168",
    ("runc", versions.RUNC): "f6ae8efc0fa40079e1475e97cbe9d1bd3f106a28d6af78a11d9f1bd565515e60",
    ("cni-plugins", versions.CNI): "b98f74a0f8522f0a83867178729c1aa70f2158f90c45a2ca8fa791db1c76b303",
    ("crictl", versions.CRICTL): "83855e114566a8a8c44c548d515670f51de3a5e1da8b2effb59870e2f10c25a3",
}

# A SHA-256 as sha256sum prints it.
SHA256 = re.compile(r"^[0-9a-f]{64}$")
