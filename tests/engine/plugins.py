"""Install the provider plugins where the engine looks for them, for one test's PULUMI_HOME.

The engine starts `$PULUMI_HOME/plugins/resource-<name>-v<version>/pulumi-resource-<name>` for the
version the program's SDK package asks for (its `pulumi-plugin.json`). Each local launcher here is a
shell script that runs this venv's Python on one module of tests/engine/providers, with the test's
state paths baked in. `install_real_command` installs the real pulumi-resource-command instead, from
its build, as a user installs a plugin from a file: a tier with hosts to reach uses it in place of
the command stand-in (`install(..., names=LOCAL_ONLY)` then leaves the command plugin out).
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from tests import upstream
from tests.engine.providers import command, gcp
from tests.pulumi_cli import Cli

ROOT = Path(__file__).resolve().parent.parent.parent
# package name -> the module of tests/engine/providers that stands in for its plugin
PLUGINS = {"gcp": "gcp", "tls": "tls", "random": "random", "command": "command"}
# Every stand-in but the command provider's, for a tier that runs the real one.
LOCAL_ONLY = ("gcp", "tls", "random")
REAL_COMMAND = "pulumi-resource-command"


@dataclass(frozen=True)
class Installed:
    """Where the plugins keep their state for this test."""

    gcp_state: Path  # the local cloud's resources (gcp.Backend)
    command_record: Path  # what the command stand-in ran, one JSON object per line

    def commands(self) -> list[dict[str, Any]]:
        if not self.command_record.exists():
            return []
        return [json.loads(line) for line in self.command_record.read_text().splitlines() if line]

    def cloud(self) -> dict[str, Any]:
        return gcp.Backend(self.gcp_state).resources()

    def instance_events(self) -> list[dict[str, Any]]:
        """The local cloud's instance creates and deletes, in order, each with its time ("at", ns)."""
        return gcp.Backend(self.gcp_state).instance_events()


def sdk_version(name: str) -> str:
    """The plugin version the installed `pulumi_<name>` package requests."""
    for entry in metadata.files(f"pulumi_{name}") or []:
        if entry.name == "pulumi-plugin.json":
            version: str = json.loads(Path(str(entry.locate())).read_text())["version"]
            return version
    raise LookupError(f"pulumi_{name} ships no pulumi-plugin.json")


def install(
    pulumi_home: Path,
    state_dir: Path,
    *,
    gcp_backend: str | None = None,
    command_executor: str | None = None,
    extra_env: Mapping[str, str] | None = None,
    names: Sequence[str] = tuple(PLUGINS),
) -> Installed:
    """Write a launcher per plugin in `names` under `pulumi_home`/plugins; state goes to `state_dir`.

    `gcp_backend` and `command_executor` ("package.module:Class") swap in real VMs and a real SSH
    executor, configured by `extra_env`; by default the cloud is a JSON file and commands are only
    recorded.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    installed = Installed(state_dir / "gcp.json", state_dir / "commands.jsonl")
    env = {
        "PYTHONPATH": str(ROOT),
        gcp.STATE_ENV: str(installed.gcp_state),
        command.RECORD_ENV: str(installed.command_record),
    }
    if gcp_backend:
        env[gcp.BACKEND_ENV] = gcp_backend
    if command_executor:
        env[command.EXECUTOR_ENV] = command_executor
    env.update(extra_env or {})
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
    for name in names:
        module = PLUGINS[name]
        directory = pulumi_home / "plugins" / f"resource-{name}-v{sdk_version(name)}"
        directory.mkdir(parents=True, exist_ok=True)
        launcher = directory / f"pulumi-resource-{name}"
        launcher.write_text(
            f'#!/bin/sh\n{exports}exec {shlex.quote(sys.executable)} -m tests.engine.providers.{module} "$@"\n'
        )
        launcher.chmod(0o755)
    return installed


def install_real_command(cli: Cli) -> Path:
    """The real pulumi-resource-command, from its build, as the plugin the program's SDK asks for.

    Installed with `pulumi plugin install resource command VERSION --file BINARY`, as a user without
    the internet would; skips (fails under CI=true) where it is not built. Returns its plugin directory.
    """
    built = upstream.require(REAL_COMMAND) / REAL_COMMAND
    version = sdk_version("command")
    if version != upstream.recipe(REAL_COMMAND).version:
        raise LookupError(
            f"pulumi_command asks for plugin {version}; the build has {upstream.recipe(REAL_COMMAND).version}"
        )
    cli("plugin", "install", "resource", "command", version, "--file", str(built))
    directory = cli.home / "plugins" / f"resource-command-v{version}"
    if not (directory / REAL_COMMAND).is_file():
        raise FileNotFoundError(f"`pulumi plugin install` left no {REAL_COMMAND} in {directory}")
    return directory
