"""The command contract's program: remote.Commands on a loopback sshd, whose inputs change with `phase`.

Phase 1 creates them; phase 2 changes one input kind per command (and moves, removes and replaces
some); phase 3 adds steps that fail (a script, a refused dial, a dial that never completes, a
custom timeout). Every script appends one line to the log the test reads: its tag, which script
ran (create, update or delete), where (server address and port), with which key, what it read on
stdin, and what it found in its environment.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pulumi
from pulumi_command import remote

config = pulumi.Config()
spec: dict[str, Any] = json.loads(config.require("spec"))
phase = config.require_int("phase")
keys = {name: Path(path).read_text() for name, path in spec["keys"].items()}
LOG = spec["log"]
# Set by the sshd (tests/contract/sshd.py): where the session runs and which key logged in.
WHERE = 'set -- $SSH_CONNECTION; where="$3:$4 $(cut -d" " -f3 "$SSH_USER_AUTH" | tail -c 13)"'


def script(tag: str, which: str, extra: str = "") -> str:
    """A script that records itself; `extra` runs after the record (its output, its exit status)."""
    return (
        "set -eu\n"
        'digest="$(sha256sum | cut -c1-12)"\n'
        f"{WHERE}\n"
        f'printf "%s\\n" "{tag} {which} $where stdin=$digest env=${{KTHW_VALUE:-}} '
        f'prev=${{PULUMI_COMMAND_STDOUT:-}}" >> {LOG}\n'
        f"{extra}"
    )


def connection(
    host: str = "127.0.0.1", port: int | None = None, key: str = "A", secret: bool = True, **more: Any
) -> remote.ConnectionArgs:
    private: pulumi.Input[str] = pulumi.Output.secret(keys[key]) if secret else keys[key]
    return remote.ConnectionArgs(
        host=host, port=port or spec["ports"][0], user=spec["user"], private_key=private, **more
    )


made: dict[str, remote.Command] = {}


def command(name: str, opts: pulumi.ResourceOptions | None = None, **args: Any) -> remote.Command:
    args.setdefault("connection", connection())
    args.setdefault("create", script(name, "create", f'echo "out-{name}"\n'))
    args.setdefault("add_previous_output_in_env", False)
    made[name] = remote.Command(name, opts=opts, **args)
    return made[name]


second = phase >= 2
port_a, port_b = spec["ports"]

# One input kind each: a change of any of these is an update that runs `create` again.
command("conn-host", connection=connection(host="127.0.0.2" if second else "127.0.0.1"))
command("conn-port", connection=connection(port=port_b if second else port_a))
command("conn-key", connection=connection(key="B" if second else "A"))
command("create", create=script("create", "create", 'echo "v2"\n' if second else 'echo "v1"\n'))
command("stdin", stdin="two\n" if second else "one\n")
command("logging", logging=remote.Logging.NONE if second else remote.Logging.STDOUT_AND_STDERR)
command("environment", environment={"KTHW_VALUE": "two" if second else "one"})
command(
    "update-script",
    update=script("update-script", "update-v2" if second else "update-v1", 'echo "updated"\n'),
)
command(
    "delete-script",
    delete=script("delete-script", "delete-v2" if second else "delete-v1"),
)
command(
    "previous-output",
    create=script("previous-output", "create", 'echo "run-2"\n' if second else 'echo "run-1"\n'),
    add_previous_output_in_env=True,
)
# No create left: the update runs nothing, and the last run's output stays.
command("create-removed", create=None if second else script("create-removed", "create", 'echo "kept"\n'))
# A trigger replaces: the new one is created, then the old one deleted.
command(
    "triggers",
    triggers=["2" if second else "1"],
    delete=script("triggers", "delete"),
)
# Moved to another port and replaced: its delete must run where the old one lived.
command(
    "moved",
    connection=connection(port=port_b if second else port_a, key="B" if second else "A"),
    triggers=[str(second)],
    delete=script("moved", "delete"),
)
if not second:
    command("removed", connection=connection(port=port_b, key="B"), delete=script("removed", "delete"))
# Output shapes: one trailing newline cut; secret only when asked for; a plain key in the connection.
command("newline", create=script("newline", "create", 'printf "a\\n\\n"; printf "e\\n\\n" >&2\n'))
command(
    "secret-output",
    create=script("secret-output", "create", 'echo "hidden"\n'),
    opts=pulumi.ResourceOptions(additional_secret_outputs=["stdout"]),
)
command("plain-key", connection=connection(secret=False))
command(
    "failed-update",
    create=script("failed-update", "create", 'echo "bad"; exit 4\n' if phase >= 3 else 'echo "before"\n'),
)

# What a preview knows of each stdout: the observer's environment takes them as they are (it runs
# nothing), and the preview shows each one, or the engine's mark for an unknown value.
command(
    "stdout-observer",
    create=None,
    environment={name: c.stdout for name, c in made.items() if name not in ("secret-output", "removed")},
)

if phase >= 3:
    command("failed-create", create=script("failed-create", "create", 'echo "partial"; exit 3\n'))
    command("dial-refused", connection=connection(port=spec["closed_port"], dial_error_limit=2, per_dial_timeout=5))
    command("dial-counted", connection=connection(port=spec["counting_port"], dial_error_limit=2, per_dial_timeout=5))
    # No dial limit: only the operation's custom timeout ends the dial.
    command(
        "dial-timeout",
        connection=connection(port=spec["closed_port"], dial_error_limit=-1, per_dial_timeout=5),
        opts=pulumi.ResourceOptions(custom_timeouts=pulumi.CustomTimeouts(create="4s")),
    )
