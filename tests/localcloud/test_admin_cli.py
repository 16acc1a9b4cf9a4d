"""The admin's machine on the local cloud: the CLI inside the namespace, the real command provider, the event log.

A small program's remote.Command reaches an nspawn node at its NAT IP through the real
pulumi-resource-command, started by the CLI inside the test's namespace (as LocalStack runs it): the
node's sshd sees the connection come from the admin's address, inside the stack's
adminSourceRanges, and the step's start and end come from the engine's event log.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from tests.engine import plugins
from tests.localcloud import plane
from tests.localcloud.events import run_logged
from tests.localcloud.image import Image
from tests.localcloud.net import Namespace
from tests.localcloud.nspawn import Machine
from tests.localcloud.ssh import KeyPair
from tests.localcloud.vm import Instance
from tests.pulumi_cli import isolated_cli

pytestmark = pytest.mark.localcloud

NODE = Instance("controller-0", "10.240.0.10", "198.51.100.10", "")
SLEEP_SECONDS = 3
# The gate's way in (components/remote.py): dial until sshd answers, each dial bounded.
PROGRAM = f"""
from pathlib import Path

import pulumi
from pulumi_command import remote

config = pulumi.Config()
where = remote.Command(
    "where",
    connection=remote.ConnectionArgs(
        host=config.require("host"),
        user="kthw",
        private_key=pulumi.Output.secret(Path(config.require("key_file")).read_text()),
        dial_error_limit=-1,
        per_dial_timeout=5,
    ),
    create='sleep {SLEEP_SECONDS}; set -- $SSH_CONNECTION; echo "$1 $(hostname)"',
    add_previous_output_in_env=False,
)
pulumi.export("where", where.stdout)
"""


def test_real_provider_reaches_a_node_from_the_admins_address(
    base_image: Image, namespace: Namespace, workdir: Path, tmp_path: Path, deadline: float
) -> None:
    plane.internet_setup(namespace.name)
    (workdir / "key").mkdir()
    key = KeyPair.generate(workdir / "key", "kthw@admin-cli-test")
    node = Machine(dataclasses.replace(NODE, ssh_keys=f"kthw:{key.public}\n"), base_image, namespace, workdir / "node")
    cli = isolated_cli(tmp_path, program=PROGRAM, name="kthw-admin")
    plugins.install_real_command(cli)
    cli("stack", "init", "admin")
    cli("config", "set", "host", NODE.external_ip, "--stack", "admin")
    cli("config", "set", "key_file", str(key.private), "--stack", "admin")
    cli = dataclasses.replace(cli, prefix=namespace.enter())
    try:
        node.start()
        # The dial starts before sshd is up: the provider keeps dialling (dial_error_limit -1).
        _, steps = run_logged(
            cli, tmp_path / "events.jsonl", "up", "--yes", "--skip-preview", "--stack", "admin", timeout=300
        )
        outputs = json.loads(cli("stack", "output", "--json", "--stack", "admin").stdout)
    finally:
        node.stop()
    # From the admin's address, which adminSourceRanges admit, not the bridge's 10.240.0.1.
    assert outputs["where"] == f"{plane.ADMIN_SOURCE} {NODE.name}", outputs
    assert [(s.name, s.op, s.failed) for s in steps if s.type == "command:remote:Command"] == [
        ("where", "create", False)
    ], steps
    (step,) = [s for s in steps if s.name == "where"]
    # The event log brackets the script's own sleep, and the stamps are finer than the engine's seconds.
    took = (step.end_ns - step.start_ns) / 1e9
    assert SLEEP_SECONDS <= took < 120, took
    assert step.start_ns % 1_000_000_000 or step.end_ns % 1_000_000_000, step
