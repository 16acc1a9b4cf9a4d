"""One kthw stack on the local cloud: the real CLI and engine, the local plugins, nodes in a namespace.

`LocalStack` wires the pieces together for the scenario tests: the gcp plugin's backend is
`cloud.LocalCloud`, every remote.Command runs through the real pulumi-resource-command over SSH,
binaries come from the local mirror and images from the local registry, both on "internet"
addresses inside the namespace. The CLI, and with it the engine and every plugin it starts, runs
inside the namespace, as on an admin's machine: its connections to the nodes' NAT IPs leave from
the admin's address (the namespace's routes to the external ranges carry it as their source). It
also reads what happened back: each node's service start times (to prove a step restarted
nothing) and a timeline of every bootstrap step, from the engine's event log.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.engine import plugins
from tests.localcloud import cloud
from tests.localcloud.events import Step, run_logged
from tests.localcloud.image import Image
from tests.localcloud.net import Namespace
from tests.localcloud.ssh import OPTIONS
from tests.localcloud.vm import Accel
from tests.pulumi_cli import Cli, isolated_cli

PROJECT = "kthw-localcloud"
UP_TIMEOUT = 45 * 60
COMMAND = "command:remote:Command"
# How `pulumi stack export --show-secrets` shows a secret: the signature, then the JSON plaintext.
SECRET_SIG = "4dabf18193072939515e22adb298388d"
# The services the program runs, by role; a step that restarts one changes its start time.
UNITS = {
    "controller": ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "nginx"),
    "worker": ("containerd", "kubelet", "kube-proxy"),
}


@dataclass
class LocalStack:
    """A stack whose `pulumi up` builds a cluster on the local cloud."""

    name: str
    cli: Cli
    installed: plugins.Installed
    namespace: Namespace
    run_dir: Path
    config: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)  # every operation's steps, from its event log
    step_nodes: dict[str, str] = field(default_factory=dict)  # Command urn -> the node it runs on

    @classmethod
    def create(
        cls,
        name: str,
        tmp: Path,
        namespace: Namespace,
        image: Image,
        accel: Accel,
        config: dict[str, Any],
    ) -> LocalStack:
        cli = isolated_cli(tmp)
        run_dir = tmp / "cloud"
        run_dir.mkdir()
        installed = plugins.install(
            cli.home,
            tmp / "plugin-state",
            gcp_backend="tests.localcloud.cloud:LocalCloud",
            names=plugins.LOCAL_ONLY,
            extra_env={
                cloud.NETNS_ENV: namespace.name,
                cloud.RUN_ENV: str(run_dir),
                cloud.IMAGE_ENV: str(image.directory),
                cloud.ACCEL_ENV: accel.name,
                # The CLI's PATH is minimal; the backend needs losetup, nsenter, qemu and nft.
                "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            },
        )
        plugins.install_real_command(cli)
        # The admin's machine is inside the namespace: nsenter, not `ip netns exec`, which would
        # remount /sys and hide the cgroup mounts the gcp plugin's nspawn machines need.
        cli = dataclasses.replace(cli, prefix=namespace.enter())
        stack = cls(name, cli, installed, namespace, run_dir, config)
        cli("stack", "init", name)
        stack.write_config(config)
        return stack

    def write_config(self, config: dict[str, Any]) -> None:
        """The stack file, as a user keeps it: one file per environment."""
        self.config = config
        (self.cli.project / f"Pulumi.{self.name}.yaml").write_text(yaml.safe_dump({"config": config}))

    def __call__(self, *args: str, check: bool = True, timeout: int = UP_TIMEOUT) -> subprocess.CompletedProcess[str]:
        return self.cli(*args, "--stack", self.name, check=check, timeout=timeout)

    def _logged(self, label: str, verb: str, *extra: str) -> subprocess.CompletedProcess[str]:
        """`pulumi VERB`, timed, its steps kept from its event log (in run_dir/events, for a post-mortem)."""
        logs = self.run_dir / "events"
        log = logs / f"{len(list(logs.glob('*.jsonl'))):02d}-{label}.jsonl"
        start = time.monotonic()
        args = (verb, "--yes", "--skip-preview", *extra, "--stack", self.name)
        result, steps = run_logged(self.cli, log, *args, timeout=UP_TIMEOUT, check=False)
        self.timings[label] = round(time.monotonic() - start, 1)
        self.steps += steps
        if result.returncode != 0:
            # What ran where and when, with the failed step marked, before the CLI's own output.
            self._learn_step_nodes()
            pytest.fail(
                f"pulumi {verb} failed ({result.returncode}); events in {log}\n"
                f"{format_timeline(self.timeline(), {})}\n{result.stdout}\n{result.stderr}"
            )
        return result

    def up(self, label: str, *extra: str) -> subprocess.CompletedProcess[str]:
        result = self._logged(label, "up", *extra)
        self._learn_step_nodes()
        return result

    def preview(self, *extra: str) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(self("preview", "--json", *extra).stdout)
        return found

    def outputs(self) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(self("stack", "output", "--json", "--show-secrets").stdout)
        return found

    def resources(self) -> list[dict[str, Any]]:
        """The stack's resources as `pulumi stack export` has them (secrets stay encrypted)."""
        found: list[dict[str, Any]] = json.loads(self("stack", "export").stdout)["deployment"].get("resources") or []
        return found

    def nodes(self) -> dict[str, dict[str, Any]]:
        """The local cloud's running nodes: name -> kind, pid, addresses, tags."""
        path = self.run_dir / "nodes.json"
        found: dict[str, dict[str, Any]] = json.loads(path.read_text()) if path.exists() else {}
        return found

    def ssh(self, node: str, command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run `command` on `node` as the program's SSH user, with the stack's own key."""
        outputs = self.outputs()
        key = self.run_dir / "admin-key"
        key.touch(mode=0o600)
        key.write_text(str(outputs["ssh_private_key"]).rstrip("\n") + "\n")
        user = str(self.config.get("kthw:sshUser") or "kthw")
        host = self.nodes()[node]["external_ip"]
        argv = self.namespace.command("ssh", *OPTIONS, "-i", str(key), f"{user}@{host}", command)
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def service_starts(self) -> dict[str, dict[str, str]]:
        """node -> unit -> "state/restarts/start time" for every service the program runs there.

        A restart, by a step or by systemd after a crash, changes the start time (monotonic
        microseconds) or the restart count.
        """
        found: dict[str, dict[str, str]] = {}
        properties = ("ActiveState", "NRestarts", "ActiveEnterTimestampMonotonic")
        for name, node in sorted(self.nodes().items()):
            units = UNITS["controller" if "controller" in node["tags"] else "worker"]
            flags = " ".join(f"-p {p}" for p in properties)
            show = "; ".join(f"systemctl show {flags} {shlex.quote(u)}; echo ---" for u in units)
            result = self.ssh(name, show)
            assert result.returncode == 0, result
            blocks = result.stdout.split("---\n")[: len(units)]
            found[name] = {}
            for unit, block in zip(units, blocks, strict=True):
                values = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
                found[name][unit] = "/".join(values.get(p, "?") for p in properties)
        return found

    def _learn_step_nodes(self) -> None:
        """Which node each Command runs on, from its connection in the state.

        The connection is secret (it holds the key), so the event log shows it as "[secret]"; the
        state, read with --show-secrets, has its host, and nodes.json the node at that address.
        """
        exported = json.loads(self("stack", "export", "--show-secrets").stdout)
        by_address = {str(n["external_ip"]): name for name, n in self.nodes().items()}
        for resource in exported["deployment"].get("resources") or []:
            if resource["type"] == COMMAND:
                connection = _plain((resource.get("inputs") or {}).get("connection")) or {}
                host = str(connection.get("host") or "?")
                self.step_nodes[resource["urn"]] = by_address.get(host, host)

    def timeline(self) -> list[dict[str, Any]]:
        """Every script run (Command steps of the event logs) and node boot, in start order, in s from the first."""
        events: list[dict[str, Any]] = [
            {
                "at": s.start_ns,
                "end": s.end_ns,
                "node": self.step_nodes.get(s.urn, "?"),
                "step": s.name,
                "op": s.op,
                "failed": s.failed,
            }
            for s in self.steps
            # A Command's delete runs a script only when it has one.
            if s.type == COMMAND and (s.op not in ("delete", "delete-replaced") or s.old_inputs.get("delete"))
        ]
        for e in self.installed.instance_events():
            events.append(
                {
                    "at": e["at"],
                    "end": e["at"],
                    "node": e["instance"],
                    "step": "instance",
                    "op": e["operation"],
                    "failed": False,
                }
            )
        events.sort(key=lambda e: e["at"])
        if not events:
            return []
        zero = events[0]["at"]
        return [
            {**e, "start_s": round((e["at"] - zero) / 1e9, 1), "end_s": round((e["end"] - zero) / 1e9, 1)}
            for e in events
        ]

    def destroy(self) -> None:
        self._learn_step_nodes()
        self._logged("destroy", "destroy")

    def cleanup(self) -> list[str]:
        """Stop whatever nodes a failed run left (nothing, after a clean destroy)."""
        return cloud.stop_all(self.namespace, self.run_dir)


def _plain(value: Any) -> Any:
    """A value of `stack export --show-secrets`: a secret's plaintext decoded, anything else as is."""
    if isinstance(value, dict) and SECRET_SIG in value:
        return json.loads(value["plaintext"])
    return value


def format_timeline(events: list[dict[str, Any]], hosts: dict[str, str]) -> str:
    """One line per step: start, end, duration, node, step and operation."""
    lines = []
    for e in events:
        node = hosts.get(str(e["node"]), str(e["node"]))
        took = e["end_s"] - e["start_s"]
        failed = " FAILED" if e.get("failed") else ""
        lines.append(f"{e['start_s']:8.1f} {e['end_s']:8.1f} {took:7.1f}s  {node:<14} {e['op']:<7} {e['step']}{failed}")
    return "\n".join(lines)
