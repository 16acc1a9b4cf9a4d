"""A STAND-IN for pulumi-resource-command 1.2.1: `command:remote:Command` with a pluggable executor.

The real provider cannot be built here (the Go module proxy does not serve
github.com/pulumi/pulumi-command/provider), so this plugin implements the resource's documented
semantics for the engine to drive, and nothing else:

- `create` runs on create; on update `update` runs if set, else `create` again; `delete` (if set)
  runs on delete. Each gets `stdin` on standard input and `environment` in its environment.
- A change to `triggers` replaces the resource; a change to any other input updates it.
- Outputs are the inputs plus `stdout` and `stderr`; `connection` is secret, as in the real schema.
- `logging` says what would be streamed to the engine's log; it does not change the outputs.

What runs the script is an `Executor`. The one here, `RecordingExecutor`, does not connect
anywhere: it appends (time, resource, node host, operation, script, stdin digest) to a JSON-lines file
and returns empty output, so a test can check what ran, where and in which order. A real SSH
executor plugs in at the same place.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from pulumi.provider.experimental.provider import CheckRequest, CheckResponse

from tests.engine.providers.base import Kind, LocalProvider, load, serve, wrap

VERSION = "1.2.1"
TOKEN = "command:remote:Command"
# Where RecordingExecutor writes: set by the plugin's launcher for the test that installed it.
RECORD_ENV = "KTHW_ENGINE_COMMAND_RECORD"
# Optional "package.module:Class", an Executor taking the record path (a real SSH one, later).
EXECUTOR_ENV = "KTHW_ENGINE_COMMAND_EXECUTOR"
# The real provider's connection defaults (pulumi-command's remote.Connection).
CONNECTION_DEFAULTS: dict[str, Any] = {"port": 22.0, "user": "root", "dialErrorLimit": 10.0, "perDialTimeout": 15.0}


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


def kind(executor: Executor) -> Kind:
    """remote:Command with its scripts run by `executor`."""

    def execute(name: str, operation: str, inputs: dict[str, Any], script: str) -> dict[str, Any]:
        env = {str(k): str(v) for k, v in (inputs.get("environment") or {}).items()}
        stdout, stderr = executor.run(name, operation, inputs.get("connection") or {}, script, inputs.get("stdin"), env)
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
            return {"stdout": olds.get("stdout", ""), "stderr": olds.get("stderr", "")}
        script = news.get("update") or news.get("create")
        return execute(name, "update", news, script) if script else {"stdout": "", "stderr": ""}

    def delete(_id: str, name: str, outputs: dict[str, Any]) -> None:
        if outputs.get("delete"):
            execute(name, "delete", outputs, outputs["delete"])

    def defaults(inputs: dict[str, Any]) -> dict[str, Any]:
        return {"addPreviousOutputInEnv": True}

    every_input = frozenset(
        {"connection", "create", "update", "delete", "stdin", "environment", "logging", "addPreviousOutputInEnv"}
    )
    return Kind(
        token=TOKEN,
        create=create,
        update=update,
        delete=delete,
        defaults=defaults,
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


def executor_from_env(env: Mapping[str, str]) -> Executor:
    """The executor the plugin's launcher asked for: RecordingExecutor unless EXECUTOR_ENV names another."""
    cls = load(env[EXECUTOR_ENV]) if env.get(EXECUTOR_ENV) else RecordingExecutor
    executor: Executor = cls(Path(env[RECORD_ENV]))
    return executor


if __name__ == "__main__":
    serve(VERSION, CommandProvider([kind(executor_from_env(os.environ))], threaded=True))
