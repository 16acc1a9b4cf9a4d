"""The command stand-in's SSH executor: runs a `remote.Command` script over real SSH, as pulumi-command 1.2.1 does.

What it copies from the real provider (provider/pkg/provider/remote, read from its source and checked
side by side by tests/contract/test_command_contract.py):

- The dial: up to `dialErrorLimit` + 1 attempts (-1: no limit), each bounded by `perDialTimeout`,
  0.1 s apart and 1.5 times longer each time up to 5 s; when the limit is reached the error is
  "after N failed attempts: <last error>". The only bound on an unlimited dial is the operation's
  custom timeout (the engine's `timeout`); nothing bounds a script once it runs.
- The run: the script is the exec request's command line (the user's shell runs it with `-c`),
  `stdin` on standard input, `environment` and the last run's output as environment requests
  (`SetEnv`; sshd applies only what its AcceptEnv allows), and one trailing newline cut from stdout
  and from stderr. A non-zero exit fails the step with "Process exited with status N".

Where it differs, and why: OpenSSH's client cannot tell a refused environment request (the real
provider fails on a refused `environment` variable and only warns for PULUMI_COMMAND_*); a value
an ssh_config line cannot carry (a newline, a double quote) fails here for `environment` and is
left out for the last run's output. Each dial is a separate `ssh ... true`, so a successful step
opens one connection more than the real provider. A safety bound (`run_limit_seconds`) ends a
script the real provider would wait on forever, so a test cannot hang.

The private key goes to a 0600 file that lives for one run, never on a command line. Every run is
also recorded (start, end, host, port, step, exit status) for a tier's timeline; the script's
output is not recorded, only returned to the engine, as the real provider returns it.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

# No prompts, no agent, no user config; the host key is ignored unless the connection pins one
# (`hostKey`), as the real provider does.
BASE_OPTIONS = ("-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-o", "LogLevel=ERROR")
KEEPALIVE = ("-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4")
# The real provider's dial backoff (pulumi sdk's retry.Until defaults).
DIAL_DELAY, DIAL_BACKOFF, DIAL_MAX_DELAY = 0.1, 1.5, 5.0
# Environment variables the real provider adds from the last run's outputs.
PREVIOUS_OUTPUT = ("PULUMI_COMMAND_STDOUT", "PULUMI_COMMAND_STDERR")


class SshError(RuntimeError):
    """A dial or a script failed: the message says it as pulumi-command would."""


def cut_newline(text: str) -> str:
    """The real provider's strings.TrimSuffix(out, "\\n"): one trailing newline, no more."""
    return text[:-1] if text.endswith("\n") else text


def _config_value(name: str, value: str) -> str | None:
    """`NAME=value` as one ssh_config SetEnv argument, or None if a config line cannot carry it."""
    if any(c in value for c in '\n\r"\\'):
        return None
    return f'"{name}={value}"'


