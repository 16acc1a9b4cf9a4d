"""Bounded remote steps: every script the program runs ends by itself, and hung steps fail for real.

pulumi-command does not stop a remote script when a custom timeout expires, so a wait without a
bound hangs `pulumi up`. Two kinds of test: a lint over every script the whole program registers
(every curl has --max-time, every waiting tool runs under `timeout`, every while/until loop has a
deadline), and the scripts themselves run against a loopback server that accepts and never answers
and against tools that never return, with short bounds rendered in, timed.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from components import addons, artifacts, bounds, remote, ssh_gate, worker
from components import config as config_module
from components import control_plane as cp
from components.render import TEMPLATES
from tests.harness import Recorded, Recording, bundle
from tests.tools import find_tool, require_tool

GCP = {"gcp:region": "us-west1", "gcp:zone": "us-west1-c", "gcp:project": "kthw-test"}
CONFIG = config_module.load({"controllerCount": 3, "workerCount": 3}, GCP)
SLEEP = find_tool("sleep") or "/bin/sleep"

# --- the lint ------------------------------------------------------------------------------------

# Tools that can wait without end (a hung API, dbus, a dpkg lock, a cloud-init that never finishes).
WAITING_TOOLS = ("kubectl", "systemctl", "apt-get", "cloud-init", "etcdctl")
_TOOL = "|".join(re.escape(t) for t in WAITING_TOOLS)
# A tool run through sudo (with VAR=value prefixes, a path, or the healthy.sh "${kubectl}" variable),
# or bare at a command position.
_SUDO_CALL = re.compile(rf'\bsudo\s+(?:[A-Z_]+=\S*\s+)*(?:"\$\{{kubectl\}}"|(?:\S*/)?(?:{_TOOL})\b)')
_COMMAND_POSITION = r"(?:^|[;&|(!]|\$\(|\b(?:then|do|if|until|while)\s)\s*"
# A tool at a command position: by name or path, or through a variable named after it ("${etcdctl}").
_BARE_CALL = re.compile(rf'{_COMMAND_POSITION}(?P<tool>(?:\S*/)?(?:{_TOOL})(?=\s|$)|"\$\{{(?:{_TOOL})\}}")')
_CURL_CALL = re.compile(rf"{_COMMAND_POSITION}curl\s")
_FUNCTION = re.compile(r"^\s*([a-z_][a-z0-9_]*)\(\)\s*\{\s*$")
_LOOP = re.compile(r"^\s*(while|until|for)\b")


@dataclass(frozen=True)
class Finding:
    """One unbounded wait the lint found: the logical line and why."""

    line: str
    problem: str


def logical_lines(script: str) -> list[str]:
    """The script's lines with backslash continuations joined; comments and here-document bodies dropped."""
    joined = re.sub(r"\\\n\s*", " ", script)
    lines: list[str] = []
    terminator: str | None = None
    for line in joined.splitlines():
        if terminator is not None:
            terminator = None if line.strip() == terminator else terminator
            continue
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        lines.append(line)
        heredoc = re.search(r"<<-?\s*'?([A-Za-z_]+)'?", line)
        if heredoc and "<<<" not in line:
            terminator = heredoc.group(1)
    return lines


def _bounded_functions(lines: list[str]) -> set[str]:
    """Functions whose body runs under `timeout` (or calls one that does)."""
    bodies: dict[str, list[str]] = {}
    current: str | None = None
    for line in lines:
        match = _FUNCTION.match(line)
        if match:
            current = match.group(1)
            bodies[current] = []
        elif current is not None and line.strip() == "}":
            current = None
        elif current is not None:
            bodies[current].append(line)
    bounded = {name for name, body in bodies.items() if any(re.search(r"\btimeout\s", b) for b in body)}
    changed = True
    while changed:
        changed = False
        for name, body in bodies.items():
            if name not in bounded and any(re.search(rf"\b{b}\b", line) for line in body for b in bounded):
                bounded.add(name)
                changed = True
    return bounded


def _loop_body(lines: list[str], start: int) -> str:
    """A loop's header through its matching `done`, as one string."""
    depth = 0
    for end in range(start, len(lines)):
        stripped = lines[end].strip()
        if _LOOP.match(lines[end]):
            depth += 1
        if stripped.startswith("done") or re.search(r";\s*done\b", stripped):
            depth -= 1
            if depth == 0:
                return "\n".join(lines[start : end + 1])
    return "\n".join(lines[start:])


