"""The built Pulumi CLI, isolated: file backend, home and a copy of the project in a temporary directory.

Shared by the real-CLI tier (tests/test_real_cli.py) and the engine tier (tests/engine/). The CLI runs
with no plugin downloads, no registry lookups and no update check, so it reaches nothing outside this
machine; `pulumi-language-python` on its PATH is our host (tests/upstream/langhost.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import upstream

ROOT = Path(__file__).resolve().parent.parent
PROJECT_FILES = ("Pulumi.yaml", "__main__.py", "components", "platforms", "requirements.txt")
LANGHOST = Path(__file__).resolve().parent / "upstream" / "langhost.py"
PASSPHRASE = "kthw-test-passphrase"


@dataclass(frozen=True)
class Cli:
    """The built `pulumi` with an isolated home and state, and a copy of the project to run it on."""

    binary: Path
    env: dict[str, str]
    project: Path
    home: Path  # PULUMI_HOME: plugins go under home/plugins
    state: Path  # the file backend's directory

    def __call__(self, *args: str, check: bool = True, timeout: int = 180) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.binary), *args, "--non-interactive", "--color=never"],
            cwd=self.project,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            pytest.fail(f"pulumi {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def stack(self, name: str, project: str) -> None:
        """Create stack `name` from the shipped Pulumi.<name>.yaml, with `project` as gcp:project."""
        shutil.copy(ROOT / f"Pulumi.{name}.yaml", self.project / f"Pulumi.{name}.yaml")
        self("stack", "init", name)
        self("config", "set", "gcp:project", project, "--stack", name)


def _language_host(directory: Path) -> None:
    """`pulumi-language-python` on PATH: our host (tests/upstream/langhost.py) under this venv's Python."""
    directory.mkdir()
    launcher = directory / "pulumi-language-python"
    launcher.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{LANGHOST}" "$@"\n')
    launcher.chmod(0o755)


def isolated_cli(tmp_path: Path) -> Cli:
    """The built CLI (skip, or fail under CI=true, if it is not built) on a fresh copy of the project."""
    bin_dir = upstream.require("pulumi")
    project = tmp_path / "project"
    project.mkdir()
    for name in PROJECT_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, project / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, project / name)
    # The project's `virtualenv: venv` is the venv these tests run in.
    (project / "venv").symlink_to(Path(sys.prefix))
    _language_host(tmp_path / "langhost")
    home = tmp_path / "home" / ".pulumi"
    state = tmp_path / "state"
    state.mkdir()
    env = {
        "PATH": os.pathsep.join([str(tmp_path / "langhost"), str(bin_dir), "/usr/bin", "/bin"]),
        "HOME": str(tmp_path / "home"),
        "PULUMI_HOME": str(home),
        "PULUMI_BACKEND_URL": f"file://{state}",
        "PULUMI_CONFIG_PASSPHRASE": PASSPHRASE,
        "PULUMI_SKIP_UPDATE_CHECK": "true",
        "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
        "PULUMI_DISABLE_REGISTRY_RESOLVE": "true",
        "PULUMI_DIY_BACKEND_NO_LEGACY_WARNING": "true",
        "KTHW_PYTHON_EXEC": str(bin_dir / "pulumi-language-python-exec"),
    }
    return Cli(bin_dir / "pulumi", env, project, home, state)
