"""Real keys and certificates for tls and random resources under Pulumi's mocks, computed with `cryptography`.

`new_resource(type, name, inputs)` returns the outputs the real provider would compute (pulumi-tls 5.x, which
wraps terraform-provider-tls and Go's crypto/x509), or None for a type it does not handle. Values that depend
on unknown inputs (a preview before their dependencies exist) are left out, as the engine would leave them unknown.
Results are cached by (type, name, inputs) so a program evaluated twice in one process sees identical values.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import json
import secrets
from collections.abc import Mapping
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"

PRIVATE_KEY = "tls:index/privateKey:PrivateKey"
SELF_SIGNED_CERT = "tls:index/selfSignedCert:SelfSignedCert"
CERT_REQUEST = "tls:index/certRequest:CertRequest"
LOCALLY_SIGNED_CERT = "tls:index/locallySignedCert:LocallySignedCert"
RANDOM_BYTES = "random:index/randomBytes:RandomBytes"

# The provider's defaults when `algorithm`, `ecdsa_curve` or `rsa_bits` is not given.
DEFAULT_ALGORITHM = "RSA"
DEFAULT_CURVE = "P224"
DEFAULT_RSA_BITS = 2048

_CURVES: dict[str, ec.EllipticCurve] = {
    "P224": ec.SECP224R1(),
    "P256": ec.SECP256R1(),
    "P384": ec.SECP384R1(),
    "P521": ec.SECP521R1(),
}

# terraform-provider-tls's allowed_uses -> x509 KeyUsage flag names (cryptography's KeyUsage arguments).
KEY_USAGES: dict[str, str] = {
    "digital_signature": "digital_signature",
    "content_commitment": "content_commitment",
    "key_encipherment": "key_encipherment",
    "data_encipherment": "data_encipherment",
    "key_agreement": "key_agreement",
    "cert_signing": "key_cert_sign",
    "crl_signing": "crl_sign",
    "encipher_only": "encipher_only",
    "decipher_only": "decipher_only",
}

# ... and -> ExtendedKeyUsage OIDs (the Microsoft and Netscape ones as Go's crypto/x509 spells them).
EXTENDED_KEY_USAGES: dict[str, x509.ObjectIdentifier] = {
    "any_extended": ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
    "server_auth": ExtendedKeyUsageOID.SERVER_AUTH,
    "client_auth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "code_signing": ExtendedKeyUsageOID.CODE_SIGNING,
    "email_protection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "ipsec_end_system": x509.ObjectIdentifier("1.3.6.1.5.5.7.3.5"),
    "ipsec_tunnel": x509.ObjectIdentifier("1.3.6.1.5.5.7.3.6"),
    "ipsec_user": x509.ObjectIdentifier("1.3.6.1.5.5.7.3.7"),
    "timestamping": ExtendedKeyUsageOID.TIME_STAMPING,
    "ocsp_signing": ExtendedKeyUsageOID.OCSP_SIGNING,
    "microsoft_server_gated_crypto": x509.ObjectIdentifier("1.3.6.1.4.1.311.10.3.3"),
    "netscape_server_gated_crypto": x509.ObjectIdentifier("2.16.840.1.113730.4.1"),
    "microsoft_commercial_code_signing": x509.ObjectIdentifier("1.3.6.1.4.1.311.2.1.22"),
    "microsoft_kernel_code_signing": x509.ObjectIdentifier("1.3.6.1.4.1.311.61.1.1"),
}

# Subject fields in the order Go's pkix.Name.ToRDNSequence emits them.
_SUBJECT_FIELDS: tuple[tuple[str, x509.ObjectIdentifier], ...] = (
    ("country", NameOID.COUNTRY_NAME),
    ("province", NameOID.STATE_OR_PROVINCE_NAME),
    ("locality", NameOID.LOCALITY_NAME),
    ("streetAddresses", NameOID.STREET_ADDRESS),
    ("postalCode", NameOID.POSTAL_CODE),
    ("organization", NameOID.ORGANIZATION_NAME),
    ("organizationalUnit", NameOID.ORGANIZATIONAL_UNIT_NAME),
    ("commonName", NameOID.COMMON_NAME),
    ("serialNumber", NameOID.SERIAL_NUMBER),
    ("emailAddress", NameOID.EMAIL_ADDRESS),
)

PrivateKeyTypes = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

_cache: dict[str, dict[str, Any]] = {}


class _UnknownInputError(Exception):
    """An input the computation needs is not known yet (preview)."""


def new_resource(typ: str, name: str, inputs: Mapping[str, Any]) -> dict[str, Any] | None:
    """The provider-computed outputs of a tls/random resource, or None if `typ` is not one of them.

    `inputs` are plain, as a provider sees them: tests/harness.py strips the engine's secret markers.
    """
    handler = _HANDLERS.get(typ)
    if handler is None:
        return None
    if _has_unknown(inputs):
        # Any unknown input means the provider could only plan, not compute: every computed output stays unknown.
        return {}
    key = json.dumps([typ, name, inputs], sort_keys=True, default=repr)
    cached = _cache.get(key)
    if cached is None:
        try:
            cached = handler(inputs)
        except _UnknownInputError:
            return {}
        _cache[key] = cached
    return dict(cached)


def clear_cache() -> None:
    """Forget every computed value (a test that wants fresh keys)."""
    _cache.clear()


# --- helpers ---------------------------------------------------------------------------------------


def _has_unknown(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, str):
        return value == UNKNOWN
    if isinstance(value, Mapping):
        return any(_has_unknown(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_has_unknown(v) for v in value)
    # pulumi.output.Unknown (what the SDK deserializes UNKNOWN into during a preview).
    return type(value).__name__ == "Unknown"


def _required(inputs: Mapping[str, Any], key: str) -> Any:
    value = inputs.get(key)
    if value is None:
        raise _UnknownInputError(key)
    return value


def _load_key(pem: str) -> PrivateKeyTypes:
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
        raise ValueError(f"unsupported private key type {type(key).__name__}")
    return key


def _algorithm_name(key: PrivateKeyTypes | x509.Certificate | x509.CertificateSigningRequest) -> str:
    public = key.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        return "ECDSA"
    if isinstance(public, rsa.RSAPublicKey):
        return "RSA"
    return "ED25519"


def _signature_hash(key: PrivateKeyTypes) -> hashes.SHA256 | hashes.SHA384 | hashes.SHA512 | None:
    # Go's crypto/x509 picks the hash by key: SHA-384/512 for the larger curves, SHA-256 otherwise, none for Ed25519.
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.key_size > 384:
            return hashes.SHA512()
        if key.curve.key_size > 256:
            return hashes.SHA384()
    return hashes.SHA256()


def _subject(raw: Mapping[str, Any] | None) -> x509.Name:
    attributes: list[x509.NameAttribute] = []
    for field, oid in _SUBJECT_FIELDS:
        value = (raw or {}).get(field)
        if value is None or value == "":
            continue
        for item in value if isinstance(value, list) else [value]:
            attributes.append(x509.NameAttribute(oid, str(item)))
    return x509.Name(attributes)


def _sans(inputs: Mapping[str, Any]) -> list[x509.GeneralName]:
    # Go orders SANs as DNS names, then IP addresses, then URIs.
    names: list[x509.GeneralName] = [x509.DNSName(str(d)) for d in inputs.get("dnsNames") or []]
    names += [x509.IPAddress(ipaddress.ip_address(str(ip))) for ip in inputs.get("ipAddresses") or []]
    names += [x509.UniformResourceIdentifier(str(u)) for u in inputs.get("uris") or []]
    return names


def _rfc3339(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _ssh_blob(public_openssh: str) -> bytes:
    return base64.b64decode(public_openssh.split()[1])


# --- resources ---------------------------------------------------------------------------------


def _private_key(inputs: Mapping[str, Any]) -> dict[str, Any]:
    algorithm = str(inputs.get("algorithm") or DEFAULT_ALGORITHM)
    curve = str(inputs.get("ecdsaCurve") or DEFAULT_CURVE)
    bits = int(inputs.get("rsaBits") or DEFAULT_RSA_BITS)
    key: PrivateKeyTypes
    if algorithm == "ECDSA":
        if curve not in _CURVES:
            raise ValueError(f"unsupported ecdsa_curve {curve!r}")
        key = ec.generate_private_key(_CURVES[curve])
        # The provider writes EC keys as SEC 1 ("EC PRIVATE KEY") and RSA keys as PKCS#1.
        pem_format = serialization.PrivateFormat.TraditionalOpenSSL
    elif algorithm == "RSA":
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        pem_format = serialization.PrivateFormat.TraditionalOpenSSL
    elif algorithm == "ED25519":
        key = ed25519.Ed25519PrivateKey.generate()
        pem_format = serialization.PrivateFormat.PKCS8
    else:
        raise ValueError(f"unsupported algorithm {algorithm!r}")

    none = serialization.NoEncryption()
    public = key.public_key()
    outputs: dict[str, Any] = {
        "algorithm": algorithm,
        "ecdsaCurve": curve,
        "rsaBits": bits,
        "privateKeyPem": key.private_bytes(serialization.Encoding.PEM, pem_format, none).decode(),
        "privateKeyPemPkcs8": key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, none
        ).decode(),
        "publicKeyPem": public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode(),
    }
    if algorithm == "ECDSA" and curve == "P224":
        # SSH has no P-224 key type: the provider leaves the OpenSSH forms empty.
        outputs.update(
            privateKeyOpenssh="",
            publicKeyOpenssh="",
            publicKeyFingerprintMd5="",
            publicKeyFingerprintSha256="",
        )
        return outputs
    public_openssh = public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    blob = _ssh_blob(public_openssh)
    md5 = hashlib.md5(blob).hexdigest()  # the legacy SSH fingerprint is MD5 by definition
    outputs.update(
        privateKeyOpenssh=key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, none
        ).decode(),
        publicKeyOpenssh=public_openssh + "\n",
        publicKeyFingerprintMd5=":".join(md5[i : i + 2] for i in range(0, len(md5), 2)),
        publicKeyFingerprintSha256="SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("="),
    )
    return outputs


def _cert_request(inputs: Mapping[str, Any]) -> dict[str, Any]:
    key = _load_key(str(_required(inputs, "privateKeyPem")))
    builder = x509.CertificateSigningRequestBuilder().subject_name(_subject(inputs.get("subject")))
    sans = _sans(inputs)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    csr = builder.sign(key, _signature_hash(key))
    return {
        "certRequestPem": csr.public_bytes(serialization.Encoding.PEM).decode(),
        "keyAlgorithm": _algorithm_name(key),
    }


def _sign(
    inputs: Mapping[str, Any],
    *,
    subject: x509.Name,
    sans: list[x509.GeneralName],
    public_key: Any,
    issuer: x509.Name,
    issuer_key: PrivateKeyTypes,
    issuer_ski: bytes | None,
    self_signed: bool,
) -> dict[str, Any]:
    """Build a certificate as terraform-provider-tls's createCertificate with Go's crypto/x509 does."""
    hours = int(_required(inputs, "validityPeriodHours"))
    uses = [str(u) for u in inputs.get("allowedUses") or []]
    is_ca = bool(inputs.get("isCaCertificate"))
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    not_after = now + datetime.timedelta(hours=hours)

    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(secrets.randbits(128) or 1)
        .not_valid_before(now)
        .not_valid_after(not_after)
    )
    # The provider always sets BasicConstraintsValid; Go marks the extension critical.
    max_path = inputs.get("maxPathLength")
    path_length = int(max_path) if is_ca and max_path is not None and int(max_path) > 0 else None
    builder = builder.add_extension(x509.BasicConstraints(ca=is_ca, path_length=path_length), critical=True)

    flags = {name: False for name in KEY_USAGES.values()}
    for use in uses:
        if use in KEY_USAGES:
            flags[KEY_USAGES[use]] = True
    if any(flags.values()):
        if not flags["key_agreement"]:
            flags["encipher_only"] = flags["decipher_only"] = False
        builder = builder.add_extension(x509.KeyUsage(**flags), critical=True)
    ekus = [EXTENDED_KEY_USAGES[u] for u in uses if u in EXTENDED_KEY_USAGES]
    if ekus:
        builder = builder.add_extension(x509.ExtendedKeyUsage(ekus), critical=False)

    ski: bytes | None = None
    if is_ca or inputs.get("setSubjectKeyId"):
        ski = x509.SubjectKeyIdentifier.from_public_key(public_key).digest
        builder = builder.add_extension(x509.SubjectKeyIdentifier(ski), critical=False)
    if self_signed:
        if inputs.get("setAuthorityKeyId") and ski is not None:
            builder = builder.add_extension(_aki(ski), critical=False)
    elif issuer_ski:
        # Go copies the issuer's subject key id into every certificate it signs.
        builder = builder.add_extension(_aki(issuer_ski), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=len(subject) == 0)

    cert = builder.sign(issuer_key, _signature_hash(issuer_key))
    return {
        "certPem": cert.public_bytes(serialization.Encoding.PEM).decode(),
        "validityStartTime": _rfc3339(now),
        "validityEndTime": _rfc3339(not_after),
        "readyForRenewal": False,
        "earlyRenewalHours": inputs.get("earlyRenewalHours") or 0,
        "setSubjectKeyId": bool(inputs.get("setSubjectKeyId")),
    }


def _aki(issuer_ski: bytes) -> x509.AuthorityKeyIdentifier:
    return x509.AuthorityKeyIdentifier(
        key_identifier=issuer_ski, authority_cert_issuer=None, authority_cert_serial_number=None
    )


def _self_signed_cert(inputs: Mapping[str, Any]) -> dict[str, Any]:
    key = _load_key(str(_required(inputs, "privateKeyPem")))
    subject = _subject(inputs.get("subject"))
    if inputs.get("isCaCertificate") and len(subject) == 0:
        raise ValueError("Invalid Certificate Subject: a CA needs at least one distinguished name")
    outputs = _sign(
        inputs,
        subject=subject,
        sans=_sans(inputs),
        public_key=key.public_key(),
        issuer=subject,
        issuer_key=key,
        issuer_ski=None,
        self_signed=True,
    )
    outputs["keyAlgorithm"] = _algorithm_name(key)
    return outputs


def _locally_signed_cert(inputs: Mapping[str, Any]) -> dict[str, Any]:
    csr = x509.load_pem_x509_csr(str(_required(inputs, "certRequestPem")).encode())
    if not csr.is_signature_valid:
        raise ValueError("certificate request signature is invalid")
    ca_key = _load_key(str(_required(inputs, "caPrivateKeyPem")))
    ca_cert = x509.load_pem_x509_certificate(str(_required(inputs, "caCertPem")).encode())
    try:
        ca_ski: bytes | None = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        ca_ski = None
    try:
        sans = list(csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        sans = []
    outputs = _sign(
        inputs,
        subject=csr.subject,
        sans=sans,
        public_key=csr.public_key(),
        issuer=ca_cert.subject,
        issuer_key=ca_key,
        issuer_ski=ca_ski,
        self_signed=False,
    )
    outputs["caKeyAlgorithm"] = _algorithm_name(ca_key)
    return outputs


def _random_bytes(inputs: Mapping[str, Any]) -> dict[str, Any]:
    length = int(_required(inputs, "length"))
    data = secrets.token_bytes(length)
    return {"length": length, "base64": base64.b64encode(data).decode(), "hex": data.hex()}


_HANDLERS = {
    PRIVATE_KEY: _private_key,
    CERT_REQUEST: _cert_request,
    SELF_SIGNED_CERT: _self_signed_cert,
    LOCALLY_SIGNED_CERT: _locally_signed_cert,
    RANDOM_BYTES: _random_bytes,
}
