"""What a test started, found so it can end all of it (and nothing else), and read from /proc.

By parentage (a CLI and its plugins), or by what the command lines name: the local platform's VMs
and switch outlive the plugin that started them, so they are found as a user would find them, by
the stack's state directory on their command lines.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
from pathlib import Path


def descendants(pid: int) -> list[int]:
    """Every living process below `pid`, parents before children (read from /proc)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found: list[int] = []
    frontier = [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def kill_tree(pid: int) -> None:
    """SIGKILL `pid` and everything below it. The tree is read first: an orphan loses its parentage."""
    for target in [pid, *descendants(pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(target, signal.SIGKILL)


def naming(text: str) -> dict[int, str]:
    """Every process whose command line contains `text`: its pid and the command line's first 200 characters."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if text in cmdline:
                found[int(entry.name)] = cmdline[:200]
    return found


def kill_naming(text: str) -> dict[int, str]:
    """SIGKILL every process whose command line contains `text` (cleanup after a failure); those it found."""
    found = naming(text)
    for pid in found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return found


def _status(pid: int, field: str) -> str:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{field}:\s*(.+)$", status, re.M)
    assert match, status
    return match.group(1).strip()


def capabilities(pid: int) -> int:
    """The process's effective capability set (0: none, what a user's process has)."""
    return int(_status(pid, "CapEff"), 16)


def rss_mib(pid: int) -> int:
    """The process's resident memory, MiB."""
    return int(_status(pid, "VmRSS").split()[0]) // 1024
