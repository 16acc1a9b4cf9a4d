"""The built CLI with the SDK's launcher for Python dynamic providers (`pulumi-resource-pulumi-python`) on its PATH.

A CLI release ships the launcher beside `pulumi`; until the build puts it there, the tests take it
from the SDK module Go downloaded for the CLI's own build (same version).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from pathlib import Path

from tests import upstream
from tests.pulumi_cli import Cli
from tests.tools import skip_or_fail
from tests.upstream import build

LAUNCHER = "pulumi-resource-pulumi-python"


def launcher() -> Path:
    """The launcher beside the built CLI, else in Go's module cache; skip (fail under CI=true) without it."""
    beside = upstream.require("pulumi") / LAUNCHER
    if beside.exists():
        return beside
    gomodcache = subprocess.run(["go", "env", "GOMODCACHE"], capture_output=True, text=True, check=False).stdout
    found = Path(gomodcache.strip()) / f"github.com/pulumi/pulumi/sdk/v3@v{build.PULUMI_CLI}/python/dist/{LAUNCHER}"
    if not found.exists():
        skip_or_fail(f"{LAUNCHER} is neither beside the built CLI nor in Go's module cache ({found})")
    return found


def with_dynamic_providers(cli: Cli, tmp_path: Path) -> Cli:
    """`cli` with a directory holding the launcher first on its PATH."""
    bin_dir = tmp_path / "dynamic-bin"
    bin_dir.mkdir(exist_ok=True)
    shutil.copy(launcher(), bin_dir / LAUNCHER)
    (bin_dir / LAUNCHER).chmod(0o755)
    return dataclasses.replace(cli, env={**cli.env, "PATH": f"{bin_dir}{os.pathsep}{cli.env['PATH']}"})
