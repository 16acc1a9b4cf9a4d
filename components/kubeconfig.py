"""Kubeconfigs (KTHW ch. 5) and the secret-encryption config (KTHW ch. 6): pure dict -> YAML renderers."""

from __future__ import annotations

import base64
import binascii
from typing import Any

import pulumi

from components.pki import CertPair
from components.render import to_yaml

CLUSTER_NAME = "kubernetes-the-hard-way"
CONTEXT_NAME = "default"

# The user names KTHW gives each kubeconfig; they match the certificates' common names.
ADMIN_USER = "admin"
KUBE_PROXY_USER = "system:kube-proxy"
CONTROLLER_MANAGER_USER = "system:kube-controller-manager"
SCHEDULER_USER = "system:kube-scheduler"

ENCRYPTION_KEY_BYTES = 32  # aescbc takes a 32-byte (AES-256) key
ENCRYPTION_KEY_NAME = "key1"


def kubelet_user(worker: str) -> str:
    """A kubelet's user: system:node:<worker>, the only name the Node authorizer admits."""
    return f"system:node:{worker}"


def _b64(pem: str) -> str:
    return base64.b64encode(pem.encode()).decode()


def kubeconfig_dict(*, server: str, user: str, ca_pem: str, cert_pem: str, key_pem: str) -> dict[str, Any]:
    """A kubeconfig with one cluster, one user and one context, every credential embedded."""
    if not server.startswith("https://"):
        raise ValueError(f"kubeconfig server must be an https:// URL, got {server!r}")
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": CLUSTER_NAME,
                "cluster": {"certificate-authority-data": _b64(ca_pem), "server": server},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {"client-certificate-data": _b64(cert_pem), "client-key-data": _b64(key_pem)},
            }
        ],
        "contexts": [{"name": CONTEXT_NAME, "context": {"cluster": CLUSTER_NAME, "user": user}}],
        "current-context": CONTEXT_NAME,
        "preferences": {},
    }


def render_kubeconfig(*, server: str, user: str, ca_pem: str, cert_pem: str, key_pem: str) -> str:
    """The kubeconfig as YAML text, ready to write to a node or hand to kubectl."""
    doc = kubeconfig_dict(server=server, user=user, ca_pem=ca_pem, cert_pem=cert_pem, key_pem=key_pem)
    return to_yaml(doc)


def kubeconfig_output(*, server: pulumi.Input[str], user: str, ca: CertPair, client: CertPair) -> pulumi.Output[str]:
    """render_kubeconfig over Outputs; always secret, since it embeds a private key."""
    rendered = pulumi.Output.all(server, ca.cert_pem, client.cert_pem, client.key_pem).apply(
        lambda v: render_kubeconfig(server=v[0], user=user, ca_pem=v[1], cert_pem=v[2], key_pem=v[3])
    )
    return pulumi.Output.secret(rendered)


def encryption_config_dict(key_b64: str) -> dict[str, Any]:
    """EncryptionConfiguration: Secrets encrypted with aescbc; identity last so unencrypted data stays readable."""
    try:
        raw = base64.b64decode(key_b64, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("encryption key must be base64") from None
    if len(raw) != ENCRYPTION_KEY_BYTES:
        raise ValueError(f"encryption key must decode to {ENCRYPTION_KEY_BYTES} bytes (AES-256), got {len(raw)}")
    return {
        "kind": "EncryptionConfiguration",
        "apiVersion": "apiserver.config.k8s.io/v1",
        "resources": [
            {
                "resources": ["secrets"],
                "providers": [
                    {"aescbc": {"keys": [{"name": ENCRYPTION_KEY_NAME, "secret": key_b64}]}},
                    {"identity": {}},
                ],
            }
        ],
    }


def render_encryption_config(key_b64: str) -> str:
    """The API server's --encryption-provider-config file; ValueError unless the key is base64 of 32 bytes."""
    return to_yaml(encryption_config_dict(key_b64))


def encryption_config_output(key: pulumi.Input[str]) -> pulumi.Output[str]:
    """render_encryption_config over an Output; always secret."""
    return pulumi.Output.secret(pulumi.Output.from_input(key).apply(render_encryption_config))