def unbounded_waits(script: str) -> list[Finding]:
    """Every wait in `script` that nothing bounds."""
    lines = logical_lines(script)
    wrappers = _bounded_functions(lines)
    found: list[Finding] = []
    for i, line in enumerate(lines):
        for call in (*_SUDO_CALL.finditer(line), *_BARE_CALL.finditer(line)):
            if "command -v" in line[max(0, call.start() - 12) : call.end()]:
                continue
            if not re.search(r"\btimeout\s", line[: call.start()]):
                tool = call.groupdict().get("tool") or call.group(0).strip()
                found.append(Finding(line.strip(), f"{tool} runs without `timeout`"))
        if _CURL_CALL.search(line):
            for flag in ("--max-time", "--connect-timeout"):
                if flag not in line:
                    found.append(Finding(line.strip(), f"curl without {flag}"))
        if re.search(r"\bapt-get\b", line) and _SUDO_CALL.search(line) and "DPkg::Lock::Timeout=" not in line:
            found.append(Finding(line.strip(), "apt-get without DPkg::Lock::Timeout"))
        if re.search(r"--wait\b", line):
            bounded_here = re.search(r"\btimeout\s", line) or any(re.search(rf"\b{w}\b", line) for w in wrappers)
            if not bounded_here:
                found.append(Finding(line.strip(), "--wait outside `timeout` or a bounded wrapper"))
        if re.search(r"\brollout status\b", line) and "--timeout=" not in line:
            found.append(Finding(line.strip(), "rollout status without --timeout"))
        loop = _LOOP.match(line)
        if loop and not re.match(r"^\s*while\s+(IFS=\S*\s+)?read\b", line):
            body = _loop_body(lines, i)
            finite_for = loop.group(1) == "for" and not line.strip().startswith("for ((")
            if not finite_for and not ("deadline" in body and "SECONDS" in body):
                found.append(Finding(line.strip(), f"{loop.group(1)} loop without a SECONDS deadline"))
        if re.search(r"\bsleep\s+infinity\b", line):
            found.append(Finding(line.strip(), "sleep infinity"))
    return found


def _is_bundle(r: Recorded) -> bool:
    """A deploy step: its stdin is a base64 tar of the files it places."""
    try:
        bundle(r)
    except (ValueError, TypeError, KeyError, tarfile.TarError):
        return False
    return True


def commands(rec: Recording) -> dict[str, str]:
    """Every script the program runs on a node: each remote command's create and delete scripts, and
    each script a deploy step installs (etcd's membership, ready, leave, backup and restore scripts)."""
    found: dict[str, str] = {}
    for r in rec.of_type("command:remote:Command"):
        found[r.name] = str(r.inputs["create"])
        if r.inputs.get("delete"):
            found[f"{r.name} (delete)"] = str(r.inputs["delete"])
        if _is_bundle(r):
            for path, (content, mode) in bundle(r).items():
                if mode & 0o111 and content.startswith("#!"):
                    found[f"{r.name} {path}"] = content
    return found


def test_every_script_the_program_runs_bounds_its_waits(ha: Recording) -> None:
    scripts = commands(ha)
    assert len(scripts) > 30
    problems = {name: unbounded_waits(script) for name, script in scripts.items()}
    assert {name: p for name, p in problems.items() if p} == {}


def test_the_lint_walks_every_script_template(ha: Recording) -> None:
    """Each template under templates/*.sh is among the scripts the program registers (else the lint misses it)."""
    scripts = list(commands(ha).values())
    for template in sorted(TEMPLATES.glob("*/*.sh")):
        header = template.read_text().splitlines()[1]
        pattern = re.escape(header).replace(re.escape("{{ node }}"), r"\S+").replace(re.escape("{{ step }}"), ".+")
        pattern = pattern.replace(re.escape("{{ member }}"), r"\S+")
        assert any(re.search(f"^{pattern}$", s, re.M) for s in scripts), template.relative_to(TEMPLATES)


