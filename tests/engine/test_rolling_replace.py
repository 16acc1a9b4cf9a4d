"""Issue 12, point 2, under the real engine: a new image replaces three controllers one at a time.

A 3+1 stack is brought up with the local plugins, then `kthw:image` changes and `pulumi up` runs
again. The gcp plugin logs each instance create and delete and the command stand-in each run, both
with wall-clock times, so the order the engine really took is read back from those two logs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from tests.engine import plugins
from tests.pulumi_cli import Cli, isolated_cli

STACK = "ha"
PROJECT = "kthw-engine-test"
UP_TIMEOUT = 900
NEW_IMAGE = "debian-cloud/debian-12"
CONTROLLERS = ("controller-0", "controller-1", "controller-2")


@dataclass
class Rollout:
    """The stack after the image change: the plan's steps and the events of the second update."""

    steps: list[dict[str, Any]]
    events: list[str]  # "delete instance/controller-0", "create kthw-controller-0-etcd-ready", ...
    cloud: dict[str, Any]
    up_seconds: float
    replace_seconds: float


def merged(installed: plugins.Installed, since_ns: int) -> list[str]:
    """Instance events and command runs after `since_ns`, in time order, as short strings."""
    timed = [(e["at"], f"{e['operation']} instance/{e['instance']}") for e in installed.instance_events()]
    timed += [(r["at"], f"{r['operation']} {r['resource']}") for r in installed.commands()]
    return [text for at, text in sorted(timed) if at > since_ns]


@pytest.fixture(scope="module")
def rollout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rollout]:
    tmp = tmp_path_factory.mktemp("rollout")
    cli: Cli = isolated_cli(tmp)
    installed = plugins.install(cli.home, tmp / "local-cloud")
    cli.stack(STACK, PROJECT)
    cli("config", "set", "kthw:workerCount", "1", "--stack", STACK)
    started = time.monotonic()
    cli("up", "--yes", "--skip-preview", "--stack", STACK, timeout=UP_TIMEOUT)
    up_seconds = time.monotonic() - started
    cli("config", "set", "kthw:image", NEW_IMAGE, "--stack", STACK)
    preview = json.loads(cli("preview", "--json", "--stack", STACK, timeout=UP_TIMEOUT).stdout)
    since = time.time_ns()
    started = time.monotonic()
    cli("up", "--yes", "--skip-preview", "--stack", STACK, timeout=UP_TIMEOUT)
    replace_seconds = time.monotonic() - started
    print(f"\npulumi up (3+1): {up_seconds:.1f} s; image change up: {replace_seconds:.1f} s")
    yield Rollout(preview.get("steps") or [], merged(installed, since), installed.cloud(), up_seconds, replace_seconds)


def position(events: Sequence[str], event: str) -> int:
    assert events.count(event) == 1, (event, events)
    return events.index(event)


def test_a_new_image_replaces_the_controllers_one_at_a_time(rollout: Rollout) -> None:
    """Each old controller VM is deleted only after the previous controller's new VM is up and its
    etcd member is ready again, so at most one of the three is ever missing (etcd keeps quorum).

    The instances are delete-before-replace (their names are fixed), and the engine may delete a
    dependent that must be replaced too before the VM; controller i+1's VM takes no input from
    controller i (only depends_on its ready step), so it is not deleted early.
    """
    events = rollout.events
    gates = [e for e in events if e.endswith(tuple(f"instance/{c}" for c in CONTROLLERS)) or e.endswith("-etcd-ready")]
    assert gates == [
        f"{operation} {what}"
        for c in CONTROLLERS
        for operation, what in (
            ("delete", f"instance/{c}"),
            ("create", f"instance/{c}"),
            ("create", f"kthw-{c}-etcd-ready"),
        )
    ], events
    for i, c in enumerate(CONTROLLERS):
        created = position(events, f"create instance/{c}")
        gate = position(events, f"create kthw-{c}-ssh-ready")
        mount = position(events, f"create kthw-{c}-etcd-mount")
        binaries = position(events, f"create kthw-{c}-etcd-binaries")
        etcd = position(events, f"create kthw-{c}-etcd-etcd")
        ready = position(events, f"create kthw-{c}-etcd-ready")
        # On the new VM: the SSH gate, the etcd disk's mount and the binaries, etcd, then its ready check.
        assert created < gate < min(mount, binaries) and max(mount, binaries) < etcd < ready, events
        if i + 1 < len(CONTROLLERS):
            assert ready < position(events, f"delete instance/{CONTROLLERS[i + 1]}"), events
    # No member is removed on the way: the leave step (whose delete is `member remove`) is updated, not replaced.
    assert not [e for e in events if e.startswith("delete kthw-")], events
    # Each controller came back on the new image with its own etcd disk.
    for c in CONTROLLERS:
        inputs = rollout.cloud[f"instance/{c}"]["inputs"]
        assert inputs["bootDisk"]["initializeParams"]["image"] == NEW_IMAGE
        assert [d["source"].rsplit("/", 1)[-1] for d in inputs["attachedDisks"]] == [f"{c}-etcd"], inputs
        assert rollout.cloud[f"disk/{c}-etcd"]


def test_the_plan_replaces_each_controller_and_its_ready_step_in_chain_order(rollout: Rollout) -> None:
    """`pulumi preview --json` shows each replacement as one `replace` step (not its delete and create
    halves), in the order the chain allows: controller i's VM and ready step before controller i+1's VM."""
    ops = {s["urn"].split("::")[-1]: s["op"] for s in rollout.steps}
    order = [s["urn"].split("::")[-1] for s in rollout.steps]
    chain = [name for c in CONTROLLERS for name in (f"kthw-{c}-instance", f"kthw-{c}-etcd-ready")]
    assert [ops.get(name) for name in chain] == ["replace"] * len(chain), ops
    assert sorted(chain, key=order.index) == chain, order
    for c in CONTROLLERS:
        assert ops[f"kthw-{c}-etcd-leave"] == "update"
        # The etcd disk is untouched: no step for it, or `same`.
        assert ops.get(f"kthw-{c}-etcd-disk", "same") == "same", ops


def test_the_load_balancer_lists_the_new_controllers(rollout: Rollout) -> None:
    """GCE drops a deleted VM from its target pools, and a pool that lists the same ZONE/NAME sees no
    change; the program names the pool by its members' instance ids, so the replaced controllers
    come with a new pool, the forwarding rule moves to it and the old one is deleted."""
    pools = {k.split("/", 1)[1]: v["inputs"] for k, v in rollout.cloud.items() if k.startswith("targetPool/")}
    (rule,) = [v["inputs"] for k, v in rollout.cloud.items() if k.startswith("forwardingRule/")]
    assert list(pools) == [rule["target"].rsplit("/", 1)[-1]], (pools, rule["target"])
    (members,) = pools.values()
    assert sorted(m.rsplit("/", 1)[-1] for m in members["instances"]) == list(CONTROLLERS)
