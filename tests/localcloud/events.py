"""The engine's own record of an operation: `pulumi up --event-log FILE`, read as each step's start and end.

With PULUMI_DEBUG_COMMANDS set, the CLI writes the engine's events to FILE one JSON object a
line (apitype.EngineEvent) as the engine emits them: a `resourcePreEvent` when a step starts, a
`resOutputsEvent` when it ends and a `resOpFailedEvent` when it fails. Their `timestamp` is whole
seconds (the CLI's stampEvents), too coarse for a step of a second, so `EventLog` tails the file
while the operation runs and stamps each line when it appears; the time kept is that stamp,
clamped into the engine's own second.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.pulumi_cli import Cli

SECOND_NS = 1_000_000_000
# How often the tail looks for new lines: the precision of a step's start and end.
POLL_SECONDS = 0.05
# The steps that call a provider; `same`, `read`, `refresh` and the logical `replace` run nothing.
WORKING_OPS = ("create", "update", "delete", "create-replacement", "delete-replaced")


@dataclass(frozen=True)
class Step:
    """One step of an operation: what it did to which resource, when it started and ended (ns, wall clock)."""

    urn: str
    type: str
    op: str
    start_ns: int
    end_ns: int
    failed: bool
    old_inputs: dict[str, Any]  # as the event shows them: secrets are "[secret]"

    @property
    def name(self) -> str:
        return self.urn.rsplit("::", 1)[-1]


@dataclass
class EventLog:
    """Tails the event log at `path` while an operation writes it; `events` are (stamp ns, event)."""

    path: Path
    events: list[tuple[int, dict[str, Any]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tail, daemon=True)
        self._offset = 0
        self._partial = b""

    def _read(self) -> None:
        """Stamp every complete line written since the last read."""
        if not self.path.exists():
            return
        with self.path.open("rb") as log:
            log.seek(self._offset)
            chunk = log.read()
        self._offset += len(chunk)
        now = time.time_ns()
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        for line in lines:
            if line.strip():
                event: dict[str, Any] = json.loads(line)
                # The engine's second is a floor; the stamp is at most one poll late.
                second = int(event.get("timestamp") or 0) * SECOND_NS
                self.events.append((min(max(now, second), second + SECOND_NS - 1) if second else now, event))

    def _tail(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            self._read()

    def __enter__(self) -> EventLog:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._read()

    def steps(self) -> list[Step]:
        """Every step that called a provider, in start order; one with no end (the CLI died) ends at the last event."""
        started: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {}
        ended: dict[tuple[str, str], tuple[int, bool]] = {}
        for stamp, event in self.events:
            for kind, failed in (("resourcePreEvent", None), ("resOutputsEvent", False), ("resOpFailedEvent", True)):
                body = event.get(kind)
                if body is None or body.get("planning"):
                    continue
                meta = body["metadata"]
                key = (str(meta["urn"]), str(meta["op"]))
                if failed is None:
                    started.setdefault(key, (stamp, meta))
                else:
                    ended.setdefault(key, (stamp, failed))
        last = self.events[-1][0] if self.events else 0
        steps = [
            Step(
                urn=urn,
                type=str(meta.get("type") or ""),
                op=op,
                start_ns=start,
                end_ns=ended.get((urn, op), (last, True))[0],
                failed=ended.get((urn, op), (last, True))[1],
                old_inputs=dict((meta.get("old") or {}).get("inputs") or {}),
            )
            for (urn, op), (start, meta) in started.items()
            if op in WORKING_OPS
        ]
        return sorted(steps, key=lambda s: s.start_ns)


def run_logged(
    cli: Cli, log: Path, *args: str, timeout: float, check: bool = True
) -> tuple[subprocess.CompletedProcess[str], list[Step]]:
    """`pulumi ARGS --event-log LOG`, its steps read from the log as it is written."""
    # The CLI shows --event-log (and accepts it) only with its debug commands on; they change
    # nothing else of an operation.
    logging = dataclasses.replace(cli, env={**cli.env, "PULUMI_DEBUG_COMMANDS": "true"})
    with EventLog(log) as tail:
        result = logging(*args, "--event-log", str(log), check=check, timeout=timeout)
    return result, tail.steps()