@pytest.mark.parametrize(
    ("script", "problem"),
    [
        ('curl -sS --fail "${url}"', "curl without --max-time"),
        ('body="$(curl --max-time 5 "${url}")"', "curl without --connect-timeout"),
        ('if ! curl --connect-timeout 2 --output x "${url}"; then', "curl without --max-time"),
        ("sudo cloud-init status --wait", "sudo cloud-init runs without `timeout`"),
        ("sudo /usr/local/bin/kubectl --kubeconfig k get nodes", "sudo /usr/local/bin/kubectl runs without `timeout`"),
        ('x="$(sudo "${kubectl}" get --raw /healthz)"', 'sudo "${kubectl}" runs without `timeout`'),
        ("  systemctl restart kubelet", "systemctl runs without `timeout`"),
        (
            "timeout 60 sudo DEBIAN_FRONTEND=noninteractive apt-get install -y x",
            "apt-get without DPkg::Lock::Timeout",
        ),
        ("until ready; do\n  sleep 1\ndone", "until loop without a SECONDS deadline"),
        ("while :; do\n  check && break\n  sleep 3\ndone", "while loop without a SECONDS deadline"),
        ('k() {\n  sudo kubectl "$@"\n}\nk delete pod p --wait=true', "--wait outside `timeout` or a bounded wrapper"),
        ("timeout 9 sudo kubectl rollout status deployment/x", "rollout status without --timeout"),
        ('until "${etcdctl}" member add x; do', '"${etcdctl}" runs without `timeout`'),
        ('members="$("${etcdctl}" member list)"', '"${etcdctl}" runs without `timeout`'),
    ],
)
def test_the_lint_catches_unbounded_waits(script: str, problem: str) -> None:
    assert problem in [f.problem for f in unbounded_waits(script)]


def test_the_lint_accepts_bounded_forms() -> None:
    script = """
k() {
  timeout --kill-after=5 "${t}" sudo /usr/local/bin/kubectl "$@"
}
deadline=$((SECONDS + 5))
until k get node n; do
  [ "${SECONDS}" -lt "${deadline}" ] || exit 1
  sleep 1
done
k delete pod p --wait=true --timeout=5s
while read -r path; do
  echo "${path}"
done <<'X'
kubectl 1.36.4 file https://dl.k8s.io/kubectl
X
for unit in a b; do echo "${unit}"; done
command -v cloud-init >/dev/null
curl --connect-timeout 1 --max-time 2 "${url}"
fail "systemctl daemon-reload failed"
"""
    assert unbounded_waits(script) == []


def test_every_command_has_create_and_update_timeouts(ha: Recording) -> None:
    """The engine's side of the bound: each step, the SSH gates included, fails when it takes too long."""
    missing = {
        r.name: r.options["custom_timeouts"]
        for r in ha.of_type("command:remote:Command")
        if not (r.options["custom_timeouts"]["create"] and r.options["custom_timeouts"]["update"])
    }
    assert missing == {}
    gate = ha.by_name("kthw-worker-0-ssh-ready")
    assert gate.options["custom_timeouts"] == {"create": "15m", "update": "15m"}


def test_script_bounds_end_before_the_engine_gives_up() -> None:
    """A script's own message must arrive before the engine's timeout would replace it with a bare one."""
    assert bounds.CLOUD_INIT_TIMEOUT_SECONDS < bounds.SSH_READY_TIMEOUT_SECONDS
    assert bounds.CURL.worst_case_seconds < bounds.STEP_TIMEOUT_SECONDS
    apt = bounds.APT_ATTEMPTS * bounds.APT_CALL_TIMEOUT_SECONDS
    assert bounds.APT_LOCK_TIMEOUT_SECONDS < bounds.APT_CALL_TIMEOUT_SECONDS and apt < bounds.STEP_TIMEOUT_SECONDS
    for wait in (
        bounds.CONTROL_PLANE_HEALTH_SECONDS,
        bounds.WORKER_READY_SECONDS,
        bounds.DNS_ROLLOUT_SECONDS,
        bounds.PUBLIC_PROBE_SECONDS,
        bounds.APPLY_RETRY_SECONDS + bounds.DNS_ROLLOUT_SECONDS,
    ):
        assert wait + bounds.KUBECTL_CALL_TIMEOUT_SECONDS < bounds.STEP_TIMEOUT_SECONDS
    assert bounds.duration(bounds.STEP_TIMEOUT_SECONDS) == remote.STEP_TIMEOUT == "20m"
    assert bounds.duration(90) == "90s"


# --- hung steps, for real ----------------------------------------------------------------------


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A loopback TCP server that accepts every connection and never sends a byte."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        listener.close()


