"""A STAND-IN for pulumi-resource-command 1.2.1: `command:remote:Command` with a pluggable executor.

The engine tier has no hosts, so this plugin implements the resource's semantics for the engine to
drive, as the real provider has them (its source, built by tests.upstream.build; the two are run side
by side over real SSH by tests/contract/test_command_contract.py, which fails where they differ):

- `create` runs on create; on update `update` runs if set, else `create` again (neither: the old
  stdout and stderr stay); `delete` (if set) runs on delete, with the connection and environment
  of the last applied state. Each gets `stdin` on standard input, `environment` and (unless
  `addPreviousOutputInEnv` is false) the last run's non-empty stdout/stderr as PULUMI_COMMAND_*.
- A change to `triggers` replaces the resource; a change to any other input updates it.
- Outputs are the inputs plus `stdout` and `stderr`; `connection` is secret, as in the real schema;
  stdout and stderr are secret only when the program says so (additionalSecretOutputs). In a
  preview both are unknown for a create and for an update.
- `logging` streams nothing here. A logged output line longer than the real provider's 64 KiB
  log reader fails the step, loudly: the real provider hangs forever on it.

What runs the script is an `Executor`. The one here, `RecordingExecutor`, does not connect
anywhere: it appends (time, resource, node host, operation, script, stdin digest) to a JSON-lines file
and returns empty output, so a test can check what ran, where and in which order. A real SSH
executor (tests.engine.ssh) plugs in at the same place.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import os
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from pulumi.provider.experimental.provider import (
    CheckRequest,
    CheckResponse,
    CreateRequest,
    CreateResponse,
    DeleteRequest,
    UpdateRequest,
    UpdateResponse,
)

from tests.engine.providers.base import UNKNOWN, Kind, LocalProvider, load, serve, wrap

VERSION = "1.2.1"
TOKEN = "command:remote:Command"
# Where RecordingExecutor writes: set by the plugin's launcher for the test that installed it.
RECORD_ENV = "KTHW_ENGINE_COMMAND_RECORD"
# Optional "package.module:Class", an Executor taking the record path (a real SSH one, later).
EXECUTOR_ENV = "KTHW_ENGINE_COMMAND_EXECUTOR"
# The real provider's connection defaults (pulumi-command's remote.Connection).
CONNECTION_DEFAULTS: dict[str, Any] = {"port": 22.0, "user": "root", "dialErrorLimit": 10.0, "perDialTimeout": 15.0}
# The real provider logs through Go's bufio.Scanner, whose longest line is 64 KiB less its newline;
# a longer logged line stops the reader and the step never ends.
LOG_LINE_LIMIT = 64 * 1024 - 1
# The operation's timeout (the resource's customTimeouts), in seconds; 0 is none. Set per request.
_TIMEOUT: contextvars.ContextVar[float] = contextvars.ContextVar("timeout", default=0.0)


class Executor(Protocol):
    """Runs one script on one host and returns (stdout, stderr); raises if it fails."""

    def run(
        self,
        resource: str,
        operation: str,
        connection: dict[str, Any],
        script: str,
        stdin: str | None,
        env: dict[str, str],
        timeout: float | None = None,
    ) -> tuple[str, str]: ...


class RecordingExecutor:
    """Records what would run, in order, and runs nothing."""

    def __init__(self, path: Path) -> None:
        self.path = path

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
        record = {
            # Wall-clock nanoseconds: orders these runs against the gcp plugin's instance events.
            "at": time.time_ns(),
            "resource": resource,
            "operation": operation,
            "host": connection.get("host"),
            "user": connection.get("user"),
            "script": script,
            "stdin_sha256": hashlib.sha256(stdin.encode()).hexdigest() if stdin is not None else None,
        }
        with self.path.open("a") as out:
            out.write(json.dumps(record) + "\n")
        return "", ""


def _logged(logging: Any) -> tuple[bool, bool]:
    """Whether stdout and stderr are logged: unset logs both, as in the real provider."""
    if logging is None:
        return True, True
    return logging in ("stdout", "stdoutAndStderr"), logging in ("stderr", "stdoutAndStderr")


def check_log_lines(name: str, logging: Any, stdout: str, stderr: str) -> None:
    """Fail where the real provider would hang: a logged line past its log reader's limit."""
    for logged, stream, text in zip(_logged(logging), ("stdout", "stderr"), (stdout, stderr), strict=True):
        longest = max((len(line.encode()) for line in text.split("\n")), default=0)
        if logged and longest > LOG_LINE_LIMIT:
            raise RuntimeError(
                f"{name}: a logged {stream} line of {longest} bytes: pulumi-command 1.2.1 hangs forever on "
                f"a logged line longer than {LOG_LINE_LIMIT} bytes (cap the script's line length)"
            )


def run_env(state: dict[str, Any]) -> dict[str, str]:
    """The run's environment requests: `environment`, then the last run's output unless turned off."""
    env = {str(k): str(v) for k, v in (state.get("environment") or {}).items()}
    if state.get("addPreviousOutputInEnv") is not False:
        for key, name in (("stdout", "PULUMI_COMMAND_STDOUT"), ("stderr", "PULUMI_COMMAND_STDERR")):
            if state.get(key):
                env[name] = str(state[key])
    return env


def kind(executor: Executor) -> Kind:
    """remote:Command with its scripts run by `executor`."""

    def execute(name: str, operation: str, state: dict[str, Any], script: str) -> dict[str, Any]:
        connection = state.get("connection") or {}
        timeout = _TIMEOUT.get() or None
        stdin = state.get("stdin") or None  # the real provider sends no stdin for an empty one
        stdout, stderr = executor.run(name, operation, connection, script, stdin, run_env(state), timeout=timeout)
        check_log_lines(name, state.get("logging"), stdout, stderr)
        return {"stdout": stdout, "stderr": stderr}

    def create(name: str, inputs: dict[str, Any], preview: bool) -> tuple[str, dict[str, Any]]:
        if preview:
            return "", {}
        outputs = (
            execute(name, "create", inputs, inputs["create"]) if inputs.get("create") else {"stdout": "", "stderr": ""}
        )
        return f"{name}{uuid.uuid4().hex[:8]}", outputs

    def update(_id: str, name: str, olds: dict[str, Any], news: dict[str, Any], preview: bool) -> dict[str, Any]:
        if preview:
            # The real provider's outputs depend on every input: one changed, both are unknown.
            return {"stdout": UNKNOWN, "stderr": UNKNOWN}
        previous = {"stdout": olds.get("stdout", ""), "stderr": olds.get("stderr", "")}
        script = news.get("update") or news.get("create")
        return execute(name, "update", {**news, **previous}, script) if script else previous

    def delete(_id: str, name: str, outputs: dict[str, Any]) -> None:
        if outputs.get("delete"):
            execute(name, "delete", outputs, outputs["delete"])

    every_input = frozenset(
        {"connection", "create", "update", "delete", "stdin", "environment", "logging", "addPreviousOutputInEnv"}
    )
    return Kind(
        token=TOKEN,
        create=create,
        update=update,
        delete=delete,
        updatable=every_input,  # `triggers`, the only input not here, replaces
        secret_outputs=frozenset({"connection"}),
        computed=frozenset({"stdout", "stderr"}),
    )


class CommandProvider(LocalProvider):
    """The stand-in provider: fills the connection's defaults as the real Check does."""

    async def check(self, request: CheckRequest) -> CheckResponse:
        response = await super().check(request)
        inputs = dict(response.inputs or {})
        connection = inputs.get("connection")
        if connection is not None and isinstance(connection.value, dict):
            filled = dict(connection.value)
            for key, value in CONNECTION_DEFAULTS.items():
                filled.setdefault(key, wrap(value))
            inputs["connection"] = wrap(filled, secret=connection.is_secret)
        return CheckResponse(inputs=inputs, failures=response.failures)

    # Each operation's timeout reaches the executor (the real provider bounds its dial by it).
    async def create(self, request: CreateRequest) -> CreateResponse:
        _TIMEOUT.set(request.timeout or 0.0)
        return await super().create(request)

    async def update(self, request: UpdateRequest) -> UpdateResponse:
        _TIMEOUT.set(request.timeout or 0.0)
        return await super().update(request)

    async def delete(self, request: DeleteRequest) -> None:
        _TIMEOUT.set(request.timeout or 0.0)
        await super().delete(request)


def executor_from_env(env: Mapping[str, str]) -> Executor:
    """The executor the plugin's launcher asked for: RecordingExecutor unless EXECUTOR_ENV names another."""
    cls = load(env[EXECUTOR_ENV]) if env.get(EXECUTOR_ENV) else RecordingExecutor
    executor: Executor = cls(Path(env[RECORD_ENV]))
    return executor


if __name__ == "__main__":
    serve(VERSION, CommandProvider([kind(executor_from_env(os.environ))], threaded=True))
