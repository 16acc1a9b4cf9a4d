"""What the last update deployed, read back from this stack's own outputs: a preview that will
replace controllers says so, and a shrink of more than etcd can lose in one step is refused."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pulumi

from components.config import ClusterConfig, ConfigError, ConfigErrors, check_controller_shrink

# The stack output that records, per controller, what replaces or restarts its VM.
FINGERPRINTS_OUTPUT = "controller_fingerprints"
# The stack output that lists the controllers (DESIGN.md's public contract).
CONTROLLERS_OUTPUT = "controllers"


def replaced_controllers(previous: Mapping[str, Any] | None, now: Mapping[str, str]) -> list[str]:
    """Controllers that exist in the last update and whose machine this update replaces or restarts.

    `now` maps each controller to its platform's fingerprint (platforms.PlatformChoice.fingerprints).
    """
    if not previous:
        return []
    return [name for name, fp in now.items() if name in previous and previous[name] != fp]


def replacement_warning(names: list[str], config: ClusterConfig) -> str | None:
    """The preview's warning, naming the controllers and what happens to etcd and the API."""
    if not names:
        return None
    listed = ", ".join(names)
    if len(config.controllers) == 1:
        return (
            f"kthw: this update replaces or restarts {listed}, the only controller: etcd and the Kubernetes API "
            "are down until it is back (etcd's data stays on its etcd disk)"
        )
    return (
        f"kthw: this update replaces or restarts controllers {listed} (their image, machine type, zone, address "
        "or service account changed). They go ONE AT A TIME: each waits until the previous controller's etcd "
        "member is healthy and caught up again, and etcd's data stays on each controller's etcd disk"
    )


def check_previous(config: ClusterConfig, fingerprints: Mapping[str, str]) -> pulumi.Output[None]:
    """Compare this update with the last one, via a StackReference to this very stack.

    The engine reads a stack reference in preview as in update, so `pulumi preview` shows the
    warning. A refused shrink fails the program; Pulumi deletes resources only after a program
    that succeeded, so no controller, disk or member is removed by a refused update.
    """
    try:
        organization = pulumi.get_organization() or "organization"
    except Exception:  # older SDKs and some backends have no organization
        organization = "organization"
    this_stack = pulumi.StackReference(
        f"kthw-previous-{pulumi.get_stack()}", stack_name=f"{organization}/{pulumi.get_project()}/{pulumi.get_stack()}"
    )
    previous_fingerprints = this_stack.get_output(FINGERPRINTS_OUTPUT)
    previous_controllers = this_stack.get_output(CONTROLLERS_OUTPUT)

    def check(values: list[Any]) -> None:
        fps, controllers = values
        if controllers:
            try:
                check_controller_shrink(len(controllers), len(config.controllers))
            except ConfigError as error:
                # As every config problem: a RunError, one line and no traceback.
                raise ConfigErrors([str(error)]) from None
        if warning := replacement_warning(replaced_controllers(fps, fingerprints), config):
            pulumi.log.warn(warning)

    return pulumi.Output.all(previous_fingerprints, previous_controllers).apply(check)
