"""The API front end (KTHW ch. 8): the nginx healthz proxy against real nginx, and the GCP load balancer under mocks."""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pulumi_command import remote as command_remote
from pulumi_gcp import compute

from components import config as config_module
from components import remote
from components.config import ClusterConfig
from components.render import TEMPLATES
from platforms.gcp import api_frontend
from platforms.gcp.api_frontend import (
    API_CA_FILE,
    HEALTHZ_SITE_PATH,
    ApiFrontend,
    ApiFrontendArgs,
    install_nginx_script,
    render_healthz_site,
    render_in_service_script,
)
from tests.harness import Recording, bundle, run_components
from tests.tools import require_tool

GCP = {"gcp:project": "kthw-test", "gcp:region": "europe-west4", "gcp:zone": "europe-west4-b"}
ADDRESS = "203.0.113.80"


# --- stand-ins under Pulumi's mocks (shared with test_addons) ------------------------------------


def fake_host(name: str) -> tuple[remote.Host, compute.Instance]:
    """A node as node.py would hand it over: an instance and an SSH gate (both mocked)."""
    instance = compute.Instance(
        f"{name}-instance", name=name, machine_type="e2-small", boot_disk={}, network_interfaces=[]
    )
    gate = command_remote.Command(
        f"{name}-gate",
        connection=command_remote.ConnectionArgs(host=ADDRESS),
        create="true",
        opts=pulumi.ResourceOptions(depends_on=[instance]),
    )
    conn = remote.connection(f"{name}.example", "kthw", pulumi.Output.secret("key"))
    return remote.Host(name=name, connection=conn, ready=gate), instance


def load(**kthw: str) -> ClusterConfig:
    return config_module.load(kthw, GCP)


# --- the rendered nginx site ---------------------------------------------------------------------


def test_site_relays_healthz_to_the_local_api_readyz_with_verification() -> None:
    site = render_healthz_site()
    assert "listen 80;" in site
    assert "server_name kubernetes.default.svc.cluster.local;" in site
    # The check asks /healthz; nginx asks /readyz, which a stopping API server fails while it still serves.
    assert "location = /healthz {" in site
    assert "proxy_pass https://127.0.0.1:6443/readyz;" in site
    assert "proxy_ssl_trusted_certificate /etc/nginx/kthw-api-ca.pem;" in site
    assert "proxy_ssl_verify on;" in site
    assert "proxy_ssl_name kubernetes;" in site


