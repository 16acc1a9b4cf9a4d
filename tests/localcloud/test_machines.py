"""The machines platform for real: `kthw:platform machines` over hosts the test boots itself, reached by real SSH.

No cloud plugin creates anything: the test boots an nspawn controller and a VM worker on the local
cloud's bridge (tests/localcloud/hosts.py), with the public half of a key it makes, lists them in
kthw:machines and gives the private half as a secret, as a user with machines does. The real CLI
runs __main__.py, and every step runs through the real pulumi-resource-command over SSH; binaries
and images come from the namespace's mirror and registry.

In file order, on one stack: up at the Kubernetes patch release before the program's to its own
smoke test, a preview with no changes, the patch bump on this one controller (the API's outage
measured and bounded, nothing re-keyed), a machine listed twice refused in preview, destroy. And a
stack whose machines do not answer fails at its SSH gates, naming the address, within their bound.
(Adding a machine runs only its steps and re-routes the others: test_platform_machines.py for the
plan, the engine tier for what an update re-runs.)
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from components import versions
from platforms import machines as machines_platform
from tests.localcloud import hosts, plane, prober
from tests.localcloud.hosts import Host
from tests.localcloud.image import Image
from tests.localcloud.net import GATEWAY
from tests.localcloud.services import (
    Services,
    assert_one_worker_smoke_test_passed,
    base_config,
    mirror_keys,
    print_timeline,
    vms_and_certificates,
)
from tests.localcloud.ssh import KeyPair
from tests.localcloud.stack import LocalStack
from tests.localcloud.vm import Accel
from tests.upstream import build

pytestmark = pytest.mark.localcloud

USER = "debian"  # as on Debian's cloud images: not the program's default (kthw)
NODE_CIDR, CLUSTER_CIDR = "10.240.0.0/24", "10.200.0.0/16"
CONTROLLER = Host("controller-0", "controller", "10.240.0.10")
WORKER = Host("worker-0", "worker", "10.240.0.20")
# Booting a TCG VM to SSH takes 40-230 s on this machine, loaded.
BOOT_SECONDS = 600
SECRET_KEY = "kthw:sshPrivateKey"
# Keys of the gcp platform (placement, node counts, the firewall's admin ranges) a machines stack has no use for.
GCP_ONLY = ("kthw:controllerCount", "kthw:workerCount", "kthw:adminSourceRanges")


@dataclass
class Machines:
    """The stack, the key the hosts accept, and the hosts booted so far."""

    stack: LocalStack
    key: KeyPair
    namespace_name: str
    booted: list[Host]

    def listed(self) -> list[dict[str, Any]]:
        return [h.listed(USER) for h in self.booted]

    def boot(self, new: list[Host], image: Image, accel: Accel) -> dict[str, float]:
        """Boot `new` hosts, put them on the LAN, and wait for their SSH: seconds to SSH per host."""
        started = time.monotonic()
        for host in new:
            hosts.boot(self.stack.namespace, image, accel, self.stack.run_dir, host, f"{USER}:{self.key.public}")
        self.booted += new
        hosts.lan(self.stack.namespace, self.stack.run_dir, NODE_CIDR, CLUSTER_CIDR)
        return hosts.wait_for_ssh(self.stack.namespace, self.key, USER, new, started, BOOT_SECONDS)


def program_config(services: Services) -> dict[str, Any]:
    """The local cloud's stack file (mirror, registry, versions) on the machines platform, at the
    Kubernetes patch release before the program's (test_3 bumps it)."""
    base = base_config(1, 1, services.previous, services)
    kept = {k: v for k, v in base.items() if not k.startswith("gcp:") and k not in GCP_ONLY}
    return {**kept, "kthw:platform": "machines", "kthw:sshUser": USER}


def write_config(stack: LocalStack, config: dict[str, Any]) -> None:
    """The stack file with `config`, keeping what the CLI wrote besides (the secrets' salt)."""
    path = stack.cli.project / f"Pulumi.{stack.name}.yaml"
    current = yaml.safe_load(path.read_text()) or {}
    stack.config = config
    path.write_text(yaml.safe_dump({**current, "config": config}))


