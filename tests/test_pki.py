"""The PKI (KTHW ch. 4) under mocks with real X.509 from tests/fake_tls.py, checked by cryptography and openssl."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pulumi
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from components import config as config_mod
from components import pki as pki_mod
from components.config import ClusterConfig
from components.pki import CertPair, Pki, PkiArgs
from platforms import gcp
from tests import fake_tls
from tests.harness import Recording, run_components, watch
from tests.tools import require_tool

GCP = {"gcp:project": "kthw-test", "gcp:region": "us-west1", "gcp:zone": "us-west1-c"}
PUBLIC_ADDRESS = "203.0.113.100"
TLS_TYPES = {
    fake_tls.PRIVATE_KEY,
    fake_tls.CERT_REQUEST,
    fake_tls.SELF_SIGNED_CERT,
    fake_tls.LOCALLY_SIGNED_CERT,
    fake_tls.RANDOM_BYTES,
}


def external_ip(worker: str) -> str:
    return f"198.51.100.{10 + int(worker.rsplit('-', 1)[1])}"


def make_config(**kthw: Any) -> ClusterConfig:
    return config_mod.load(kthw, GCP)


def run_mocked(build: Callable[[], Mapping[str, pulumi.Output[Any]]], *, preview: bool = False) -> Recording:
    """run_components(build), watching every Output `build` returns under its key (Recording.values)."""

    def program() -> None:
        for key, out in build().items():
            watch(key, out)

    return run_components(program, preview=preview)


def pki_outputs(pki: Pki) -> dict[str, pulumi.Output[Any]]:
    """Every CertPair of a Pki, flattened as '<attr>.cert' / '<attr>.key', plus the encryption key."""
    pairs: dict[str, CertPair] = {
        "ca": pki.ca,
        "api_server": pki.api_server,
        **{i.attr: getattr(pki, i.attr) for i in pki_mod.IDENTITIES},
        **{f"kubelet:{w}": pair for w, pair in pki.kubelets.items()},
        "front_proxy_ca": pki.front_proxy_ca,
        "front_proxy_client": pki.front_proxy_client,
    }
    if pki.metrics_server is not None:
        pairs["metrics_server"] = pki.metrics_server
    out: dict[str, pulumi.Output[Any]] = {}
    for label, pair in pairs.items():
        out[f"{label}.cert"] = pair.cert_pem
        out[f"{label}.key"] = pair.key_pem
    out["encryption_key"] = pki.encryption_key
    return out


def build_pki(cfg: ClusterConfig, *, preview: bool = False) -> Recording:
    def build() -> dict[str, pulumi.Output[Any]]:
        ips = {w.name: external_ip(w.name) for w in cfg.workers}
        return pki_outputs(
            Pki("kthw-pki", PkiArgs(cfg, gcp.api_endpoint(PUBLIC_ADDRESS), {w: [ip] for w, ip in ips.items()}))
        )

    return run_mocked(build, preview=preview)


SHAPES = {"1+1": {"controllerCount": 1, "workerCount": 1}, "3+3": {"controllerCount": 3, "workerCount": 3}}


@pytest.fixture(scope="module", params=sorted(SHAPES))
def shaped(request: pytest.FixtureRequest) -> tuple[ClusterConfig, Recording]:
    cfg = make_config(**SHAPES[request.param])
    return cfg, build_pki(cfg)


def cert(run: Recording, label: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(run.values[f"{label}.cert"].value.encode())


def leaf_labels(cfg: ClusterConfig) -> list[str]:
    """Every leaf the cluster CA signs (the front-proxy client is the front-proxy CA's)."""
    extra = ["metrics_server"] if cfg.metrics_server else []
    return ["api_server", *(i.attr for i in pki_mod.IDENTITIES), *(f"kubelet:{w.name}" for w in cfg.workers), *extra]


def all_leaf_labels(cfg: ClusterConfig) -> list[str]:
    return [*leaf_labels(cfg), "front_proxy_client"]


def names(c: x509.Certificate, oid: x509.ObjectIdentifier) -> list[str]:
    return [str(a.value) for a in c.subject.get_attributes_for_oid(oid)]


def key_usage(c: x509.Certificate) -> set[str]:
    ku = c.extensions.get_extension_for_class(x509.KeyUsage).value
    flags = ("digital_signature", "key_encipherment", "key_cert_sign", "crl_sign", "content_commitment")
    return {f for f in flags if getattr(ku, f)}


def ext_key_usage(c: x509.Certificate) -> set[x509.ObjectIdentifier]:
    try:
        return set(c.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return set()


def sans(c: x509.Certificate) -> tuple[list[str], list[str]]:
    san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(ip) for ip in san.get_values_for_type(x509.IPAddress)], san.get_values_for_type(x509.DNSName)


# --- pure functions -----------------------------------------------------------------------------------


def test_api_server_sans_follow_config() -> None:
    ips, dns = pki_mod.api_server_sans(make_config(controllerCount=3))
    assert ips == ["10.32.0.1", "10.240.0.10", "10.240.0.11", "10.240.0.12", "127.0.0.1"]
    assert dns == [
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster",
        "kubernetes.svc.cluster.local",
        "kubernetes.default.svc.cluster.local",
    ]
    ips, _ = pki_mod.api_server_sans(make_config(controllerCount=1, serviceCidr="10.96.0.0/16", nodeCidr="10.0.0.0/24"))
    assert ips == ["10.96.0.1", "10.0.0.10", "127.0.0.1"]


def test_identity_table_is_kthws() -> None:
    table = {i.file: (i.common_name, i.organization) for i in pki_mod.IDENTITIES}
    assert table == {
        "admin": ("admin", "system:masters"),
        "kube-controller-manager": ("system:kube-controller-manager", "system:kube-controller-manager"),
        "kube-proxy": ("system:kube-proxy", "system:node-proxier"),
        "kube-scheduler": ("system:kube-scheduler", "system:kube-scheduler"),
        "service-account": ("service-accounts", "Kubernetes"),
    }
    assert (pki_mod.API_SERVER.common_name, pki_mod.API_SERVER.organization) == ("kubernetes", "Kubernetes")
    kubelet = pki_mod.kubelet_identity("worker-2")
    assert (kubelet.common_name, kubelet.organization) == ("system:node:worker-2", "system:nodes")


def test_early_renewal_is_a_quarter_capped_at_30_days() -> None:
    assert pki_mod.early_renewal_hours(24) == 6
    assert pki_mod.early_renewal_hours(8760) == 720
    assert pki_mod.CA_VALIDITY_HOURS >= 2 * 87600  # outlives any leaf config allows, issued in its first half


# --- the component under mocks --------------------------------------------------------------------------


def test_every_leaf_is_issued_by_the_ca(shaped: tuple[ClusterConfig, Recording]) -> None:
    cfg, run = shaped
    ca = cert(run, "ca")
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    labels = leaf_labels(cfg)
    assert len(labels) == 7 + len(cfg.workers)
    for label in labels:
        leaf = cert(run, label)
        leaf.verify_directly_issued_by(ca)
        bc = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
        assert bc.critical and bc.value.ca is False, label
        aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        assert aki.key_identifier == ca_ski, label
        lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
        assert lifetime == datetime.timedelta(hours=cfg.cert_validity_hours), label
        # The key handed out with the cert is the cert's key, ECDSA P-256.
        key = serialization.load_pem_private_key(run.values[f"{label}.key"].value.encode(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1", label
        assert key.public_key() == leaf.public_key(), label


def test_ca_is_kthws_ca(shaped: tuple[ClusterConfig, Recording]) -> None:
    _, run = shaped
    ca = cert(run, "ca")
    assert ca.subject == ca.issuer
    assert names(ca, NameOID.COMMON_NAME) == ["Kubernetes"]
    assert names(ca, NameOID.ORGANIZATION_NAME) == ["Kubernetes"]
    assert names(ca, NameOID.ORGANIZATIONAL_UNIT_NAME) == ["CA"]
    assert names(ca, NameOID.COUNTRY_NAME) == ["US"]
    assert names(ca, NameOID.LOCALITY_NAME) == ["Portland"]
    assert names(ca, NameOID.STATE_OR_PROVINCE_NAME) == ["Oregon"]
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca is True
    assert key_usage(ca) == {"key_cert_sign", "crl_sign", "digital_signature"}
    assert ca.not_valid_after_utc - ca.not_valid_before_utc == datetime.timedelta(hours=pki_mod.CA_VALIDITY_HOURS)
    ca.verify_directly_issued_by(ca)


def test_client_identities_match_kthw(shaped: tuple[ClusterConfig, Recording]) -> None:
    _, run = shaped
    client = {ExtendedKeyUsageOID.CLIENT_AUTH}
    expected = {
        "admin": ("admin", "system:masters", client),
        "controller_manager": ("system:kube-controller-manager", "system:kube-controller-manager", client),
        "kube_proxy": ("system:kube-proxy", "system:node-proxier", client),
        "scheduler": ("system:kube-scheduler", "system:kube-scheduler", client),
        "service_account": ("service-accounts", "Kubernetes", set()),
    }
    for label, (cn, org, eku) in expected.items():
        leaf = cert(run, label)
        assert names(leaf, NameOID.COMMON_NAME) == [cn], label
        assert names(leaf, NameOID.ORGANIZATION_NAME) == [org], label
        assert key_usage(leaf) == {"digital_signature"}, label
        assert ext_key_usage(leaf) == eku, label
        with pytest.raises(x509.ExtensionNotFound):
            leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)


def test_api_server_cert_names_every_way_to_reach_it(shaped: tuple[ClusterConfig, Recording]) -> None:
    cfg, run = shaped
    leaf = cert(run, "api_server")
    assert names(leaf, NameOID.COMMON_NAME) == ["kubernetes"]
    assert names(leaf, NameOID.ORGANIZATION_NAME) == ["Kubernetes"]
    ips, dns = sans(leaf)
    assert ips == ["10.32.0.1", *(c.internal_ip for c in cfg.controllers), PUBLIC_ADDRESS, "127.0.0.1"]
    assert dns == list(pki_mod.API_SERVER_DNS_NAMES)
    assert "kubernetes.default.svc.cluster.local" in dns
    # etcd uses this cert as server and as client for peers and the API server: both usages.
    assert ext_key_usage(leaf) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert key_usage(leaf) == {"digital_signature"}


def test_each_worker_has_its_kubelet_cert(shaped: tuple[ClusterConfig, Recording]) -> None:
    cfg, run = shaped
    assert sorted(
        k.split(":", 1)[1].removesuffix(".cert") for k in run.values if k.startswith("kubelet:") and k.endswith(".cert")
    ) == [w.name for w in cfg.workers]
    for w in cfg.workers:
        leaf = cert(run, f"kubelet:{w.name}")
        assert names(leaf, NameOID.COMMON_NAME) == [f"system:node:{w.name}"]
        assert names(leaf, NameOID.ORGANIZATION_NAME) == ["system:nodes"]
        assert sans(leaf) == ([w.internal_ip, external_ip(w.name)], [w.name])
        assert ext_key_usage(leaf) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}


def test_private_keys_and_encryption_key_are_secret(shaped: tuple[ClusterConfig, Recording]) -> None:
    cfg, run = shaped
    for label in ["ca", "front_proxy_ca", *all_leaf_labels(cfg)]:
        assert run.values[f"{label}.key"].secret, label
        assert "PRIVATE KEY" in run.values[f"{label}.key"].value, label
        assert not run.values[f"{label}.cert"].secret, label  # certs are public: previews can show them
    enc = run.values["encryption_key"]
    assert enc.secret
    import base64

    assert len(base64.b64decode(enc.value, validate=True)) == 32


def test_keys_are_ecdsa_p256_and_leaf_material_rotates(shaped: tuple[ClusterConfig, Recording]) -> None:
    cfg, run = shaped
    keys = run.of_type(fake_tls.PRIVATE_KEY)
    assert len(keys) == 2 + len(all_leaf_labels(cfg))
    for reg in keys:
        assert (reg.inputs["algorithm"], reg.inputs["ecdsaCurve"]) == ("ECDSA", "P256"), reg.name
        # Rotation keeps the CAs' keys, and the key that signs service-account tokens (it would void them all).
        kept = ("kthw-pki-ca-key", "kthw-pki-front-proxy-ca-key", "kthw-pki-service-account-key")
        expected = None if reg.name in kept else 0.0
        assert reg.options["replacement_trigger"] == expected, reg.name
    certs = run.of_type(fake_tls.LOCALLY_SIGNED_CERT)
    assert len(certs) == len(all_leaf_labels(cfg))
    for reg in certs:
        assert reg.options["replacement_trigger"] == 0.0, reg.name
        assert reg.inputs["validityPeriodHours"] == cfg.cert_validity_hours
        assert reg.inputs["earlyRenewalHours"] == pki_mod.early_renewal_hours(cfg.cert_validity_hours)
    cas = run.of_type(fake_tls.SELF_SIGNED_CERT)
    assert sorted(ca.name for ca in cas) == ["kthw-pki-ca", "kthw-pki-front-proxy-ca"]
    for ca in cas:
        assert ca.options["replacement_trigger"] is None, ca.name
        assert ca.inputs["validityPeriodHours"] == pki_mod.CA_VALIDITY_HOURS, ca.name
    (enc,) = run.of_type(fake_tls.RANDOM_BYTES)
    assert enc.inputs["length"] == 32 and enc.options["replacement_trigger"] is None


LEAF_STEMS = ("admin", "kube-controller-manager", "kube-proxy", "kube-scheduler", "service-account")


def test_resource_names_are_stable() -> None:
    run = build_pki(make_config(controllerCount=1, workerCount=2))
    assert {r.name for r in run.resources} == {
        "kthw-pki",
        "kthw-pki-ca-key",
        "kthw-pki-ca",
        "kthw-pki-front-proxy-ca-key",
        "kthw-pki-front-proxy-ca",
        *(
            f"kthw-pki-{stem}-{suffix}"
            for stem in (*LEAF_STEMS, "kubernetes", "worker-0", "worker-1", "front-proxy-client", "metrics-server")
            for suffix in ("key", "csr", "cert")
        ),
        "kthw-pki-encryption-key",
    }


def test_rotation_changes_only_the_trigger() -> None:
    base = build_pki(make_config(controllerCount=1, workerCount=1))
    rotated = build_pki(make_config(controllerCount=1, workerCount=1, certRotation=2))
    for reg in rotated.of_type(fake_tls.LOCALLY_SIGNED_CERT):
        assert reg.options["replacement_trigger"] == 2.0
    # Same inputs everywhere: only the trigger tells the engine to re-issue, and the CA stays put.
    assert {r.name: r.inputs for r in base.resources} == {r.name: r.inputs for r in rotated.resources}
    assert rotated.by_name("kthw-pki-ca-key").options["replacement_trigger"] is None
    assert rotated.by_name("kthw-pki-service-account-key").options["replacement_trigger"] is None
    assert rotated.by_name("kthw-pki-admin-key").options["replacement_trigger"] == 2.0
    assert rotated.by_name("kthw-pki-front-proxy-client-key").options["replacement_trigger"] == 2.0
    assert rotated.by_name("kthw-pki-front-proxy-client-cert").options["replacement_trigger"] == 2.0
    assert rotated.by_name("kthw-pki-metrics-server-cert").options["replacement_trigger"] == 2.0
    assert rotated.by_name("kthw-pki-front-proxy-ca-key").options["replacement_trigger"] is None
    assert rotated.by_name("kthw-pki-front-proxy-ca").options["replacement_trigger"] is None


def test_two_evaluations_register_identical_inputs() -> None:
    cfg = make_config(controllerCount=3, workerCount=2)
    first, second = build_pki(cfg), build_pki(cfg)
    tls_first = {r.name: r.inputs for r in first.resources if r.type in TLS_TYPES}
    tls_second = {r.name: r.inputs for r in second.resources if r.type in TLS_TYPES}
    # two CAs (key + cert), 10 leaves x (key, csr, cert), the encryption key
    assert len(tls_first) == 2 * 2 + 3 * 10 + 1
    assert tls_first == tls_second
    assert {k: v.value for k, v in first.values.items()} == {k: v.value for k, v in second.values.items()}


def test_preview_registers_the_same_resources() -> None:
    cfg = make_config(controllerCount=1, workerCount=1)
    previewed = {r.name for r in build_pki(cfg, preview=True).resources}
    assert previewed == {r.name for r in build_pki(cfg).resources}


def unknown_output() -> pulumi.Output[str]:
    """An Output as a preview shows a value that does not exist yet (a new static address)."""
    loop = asyncio.get_event_loop()
    value: asyncio.Future[str | None] = loop.create_future()
    value.set_result(None)
    known: asyncio.Future[bool] = loop.create_future()
    known.set_result(False)
    return pulumi.Output(set(), value, known)  # type: ignore[arg-type]


def test_preview_before_the_address_exists() -> None:
    """A first preview: the public address is unknown, so only the API server cert waits for it."""
    cfg = make_config(controllerCount=1, workerCount=1)

    def build() -> dict[str, pulumi.Output[Any]]:
        pki = Pki("kthw-pki", PkiArgs(cfg, gcp.api_endpoint(unknown_output()), {"worker-0": ["198.51.100.10"]}))
        return pki_outputs(pki)

    run = run_mocked(build, preview=True)
    assert not run.values["api_server.cert"].known
    assert run.values["api_server.key"].known  # the key does not depend on the address
    for label in ["ca", "admin", "kubelet:worker-0", "service_account"]:
        assert run.values[f"{label}.cert"].known, label
        cert(run, label).verify_directly_issued_by(cert(run, "ca"))
    csr = run.by_name("kthw-pki-kubernetes-csr")
    assert fake_tls.UNKNOWN in [str(ip) for ip in csr.inputs["ipAddresses"]] or any(
        type(ip).__name__ == "Unknown" for ip in csr.inputs["ipAddresses"]
    )


def test_missing_worker_ip_is_refused() -> None:
    cfg = make_config(controllerCount=1, workerCount=2)

    def build() -> None:
        Pki("kthw-pki", PkiArgs(cfg, gcp.api_endpoint(PUBLIC_ADDRESS), {"worker-0": ["198.51.100.1"]}))

    with pytest.raises(ValueError, match=r"worker-1"):
        run_components(build)


# --- fake_tls itself ------------------------------------------------------------------------------------


def test_fake_tls_leaves_unknowns_unknown() -> None:
    assert fake_tls.new_resource("gcp:compute/address:Address", "x", {}) is None
    csr = {"privateKeyPem": fake_tls.UNKNOWN, "subject": {"commonName": "x"}}
    assert fake_tls.new_resource(fake_tls.CERT_REQUEST, "u", csr) == {}
    assert fake_tls.new_resource(fake_tls.CERT_REQUEST, "u", {"subject": {"commonName": "x"}}) == {}
    key = fake_tls.new_resource(fake_tls.PRIVATE_KEY, "k", {"algorithm": "ECDSA", "ecdsaCurve": "P256"})
    assert key is not None
    with_ip = {"privateKeyPem": key["privateKeyPem"], "ipAddresses": ["10.0.0.1", fake_tls.UNKNOWN]}
    assert fake_tls.new_resource(fake_tls.CERT_REQUEST, "u", with_ip) == {}


def test_fake_tls_private_key_formats() -> None:
    ed = fake_tls.new_resource(fake_tls.PRIVATE_KEY, "ed", {"algorithm": "ED25519"})
    assert ed is not None
    assert ed["publicKeyOpenssh"].startswith("ssh-ed25519 ") and ed["publicKeyOpenssh"].endswith("\n")
    assert ed["privateKeyOpenssh"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert ed["publicKeyFingerprintSha256"].startswith("SHA256:")
    assert len(ed["publicKeyFingerprintMd5"].split(":")) == 16
    assert fake_tls.new_resource(fake_tls.PRIVATE_KEY, "ed", {"algorithm": "ED25519"}) == ed  # cached
    p224 = fake_tls.new_resource(fake_tls.PRIVATE_KEY, "p", {"algorithm": "ECDSA"})
    assert p224 is not None and p224["ecdsaCurve"] == "P224" and p224["publicKeyOpenssh"] == ""
    assert p224["privateKeyPem"].startswith("-----BEGIN EC PRIVATE KEY-----")
    rsa = fake_tls.new_resource(fake_tls.PRIVATE_KEY, "r", {"algorithm": "RSA", "rsaBits": 2048.0})
    assert rsa is not None and rsa["privateKeyPem"].startswith("-----BEGIN RSA PRIVATE KEY-----")
    assert rsa["publicKeyOpenssh"].startswith("ssh-rsa ")


# --- artifacts: real openssl -----------------------------------------------------------------------------


def write_bundle(cfg: ClusterConfig, run: Recording, directory: Path) -> dict[str, Path]:
    paths: dict[str, Path] = {}
    for label in ["ca", "front_proxy_ca", *all_leaf_labels(cfg)]:
        stem = label.replace(":", "-")
        paths[label] = directory / f"{stem}.pem"
        paths[label].write_text(run.values[f"{label}.cert"].value)
        (directory / f"{stem}-key.pem").write_text(run.values[f"{label}.key"].value)
    return paths


def test_openssl_strict_verifies_every_leaf(shaped: tuple[ClusterConfig, Recording], tmp_path: Path) -> None:
    openssl = require_tool("openssl")
    cfg, run = shaped
    paths = write_bundle(cfg, run, tmp_path)
    for label in leaf_labels(cfg):
        result = subprocess.run(
            [openssl, "verify", "-x509_strict", "-CAfile", str(paths["ca"]), str(paths[label])],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, (label, result.stdout, result.stderr)
        assert result.stdout.strip() == f"{paths[label]}: OK", label
    for label, purpose in [("api_server", "sslserver"), ("api_server", "sslclient"), ("admin", "sslclient")]:
        result = subprocess.run(
            [openssl, "verify", "-x509_strict", "-purpose", purpose, "-CAfile", str(paths["ca"]), str(paths[label])],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, (label, purpose, result.stdout, result.stderr)
    # A client-only cert must not pass as a server cert.
    result = subprocess.run(
        [
            openssl,
            "verify",
            "-x509_strict",
            "-purpose",
            "sslserver",
            "-CAfile",
            str(paths["ca"]),
            str(paths["admin"]),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0


def test_openssl_reads_keys_and_api_server_hosts(shaped: tuple[ClusterConfig, Recording], tmp_path: Path) -> None:
    openssl = require_tool("openssl")
    cfg, run = shaped
    paths = write_bundle(cfg, run, tmp_path)
    for label in ["ca", *leaf_labels(cfg)]:
        key_path = tmp_path / f"{label.replace(':', '-')}-key.pem"
        result = subprocess.run([openssl, "pkey", "-in", str(key_path), "-pubout"], capture_output=True, text=True)
        assert result.returncode == 0, (label, result.stderr)
        cert_pub = subprocess.run(
            [openssl, "x509", "-in", str(paths[label]), "-noout", "-pubkey"], capture_output=True, text=True
        )
        assert result.stdout == cert_pub.stdout, label
    hosts = [*pki_mod.API_SERVER_DNS_NAMES]
    ips = ["10.32.0.1", "127.0.0.1", PUBLIC_ADDRESS, *(c.internal_ip for c in cfg.controllers)]
    for host in hosts:
        args = [openssl, "verify", "-x509_strict", "-CAfile", str(paths["ca"]), "-verify_hostname", host]
        result = subprocess.run([*args, str(paths["api_server"])], capture_output=True, text=True)
        assert result.returncode == 0, (host, result.stderr)
    for ip in ips:
        assert ipaddress.ip_address(ip)
        args = [openssl, "verify", "-x509_strict", "-CAfile", str(paths["ca"]), "-verify_ip", ip]
        result = subprocess.run([*args, str(paths["api_server"])], capture_output=True, text=True)
        assert result.returncode == 0, (ip, result.stderr)
    result = subprocess.run(
        [openssl, "verify", "-CAfile", str(paths["ca"]), "-verify_ip", "10.240.0.99", str(paths["api_server"])],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0


# --- the harness's watch, which the tests above read certificates through ---------------------------


def test_watch_works_only_inside_a_run_and_once_per_name() -> None:
    with pytest.raises(RuntimeError, match="run_components"):
        watch("x", "value")

    def twice() -> None:
        watch("x", "a")
        watch("x", pulumi.Output.secret("b"))

    with pytest.raises(KeyError, match="watched twice"):
        run_components(twice)

    def plain_and_secret() -> None:
        watch("plain", "a")
        watch("secret", pulumi.Output.secret("b"))

    values = run_components(plain_and_secret).values
    assert (values["plain"].value, values["plain"].secret, values["plain"].known) == ("a", False, True)
    assert (values["secret"].value, values["secret"].secret, values["secret"].known) == ("b", True, True)


# --- the aggregation layer's PKI and metrics-server's serving certificate ---------------------------


def test_front_proxy_ca_is_its_own_ca(shaped: tuple[ClusterConfig, Recording]) -> None:
    _, run = shaped
    proxy_ca, cluster_ca = cert(run, "front_proxy_ca"), cert(run, "ca")
    assert proxy_ca.subject == proxy_ca.issuer
    assert names(proxy_ca, NameOID.COMMON_NAME) == ["front-proxy-ca"]
    assert names(proxy_ca, NameOID.ORGANIZATIONAL_UNIT_NAME) == ["Front Proxy CA"]
    assert proxy_ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert key_usage(proxy_ca) == {"key_cert_sign", "crl_sign", "digital_signature"}
    # Its own key, not the cluster CA's under another name.
    assert proxy_ca.public_key() != cluster_ca.public_key()
    lifetime = proxy_ca.not_valid_after_utc - proxy_ca.not_valid_before_utc
    assert lifetime == datetime.timedelta(hours=pki_mod.CA_VALIDITY_HOURS)


def test_front_proxy_client_is_a_client_cert_from_the_front_proxy_ca(shaped: tuple[ClusterConfig, Recording]) -> None:
    cfg, run = shaped
    leaf, proxy_ca = cert(run, "front_proxy_client"), cert(run, "front_proxy_ca")
    leaf.verify_directly_issued_by(proxy_ca)
    with pytest.raises(ValueError, match="subject does not match"):
        leaf.verify_directly_issued_by(cert(run, "ca"))
    assert names(leaf, NameOID.COMMON_NAME) == ["front-proxy-client"]
    assert ext_key_usage(leaf) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    assert key_usage(leaf) == {"digital_signature"}
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert lifetime == datetime.timedelta(hours=cfg.cert_validity_hours)
    key = serialization.load_pem_private_key(run.values["front_proxy_client.key"].value.encode(), None)
    assert key.public_key() == leaf.public_key()


def test_metrics_server_cert_serves_its_service_name(shaped: tuple[ClusterConfig, Recording]) -> None:
    _, run = shaped
    leaf = cert(run, "metrics_server")
    leaf.verify_directly_issued_by(cert(run, "ca"))
    assert names(leaf, NameOID.COMMON_NAME) == ["metrics-server"]
    # The aggregator dials <service>.<namespace>.svc and checks the name against the APIService's caBundle.
    assert sans(leaf) == ([], ["metrics-server.kube-system.svc"])
    assert ext_key_usage(leaf) == {ExtendedKeyUsageOID.SERVER_AUTH}


def test_leaf_validity_follows_config_for_the_new_leaves_but_not_the_front_proxy_ca() -> None:
    run = build_pki(make_config(controllerCount=1, workerCount=1, certValidityHours=48))
    for name in ("kthw-pki-front-proxy-client-cert", "kthw-pki-metrics-server-cert"):
        assert run.by_name(name).inputs["validityPeriodHours"] == 48, name
        assert run.by_name(name).inputs["earlyRenewalHours"] == 12, name
    assert run.by_name("kthw-pki-front-proxy-ca").inputs["validityPeriodHours"] == pki_mod.CA_VALIDITY_HOURS


def test_no_metrics_server_cert_without_the_add_on() -> None:
    run = build_pki(make_config(controllerCount=1, workerCount=1, metricsServer="false"))
    assert not [r.name for r in run.resources if "metrics-server" in r.name]
    assert "metrics_server.cert" not in run.values
    assert "kthw-pki-front-proxy-client-cert" in run.names()  # the aggregation layer stays


def openssl_verify(ca: Path, leaf: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("openssl"), "verify", "-x509_strict", *extra, "-CAfile", str(ca), str(leaf)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_openssl_keeps_the_two_cas_apart(shaped: tuple[ClusterConfig, Recording], tmp_path: Path) -> None:
    cfg, run = shaped
    paths = write_bundle(cfg, run, tmp_path)
    proxy_ca, cluster_ca, client = paths["front_proxy_ca"], paths["ca"], paths["front_proxy_client"]
    result = openssl_verify(proxy_ca, client, "-purpose", "sslclient")
    assert result.returncode == 0 and result.stdout.strip() == f"{client}: OK", result.stderr
    # The proxy's cert is no client cert for the API (client-ca-file is the cluster CA) ...
    assert openssl_verify(cluster_ca, client).returncode != 0
    # ... and no cluster client cert (admin's, a kubelet's) passes as the front proxy.
    for label in ("admin", "kubelet:worker-0", "api_server"):
        assert openssl_verify(proxy_ca, paths[label]).returncode != 0, label
    assert openssl_verify(proxy_ca, client, "-purpose", "sslserver").returncode != 0
    server = paths["metrics_server"]
    result = openssl_verify(
        cluster_ca, server, "-purpose", "sslserver", "-verify_hostname", "metrics-server.kube-system.svc"
    )
    assert result.returncode == 0, result.stderr
    assert openssl_verify(cluster_ca, server, "-purpose", "sslclient").returncode != 0