def test_install_script_is_shellcheck_clean(tmp_path: Path) -> None:
    shellcheck = require_tool("shellcheck")
    script = tmp_path / "install-nginx.sh"
    script.write_text(install_nginx_script("controller-0"))
    result = subprocess.run([shellcheck, "-s", "bash", str(script)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout
    assert 'node="controller-0"' in script.read_text()


def test_install_script_trusts_dpkg_not_path(tmp_path: Path) -> None:
    """A Debian node's non-login SSH PATH has no /usr/sbin: an installed nginx is not reinstalled (seen on a node)."""
    fake = tmp_path / "bin"
    fake.mkdir()
    calls = tmp_path / "calls"
    (fake / "dpkg-query").write_text("#!/bin/sh\nprintf 'install ok installed'\n")
    (fake / "sudo").write_text(f'#!/bin/sh\necho "sudo $*" >> {calls}\nexit 1\n')
    for tool in (fake / "dpkg-query", fake / "sudo"):
        tool.chmod(0o755)
    script = tmp_path / "install-nginx.sh"
    script.write_text(install_nginx_script("controller-0"))
    env = {"PATH": f"{fake}:/usr/bin:/bin"}  # nginx, if installed here at all, is in /usr/sbin
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, check=False)
    assert (result.returncode, result.stdout.strip()) == (0, "kthw: controller-0: nginx: already installed"), result
    assert not calls.exists(), calls.read_text()


def test_every_api_frontend_template_is_used() -> None:
    assert sorted(p.name for p in (TEMPLATES / "api-frontend").iterdir()) == [
        "healthz.conf",
        "in-service.sh",
        "install-nginx.sh",
    ]


def test_in_service_script_is_shellcheck_clean(tmp_path: Path) -> None:
    shellcheck = require_tool("shellcheck")
    script = tmp_path / "in-service.sh"
    script.write_text(render_in_service_script("controller-1"))
    result = subprocess.run([shellcheck, "-s", "bash", str(script)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout


def test_health_timing_follows_gces_legacy_check() -> None:
    # Two failed probes 5 s apart, the second one timing out: out of the pool within 15 s of /readyz failing.
    assert api_frontend.seconds_to_leave() == 15
    # Two good probes 5 s apart, plus one period for where the first falls: back in the pool within 15 s.
    assert api_frontend.seconds_to_join() == 15
    assert f"hold={api_frontend.seconds_to_join()}\n" in render_in_service_script("controller-0")
    # The local cloud's load balancer plays GCE's check with the same numbers.
    from tests.localcloud import plane

    assert plane.CHECK_DEFAULTS == {
        "checkIntervalSec": api_frontend.CHECK_INTERVAL_SECONDS,
        "timeoutSec": api_frontend.CHECK_TIMEOUT_SECONDS,
        "healthyThreshold": api_frontend.HEALTHY_THRESHOLD,
        "unhealthyThreshold": api_frontend.UNHEALTHY_THRESHOLD,
    }


# --- the site in a real nginx, relaying to a TLS upstream -----------------------------------------


def _cert(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[str, ec.EllipticCurvePrivateKey] | None, dns: list[str]
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer or (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if dns:
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(obj: x509.Certificate | ec.EllipticCurvePrivateKey) -> bytes:
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM)
    return obj.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass
class _Upstream:
    port: int
    server: http.server.ThreadingHTTPServer
    state: dict[str, bool]


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    """A CA, an API server certificate it signs (DNS:kubernetes, IP:127.0.0.1), and a foreign CA."""
    ca_key, other_key, api_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca = _cert("kthw-ca", ca_key, None, [])
    other = _cert("other-ca", other_key, None, [])
    api = _cert("kubernetes", api_key, ("kthw-ca", ca_key), ["kubernetes", "kubernetes.default"])
    paths = {
        "ca": tmp_path / "ca.pem",
        "other": tmp_path / "other.pem",
        "cert": tmp_path / "api.pem",
        "key": tmp_path / "api-key.pem",
    }
    for label, obj in (("ca", ca), ("other", other), ("cert", api), ("key", api_key)):
        paths[label].write_bytes(_pem(obj))
    return paths


@pytest.fixture
def upstream(pki: dict[str, Path]) -> Iterator[_Upstream]:
    """A stand-in for kube-apiserver: TLS on loopback, /readyz answers `ok` unless it is shutting down."""
    state = {"shutting_down": False}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/readyz" and state["shutting_down"]:
                self.send_response(500)
                body = b"[-]shutdown failed: reason withheld\nreadyz check failed"
            elif self.path in ("/readyz", "/healthz"):
                self.send_response(200)
                body = b"ok"
            else:
                self.send_response(404)
                body = b"not found"
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki["cert"], pki["key"])
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield _Upstream(server.server_address[1], server, state)
    server.shutdown()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_nginx(tmp_path: Path, site: str) -> Iterator[int]:
    nginx = require_tool("nginx")
    port = _free_port()
    # Same site, on a loopback port instead of :80 so the test needs no privileges.
    assert site.count("listen 80;") == 1
    (tmp_path / "site.conf").write_text(site.replace("listen 80;", f"listen 127.0.0.1:{port};"))
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log stderr;\ndaemon off;\nmaster_process off;\nevents {{}}\n"
        f"http {{\n  access_log off;\n  client_body_temp_path {tmp_path}/body;\n  proxy_temp_path {tmp_path}/proxy;\n"
        f"  include {tmp_path}/site.conf;\n}}\n"
    )
    check = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen([nginx, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                import socket

                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.05)
        yield port
    finally:
        proc.kill()
        proc.wait()


def _get(port: int, host: str, path: str = "/healthz") -> tuple[int, str]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path, headers={"Host": host})
    response = conn.getresponse()
    return response.status, response.read().decode()


def test_nginx_relays_the_health_check_to_a_verified_api(
    tmp_path: Path, pki: dict[str, Path], upstream: _Upstream
) -> None:
    site = render_healthz_site(upstream=f"https://127.0.0.1:{upstream.port}", ca_file=str(pki["ca"]))
    for port in _run_nginx(tmp_path, site):
        assert _get(port, "kubernetes.default.svc.cluster.local") == (200, "ok")
        # Only /healthz goes through: the proxy is no back door to the API.
        assert _get(port, "kubernetes.default.svc.cluster.local", "/api")[0] == 404
        assert _get(port, "kubernetes.default.svc.cluster.local", "/readyz")[0] == 404


def test_the_check_fails_while_the_api_server_shuts_down(
    tmp_path: Path, pki: dict[str, Path], upstream: _Upstream
) -> None:
    """During --shutdown-delay-duration /healthz stays ok but /readyz fails: the pool must see the latter."""
    site = render_healthz_site(upstream=f"https://127.0.0.1:{upstream.port}", ca_file=str(pki["ca"]))
    for port in _run_nginx(tmp_path, site):
        upstream.state["shutting_down"] = True
        assert _get(port, "kubernetes.default.svc.cluster.local")[0] == 500
        upstream.state["shutting_down"] = False
        assert _get(port, "kubernetes.default.svc.cluster.local") == (200, "ok")


def _in_service(tmp_path: Path, port: int, hold: int, timeout: int) -> tuple[subprocess.CompletedProcess[str], float]:
    script = tmp_path / "in-service.sh"
    script.write_text(
        render_in_service_script(
            "controller-1", url=f"http://127.0.0.1:{port}/healthz", hold_seconds=hold, timeout_seconds=timeout
        )
    )
    start = time.monotonic()
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60, check=False)
    return result, time.monotonic() - start


def test_in_service_waits_for_the_check_to_hold(tmp_path: Path, pki: dict[str, Path], upstream: _Upstream) -> None:
    site = render_healthz_site(upstream=f"https://127.0.0.1:{upstream.port}", ca_file=str(pki["ca"]))
    for port in _run_nginx(tmp_path, site):
        result, took = _in_service(tmp_path, port, hold=3, timeout=20)
        assert result.returncode == 0, result.stderr
        assert result.stdout == "kthw: controller-1: in service: the health check answered ok for 3s in a row\n"
        assert took >= 3


def test_in_service_fails_while_the_check_fails(tmp_path: Path, pki: dict[str, Path], upstream: _Upstream) -> None:
    site = render_healthz_site(upstream=f"https://127.0.0.1:{upstream.port}", ca_file=str(pki["ca"]))
    upstream.state["shutting_down"] = True
    for port in _run_nginx(tmp_path, site):
        result, took = _in_service(tmp_path, port, hold=1, timeout=3)
        assert result.returncode == 1
        assert "did not answer ok for 1s in a row within 3s (last answer: 500)" in result.stderr
        assert took < 15


def test_nginx_refuses_an_api_signed_by_another_ca(tmp_path: Path, pki: dict[str, Path], upstream: _Upstream) -> None:
    site = render_healthz_site(upstream=f"https://127.0.0.1:{upstream.port}", ca_file=str(pki["other"]))
    for port in _run_nginx(tmp_path, site):
        status, _ = _get(port, "kubernetes.default.svc.cluster.local")
        assert status == 502  # the health check sees the backend as down, not as healthy


# --- the GCP load balancer under mocks ------------------------------------------------------------


def build_frontend(cfg: ClusterConfig) -> None:
    hosts, instances = zip(*(fake_host(c.name) for c in cfg.controllers), strict=True)
    ApiFrontend(
        "api",
        ApiFrontendArgs(
            config=cfg,
            network="kubernetes-the-hard-way",
            address=ADDRESS,
            controllers=list(hosts),
            instances=list(instances),
            ca_cert="CA-CERT",
        ),
    )


@pytest.fixture(scope="module", params=[False, True], ids=["update", "preview"])
def frontend(request: pytest.FixtureRequest) -> Recording:
    cfg = load(controllerCount="3", workerCount="2")
    return run_components(lambda: build_frontend(cfg), preview=request.param)


def test_health_check_is_kthws(frontend: Recording) -> None:
    (hc,) = frontend.of_type("gcp:compute/httpHealthCheck:HttpHealthCheck")
    # GCE's defaults, which the shutdown delay and the in-service wait are computed from.
    for key, value in (
        ("checkIntervalSec", api_frontend.CHECK_INTERVAL_SECONDS),
        ("timeoutSec", api_frontend.CHECK_TIMEOUT_SECONDS),
        ("healthyThreshold", api_frontend.HEALTHY_THRESHOLD),
        ("unhealthyThreshold", api_frontend.UNHEALTHY_THRESHOLD),
    ):
        assert hc.inputs.get(key) in (None, value), key
    assert hc.inputs["name"] == "kubernetes"
    assert hc.inputs["host"] == "kubernetes.default.svc.cluster.local"
    assert hc.inputs["requestPath"] == "/healthz"
    assert hc.inputs["port"] == 80
    assert hc.options["delete_before_replace"]


def test_health_check_firewall_opens_only_port_80_on_controllers(frontend: Recording) -> None:
    (fw,) = frontend.of_type("gcp:compute/firewall:Firewall")
    assert fw.inputs["name"] == "kubernetes-the-hard-way-allow-health-check"
    assert fw.inputs["network"] == "kubernetes-the-hard-way"
    assert fw.inputs["allows"] == [{"protocol": "tcp", "ports": ["80"]}]
    assert sorted(fw.inputs["sourceRanges"]) == ["209.85.152.0/22", "209.85.204.0/22", "35.191.0.0/16"]
    assert fw.inputs["targetTags"] == ["controller"]
    assert fw.options["delete_before_replace"]


def test_target_pool_holds_every_controller_by_zone_and_name(frontend: Recording) -> None:
    (pool,) = frontend.of_type("gcp:compute/targetPool:TargetPool")
    # KTHW's name and a digest of the members' instance ids (tests/test_gce_updates.py).
    assert pool.inputs["name"].startswith("kubernetes-target-pool-")
    assert pool.inputs["region"] == "europe-west4"
    assert pool.inputs["instances"] == [
        "europe-west4-b/controller-0",
        "europe-west4-b/controller-1",
        "europe-west4-b/controller-2",
    ]
    assert pool.inputs["healthChecks"] == "kubernetes"
    assert {"controller-0-instance", "controller-1-instance", "controller-2-instance"} <= pool.depends_on
    assert "api-health-check" in pool.depends_on
    assert not pool.options["delete_before_replace"]


def test_forwarding_rule_sends_6443_on_the_address_to_the_pool(frontend: Recording) -> None:
    (rule,) = frontend.of_type("gcp:compute/forwardingRule:ForwardingRule")
    assert rule.inputs["name"] == "kubernetes-forwarding-rule"
    assert rule.inputs["ipAddress"] == ADDRESS
    assert rule.inputs["portRange"] == "6443"
    assert rule.inputs["region"] == "europe-west4"
    assert rule.inputs["ipProtocol"] == "TCP"
    assert rule.inputs["loadBalancingScheme"] == "EXTERNAL"
    assert "api-target-pool" in rule.depends_on
    assert rule.inputs["target"] == "https://compute.example/TargetPool/api-target-pool"
    assert rule.options["delete_before_replace"]


def test_each_controller_gets_nginx_then_the_proxy(frontend: Recording) -> None:
    for i in range(3):
        node = f"controller-{i}"
        install = frontend.by_name(f"api-{node}-nginx")
        assert f"{node}-gate" in install.depends_on
        assert install.inputs["create"] == remote.capped(install_nginx_script(node))
        proxy = frontend.by_name(f"api-{node}-healthz-proxy")
        # Nothing but nginx: the CA travels with the site, so no control plane step comes first.
        assert proxy.depends_on == {f"{node}-gate", f"api-{node}-nginx"}
        assert set(bundle(proxy)) == {HEALTHZ_SITE_PATH, API_CA_FILE}
        assert bundle(proxy)[API_CA_FILE][0] == "CA-CERT"
        assert HEALTHZ_SITE_PATH in proxy.inputs["create"]
        assert 'step="healthz-proxy"' in proxy.inputs["create"]
        assert "units=(nginx)" in proxy.inputs["create"]
        # A plain config file: the step is not secret, so its log stays readable.
        assert "stdin" not in proxy.secret_paths
