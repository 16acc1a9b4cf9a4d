"""The real Pulumi CLI, built from source, on the real project and stack files.

The CLI runs with a file backend in a temporary directory, no plugin downloads and no update
check, so it reaches nothing outside this machine. It goes as far as it can without the GCP
provider plugin: past the project file, its config schema, the stack file and the program's own
config validation, and stops when the program registers its first resource.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests import upstream
from tests.pulumi_cli import Cli, isolated_cli

PROJECT = "kthw-cli-test"
# What the engine says when the program asks for a provider the workspace does not have.
MISSING_PLUGIN = re.compile(r"no resource plugin 'pulumi-resource-(gcp|tls|random|command)' found")

StackSetup = Callable[[str], None]


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return isolated_cli(tmp_path)


@pytest.fixture
def stack(cli: Cli) -> StackSetup:
    """Create a stack from a shipped stack file, with a real-looking project set."""

    def setup(name: str) -> None:
        cli.stack(name, PROJECT)

    return setup


def test_cli_version(cli: Cli) -> None:
    assert cli("version").stdout.strip() == f"v{upstream.recipe('pulumi').version}"


@pytest.mark.parametrize("name", ["dev", "ha"])
def test_shipped_stacks_pass_config_and_stop_only_for_the_provider(cli: Cli, stack: StackSetup, name: str) -> None:
    """Every declared key works unset: the CLI runs the program, which stops only on the missing plugin."""
    stack(name)
    result = cli("preview", "--stack", name, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "missing configuration" not in output, output
    assert "is invalid" not in output, output
    assert MISSING_PLUGIN.search(output), output


def test_bad_config_is_one_line_without_traceback(cli: Cli, stack: StackSetup) -> None:
    stack("dev")
    cli("config", "set", "kthw:workerCount", "0", "--stack", "dev")
    result = cli("preview", "--stack", "dev", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    # The CLI shows each diagnostic twice: in the progress stream and in its summary.
    lines = {line.split("error: ", 1)[-1] for line in output.splitlines() if "kthw:workerCount = " in line}
    assert len(lines) == 1, output
    assert next(iter(lines)).startswith("kthw:workerCount = 0 is invalid: between 1 and"), output
    assert "Traceback" not in output and 'File "' not in output, output
    # Config is refused before the first resource, so the plugin is never asked for.
    assert not MISSING_PLUGIN.search(output), output


def test_a_misspelled_key_and_a_bad_value_are_named_together(cli: Cli, stack: StackSetup) -> None:
    """Through the real language host: the program sees every key of the stack and reports every problem."""
    stack("dev")
    cli("config", "set", "kthw:workercount", "5", "--stack", "dev")
    cli("config", "set", "kthw:clusterCidr", "10.240.0.0/16", "--stack", "dev")
    result = cli("preview", "--stack", "dev", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "kthw:workercount is not a known key: did you mean kthw:workerCount?" in output, output
    overlap = "kthw:clusterCidr = '10.240.0.0/16' is invalid: a range that does not overlap kthw:nodeCidr"
    assert overlap in output, output
    assert "Traceback" not in output and 'File "' not in output, output
    assert not MISSING_PLUGIN.search(output), output


def test_another_cluster_name_passes_the_cli(cli: Cli, stack: StackSetup) -> None:
    stack("ha")
    cli("config", "set", "kthw:clusterName", "ha", "--stack", "ha")
    result = cli("preview", "--stack", "ha", check=False)
    output = result.stdout + result.stderr
    assert "is invalid" not in output and "not a known key" not in output, output
    assert MISSING_PLUGIN.search(output), output
