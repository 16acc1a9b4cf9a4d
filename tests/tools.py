"""Real tools on rendered files: shellcheck for scripts, systemd-analyze for units, and a unit parser."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest


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
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (.ci/run installs it: apt-get install -y shellcheck)")
    path = tmp_path / f"{name}.sh"
    path.write_text(script)
    result = subprocess.run(["shellcheck", "--shell=bash", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def verify_unit(name: str, unit: str, tmp_path: Path) -> None:
    """`systemd-analyze verify` the unit in a scratch root, with a stub at every Exec path it names.

    Works without systemd as PID 1; skips, saying why, where systemd-analyze cannot run at all.
    """
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (.ci/run installs Debian's systemd)")
    (tmp_path / "etc/systemd/system").mkdir(parents=True)
    (tmp_path / f"etc/systemd/system/{name}.service").write_text(unit)
    found = directives(unit)
    for command in found.get("ExecStartPre", []) + found.get("ExecStart", []):
        stub = tmp_path / shlex.split(command.lstrip("-"))[0].lstrip("/")
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text("#!/bin/sh\n")
        stub.chmod(0o755)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--recursive-errors=no", f"--root={tmp_path}", f"{name}.service"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if result.returncode != 0 and "Failed to" in result.stderr and name not in result.stderr:
        pytest.skip(f"systemd-analyze cannot run here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    assert f"{name}.service" not in result.stderr, result.stderr
