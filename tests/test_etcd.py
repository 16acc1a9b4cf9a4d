"""etcd (KTHW ch. 7): the rendered unit and scripts, and a real TLS cluster they start on loopback."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from components import config as config_module
from components import etcd
from platforms.gcp.node import ETCD_DEVICE
from tests import etcd_real
from tests.test_control_plane import build, flag_dict
from tests.tools import directives, shellcheck, verify_unit

GCP = {"gcp:region": "us-west1", "gcp:zone": "us-west1-c", "gcp:project": "kthw-test"}
CONFIG = config_module.load({"controllerCount": 3, "workerCount": 1}, GCP)
CONTROLLERS = CONFIG.controllers


@pytest.mark.parametrize("spec", CONTROLLERS, ids=lambda s: s.name)
def test_etcd_unit(spec: config_module.NodeSpec) -> None:
    unit = etcd.render_etcd_unit(CONFIG, spec)
    assert unit.startswith("# kthw: etcd 3.6.14\n")
    binary, flags = flag_dict(unit)
    ip = spec.internal_ip
    assert binary == "/usr/local/bin/etcd"
    assert flags == {
        "name": spec.name,
        "cert-file": "/etc/etcd/kubernetes.pem",
        "key-file": "/etc/etcd/kubernetes-key.pem",
        "peer-cert-file": "/etc/etcd/kubernetes.pem",
        "peer-key-file": "/etc/etcd/kubernetes-key.pem",
        "trusted-ca-file": "/etc/etcd/ca.pem",
        "peer-trusted-ca-file": "/etc/etcd/ca.pem",
        "peer-client-cert-auth": None,
        "client-cert-auth": None,
        "initial-advertise-peer-urls": f"https://{ip}:2380",
        "listen-peer-urls": f"https://{ip}:2380",
        "listen-client-urls": f"https://{ip}:2379,https://127.0.0.1:2379",
        "advertise-client-urls": f"https://{ip}:2379",
        "initial-cluster-token": "etcd-cluster-0",
        "data-dir": "/var/lib/etcd/data",
    }
    # Membership is not in the unit: the membership script decides it at every start and etcd
    # reads it from the environment file; the data lives on the etcd disk's mount.
    found = directives(unit)
    assert found["ExecStartPre"] == ["/usr/local/sbin/kthw-etcd-membership"]
    assert found["EnvironmentFile"] == ["-/run/etcd/membership.env"]
    assert found["RuntimeDirectory"] == ["etcd"]
    assert found["RequiresMountsFor"] == ["/var/lib/etcd"]
    assert found["Type"] == ["notify"]


def test_etcd_unit_passes_systemd_analyze(tmp_path: Path) -> None:
    verify_unit("etcd", etcd.render_etcd_unit(CONFIG, CONTROLLERS[0]), tmp_path)


def test_backup_service_passes_systemd_analyze(tmp_path: Path) -> None:
    units = etcd.render_backup_units(CONFIG)
    verify_unit("etcd-backup", units["etcd-backup.service"], tmp_path)
    timer = directives(units["etcd-backup.timer"])
    assert timer["OnCalendar"] == ["hourly"] and timer["Persistent"] == ["true"]


@pytest.mark.parametrize(
    "script",
    ["membership", "ready", "leave", "restore", "backup", "backup-to-bucket", "disk"],
)
def test_etcd_scripts_pass_shellcheck(script: str, tmp_path: Path) -> None:
    spec = CONTROLLERS[1]
    text = {
        "membership": lambda: etcd.render_membership_script(CONFIG, spec),
        "ready": lambda: etcd.render_ready_script(CONFIG, spec),
        "leave": lambda: etcd.render_leave_script(CONFIG, spec),
        "restore": lambda: etcd.render_restore_script(spec),
        "backup": lambda: etcd.render_backup_script(spec, None),
        "backup-to-bucket": lambda: etcd.render_backup_script(spec, "kthw-etcd-backups"),
        "disk": lambda: etcd.render_disk_script(spec, ETCD_DEVICE),
    }[script]()
    shellcheck(text, tmp_path, script)


def test_membership_script_values() -> None:
    first, second = (etcd.render_membership_script(CONFIG, c) for c in CONTROLLERS[:2])
    # Only controller-0 may found a cluster; every script asks the other controllers.
    assert 'founder="true"' in first and 'founder="false"' in second
    assert 'peers="https://10.240.0.11:2379,https://10.240.0.12:2379"' in first
    assert 'peers="https://10.240.0.10:2379,https://10.240.0.12:2379"' in second
    assert 'peer_url="https://10.240.0.11:2380"' in second
    assert 'data_dir="/var/lib/etcd/data"' in second
    single = config_module.load({"controllerCount": 1}, GCP)
    assert 'peers=""' in etcd.render_membership_script(single, single.controllers[0])


def test_etcd_unit_refuses_a_worker() -> None:
    with pytest.raises(ValueError, match="worker-0"):
        etcd.render_etcd_unit(CONFIG, CONFIG.workers[0])


def test_etcd_version_change_changes_the_unit() -> None:
    newer = config_module.load({"controllerCount": 3, "etcdVersion": "3.6.15"}, GCP)
    assert etcd.render_etcd_unit(newer, newer.controllers[0]).startswith("# kthw: etcd 3.6.15\n")


# --- a real cluster, bootstrapped by the program's own scripts ---------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[etcd_real.Loopback]:
    etcd_real.require_etcd()
    # The certificates, unit and scripts exactly as the deploy steps would place them, from the real Pki under mocks.
    loopback = etcd_real.Loopback(tmp_path_factory.mktemp("etcd"), build(CONFIG), CONFIG)
    try:
        # As the chained ready steps do it: controller-0 founds the cluster, the others join in turn.
        for c in CONTROLLERS:
            loopback.bring_up(c.name)
        yield loopback
    finally:
        loopback.stop_all()


def test_the_first_member_founds_and_the_others_join(cluster: etcd_real.Loopback) -> None:
    envs = {
        name: m.path(etcd.ENV_FILE).read_text() if m.path(etcd.ENV_FILE).exists() else ""
        for name, m in cluster.members.items()
    }
    assert "ETCD_INITIAL_CLUSTER_STATE=new\n" in envs["controller-0"]
    assert "ETCD_INITIAL_CLUSTER_STATE=existing\n" in envs["controller-1"]
    assert "ETCD_INITIAL_CLUSTER_STATE=existing\n" in envs["controller-2"]
    # The last joiner's --initial-cluster is the whole cluster as etcd lists it.
    assert envs["controller-2"].count("controller-") == 3


def test_every_member_is_healthy_on_both_client_listeners(cluster: etcd_real.Loopback) -> None:
    for m in cluster.members.values():
        for endpoint in (m.client, m.local):
            result = cluster.etcdctl("endpoint", "health", endpoints=endpoint)
            assert result.returncode == 0, result.stderr
            assert "is healthy" in result.stdout + result.stderr


def test_members_carry_the_controller_names_and_every_joiner_was_promoted(cluster: etcd_real.Loopback) -> None:
    assert cluster.member_names() == {"controller-0", "controller-1", "controller-2"}
    # Joiners come in as learners (membership script) and the ready step promotes them.
    listed = cluster.etcdctl("member", "list", "-w", "simple", endpoints=cluster.endpoints())
    assert [line.split(", ")[5] for line in listed.stdout.strip().splitlines()] == ["false"] * 3
    assert "learner=(--learner)" in cluster.members["controller-1"].files[etcd.MEMBERSHIP_SCRIPT]
    joins = {name: (m.root / "membership.log").read_text() for name, m in cluster.members.items()}
    assert "as a learner" in joins["controller-1"] and "as a learner" not in joins["controller-2"]


def test_put_on_one_member_get_on_another(cluster: etcd_real.Loopback) -> None:
    members = list(cluster.members.values())
    put = cluster.etcdctl("put", "kthw/greeting", "hello", endpoints=members[0].client)
    assert put.returncode == 0, put.stderr
    get = cluster.etcdctl("get", "kthw/greeting", "--print-value-only", endpoints=members[2].local)
    assert get.returncode == 0, get.stderr
    assert get.stdout.strip() == "hello"


def _tls_request(url: str, ca: Path, cert: tuple[Path, Path] | None) -> str:
    """GET /health over TLS trusting `ca`: the response's status line, or the TLS error that ended it."""
    host, port = url.removeprefix("https://").split(":")
    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = False  # the member's certificate names its node address, not 127.0.0.1's port
    if cert is not None:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    try:
        with socket.create_connection((host, int(port)), timeout=5) as raw, context.wrap_socket(raw) as tls:
            tls.sendall(b"GET /health HTTP/1.1\r\nHost: etcd\r\nConnection: close\r\n\r\n")
            return tls.recv(4096).decode(errors="replace").splitlines()[0]
    except ssl.SSLError as error:
        return f"ssl error: {error}"


def test_a_client_without_a_certificate_is_refused(cluster: etcd_real.Loopback) -> None:
    # On a raw TLS connection: etcdctl 3.6 reports a refused handshake only as a timeout.
    first = cluster.members["controller-0"]
    ca = first.path(etcd.CA_FILE)
    pair = (first.path(etcd.CERT_FILE), first.path(etcd.KEY_FILE))
    for m in cluster.members.values():
        assert _tls_request(m.client, ca, pair).startswith("HTTP/1.1 200")
        refused = _tls_request(m.client, ca, None)
        # The server, not the client, ends the handshake: it demands a client certificate.
        assert "CERTIFICATE_REQUIRED" in refused or "BAD_CERTIFICATE" in refused, refused
