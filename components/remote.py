"""Remote-command helpers: the SSH connection, file bundles carried on stdin, and idempotent scripts."""

from __future__ import annotations

import base64
import hashlib
import io
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
from pulumi_command import remote

from components import bounds
from components.render import render

# How long one bootstrap step may take (downloads, a cold systemd start) before `pulumi up` fails.
# The engine does not stop the script then: each script bounds its own waits (components/bounds.py).
STEP_TIMEOUT = bounds.duration(bounds.STEP_TIMEOUT_SECONDS)
# The longest line a logged step may print. pulumi-command reads a logged step's output a line at a
# time with a 64 KiB limit (stdout and stderr share that reader, so two partial lines may meet):
# a longer line hangs the step forever, so every logged script folds its lines well below it.
LOG_LINE_BYTES = 4096


@dataclass(frozen=True)
class RemoteFile:
    """A file to place on a node: absolute path, content (plain or secret) and mode, owned by root."""

    path: str
    content: pulumi.Input[str]
    mode: int = 0o644


@dataclass(frozen=True)
class Host:
    """Where and how a node's commands run: its SSH connection and the gate that proves it is up."""

    name: str
    connection: remote.ConnectionArgs
    ready: pulumi.Resource
    # How many times the cloud's bounds (components/bounds.py) this node's waits may take.
    pace: int = bounds.CLOUD_PACE


def connection(
    host: pulumi.Input[str], user: str, private_key: pulumi.Input[str], port: int = 22
) -> remote.ConnectionArgs:
    """SSH to a fresh VM: keep dialing while it boots (dial_error_limit=-1), each dial bounded."""
    return remote.ConnectionArgs(
        host=host,
        # The provider's own default is 22: left out then, so existing stacks see no change.
        port=port if port != 22 else None,
        user=user,
        private_key=private_key,
        dial_error_limit=-1,
        per_dial_timeout=30,
    )


def pack(files: Sequence[tuple[str, str, int]]) -> str:
    """A base64 tar of (path, content, mode) entries: root-owned, fixed mtime, in the given order.

    Deterministic on purpose: the same files give the same bytes, so a re-run with unchanged
    content shows no diff in `pulumi preview`.
    """
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, content, mode in files:
            data = content.encode()
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode, info.mtime = len(data), mode, 0
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(data))
    return base64.b64encode(buffer.getvalue()).decode()


def bundle(files: Sequence[RemoteFile]) -> pulumi.Output[str]:
    """Pack files for stdin; the result is secret whenever any content is (Output.all keeps it)."""
    paths = [f.path for f in files]
    modes = [f.mode for f in files]
    return pulumi.Output.all(*[f.content for f in files]).apply(
        lambda contents: pack(list(zip(paths, [str(c) for c in contents], modes, strict=True)))
    )


def fingerprint(files: Sequence[RemoteFile]) -> pulumi.Output[str]:
    """The SHA-256 of a set of files, as a plain (not secret) Output for `triggers`.

    A digest reveals nothing of the keys inside, and a plain trigger keeps the diff readable.
    """
    digest = bundle(files).apply(lambda packed: hashlib.sha256(packed.encode()).hexdigest())
    return pulumi.Output.unsecret(digest)


def capped(script: str) -> str:
    """`script` with its stdout and stderr folded into lines of at most LOG_LINE_BYTES bytes.

    For every Command whose output is logged. The fold comes right after the shebang line (or
    first), before the script's own `set -euo pipefail`, and changes nothing else.
    """
    fold = render("common/line-cap.sh", line_bytes=LOG_LINE_BYTES)
    if script.startswith("#!"):
        shebang, _, rest = script.partition("\n")
        return f"{shebang}\n{fold}{rest}"
    return fold + script


def run(
    resource_name: str,
    host: Host,
    script: pulumi.Input[str],
    *,
    parent: pulumi.Resource,
    stdin: pulumi.Input[str] | None = None,
    secret_stdin: bool = False,
    triggers: Sequence[pulumi.Input[object]] | None = None,
    depends_on: Sequence[pulumi.Resource] = (),
) -> remote.Command:
    """Run one idempotent script on a node, after its SSH gate.

    A change to the script or its stdin updates the Command, which runs `create` again: every
    script converges from any earlier state. `triggers` replace the Command instead; they carry
    what is not in the script itself but must re-run it (the instance it runs on, a binary it
    restarts). A command whose stdin carries a secret logs nothing and keeps stdout and stderr
    secret, so neither the engine's log nor the state ever shows key material. Any other command's
    output is logged, its lines capped (`capped`).
    """
    return remote.Command(
        resource_name,
        connection=host.connection,
        create=script if secret_stdin else pulumi.Output.from_input(script).apply(capped),
        stdin=pulumi.Output.secret(stdin) if secret_stdin and stdin is not None else stdin,
        triggers=list(triggers) if triggers else None,
        logging=remote.Logging.NONE if secret_stdin else remote.Logging.STDOUT_AND_STDERR,
        # sshd refuses unknown environment variables; passing the last run's output only warns.
        add_previous_output_in_env=False,
        opts=pulumi.ResourceOptions(
            parent=parent,
            depends_on=[host.ready, *depends_on],
            # A new VM behind the same node replaces its gate; every step on it must run again.
            replace_with=[host.ready],
            custom_timeouts=pulumi.CustomTimeouts(create=STEP_TIMEOUT, update=STEP_TIMEOUT),
            additional_secret_outputs=["stdout", "stderr", "stdin"] if secret_stdin else None,
        ),
    )


def deploy_script(
    node: str,
    step: str,
    files: Sequence[RemoteFile],
    units: Sequence[str] = (),
    *,
    no_block: bool = False,
    obsolete: Sequence[str] = (),
    systemctl_timeout: int = bounds.SYSTEMCTL_TIMEOUT_SECONDS,
) -> str:
    """The script of a deploy step: install `files` from a tar on stdin, remove `obsolete`, then (re)start `units`."""
    clash = {f.path for f in files} & set(obsolete)
    if clash:
        raise ValueError(f"{step}: {sorted(clash)} both installed and removed")
    return render(
        "common/deploy.sh",
        node=node,
        step=step,
        units=" ".join(units),
        files="\n".join(f"{f.path} {f.mode:o}" for f in files),
        obsolete="\n".join(obsolete),
        # etcd's first member blocks in `start` until a quorum exists; --no-block lets every
        # member start at once instead of one waiting on the next.
        restart_flags="--no-block" if no_block else "",
        systemctl_timeout=systemctl_timeout,
    )


def deploy(
    resource_name: str,
    host: Host,
    *,
    parent: pulumi.Resource,
    step: str,
    files: Sequence[RemoteFile],
    units: Sequence[str] = (),
    obsolete: Sequence[str] = (),
    no_block: bool = False,
    secret: bool = True,
    triggers: Sequence[pulumi.Input[object]] | None = None,
    depends_on: Sequence[pulumi.Resource] = (),
) -> remote.Command:
    """Place one service's files on a node and (re)start the service when any of them changed.

    One deploy per service keeps restarts local: a new kubelet config restarts the kubelet and
    nothing else. `obsolete` names files an earlier version of the step wrote and this one
    replaces: they are removed, and their removal counts as a change. The bundle is secret by
    default since most steps carry a private key.
    """
    return run(
        resource_name,
        host,
        deploy_script(host.name, step, files, units, no_block=no_block, obsolete=obsolete),
        parent=parent,
        stdin=bundle(files),
        secret_stdin=secret,
        triggers=triggers,
        depends_on=depends_on,
    )
