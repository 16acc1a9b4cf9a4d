"""The built Pulumi CLI, isolated: file backend, home and a copy of the project in a temporary directory.

Shared by the real-CLI tier (tests/test_real_cli.py), the engine tier (tests/engine/), the command
contract (tests/contract/) and the local cloud. The CLI runs with no plugin downloads, no registry
lookups and no update check, so it reaches nothing outside this machine. Next to it is the real
Python language host (`pulumi-language-python`, built from ../shared/upstream by tests.upstream.build,
with the SDK's `pulumi-language-python-exec` and `pulumi-resource-pulumi-python`), as a CLI
release lays them out: hard links to the builds in one directory of the test's own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests import upstream
from tests.processes import kill_tree

ROOT = Path(__file__).resolve().parent.parent
PROJECT_FILES = ("Pulumi.yaml", "__main__.py", "components", "platforms", "requirements.txt")
PASSPHRASE = "kthw-test-passphrase"


@dataclass(frozen=True)
class Cli:
    """The built `pulumi` with an isolated home and state, and a copy of the project to run it on."""

    binary: Path
    env: dict[str, str]
    project: Path
    home: Path  # PULUMI_HOME: plugins go under home/plugins
    state: Path  # the file backend's directory
    # What the CLI runs under: e.g. `nsenter --net=/run/netns/NAME`, for a tier whose hosts (and so
    # the real command provider's SSH) live in a network namespace.
    prefix: tuple[str, ...] = ()

    def __call__(self, *args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """Run `pulumi ARGS`; on `timeout` the CLI and every plugin it started are killed, then the test fails."""
        argv = [*self.prefix, str(self.binary), *args, "--non-interactive", "--color=never"]
        # A step that hangs (a provider stuck on a remote script) must not outlive the test: on
        # timeout the CLI and every plugin below it are killed (the engine starts its plugins in
        # process groups of their own, so the CLI's group is not enough).
        process = subprocess.Popen(
            argv,
            cwd=self.project,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_tree(process.pid)
            stdout, stderr = process.communicate()
            raise subprocess.TimeoutExpired(argv, timeout, stdout, stderr) from None
        result = subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)
        if check and result.returncode != 0:
            pytest.fail(f"pulumi {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def stack(self, name: str, project: str) -> None:
        """Create stack `name` from the shipped Pulumi.<name>.yaml, with `project` as gcp:project."""
        shutil.copy(ROOT / f"Pulumi.{name}.yaml", self.project / f"Pulumi.{name}.yaml")
        self("stack", "init", name)
        self("config", "set", "gcp:project", project, "--stack", name)


def _copy(source: Path, target: Path) -> None:
    if source.is_dir():
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    else:
        shutil.copy(source, target)


def _write_program(project: Path, name: str, program: str) -> None:
    """A small Pulumi project of its own: `program` as __main__.py, with the program's components beside it."""
    runtime = {"name": "python", "options": {"toolchain": "pip", "virtualenv": "venv"}}
    (project / "Pulumi.yaml").write_text(yaml.safe_dump({"name": name, "runtime": runtime}))
    (project / "__main__.py").write_text(program)
    for item in ("components", "requirements.txt"):
        _copy(ROOT / item, project / item)


def _release(directory: Path, *bin_dirs: Path) -> Path:
    """`directory` holding every file of `bin_dirs`, as one CLI release does: the CLI takes its language
    host from its own directory, and the host its -exec script from its own. Hard links cost nothing;
    across file systems the files are copied.
    """
    directory.mkdir(parents=True)
    for bin_dir in bin_dirs:
        for source in sorted(bin_dir.iterdir()):
            target = directory / source.name
            if target.exists():
                continue
            try:
                os.link(source, target)
            except OSError:
                shutil.copy2(source, target)
    return directory


def isolated_cli(tmp_path: Path, *, program: str | None = None, name: str = "kthw-test") -> Cli:
    """The built CLI on a fresh copy of the project, or on `program` (a small __main__.py) named `name`.

    Skips, or fails under CI=true, if the CLI or the language host is not built.
    """
    bin_dir = upstream.require("pulumi")
    host_dir = upstream.require("pulumi-language-python")
    project = tmp_path / "project"
    project.mkdir()
    if program is None:
        for item in PROJECT_FILES:
            _copy(ROOT / item, project / item)
    else:
        _write_program(project, name, program)
    # The project's `virtualenv: venv` is the venv these tests run in: the host finds the program's
    # packages (and the plugins they ask for) there, as after a `pulumi install`.
    (project / "venv").symlink_to(Path(sys.prefix))
    home = tmp_path / "home" / ".pulumi"
    state = tmp_path / "state"
    state.mkdir()
    # The host's directory first: its own -exec script wins over the CLI recipe's copy.
    release = _release(tmp_path / "pulumi-release", host_dir, bin_dir)
    env = {
        "PATH": os.pathsep.join([str(release), "/usr/bin", "/bin"]),
        "HOME": str(tmp_path / "home"),
        "PULUMI_HOME": str(home),
        "PULUMI_BACKEND_URL": f"file://{state}",
        "PULUMI_CONFIG_PASSPHRASE": PASSPHRASE,
        "PULUMI_SKIP_UPDATE_CHECK": "true",
        "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
        "PULUMI_DISABLE_REGISTRY_RESOLVE": "true",
        "PULUMI_DIY_BACKEND_NO_LEGACY_WARNING": "true",
    }
    return Cli(release / "pulumi", env, project, home, state)
