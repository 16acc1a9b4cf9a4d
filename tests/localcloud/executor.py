"""The command stand-in's SSH executor: runs each `remote.Command` script on its node, for real.

It does what pulumi-command's remote.Command does with a connection: dial until sshd accepts the
key (`dialErrorLimit` -1 dials until the step's bound, each dial bounded by `perDialTimeout`),
then run the script as the exec request's command line, so the user's shell runs it with `-c`,
with `stdin` on standard input. The private key goes to a 0600 file that lives for one run, never
on a command line. ssh runs inside the local cloud's namespace (the only place nodes exist) from
its "internet" address, as an admin's machine would reach GCE's external IPs.

Every run is also recorded (start, end, node, step, exit status) for the tier's timeline; the
script's output is not recorded, only returned to the engine, as the real provider returns it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.localcloud.cloud import NETNS_ENV
from tests.localcloud.ssh import NONINTERACTIVE

# What a dial may take in all (the program's SSH gate bounds itself at 15 minutes).
DIAL_LIMIT_SECONDS = 15 * 60
# A script runs at most this long: every program step bounds itself well below it.
RUN_LIMIT_SECONDS = 30 * 60
# ConnectTimeout comes from the connection's perDialTimeout, so not ssh.OPTIONS' own.
SSH_OPTIONS = (*NONINTERACTIVE, "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4")


class SshError(RuntimeError):
    """A script failed on its node: the message is what pulumi-command would report."""


class SshExecutor:
    """Runs scripts over SSH in the namespace named by $KTHW_LOCALCLOUD_NETNS; records each run."""

    def __init__(self, record: Path) -> None:
        self.record = record
        self.netns = os.environ[NETNS_ENV]

    def _ssh(self, key: Path, connection: dict[str, Any], *command: str) -> list[str]:
        port = str(int(connection.get("port") or 22))
        per_dial = str(int(connection.get("perDialTimeout") or 15))
        return [
            "nsenter",
            f"--net=/run/netns/{self.netns}",
            "ssh",
            *SSH_OPTIONS,
            "-o",
            f"ConnectTimeout={per_dial}",
            "-i",
            str(key),
            "-p",
            port,
            f"{connection.get('user') or 'root'}@{connection['host']}",
            "--",
            *command,
        ]

    def _dial(self, key: Path, connection: dict[str, Any]) -> None:
        """Retry until sshd accepts the key: pulumi-command's dial loop, bounded by DIAL_LIMIT_SECONDS."""
        limit = int(connection.get("dialErrorLimit") or 10)
        deadline = time.monotonic() + DIAL_LIMIT_SECONDS
        failures = 0
        last = ""
        while True:
            result = subprocess.run(
                self._ssh(key, connection, "true"),
                capture_output=True,
                text=True,
                stdin=subprocess.DEVNULL,
                timeout=120,
                check=False,
            )
            if result.returncode == 0:
                return
            failures += 1
            last = result.stderr.strip()
            if (limit >= 0 and failures >= limit) or time.monotonic() > deadline:
                raise SshError(f"could not dial {connection['host']} ({failures} attempts): {last}")
            time.sleep(min(5.0, 0.5 * failures))

    def run(
        self,
        resource: str,
        operation: str,
        connection: dict[str, Any],
        script: str,
        stdin: str | None,
        env: dict[str, str],
    ) -> tuple[str, str]:
        if env:
            # The program passes no environment (sshd refuses unknown variables): fail loudly if it starts to.
            raise SshError(f"{resource}: environment is not supported by this executor: {sorted(env)}")
        started = time.time_ns()
        status: int | None = None
        try:
            with tempfile.TemporaryDirectory(prefix="kthw-ssh-") as private:
                key = Path(private) / "key"
                key.touch(mode=0o600)
                key.write_text(str(connection["privateKey"]).rstrip("\n") + "\n")
                self._dial(key, connection)
                result = subprocess.run(
                    self._ssh(key, connection, script),
                    input=stdin if stdin is not None else "",
                    capture_output=True,
                    text=True,
                    timeout=RUN_LIMIT_SECONDS,
                    check=False,
                )
            status = result.returncode
            if result.returncode != 0:
                raise SshError(
                    f"Process exited with status {result.returncode}: {resource} ({operation}) on "
                    f"{connection['host']}\nstdout: {result.stdout[-4000:]}\nstderr: {result.stderr[-4000:]}"
                )
            return result.stdout, result.stderr
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
            "user": connection.get("user"),
            "status": status,
            "script": script,
            "stdin_sha256": hashlib.sha256(stdin.encode()).hexdigest() if stdin is not None else None,
        }
        with self.record.open("a") as out:
            out.write(json.dumps(entry) + "\n")
