"""The remote helpers: deterministic bundles, and the deploy step run for real against shimmed sudo/systemctl."""

from __future__ import annotations

import base64
import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from components import remote, ssh_gate
from tests.tools import require_tool

# sudo runs the command as is (dropping -o/-g root when the test is not root); systemctl logs its
# calls and answers is-active from a state file, so the test sees exactly what the step asked for.
SUDO = """#!/bin/sh
if [ "$(id -u)" != 0 ]; then
  args=""
  for a in "$@"; do case "$a" in -o|-g|root) ;; *) args="$args $a" ;; esac; done
  # shellcheck disable=SC2086
  exec $args
fi
exec "$@"
"""
SYSTEMCTL = """#!/bin/sh
echo "$*" >> "$SHIM_LOG"
if [ "$1" = is-active ]; then
  state="$(cat "$SHIM_STATE" 2>/dev/null || echo inactive)"
  echo "$state"
  [ "$state" = active ]; exit $?
fi
if [ "$1" = restart ]; then
  [ -n "$SHIM_FAIL_START" ] && exit 1
  echo active > "$SHIM_STATE"
fi
exit 0
"""


@pytest.fixture
def shims(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "shim"
    bin_dir.mkdir()
    for name, body in {"sudo": SUDO, "systemctl": SYSTEMCTL, "journalctl": "#!/bin/sh\necho no journal\n"}.items():
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    return {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SHIM_LOG": str(tmp_path / "systemctl.log"),
        "SHIM_STATE": str(tmp_path / "state"),
        "KTHW_STATE": str(tmp_path / "kthw-state"),
        "SHIM_FAIL_START": "",
    }


def deploy(
    tmp_path: Path, env: dict[str, str], files: list[tuple[str, str, int]], unit: str = "kube-apiserver"
) -> subprocess.CompletedProcess[str]:
    specs = [remote.RemoteFile(path, content, mode) for path, content, mode in files]
    script = remote.deploy_script("controller-0", unit, specs, [unit])
    return subprocess.run(
        ["bash", "-c", script], input=remote.pack(files), env=env, capture_output=True, text=True, check=False
    )


def calls(env: dict[str, str]) -> list[str]:
    log = Path(env["SHIM_LOG"])
    lines = log.read_text().splitlines() if log.exists() else []
    log.unlink(missing_ok=True)
    return lines


def test_pack_is_deterministic_and_root_owned() -> None:
    files = [("/etc/a.conf", "a\n", 0o644), ("/var/lib/k/key.pem", "KEY", 0o600)]
    assert remote.pack(files) == remote.pack(list(files))
    with tarfile.open(fileobj=io.BytesIO(base64.b64decode(remote.pack(files)))) as tar:
        members = tar.getmembers()
        assert [(m.name, m.mode, m.uid, m.gid, m.mtime) for m in members] == [
            ("etc/a.conf", 0o644, 0, 0, 0),
            ("var/lib/k/key.pem", 0o600, 0, 0, 0),
        ]
        assert tar.extractfile(members[1]).read() == b"KEY"  # type: ignore[union-attr]


def test_deploy_installs_files_and_restarts_only_on_change(tmp_path: Path, shims: dict[str, str]) -> None:
    unit = str(tmp_path / "etc/systemd/system/kube-apiserver.service")
    key = str(tmp_path / "var/lib/kubernetes/kubernetes-key.pem")
    files = [(unit, "[Service]\nExecStart=/bin/true\n", 0o644), (key, "PRIVATE", 0o600)]

    first = deploy(tmp_path, shims, files)
    assert first.returncode == 0, first.stderr
    assert Path(key).read_text() == "PRIVATE"
    assert oct(Path(key).stat().st_mode & 0o777) == "0o600"
    assert oct(Path(unit).stat().st_mode & 0o777) == "0o644"
    assert calls(shims) == [
        "daemon-reload",
        "enable --quiet kube-apiserver",
        "is-active kube-apiserver",
        "restart kube-apiserver",
    ]

    again = deploy(tmp_path, shims, files)
    assert again.returncode == 0, again.stderr
    assert calls(shims) == ["enable --quiet kube-apiserver", "is-active kube-apiserver"]

    rotated = deploy(tmp_path, shims, [files[0], (key, "ROTATED", 0o600)])
    assert rotated.returncode == 0, rotated.stderr
    assert Path(key).read_text() == "ROTATED"
    # a key changed, not the unit: no daemon-reload, but the service restarts to load it
    assert calls(shims) == ["enable --quiet kube-apiserver", "is-active kube-apiserver", "restart kube-apiserver"]


def test_a_file_shared_by_two_steps_restarts_both(tmp_path: Path, shims: dict[str, str]) -> None:
    ca = str(tmp_path / "var/lib/kubernetes/ca.pem")
    for unit in ("kube-apiserver", "kube-controller-manager"):
        assert deploy(tmp_path, shims, [(ca, "OLD", 0o644)], unit).returncode == 0
    calls(shims)
    # the first step writes the new CA; the second finds the file already new, yet must restart
    assert deploy(tmp_path, shims, [(ca, "NEW", 0o644)], "kube-apiserver").returncode == 0
    assert deploy(tmp_path, shims, [(ca, "NEW", 0o644)], "kube-controller-manager").returncode == 0
    assert [c for c in calls(shims) if c.startswith("restart")] == [
        "restart kube-apiserver",
        "restart kube-controller-manager",
    ]


def test_deploy_restarts_a_stopped_service_without_changes(tmp_path: Path, shims: dict[str, str]) -> None:
    files = [(str(tmp_path / "etc/x.conf"), "x", 0o644)]
    assert deploy(tmp_path, shims, files).returncode == 0
    calls(shims)
    Path(shims["SHIM_STATE"]).write_text("failed\n")
    assert deploy(tmp_path, shims, files).returncode == 0
    assert calls(shims)[-1] == "restart kube-apiserver"


def test_a_starting_service_is_left_to_finish(tmp_path: Path, shims: dict[str, str]) -> None:
    """An etcd member waiting for its quorum is "activating"; a re-run must not restart it."""
    files = [(str(tmp_path / "etc/x.conf"), "x", 0o644)]
    assert deploy(tmp_path, shims, files).returncode == 0
    calls(shims)
    Path(shims["SHIM_STATE"]).write_text("activating\n")
    assert deploy(tmp_path, shims, files).returncode == 0
    assert [c for c in calls(shims) if c.startswith("restart")] == []


def test_a_unit_that_does_not_start_fails_the_step(tmp_path: Path, shims: dict[str, str]) -> None:
    files = [(str(tmp_path / "etc/systemd/system/kube-apiserver.service"), "[Service]\n", 0o644)]
    result = deploy(tmp_path, {**shims, "SHIM_FAIL_START": "1"}, files)
    assert result.returncode != 0
    assert "kthw: controller-0: kube-apiserver: kube-apiserver did not start: no journal" in result.stderr
    # no stamp is recorded, so the next run restarts it again instead of trusting a failed start
    assert not (Path(shims["KTHW_STATE"]) / "steps/kube-apiserver.sha256").exists()


def test_deploy_fails_naming_node_and_step(tmp_path: Path, shims: dict[str, str]) -> None:
    script = remote.deploy_script(
        "controller-0", "kube-apiserver", [remote.RemoteFile(str(tmp_path / "missing.pem"), "x")], ["kube-apiserver"]
    )
    result = subprocess.run(
        ["bash", "-c", script], input=remote.pack([]), env=shims, capture_output=True, text=True, check=False
    )
    assert result.returncode != 0
    assert f"kthw: controller-0: kube-apiserver: {tmp_path}/missing.pem is missing from the bundle" in result.stderr
    assert not (tmp_path / "missing.pem").exists()


def test_deploy_removes_obsolete_files_once_and_restarts(tmp_path: Path, shims: dict[str, str]) -> None:
    """An upgraded step drops the files it no longer ships (the old CNI .conf files) and restarts its service."""
    conflist = str(tmp_path / "etc/cni/net.d/05-kthw-bridge.conflist")
    stale = [str(tmp_path / "etc/cni/net.d/10-bridge.conf"), str(tmp_path / "etc/cni/net.d/99-loopback.conf")]
    files = [(conflist, "{}", 0o644)]
    specs = [remote.RemoteFile(path, content, mode) for path, content, mode in files]
    script = remote.deploy_script("worker-0", "containerd", specs, ["containerd"], obsolete=stale)

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", script], input=remote.pack(files), env=shims, capture_output=True, text=True, check=False
        )

    assert run().returncode == 0
    calls(shims)
    for path in stale:
        Path(path).write_text("{}")
    upgraded = run()
    assert upgraded.returncode == 0, upgraded.stderr
    assert [p for p in stale if Path(p).exists()] == []
    assert Path(conflist).exists()
    assert calls(shims)[-1] == "restart containerd"
    again = run()
    assert again.returncode == 0, again.stderr
    assert [c for c in calls(shims) if c.startswith("restart")] == []


