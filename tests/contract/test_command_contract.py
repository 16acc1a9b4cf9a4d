"""The command contract: one program, the real pulumi-resource-command 1.2.1 and our stand-in, side by side.

The program (programs/commands.py) runs under the built CLI against a throwaway sshd on loopback,
once with the real provider (built from ../shared/upstream) and once with the stand-in of the
engine tier (tests/engine/providers/command.py with tests.engine.ssh's executor). Each test states
a fact of the real provider and then that the stand-in does the same: where they differ, the
stand-in is wrong. The phases: create everything; change one input kind per command (preview, then
up); add steps that fail; destroy.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.contract.harness import REAL, STAND_IN, CountingListener, Diagnostics, ProgramStack, is_secret
from tests.contract.sshd import HOSTS, Sshd, free_port

PLUGINS = (REAL, STAND_IN)
# Commands whose one changed input in phase 2 is an update (their script runs again).
UPDATED = (
    "conn-host",
    "conn-port",
    "conn-key",
    "create",
    "stdin",
    "logging",
    "environment",
    "update-script",
    "delete-script",
    "previous-output",
    "create-removed",
)
REPLACED = ("triggers", "moved")
UNCHANGED = ("newline", "plain-key", "failed-update")
# How the engine shows a value a preview does not know.
UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass
class Run:
    """What one plugin did with the program, phase by phase."""

    plugin: str
    log: dict[str, list[str]] = field(default_factory=dict)  # phase -> the scripts' own records, in order
    preview: dict[str, dict[str, Any]] = field(default_factory=dict)  # phase 2's steps
    state: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # phase -> name -> resource
    plain_state: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # the same, secrets shown
    failed: Diagnostics | None = None
    counted_dials: int = 0
    state_text: str = ""
    timings: dict[str, float] = field(default_factory=dict)


def _run(plugin: str, tmp: Path, sshd: Sshd) -> Run:
    log = tmp / "scripts.log"
    log.touch()
    counting = CountingListener()
    keys = {name: str(sshd.directory / f"client-{name}") for name in sshd.keys}
    spec = {
        "log": str(log),
        "user": sshd.user,
        "ports": list(sshd.ports),
        "keys": keys,
        "closed_port": free_port(),
        "counting_port": counting.port,
    }
    run = Run(plugin)
    stack = ProgramStack.create(tmp, "commands.py", plugin, {"spec": json.dumps(spec), "phase": "1"})
    seen = 0

    def segment(phase: str) -> None:
        nonlocal seen
        lines = log.read_text().splitlines()
        run.log[phase], seen = lines[seen:], len(lines)

    def snapshot(phase: str) -> None:
        run.state[phase] = stack.resources()
        run.plain_state[phase] = stack.resources(show_secrets=True)

    try:
        stack.up("1")
        segment("1")
        snapshot("1")
        stack.configure({"phase": "2"})
        run.preview = stack.preview()
        stack.up("2")
        segment("2")
        snapshot("2")
        stack.configure({"phase": "3"})
        run.failed = stack.up("3", check=False)
        segment("3")
        snapshot("3")
        run.counted_dials = counting.count
        run.state_text = "\n".join(p.read_text(errors="replace") for p in stack.state_files())
        stack.destroy()
        segment("destroy")
    finally:
        counting.close()
    run.timings = stack.timings
    return run


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    server = Sshd.start(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def runs(sshd: Sshd, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    found = {plugin: _run(plugin, tmp_path_factory.mktemp(plugin), sshd) for plugin in PLUGINS}
    print({plugin: run.timings for plugin, run in found.items()})
    return found


@pytest.fixture(scope="module")
def real(runs: dict[str, Run]) -> Run:
    return runs[REAL]


def record(
    sshd: Sshd, tag: str, which: str, *, host: str = HOSTS[0], port: int = 0, key: str = "A", **more: str
) -> str:
    """The line a script of the program logs (programs/commands.py's `script`)."""
    where = f"{host}:{port or sshd.ports[0]} {sshd.keys[key].tag}"
    stdin, env, prev = more.get("stdin", digest("")), more.get("env", ""), more.get("prev", "")
    return f"{tag} {which} {where} stdin={stdin} env={env} prev={prev}"


def revealed(value: Any) -> Any:
    """A value of `stack export --show-secrets`: a secret's plaintext is JSON."""
    return json.loads(value["plaintext"]) if is_secret(value) else value


def stdout(resource: dict[str, Any]) -> Any:
    return resource["outputs"].get("stdout")


def test_an_input_change_updates_and_a_trigger_replaces(runs: dict[str, Run], real: Run) -> None:
    ops = {name: step["op"] for name, step in real.preview.items()}
    assert {n: ops[n] for n in UPDATED} == dict.fromkeys(UPDATED, "update"), ops
    assert {n: ops[n] for n in REPLACED} == dict.fromkeys(REPLACED, "replace"), ops
    assert ops["removed"] == "delete", ops
    assert {n: ops.get(n, "same") for n in (*UNCHANGED, "secret-output")} == dict.fromkeys(
        (*UNCHANGED, "secret-output"), "same"
    ), ops
    assert {name: step["op"] for name, step in runs[STAND_IN].preview.items()} == ops


def test_stdout_is_unknown_in_an_update_preview(runs: dict[str, Run], real: Run) -> None:
    """The observer's environment holds every stdout, as the preview knows it."""

    def known(run: Run) -> dict[str, bool]:
        environment = run.preview["stdout-observer"]["newState"]["inputs"]["environment"]
        return {name: value != UNKNOWN for name, value in environment.items()}

    found = known(real)
    assert found == {**dict.fromkeys((*UPDATED, *REPLACED), False), **dict.fromkeys(UNCHANGED, True)}, found
    assert known(runs[STAND_IN]) == found


def test_each_update_runs_its_script_again_where_the_new_inputs_say(
    sshd: Sshd, runs: dict[str, Run], real: Run
) -> None:
    port_a, port_b = sshd.ports
    expected = [
        record(sshd, "conn-host", "create", host=HOSTS[1]),
        record(sshd, "conn-port", "create", port=port_b),
        record(sshd, "conn-key", "create", key="B"),
        record(sshd, "create", "create"),
        record(sshd, "stdin", "create", stdin=digest("two\n")),
        record(sshd, "logging", "create"),
        record(sshd, "environment", "create", env="two"),
        record(sshd, "update-script", "update-v2"),
        # A new `delete` script is an update too, and with no `update` set it runs `create` again.
        record(sshd, "delete-script", "create"),
        record(sshd, "previous-output", "create", prev="run-1"),
        record(sshd, "triggers", "create"),
        record(sshd, "triggers", "delete"),
        record(sshd, "moved", "create", port=port_b, key="B"),
        # The replaced command is deleted with its OLD connection (port and key).
        record(sshd, "moved", "delete", port=port_a, key="A"),
        record(sshd, "removed", "delete", port=port_b, key="B"),
    ]
    assert sorted(real.log["2"]) == sorted(expected)
    # A replacement creates the new command before it deletes the old one.
    for tag in REPLACED:
        mine = [line.split()[1] for line in real.log["2"] if line.startswith(f"{tag} ")]
        assert mine == ["create", "delete"], real.log["2"]
    assert sorted(runs[STAND_IN].log["2"]) == sorted(real.log["2"])
    for tag in REPLACED:
        mine = [line.split()[1] for line in runs[STAND_IN].log["2"] if line.startswith(f"{tag} ")]
        assert mine == ["create", "delete"], runs[STAND_IN].log["2"]


def test_the_first_up_and_the_destroy_run_what_they_should(sshd: Sshd, runs: dict[str, Run], real: Run) -> None:
    port_b = sshd.ports[1]
    assert len(real.log["1"]) == 18, real.log["1"]
    assert record(sshd, "stdin", "create", stdin=digest("one\n")) in real.log["1"]
    assert sorted(real.log["destroy"]) == sorted(
        [
            record(sshd, "delete-script", "delete-v2"),
            record(sshd, "triggers", "delete"),
            record(sshd, "moved", "delete", port=port_b, key="B"),
        ]
    )
    for phase in ("1", "destroy"):
        assert sorted(runs[STAND_IN].log[phase]) == sorted(real.log[phase]), phase


def test_outputs_cut_one_newline_keep_the_last_run_and_are_secret_only_on_request(
    runs: dict[str, Run], real: Run
) -> None:
    shown = real.plain_state["2"]
    assert stdout(shown["newline"]) == "a\n" and shown["newline"]["outputs"]["stderr"] == "e\n"
    assert stdout(shown["create"]) == "v2"
    assert stdout(shown["previous-output"]) == "run-2"
    assert stdout(shown["create-removed"]) == "kept"  # no script ran: the last output stays
    assert stdout(shown["update-script"]) == "updated"

    state = real.state["2"]
    assert is_secret(stdout(state["secret-output"])) and not is_secret(state["secret-output"]["outputs"]["stderr"])
    assert all(not is_secret(stdout(r)) for name, r in state.items() if name != "secret-output")
    assert all(is_secret(r["outputs"]["connection"]) for r in state.values())

    def view(run: Run) -> dict[str, Any]:
        """Per command: its stdout and stderr as shown, which outputs and inputs are secret, and their keys."""
        out: dict[str, Any] = {}
        for name, resource in run.state["2"].items():
            plain = run.plain_state["2"][name]
            outputs = {k: v for k, v in resource["outputs"].items() if k != "__inputs"}
            out[name] = {
                "stdout": plain["outputs"].get("stdout"),
                "stderr": plain["outputs"].get("stderr"),
                "secret_outputs": sorted(k for k, v in outputs.items() if is_secret(v)),
                "outputs": sorted(outputs),
                "inputs": sorted(resource["inputs"]),
                "secret_inputs": sorted(k for k, v in resource["inputs"].items() if is_secret(v)),
                # The connection as stored, defaults filled in (the key itself compared elsewhere).
                "connection": {k: v for k, v in revealed(plain["outputs"]["connection"]).items() if k != "privateKey"},
            }
        return out

    mine, theirs = view(runs[STAND_IN]), view(real)
    assert sorted(mine) == sorted(theirs)
    differences = {
        name: {k: (mine[name][k], v) for k, v in facets.items() if mine[name][k] != v}
        for name, facets in theirs.items()
    }
    assert {name: d for name, d in differences.items() if d} == {}


def test_failures_leave_nothing_or_the_last_good_state(runs: dict[str, Run], real: Run) -> None:
    failed = real.failed
    assert failed is not None and failed.returncode != 0
    assert "Process exited with status 3" in failed.errors["failed-create"]
    assert "Process exited with status 4" in failed.errors["failed-update"]
    state = real.plain_state["3"]
    for name in ("failed-create", "dial-refused", "dial-counted", "dial-timeout"):
        assert name not in state, name
    # A failed update keeps the last good outputs.
    assert stdout(state["failed-update"]) == "before"

    stand_in = runs[STAND_IN]
    assert stand_in.failed is not None and stand_in.failed.returncode != 0
    assert sorted(stand_in.failed.errors) == sorted(failed.errors)
    for name, message in failed.errors.items():
        assert facts(stand_in.failed.errors[name]) == facts(message), (name, message, stand_in.failed.errors[name])
    assert sorted(stand_in.plain_state["3"]) == sorted(state)
    assert stdout(stand_in.plain_state["3"]["failed-update"]) == "before"
    assert sorted(stand_in.log["3"]) == sorted(real.log["3"])


def facts(message: str) -> dict[str, Any]:
    """What an error says, in words both plugins use."""
    status = re.search(r"Process exited with status (\d+)", message)
    attempts = re.search(r"after (\d+) failed attempts", message)
    return {
        "status": status and status.group(1),
        "attempts": attempts and attempts.group(1),
        "refused": "refused" in message.lower(),
        "deadline": "deadline exceeded" in message,
    }


def test_the_dial_stops_at_its_limit_or_its_custom_timeout(runs: dict[str, Run], real: Run) -> None:
    assert real.failed is not None
    errors = real.failed.errors
    assert facts(errors["dial-refused"]) == {"status": None, "attempts": "2", "refused": True, "deadline": False}
    assert facts(errors["dial-counted"])["attempts"] == "2"
    # dialErrorLimit 2: the first dial and two more.
    assert real.counted_dials == 3
    assert facts(errors["dial-timeout"])["deadline"], errors["dial-timeout"]
    assert runs[STAND_IN].counted_dials == real.counted_dials


def test_no_private_key_in_clear_in_the_state(sshd: Sshd, runs: dict[str, Run]) -> None:
    for run in runs.values():
        for key in sshd.keys.values():
            body = key.private.splitlines()[1]
            assert body not in run.state_text, run.plugin