class SshExecutor:
    """Runs scripts with OpenSSH's client from this machine's network (loopback in the contract tests)."""

    # A safety bound on one script, far above any program step's own bounds (components/bounds.py).
    run_limit_seconds: float = 30 * 60

    def __init__(self, record: Path) -> None:
        self.record = record

    def prefix(self) -> list[str]:
        """What runs ssh: nothing here; a tier whose hosts live in a network namespace enters it."""
        return []

    def _ssh(self, private: Path, connection: dict[str, Any], *command: str) -> list[str]:
        port = str(int(connection.get("port") or 22))
        per_dial = int(connection.get("perDialTimeout") or 0)
        options = [*BASE_OPTIONS, *KEEPALIVE, "-F", str(private / "config")]
        if per_dial > 0:
            options += ["-o", f"ConnectTimeout={per_dial}"]
        return [
            *self.prefix(),
            "ssh",
            *options,
            "-i",
            str(private / "key"),
            "-p",
            port,
            "-l",
            str(connection.get("user") or "root"),
            str(connection["host"]),
            "--",
            *command,
        ]

    def _prepare(self, private: Path, connection: dict[str, Any], env: dict[str, str]) -> None:
        """The key, the known host (if pinned) and the environment, in files only this run reads."""
        if connection.get("password") is not None or connection.get("proxy") is not None:
            raise SshError("this executor supports key authentication without a proxy only")
        key = private / "key"
        key.touch(mode=0o600)
        key.write_text(str(connection["privateKey"]).rstrip("\n") + "\n")
        lines = []
        if connection.get("hostKey"):
            port = int(connection.get("port") or 22)
            known = private / "known_hosts"
            known.write_text(f"[{connection['host']}]:{port} {str(connection['hostKey']).strip()}\n")
            lines += ["StrictHostKeyChecking yes", f"UserKnownHostsFile {known}"]
        else:
            lines += ["StrictHostKeyChecking no", "UserKnownHostsFile /dev/null"]
        settings = []
        for name, value in env.items():
            setting = _config_value(name, value)
            if setting is None and name not in PREVIOUS_OUTPUT:
                raise SshError(f"could not set environment variable {name!r}: this executor cannot send its value")
            if setting is not None:
                settings.append(setting)
        if settings:
            lines.append("SetEnv " + " ".join(settings))
        config = private / "config"
        config.touch(mode=0o600)
        config.write_text("\n".join(lines) + "\n")

    def _dial(self, private: Path, connection: dict[str, Any], timeout: float | None) -> None:
        """Retry until sshd accepts the key: the real provider's dial loop and its error."""
        limit = int(connection["dialErrorLimit"]) if connection.get("dialErrorLimit") is not None else 10
        # With no custom timeout an unlimited dial (-1) goes on forever, as in the real provider.
        deadline = time.monotonic() + timeout if timeout else None
        delay, tries = DIAL_DELAY, 0
        while True:
            result = subprocess.run(
                self._ssh(private, connection, "true"),
                capture_output=True,
                text=True,
                stdin=subprocess.DEVNULL,
                check=False,
            )
            if result.returncode == 0:
                return
            last = result.stderr.strip() or f"ssh exited with status {result.returncode}"
            if limit > -1 and tries + 1 > limit:
                raise SshError(f"after {tries} failed attempts: {last}")
            if deadline is not None and time.monotonic() + delay > deadline:
                raise SshError("context deadline exceeded")
            time.sleep(delay)
            delay = min(delay * DIAL_BACKOFF, DIAL_MAX_DELAY)
            tries += 1

    def run(
        self,
        resource: str,
        operation: str,
        connection: dict[str, Any],
        script: str,
        stdin: str | None,
        env: dict[str, str],
        timeout: float | None = None,
    ) -> tuple[str, str]:
        started = time.time_ns()
        status: int | None = None
        try:
            with tempfile.TemporaryDirectory(prefix="kthw-ssh-") as directory:
                private = Path(directory)
                self._prepare(private, connection, env)
                self._dial(private, connection, timeout)
                result = subprocess.run(
                    self._ssh(private, connection, script),
                    input=stdin or "",
                    capture_output=True,
                    text=True,
                    timeout=self.run_limit_seconds,
                    check=False,
                )
            status = result.returncode
            if result.returncode != 0:
                raise SshError(
                    f"Process exited with status {result.returncode}: running {json.dumps(script)}:\n"
                    f"{result.stdout}{result.stderr}"
                )
            return cut_newline(result.stdout), cut_newline(result.stderr)
        finally:
            self._write(resource, operation, connection, script, stdin, started, status)

    def _write(
        self,
        resource: str,
        operation: str,
        connection: dict[str, Any],
        script: str,
        stdin: str | None,
        started: int,
        status: int | None,
    ) -> None:
        entry = {
            "at": started,
            "end": time.time_ns(),
            "resource": resource,
            "operation": operation,
            "host": connection.get("host"),
            "port": int(connection.get("port") or 22),
            "user": connection.get("user"),
            "status": status,
            "script": script,
            "stdin_sha256": hashlib.sha256(stdin.encode()).hexdigest() if stdin is not None else None,
        }
        with self.record.open("a") as out:
            out.write(json.dumps(entry) + "\n")