def test_a_file_cannot_be_both_installed_and_obsolete() -> None:
    with pytest.raises(ValueError, match="both installed and removed"):
        remote.deploy_script("worker-0", "containerd", [remote.RemoteFile("/a", "x")], obsolete=["/a"])


def test_no_block_is_only_for_steps_that_ask() -> None:
    files = [remote.RemoteFile("/etc/etcd/ca.pem", "x")]
    assert "restart --no-block" in remote.deploy_script("controller-0", "etcd", files, ["etcd"], no_block=True)
    assert "--no-block" not in remote.deploy_script("controller-0", "etcd", files, ["etcd"])


@pytest.mark.parametrize(
    "script",
    [
        remote.deploy_script("worker-0", "kubelet", [remote.RemoteFile("/a", "x")], ["kubelet"]),
        remote.deploy_script("controller-0", "config", [remote.RemoteFile("/a", "x")]),
        ssh_gate.ssh_ready_script("worker-0"),
    ],
    ids=["deploy", "deploy-no-units", "ssh-ready"],
)
def test_scripts_pass_shellcheck(tmp_path: Path, script: str) -> None:
    path = tmp_path / "script.sh"
    path.write_text(script)
    result = subprocess.run(
        [require_tool("shellcheck"), "-S", "style", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout
