"""The program's own remote steps on a loopback sshd: what it must guard against in the real command provider.

Built from components/remote.py and the node's SSH gate exactly as the cluster builds them; only
the connection's port differs (the test's sshd does not listen on 22). `scenario` picks the steps:

- "long-line": a logged step that prints a 70,000-character line on stdout and on stderr.
- "bounds": the node's SSH gate with a short cloud-init bound (the test's cloud-init never
  finishes), and a step that outlives its custom timeout.
- "secrets": a deploy of secret files (a kubeconfig, an encryption config, PEM and OpenSSH private
  keys, a token), a step that takes a key on stdin and a logged step; phase 2 rotates every
  secret, phase 3 adds a deploy that fails and makes the existing one fail its update.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pulumi
from pulumi_command import remote as command_remote

from components import kubeconfig, remote, ssh_gate

config = pulumi.Config()
spec: dict[str, Any] = json.loads(config.require("spec"))
scenario = config.require("scenario")
phase = config.get_int("phase") or 1
secrets: dict[str, str] = json.loads(Path(spec["secrets"]).read_text()) if spec.get("secrets") else {}

connection = remote.connection(spec["host"], spec["user"], pulumi.Output.secret(Path(spec["key"]).read_text()))
pulumi.set(connection, "port", spec["port"])


class Steps(pulumi.ComponentResource):
    """A parent for the steps, as the cluster's components are."""

    def __init__(self, name: str) -> None:
        super().__init__("kthw:test:Steps", name)


parent = Steps("guards")
gate_timeout = str(spec.get("gate_timeout", ssh_gate.SSH_READY_TIMEOUT))
gate = command_remote.Command(
    "node-x-ssh-ready",
    connection=connection,
    create=remote.capped(
        ssh_gate.ssh_ready_script("node-x", cloud_init_timeout=int(spec.get("cloud_init_timeout", 600)))
    ),
    add_previous_output_in_env=False,
    # The cluster's gate has a 15-minute custom timeout; a short one shows what it bounds.
    opts=pulumi.ResourceOptions(parent=parent, custom_timeouts=pulumi.CustomTimeouts(create=gate_timeout)),
)
host = remote.Host(name="node-x", connection=connection, ready=gate)

if scenario == "long-line":
    remote.run(
        "long-line",
        host,
        "#!/usr/bin/env bash\nset -euo pipefail\n"
        "head -c 70000 /dev/zero | tr '\\0' x; echo\n"
        "head -c 70000 /dev/zero | tr '\\0' y >&2; echo >&2\n"
        "echo done\n",
        parent=parent,
    )

if scenario == "bounds":
    command_remote.Command(
        "outlives-its-timeout",
        connection=connection,
        create="sleep 6; echo slept",
        add_previous_output_in_env=False,
        opts=pulumi.ResourceOptions(parent=parent, custom_timeouts=pulumi.CustomTimeouts(create="2s")),
    )

if scenario == "secrets":
    directory = spec["files"]
    ca = pulumi.Output.secret(secrets["cert"])
    files = [
        remote.RemoteFile(
            f"{directory}/admin.kubeconfig",
            kubeconfig.render_kubeconfig(
                server="https://10.240.0.10:6443",
                user="admin",
                ca_pem=secrets["cert"],
                cert_pem=secrets["cert"],
                key_pem=secrets["pem"],
            ),
            0o600,
        ),
        remote.RemoteFile(
            f"{directory}/encryption-config.yaml", kubeconfig.render_encryption_config(secrets["enc_key"])
        ),
        remote.RemoteFile(f"{directory}/service-account-key.pem", pulumi.Output.secret(secrets["pem"]), 0o600),
        remote.RemoteFile(f"{directory}/id_ed25519", pulumi.Output.secret(secrets["openssh"]), 0o600),
        remote.RemoteFile(f"{directory}/token.csv", pulumi.Output.secret(f"{secrets['token']},kubelet,10001\n"), 0o600),
        remote.RemoteFile(f"{directory}/ca.pem", ca),
    ]
    if phase >= 3:
        # A file where a directory should be: this install fails, so the update of the step fails.
        files.append(remote.RemoteFile(f"{spec['blocked']}/under-a-file.pem", pulumi.Output.secret(secrets["pem"])))
    remote.deploy("secret-files", host, parent=parent, step="secret-files", files=files)
    remote.run(
        "key-on-stdin",
        host,
        '#!/usr/bin/env bash\nset -euo pipefail\necho "kthw: node-x: key on stdin: $(sha256sum | cut -c1-16)"\n',
        parent=parent,
        stdin=pulumi.Output.secret(secrets["pem"]),
        secret_stdin=True,
    )
    remote.run("logged", host, "#!/usr/bin/env bash\nset -euo pipefail\necho 'kthw: node-x: logged'\n", parent=parent)
    if phase >= 3:
        remote.deploy(
            "broken-files",
            host,
            parent=parent,
            step="broken-files",
            files=[remote.RemoteFile(f"{spec['blocked']}/key.pem", pulumi.Output.secret(secrets["pem"]), 0o600)],
        )