def set_secret_key(stack: LocalStack, key: KeyPair) -> None:
    """`pulumi config set --secret kthw:sshPrivateKey < KEYFILE`, as config hints: never on a command line."""
    cli = stack.cli
    argv = [*cli.prefix, str(cli.binary), "config", "set", "--secret", SECRET_KEY, "--stack", stack.name]
    result = subprocess.run(
        argv,
        input=key.private.read_text(),
        cwd=cli.project,
        env=cli.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result
    written = yaml.safe_load((cli.project / f"Pulumi.{stack.name}.yaml").read_text())["config"]
    assert set(written[SECRET_KEY]) == {"secure"}, "the key must be stored encrypted"
    stack.config = written


def kubectl_ready(stack: LocalStack) -> list[str]:
    """name=Ready status of every node, as the controller's admin kubeconfig sees them."""
    result = stack.ssh(
        CONTROLLER.name,
        "sudo /usr/local/bin/kubectl --kubeconfig /var/lib/kubernetes/admin.kubeconfig get nodes"
        " -o jsonpath='{range .items[*]}{.metadata.name}={.status.conditions[?(@.type==\"Ready\")].status} {end}'",
    )
    assert result.returncode == 0, result
    return sorted(result.stdout.split())


def pod_routes(stack: LocalStack, node: str) -> list[str]:
    """The routes the program's pod-routes step made on `node` (its protocol number marks them)."""
    result = stack.ssh(node, f"ip -4 route show proto {machines_platform.ROUTES_PROTO}")
    assert result.returncode == 0, result
    return [" ".join(line.split()[:3]) for line in result.stdout.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def machines(
    services: Services, base_image: Image, accel: Accel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Machines]:
    tmp = tmp_path_factory.mktemp("machines")
    config = program_config(services)
    stack = LocalStack.create("machines", tmp, services.namespace, base_image, accel, config)
    key_dir = tmp / "key"
    key_dir.mkdir()
    found = Machines(stack, KeyPair.generate(key_dir, "kthw-machines-test"), services.namespace.name, [])
    try:
        yield found
    finally:
        hosts.stop_all(stack.namespace, stack.run_dir)


def test_1_up_over_machines_ends_with_the_smoke_test_passing(
    machines: Machines, base_image: Image, accel: Accel, figures: dict[str, object]
) -> None:
    stack = machines.stack
    figures["machines_boot_to_ssh_seconds"] = machines.boot([CONTROLLER, WORKER], base_image, accel)
    set_secret_key(stack, machines.key)
    write_config(stack, {**stack.config, "kthw:machines": machines.listed()})
    stack.up("up_1+1")
    figures["machines_up_seconds"] = stack.timings["up_1+1"]
    print_timeline(stack, "machines 1+1 up", figures)
    # No load balancer: the API's address is the first controller's, as the admin reaches it.
    assert_one_worker_smoke_test_passed(stack, build.PREVIOUS_KUBERNETES, f"https://{CONTROLLER.address}:6443")
    assert kubectl_ready(stack) == ["worker-0=True"]
    # The controller reaches the one worker's pods (metrics-server, through the aggregator) by its pod route.
    assert pod_routes(stack, CONTROLLER.name) == ["10.200.0.0/24 via 10.240.0.20"]
    assert pod_routes(stack, "worker-0") == []
    outputs = stack.outputs()
    assert outputs["kubernetes_public_address"] == CONTROLLER.address
    assert outputs["workers"] == {"worker-0": {"internal_ip": "10.240.0.20", "external_ip": "10.240.0.20"}}
    # The key came in as a secret: it is nowhere in the state in clear.
    private = machines.key.private.read_text().strip().splitlines()[1]
    assert private not in stack("stack", "export").stdout


def test_2_preview_right_after_shows_no_changes(machines: Machines) -> None:
    machines.stack("preview", "--expect-no-changes")


def test_3_a_patch_bump_on_one_controller_is_a_short_bounded_outage(
    machines: Machines, services: Services, figures: dict[str, object]
) -> None:
    """1.36.3 -> 1.36.4 with one API server: the address is down only while that server restarts."""
    stack = machines.stack
    keys = vms_and_certificates(stack)  # no VM on this platform: its keys and certificates
    credentials = prober.admin_credentials(stack.outputs(), stack.run_dir / "prober")
    write_config(stack, {**stack.config, **mirror_keys(services.current)})
    # /version every half second from the LAN (the hosts' one firewall rule admits only it), as an
    # admin next to the machines asks.
    targets = {"version": "/version"}
    lan = str(GATEWAY.ip)
    with prober.Prober(stack.namespace.name, CONTROLLER.address, credentials, targets, interval=0.5, source=lan) as api:
        stack.up("up_patch_bump")
    report = api.report()["version"]
    figures["machines_patch_bump"] = {"up_s": stack.timings["up_patch_bump"], "api": report}
    print(f"\nmachines 1+1 patch bump: up {stack.timings['up_patch_bump']} s, /version: {report}")
    # No shutdown delay with one API server (no other could take its requests): the address is down
    # from its stop to its start, seconds; the bound says the restart completed.
    assert report["longest_gap_s"] < 60, report
    assert vms_and_certificates(stack) == keys
    assert_one_worker_smoke_test_passed(stack, versions.KUBERNETES, f"https://{CONTROLLER.address}:6443")
    assert kubectl_ready(stack) == ["worker-0=True"]


def test_4_a_machine_listed_twice_is_one_line_in_preview_before_any_change(machines: Machines) -> None:
    stack = machines.stack
    good = stack.config
    before = stack("stack", "export").stdout
    # Pasted twice: the same name, SSH address and internal IP.
    write_config(stack, {**good, "kthw:machines": [*machines.listed(), WORKER.listed(USER)]})
    try:
        result = stack("preview", check=False)
    finally:
        write_config(stack, good)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    # The CLI shows each of the program's errors twice (as it happens, and under Diagnostics): one problem.
    told = {line.split("error: ", 1)[1] for line in output.splitlines() if "error: kthw:" in line}
    assert told == {"kthw:machines = 'worker-0' is invalid: one machine per name: worker-0 and worker-0 share it"}, (
        output
    )
    assert stack("stack", "export").stdout == before


def test_5_destroy_then_the_hosts_stop(machines: Machines, figures: dict[str, object]) -> None:
    stack = machines.stack
    stack.destroy()
    figures["machines_destroy_seconds"] = stack.timings["destroy"]
    print_timeline(stack, "machines all scenarios", figures)
    assert stack.resources() == []
    assert hosts.stop_all(stack.namespace, stack.run_dir) == sorted(h.name for h in machines.booted)
    assert plane.leftovers(stack.namespace.name) == []
    assert hosts.nodes(stack.run_dir) == {}


def test_machines_that_do_not_answer_fail_their_gates_naming_the_address(
    machines: Machines, figures: dict[str, object]
) -> None:
    """Nothing at the listed addresses: each SSH gate gives up after its bounded dials, and says where it dialled."""
    stack = machines.stack
    dead = [Host("controller-0", "controller", "10.240.0.90"), Host("worker-0", "worker", "10.240.0.91")]
    quiet = LocalStack("unanswered", stack.cli, stack.installed, stack.namespace, Path(stack.run_dir, "unanswered"), {})
    quiet.run_dir.mkdir()
    stack.cli("stack", "init", quiet.name)
    set_secret_key(quiet, machines.key)
    write_config(quiet, {**quiet.config, **program_config_of(stack), "kthw:machines": [h.listed(USER) for h in dead]})
    started = time.monotonic()
    result = quiet("up", "--yes", "--skip-preview", check=False)
    took = round(time.monotonic() - started, 1)
    figures["machines_unanswered_up_seconds"] = took
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    for host in dead:
        assert f"{host.address}:22" in output, output
    ran = {r["urn"].split("::")[-1] for r in quiet.resources() if r["type"] == "command:remote:Command"}
    assert not ran, ran  # no step ran on a host that never answered
    bound = machines_platform.DIAL_ATTEMPTS * machines_platform.PER_DIAL_TIMEOUT
    assert took < bound + 120, took
    quiet("destroy", "--yes", "--skip-preview")
    stack.cli("stack", "rm", "--yes", quiet.name)


def program_config_of(stack: LocalStack) -> dict[str, Any]:
    """`stack`'s config without its machines and its key: what another stack over other machines shares."""
    return {k: v for k, v in stack.config.items() if k not in ("kthw:machines", SECRET_KEY)}
