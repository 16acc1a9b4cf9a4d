"""A local `tls` provider plugin (pulumi-tls 5.x's resources) with real keys and certificates.

The computation is tests/fake_tls.py's, which the unit tier already checks against openssl; this
module only puts it behind the engine's protocol with the real provider's replacement rules: every
input of a key, request or certificate forces a new one, except a certificate's early renewal window.
"""

from __future__ import annotations

import uuid
from typing import Any

from tests import fake_tls
from tests.engine.providers.base import Kind, LocalProvider, serve

VERSION = "5.6.2"


def keep_computed(olds: dict[str, Any], news: dict[str, Any]) -> dict[str, Any]:
    """An in-place update changes no computed value: keep every output that is not an input."""
    return {k: v for k, v in olds.items() if k not in news}


def _kind(
    token: str, secret: frozenset[str], computed: frozenset[str], updatable: frozenset[str] = frozenset()
) -> Kind:
    def create(name: str, inputs: dict[str, Any], preview: bool) -> tuple[str, dict[str, Any]]:
        if preview:
            return "", {}
        # fake_tls caches by (type, name, inputs) for the mocks; a replacement must get a fresh key.
        fake_tls.clear_cache()
        outputs = fake_tls.new_resource(token, name, inputs)
        if outputs is None:
            raise ValueError(f"fake_tls does not compute {token}")
        return uuid.uuid4().hex, outputs

    def update(_id: str, _name: str, olds: dict[str, Any], news: dict[str, Any], _preview: bool) -> dict[str, Any]:
        return keep_computed(olds, news)

    def defaults(inputs: dict[str, Any]) -> dict[str, Any]:
        if token == fake_tls.PRIVATE_KEY:
            return {"ecdsaCurve": fake_tls.DEFAULT_CURVE, "rsaBits": float(fake_tls.DEFAULT_RSA_BITS)}
        return {}

    return Kind(
        token=token,
        create=create,
        update=update if updatable else None,
        defaults=defaults,
        updatable=updatable,
        secret_outputs=secret,
        computed=computed,
    )


_KEY_OUTPUTS = frozenset(
    {
        "privateKeyPem",
        "privateKeyPemPkcs8",
        "privateKeyOpenssh",
        "publicKeyPem",
        "publicKeyOpenssh",
        "publicKeyFingerprintMd5",
        "publicKeyFingerprintSha256",
    }
)
_CERT_OUTPUTS = frozenset({"certPem", "validityStartTime", "validityEndTime", "readyForRenewal"})

KINDS = [
    _kind(
        fake_tls.PRIVATE_KEY,
        secret=frozenset({"privateKeyPem", "privateKeyPemPkcs8", "privateKeyOpenssh"}),
        computed=_KEY_OUTPUTS,
    ),
    _kind(
        fake_tls.SELF_SIGNED_CERT,
        secret=frozenset({"privateKeyPem"}),
        computed=_CERT_OUTPUTS | {"keyAlgorithm"},
        updatable=frozenset({"earlyRenewalHours"}),
    ),
    _kind(
        fake_tls.CERT_REQUEST,
        secret=frozenset({"privateKeyPem"}),
        computed=frozenset({"certRequestPem", "keyAlgorithm"}),
    ),
    _kind(
        fake_tls.LOCALLY_SIGNED_CERT,
        secret=frozenset({"caPrivateKeyPem"}),
        computed=_CERT_OUTPUTS | {"caKeyAlgorithm"},
        updatable=frozenset({"earlyRenewalHours"}),
    ),
]


if __name__ == "__main__":
    serve(VERSION, LocalProvider(KINDS))
