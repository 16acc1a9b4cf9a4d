"""The cluster's PKI (KTHW ch. 4): a CA and every certificate KTHW issues, as tls resources."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_random as random
import pulumi_tls as tls

from components.config import ClusterConfig
from components.machine import ApiEndpoint

# ECDSA P-256 everywhere: every Kubernetes component, etcd and kubectl accept it, and it is quick to make.
KEY_ALGORITHM = "ECDSA"
ECDSA_CURVE = "P256"

# The CA's lifetime is a constant, not a function of certValidityHours: any change to a self-signed
# cert's validity replaces it, and a new CA would re-issue every leaf and break every kubeconfig.
# Twenty years is twice the longest leaf validity config accepts (ten years), so a leaf issued in the
# CA's first decade never outlives it.
CA_VALIDITY_HOURS = 20 * 8760
# Leaves are re-issued on a `pulumi up` run this close to their expiry (a quarter of their life, at most 30 days).
MAX_EARLY_RENEWAL_HOURS = 30 * 24

# KTHW's CA subject (ch. 4); OU=CA keeps it distinct from the `kubernetes` leaf (CN kubernetes, O Kubernetes),
# which `openssl verify -x509_strict` would otherwise treat as self-signed (names compare case-insensitively).
CA_SUBJECT: Mapping[str, str] = {
    "common_name": "Kubernetes",
    "organization": "Kubernetes",
    "organizational_unit": "CA",
    "country": "US",
    "locality": "Portland",
    "province": "Oregon",
}
CA_USES = ("cert_signing", "crl_signing", "digital_signature")
# The aggregation layer's own CA: the API server trusts it only for the front proxy's identity headers
# (--requestheader-client-ca-file), so a certificate from it is no client certificate for the API.
FRONT_PROXY_CA_SUBJECT: Mapping[str, str] = {
    **CA_SUBJECT,
    "common_name": "front-proxy-ca",
    "organizational_unit": "Front Proxy CA",
}

# ECDSA keys sign, they do not encipher: key_encipherment is an RSA-only usage.
CLIENT_USES = ("digital_signature", "client_auth")
PEER_USES = ("digital_signature", "client_auth", "server_auth")
SERVER_USES = ("digital_signature", "server_auth")
SIGNING_USES = ("digital_signature",)

# The API server's DNS names (KTHW ch. 4 plus kubernetes.default.svc.cluster.local, KTHW #547/#491).
API_SERVER_DNS_NAMES = (
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster",
    "kubernetes.svc.cluster.local",
    "kubernetes.default.svc.cluster.local",
)
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class CertPair:
    """A certificate and its private key, both PEM; the key is always a secret Output."""

    cert_pem: pulumi.Output[str]
    key_pem: pulumi.Output[str]


@dataclass(frozen=True)
class Identity:
    """One certificate KTHW issues from the CA: who it names and what it may be used for."""

    attr: str  # the Pki attribute that holds it
    file: str  # KTHW's file stem: <file>.pem and <file>-key.pem
    common_name: str
    organization: str
    uses: tuple[str, ...]
    purpose: str
    # certRotation replaces the key too, except where other parties hold what it signed: a new
    # service-account key would void every issued token (CoreDNS's among them) until kubelets
    # renew them, up to a day later. Its certificate is still re-issued.
    rotate_key: bool = True


# Every identity whose names do not depend on the cluster's shape (kubelets and the API server do).
IDENTITIES: tuple[Identity, ...] = (
    Identity("admin", "admin", "admin", "system:masters", CLIENT_USES, "kubectl as cluster admin"),
    Identity(
        "controller_manager",
        "kube-controller-manager",
        "system:kube-controller-manager",
        "system:kube-controller-manager",
        CLIENT_USES,
        "kube-controller-manager -> API server",
    ),
    Identity(
        "kube_proxy", "kube-proxy", "system:kube-proxy", "system:node-proxier", CLIENT_USES, "kube-proxy -> API server"
    ),
    Identity(
        "scheduler",
        "kube-scheduler",
        "system:kube-scheduler",
        "system:kube-scheduler",
        CLIENT_USES,
        "kube-scheduler -> API server",
    ),
    Identity(
        "service_account",
        "service-account",
        "service-accounts",
        "Kubernetes",
        SIGNING_USES,
        "signs and verifies service account tokens",
        rotate_key=False,
    ),
)
API_SERVER = Identity(
    "api_server",
    "kubernetes",
    "kubernetes",
    "Kubernetes",
    PEER_USES,
    "API server serving cert; etcd's server, peer and client cert; API server -> kubelet",
)


# The API server's client certificate towards aggregated API servers (metrics-server), from the front-proxy CA;
# they admit only this CN (--requestheader-allowed-names) to name the user in X-Remote-* headers.
FRONT_PROXY_CLIENT = Identity(
    "front_proxy_client",
    "front-proxy-client",
    "front-proxy-client",
    "Kubernetes",
    CLIENT_USES,
    "API server -> aggregated API servers (request-header authentication)",
)
# metrics-server's serving certificate, from the cluster CA: the APIService's caBundle is that CA, so the
# API server verifies metrics-server by the name it dials (<service>.<namespace>.svc).
METRICS_SERVER = Identity(
    "metrics_server",
    "metrics-server",
    "metrics-server",
    "Kubernetes",
    SERVER_USES,
    "metrics-server serving (the API server verifies it through the APIService's caBundle)",
)
METRICS_SERVER_DNS_NAMES = ("metrics-server.kube-system.svc",)


def kubelet_identity(worker: str) -> Identity:
    """The kubelet identity of a worker: the Node authorizer only admits system:node:<name> in system:nodes."""
    return Identity(
        "kubelets", worker, f"system:node:{worker}", "system:nodes", PEER_USES, "kubelet serving and -> API server"
    )


def api_server_sans(config: ClusterConfig) -> tuple[list[str], list[str]]:
    """The API server cert's IP SANs known from config (all but the public address) and its DNS SANs.

    The IPs are, in order: the `kubernetes` service IP, every controller's internal IP, 127.0.0.1;
    the Pki puts the platform's API addresses (GCE: the public address) before 127.0.0.1, as KTHW's list does.
    """
    ips = [config.kubernetes_service_ip, *(c.internal_ip for c in config.controllers), LOOPBACK]
    return ips, list(API_SERVER_DNS_NAMES)


def early_renewal_hours(validity_hours: int) -> int:
    """How long before expiry a `pulumi up` re-issues a leaf: a quarter of its life, capped at 30 days."""
    return min(validity_hours // 4, MAX_EARLY_RENEWAL_HOURS)


@dataclass(frozen=True)
class PkiArgs:
    """What the PKI needs: config, the API's endpoint, and each worker's addresses beyond its internal IP."""

    config: ClusterConfig
    api: ApiEndpoint
    worker_certificate_ips: Mapping[str, Sequence[pulumi.Input[str]]]


class Pki(pulumi.ComponentResource):
    """The CA, every KTHW leaf certificate with its key, and the secret-encryption key."""

    ca: CertPair
    admin: CertPair
    controller_manager: CertPair
    kube_proxy: CertPair
    scheduler: CertPair
    service_account: CertPair
    api_server: CertPair
    kubelets: dict[str, CertPair]
    front_proxy_ca: CertPair
    front_proxy_client: CertPair
    metrics_server: CertPair | None  # only with kthw:metricsServer
    encryption_key: pulumi.Output[str]

    def __init__(self, name: str, args: PkiArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kthw:index:Pki", name, None, opts)
        cfg = args.config
        missing = [w.name for w in cfg.workers if w.name not in args.worker_certificate_ips]
        if missing:
            raise ValueError(f"PkiArgs.worker_certificate_ips lacks workers {missing}")
        self._name = name
        self._config = cfg

        self._ca_key, self._ca_cert = self._authority("ca", CA_SUBJECT)
        self.ca = CertPair(self._ca_cert.cert_pem, pulumi.Output.secret(self._ca_key.private_key_pem))

        for identity in IDENTITIES:
            setattr(self, identity.attr, self._leaf(identity))

        api_ips, api_dns = api_server_sans(cfg)
        self.api_server = self._leaf(
            API_SERVER,
            ip_addresses=[*api_ips[:-1], *args.api.certificate_ips, api_ips[-1]],
            dns_names=[*api_dns, *args.api.certificate_dns],
        )

        # KTHW ch. 4 names each kubelet by host name, internal IP and (on GCE) external IP.
        self.kubelets = {
            w.name: self._leaf(
                kubelet_identity(w.name),
                ip_addresses=[w.internal_ip, *args.worker_certificate_ips[w.name]],
                dns_names=[w.name],
            )
            for w in cfg.workers
        }

        # The aggregation layer (not in KTHW): its own CA, so that the front proxy's client certificate
        # is trusted for identity headers and nothing else, and no cluster client cert passes as the proxy.
        proxy_ca_key, proxy_ca_cert = self._authority("front-proxy-ca", FRONT_PROXY_CA_SUBJECT)
        self.front_proxy_ca = CertPair(proxy_ca_cert.cert_pem, pulumi.Output.secret(proxy_ca_key.private_key_pem))
        self.front_proxy_client = self._leaf(FRONT_PROXY_CLIENT, signer=(proxy_ca_key, proxy_ca_cert))
        self.metrics_server = (
            self._leaf(METRICS_SERVER, dns_names=METRICS_SERVER_DNS_NAMES) if cfg.metrics_server else None
        )

        # KTHW ch. 6: 32 random bytes for the aescbc provider; created once, never rotated (rotating
        # it would make every stored secret unreadable without a key migration).
        self._encryption_key = random.RandomBytes(
            f"{name}-encryption-key", length=32, opts=pulumi.ResourceOptions(parent=self)
        )
        self.encryption_key = pulumi.Output.secret(self._encryption_key.base64)

        self.register_outputs(
            {
                "ca_cert_pem": self.ca.cert_pem,
                "front_proxy_ca_cert_pem": self.front_proxy_ca.cert_pem,
                "api_server_cert_pem": self.api_server.cert_pem,
                "kubelet_cert_pems": {k: v.cert_pem for k, v in self.kubelets.items()},
            }
        )

    def _authority(self, what: str, subject: Mapping[str, str]) -> tuple[tls.PrivateKey, tls.SelfSignedCert]:
        # A CA never rotates (certRotation) and its lifetime is fixed (not certValidityHours): replacing
        # it invalidates every certificate it issued, and every kubeconfig for the cluster CA, at once.
        key = self._key(what, rotate=False)
        cert = tls.SelfSignedCert(
            f"{self._name}-{what}",
            private_key_pem=key.private_key_pem,
            is_ca_certificate=True,
            set_subject_key_id=True,
            subject=tls.SelfSignedCertSubjectArgs(**subject),
            allowed_uses=list(CA_USES),
            validity_period_hours=CA_VALIDITY_HOURS,
            opts=pulumi.ResourceOptions(parent=self),
        )
        return key, cert

    def _key(self, what: str, *, rotate: bool) -> tls.PrivateKey:
        # Rotation (certRotation) replaces leaf keys as well as certs: a leaked key must not outlive a rotation.
        return tls.PrivateKey(
            f"{self._name}-{what}-key",
            algorithm=KEY_ALGORITHM,
            ecdsa_curve=ECDSA_CURVE,
            opts=pulumi.ResourceOptions(
                parent=self, replacement_trigger=self._config.cert_rotation if rotate else None
            ),
        )

    def _leaf(
        self,
        identity: Identity,
        *,
        ip_addresses: Sequence[pulumi.Input[str]] = (),
        dns_names: Sequence[str] = (),
        signer: tuple[tls.PrivateKey, tls.SelfSignedCert] | None = None,
    ) -> CertPair:
        what = identity.file
        cfg = self._config
        ca_key, ca_cert = signer or (self._ca_key, self._ca_cert)
        key = self._key(what, rotate=identity.rotate_key)
        request = tls.CertRequest(
            f"{self._name}-{what}-csr",
            private_key_pem=key.private_key_pem,
            subject=tls.CertRequestSubjectArgs(
                common_name=identity.common_name,
                organization=identity.organization,
                # KTHW's leaves carry the CA's place names and OU "Kubernetes The Hard Way".
                organizational_unit="Kubernetes The Hard Way",
                country=CA_SUBJECT["country"],
                locality=CA_SUBJECT["locality"],
                province=CA_SUBJECT["province"],
            ),
            ip_addresses=list(ip_addresses) or None,
            dns_names=list(dns_names) or None,
            opts=pulumi.ResourceOptions(parent=self),
        )
        cert = tls.LocallySignedCert(
            f"{self._name}-{what}-cert",
            cert_request_pem=request.cert_request_pem,
            ca_private_key_pem=ca_key.private_key_pem,
            ca_cert_pem=ca_cert.cert_pem,
            allowed_uses=list(identity.uses),
            validity_period_hours=cfg.cert_validity_hours,
            early_renewal_hours=early_renewal_hours(cfg.cert_validity_hours),
            set_subject_key_id=True,
            opts=pulumi.ResourceOptions(parent=self, replacement_trigger=cfg.cert_rotation),
        )
        return CertPair(cert.cert_pem, pulumi.Output.secret(key.private_key_pem))