def _stubs(tmp_path: Path, programs: dict[str, str]) -> dict[str, str]:
    """An environment whose PATH starts with stub programs (bash scripts with the given bodies)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in programs.items():
        (bin_dir / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def _timed(argv: list[str], env: dict[str, str], stdin: str = "") -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.monotonic()
    result = subprocess.run(argv, input=stdin, capture_output=True, text=True, env=env, timeout=120)
    return result, time.monotonic() - start


def test_a_download_from_a_server_that_never_answers_fails_the_step(tmp_path: Path, silent_server: int) -> None:
    """The real install script and curl against a mirror that accepts and stays silent."""
    mirror = f"http://127.0.0.1:{silent_server}"
    cfg = config_module.load({"binaryMirror": mirror}, GCP)
    curl = bounds.Curl(connect_timeout=2, max_time=1, retries=1, retry_delay=1)
    script = tmp_path / "install.sh"
    script.write_text(artifacts.install_script(cfg, "worker-0", ["kubelet"], curl=curl))
    env = dict(os.environ, KTHW_ROOT=str(tmp_path / "root"), KTHW_CACHE=str(tmp_path / "cache"), KTHW_SUDO="")
    result, elapsed = _timed(["bash", str(script)], env)
    assert result.returncode == 1
    # Two attempts of 1 s and a 1 s pause: it ends in seconds, where an unbounded curl waits forever.
    assert elapsed < 10, elapsed
    url = f"{mirror}/dl.k8s.io/v1.36.4/bin/linux/amd64/kubelet"
    assert f"kthw: worker-0: install kubelet: download of {url} failed (2 attempts of at most 1s): " in result.stderr
    assert "timed out" in result.stderr, result.stderr
    assert not (tmp_path / "root").exists()


def _kubectl() -> str:
    """The real kubectl from the venv the tests run in; missing fails under CI and skips elsewhere."""
    return require_tool("kubectl")


def test_the_health_wait_against_an_api_that_never_answers_fails_the_step(tmp_path: Path, silent_server: int) -> None:
    """healthy.sh with the real kubectl against an API server address that accepts and stays silent."""
    kubeconfig = tmp_path / "admin.kubeconfig"
    kubeconfig.write_text(
        f"""apiVersion: v1
kind: Config
clusters:
- name: kthw
  cluster:
    server: https://127.0.0.1:{silent_server}
    insecure-skip-tls-verify: true
users:
- name: admin
  user:
    token: not-a-secret
contexts:
- name: kthw
  context: {{cluster: kthw, user: admin}}
