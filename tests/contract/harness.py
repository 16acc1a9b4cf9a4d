"""A small program's stack under the built CLI, with either command plugin: the real one or our stand-in.

`ProgramStack.create(tmp, program, plugin)` copies the program in (tests/contract/programs/), installs
the real pulumi-resource-command from its build or the stand-in with its loopback SSH executor,
and makes a stack. It reads back what the engine did: the preview's steps, the diagnostics of
an update (from `--event-log`), and the state as the file backend keeps it.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.engine import plugins
from tests.pulumi_cli import Cli, isolated_cli

PROGRAMS = Path(__file__).resolve().parent / "programs"
REAL, STAND_IN = "real", "stand-in"
STACK = "contract"
COMMAND = "command:remote:Command"
# How pulumi marks a secret in a stack export.
SECRET_SIG = "4dabf18193072939515e22adb298388d"


@dataclass
class ProgramStack:
    """One stack of a small program, run by the real CLI with one command plugin."""

    cli: Cli
    plugin: str
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def create(cls, tmp: Path, program: str, plugin: str, config: dict[str, str]) -> ProgramStack:
        cli = isolated_cli(tmp, program=(PROGRAMS / program).read_text(), name="kthw-contract")
        if plugin == REAL:
            plugins.install_real_command(cli)
        else:
            plugins.install(
                cli.home, tmp / "plugin-state", command_executor="tests.engine.ssh:SshExecutor", names=("command",)
            )
        stack = cls(cli, plugin)
        cli("stack", "init", STACK)
        stack.configure(config)
        return stack

    def configure(self, config: dict[str, str]) -> None:
        for key, value in config.items():
            self.cli("config", "set", key, value, "--stack", STACK)

    def up(self, label: str, *, check: bool = True, timeout: float = 300) -> Diagnostics:
        """`pulumi up`, timed; its diagnostics by resource name (an up that fails returns them too)."""
        return self._update(label, "up", check=check, timeout=timeout)

    def _update(self, label: str, verb: str, *, check: bool = True, timeout: float = 300) -> Diagnostics:
        start = time.monotonic()
        result = self.cli(verb, "--yes", "--skip-preview", "--json", "--stack", STACK, check=check, timeout=timeout)
        self.timings[label] = round(time.monotonic() - start, 1)
        return Diagnostics.read(result.returncode, result.stdout, result.stderr)

    def preview(self) -> dict[str, dict[str, Any]]:
        """The steps of `pulumi preview --json`, by resource name (commands only)."""
        found = json.loads(self.cli("preview", "--json", "--stack", STACK, timeout=300).stdout)
        return {step["urn"].split("::")[-1]: step for step in found.get("steps") or [] if COMMAND in step["urn"]}

    def destroy(self, label: str = "destroy") -> Diagnostics:
        return self._update(label, "destroy")

    def resources(self, *, show_secrets: bool = False) -> dict[str, dict[str, Any]]:
        """The stack's commands as `pulumi stack export` has them, by name."""
        args = ["stack", "export", "--stack", STACK] + (["--show-secrets"] if show_secrets else [])
        deployment = json.loads(self.cli(*args).stdout)["deployment"]
        return {r["urn"].split("::")[-1]: r for r in deployment.get("resources") or [] if r["type"] == COMMAND}

    def state_files(self) -> list[Path]:
        """Every file the file backend wrote: the stack, its backups and its history."""
        return sorted(p for p in self.cli.state.rglob("*") if p.is_file())


@dataclass(frozen=True)
class Diagnostics:
    """What one update said: its exit status, its error diagnostics by resource name, and its output."""

    returncode: int
    errors: dict[str, str]
    output: str

    @classmethod
    def read(cls, returncode: int, events: str, stderr: str) -> Diagnostics:
        """From the engine events `--json` prints, one JSON object a line."""
        errors: dict[str, str] = {}
        for line in events.splitlines():
            if not line.startswith("{"):
                continue
            diagnostic = json.loads(line).get("diagnosticEvent")
            if diagnostic and diagnostic.get("severity") == "error" and diagnostic.get("urn"):
                name = diagnostic["urn"].split("::")[-1]
                errors[name] = errors.get(name, "") + diagnostic["message"]
        return cls(returncode, errors, events + stderr)


def is_secret(value: Any) -> bool:
    return isinstance(value, dict) and value.get(SECRET_SIG) == "1b47061264138c4ac30d75fd1eb44270"


class CountingListener:
    """A TCP port that accepts and at once closes every connection, counting them: a dial that never completes."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.server.getsockname()[1]
        self.count = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            self.count += 1
            connection.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.server.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept
        self.server.close()
