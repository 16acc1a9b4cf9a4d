"""The SSH gate: the one step per node that every other step on it waits for."""

from __future__ import annotations

from collections.abc import Sequence

import pulumi
from pulumi_command import remote as command_remote

from components import bounds, remote
from components.render import render

# How long a machine may take from creation to accepting SSH and finishing cloud-init.
SSH_READY_TIMEOUT = bounds.duration(bounds.SSH_READY_TIMEOUT_SECONDS)


def ssh_ready_script(node: str, cloud_init_timeout: int = bounds.CLOUD_INIT_TIMEOUT_SECONDS) -> str:
    """The gate's script: sshd accepts the key, the system is one the program knows, cloud-init is done."""
    return render("node/ssh-ready.sh", node=node, cloud_init_timeout=cloud_init_timeout)


def gate(
    resource_name: str,
    connection: command_remote.ConnectionArgs,
    node: str,
    *,
    parent: pulumi.Resource,
    triggers: Sequence[pulumi.Input[object]] | None = None,
    depends_on: Sequence[pulumi.Resource] = (),
) -> command_remote.Command:
    """A node's gate; `triggers` are what makes it a new machine (its VM's id), which re-runs every step on it."""
    return command_remote.Command(
        resource_name,
        connection=connection,
        # Logged (the default): its lines capped, as every logged step's are.
        create=remote.capped(ssh_ready_script(node)),
        add_previous_output_in_env=False,
        triggers=list(triggers) if triggers else None,
        opts=pulumi.ResourceOptions(
            parent=parent,
            depends_on=list(depends_on),
            # A changed script (or a new machine) runs the gate again: bound that run too.
            custom_timeouts=pulumi.CustomTimeouts(create=SSH_READY_TIMEOUT, update=SSH_READY_TIMEOUT),
        ),
    )