current-context: kthw
"""
    )
    env = _stubs(tmp_path, {"sudo": 'exec "$@"', "systemctl": "exit 0", "journalctl": "echo journal of $2"})
    env["HOME"] = str(tmp_path)
    script = cp.render_health_script(
        CONFIG.controllers[0], timeout_seconds=2, kubectl_timeout=2, kubectl=_kubectl(), kubeconfig=str(kubeconfig)
    )
    result, elapsed = _timed(["bash", "-c", script], env)
    assert result.returncode == 1
    assert elapsed < 20, elapsed
    assert "kthw: controller-0: control-plane health: /healthz is not ok after 2s; last answer: " in result.stderr
    assert "journal of kube-apiserver" in result.stderr


def test_a_worker_whose_kubectl_never_returns_fails_the_ready_step(tmp_path: Path) -> None:
    """ready.sh when every kubectl call hangs (a stalled connection): each call is cut, then the wait ends."""
    env = _stubs(
        tmp_path,
        {
            "sudo": 'if [ "$1" = /usr/local/bin/kubectl ]; then shift; exec kubectl "$@"; fi\nexec "$@"',
            "systemctl": "exit 0",
            "journalctl": "true",
            "kubectl": f"exec {SLEEP} 600",
            # The kubelet itself is healthy; only the API does not answer.
            "curl": "printf ok",
            # The script's own pauses return at once: the bound under test is the deadline.
            "sleep": "true",
        },
    )
    cni_bin = tmp_path / "cni-bin"
    cni_bin.mkdir()
    for plugin in worker.CNI_REQUIRED_BINARIES:
        (cni_bin / plugin).write_text("#!/bin/sh\n")
        (cni_bin / plugin).chmod(0o755)
    script = worker.render_ready_script(
        CONFIG.workers[1], timeout_seconds=2, kubectl_timeout=1, cni_bin_dir=str(cni_bin)
    )
    result, elapsed = _timed(["bash", "-c", script], env)
    assert result.returncode == 1
    assert elapsed < 15, elapsed
    assert result.stderr.startswith(
        "kthw: worker-1: worker start: node worker-1 is not Ready in the API server after 2s (Ready=unregistered)"
    )


def test_an_apt_get_that_never_returns_fails_the_prepare_step(tmp_path: Path) -> None:
    """prepare.sh when apt-get hangs (a silent mirror): each call is cut, tried again, then the step fails."""
    env = _stubs(
        tmp_path,
        {
            "sudo": 'while [[ "$1" == *=* ]]; do shift; done\nexec "$@"',
            "apt-get": f'echo "$*" >>"{tmp_path}/apt.log"\nexec {SLEEP} 600',
            "dpkg-query": "exit 1",
            "sleep": "true",
        },
    )
    script = worker.render_prepare_script(CONFIG.workers[0], apt_timeout=1, apt_attempts=2)
    result, elapsed = _timed(["bash", "-c", script], env)
    assert result.returncode == 1
    assert elapsed < 15, elapsed
    assert result.stderr.splitlines() == [
        "kthw: worker-0: worker prepare: apt-get update failed or took over 1s (attempt 1 of 2)",
        "kthw: worker-0: worker prepare: apt-get update failed or took over 1s (attempt 2 of 2)",
        "kthw: worker-0: worker prepare: apt-get update failed",
    ]
    assert (tmp_path / "apt.log").read_text().splitlines() == ["-o DPkg::Lock::Timeout=1 -q -y update"] * 2


def test_a_cloud_init_that_never_finishes_fails_the_ssh_gate(tmp_path: Path) -> None:
    env = _stubs(tmp_path, {"sudo": 'exec "$@"', "cloud-init": "exec sleep 600"})
    result, elapsed = _timed(["bash", "-c", ssh_gate.ssh_ready_script("worker-2", cloud_init_timeout=1)], env)
    assert result.returncode == 1
    assert elapsed < 15, elapsed
    assert result.stderr == "kthw: worker-2: ssh gate: cloud-init did not finish within 1s\n"
    assert "ready" not in result.stdout


def test_cloud_init_errors_do_not_stop_the_gate(tmp_path: Path) -> None:
    env = _stubs(tmp_path, {"sudo": 'exec "$@"', "cloud-init": "exit 2"})
    result, _ = _timed(["bash", "-c", ssh_gate.ssh_ready_script("worker-2", cloud_init_timeout=5)], env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "kthw: worker-2: ready\n"
    assert "cloud-init reported errors (exit 2); continuing" in result.stderr


def test_a_unit_whose_start_never_returns_fails_the_deploy_step(tmp_path: Path) -> None:
    """deploy.sh when `systemctl restart` blocks (a start job that never ends)."""
    env = _stubs(
        tmp_path,
        {
            "sudo": 'exec "$@"',
            "systemctl": 'if [ "$1" = restart ]; then exec sleep 600; fi\nexit 0',
            "journalctl": 'echo "journal of $2"',
        },
    )
    env["KTHW_STATE"] = str(tmp_path / "state")
    files = [(str(tmp_path / "etc/kubelet.conf"), "x", 0o644)]
    specs = [remote.RemoteFile(path, content, mode) for path, content, mode in files]
    script = remote.deploy_script("worker-0", "kubelet", specs, ["kubelet"], systemctl_timeout=1)
    result, elapsed = _timed(["bash", "-c", script], env, stdin=remote.pack(files))
    assert result.returncode == 1
    assert elapsed < 15, elapsed
    assert "kthw: worker-0: kubelet: kubelet did not start within 1s: journal of kubelet" in result.stderr
    assert not (tmp_path / "state/steps/kubelet.sha256").exists()


def test_a_smoke_check_against_an_api_that_never_answers_ends(tmp_path: Path) -> None:
    """The smoke test's first check when every kubectl call hangs: the node check fails on its deadline."""
    env = _stubs(
        tmp_path,
        {
            "sudo": 'while [[ "$1" == *=* ]]; do shift; done\nif [ "$1" = /usr/local/bin/kubectl ]; then shift; '
            'exec kubectl "$@"; fi\nexec "$@"',
            "kubectl": f"exec {SLEEP} 600",
            # The script's own pauses return at once: the bound under test is the deadline.
            "sleep": "true",
        },
    )
    script = addons.smoke_test_script(CONFIG, "controller-0", check_seconds=2, kubectl_timeout=1)
    result, elapsed = _timed(["bash", "-c", script], env, stdin=addons.render_smoke_manifests())
    assert result.returncode == 1
    assert elapsed < 20, elapsed
    assert "kthw: controller-0: smoke test: nodes: worker-0 is not Ready after 2s (Ready=unregistered)" in result.stderr
