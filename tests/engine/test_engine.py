"""The real Pulumi engine on the real program: up, no-change preview, scaling and rotation plans, destroy.

The CLI built from source runs __main__.py through our language host, with the gcp, tls, random
and command plugins replaced by the local ones in tests/engine/providers (real keys and
certificates; a JSON-file cloud; a command stand-in that records what it would run). So the diffs,
replacements (replaceWith, replacementTrigger, triggers), secrets and state below are the engine's
own. The tests share one stack and run in file order: up, preview, two config-change plans, destroy.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from components import rollout
from components.pki import IDENTITIES
from tests.engine import plugins
from tests.engine.providers import gcp
from tests.pulumi_cli import Cli, isolated_cli

STACK = "dev"
PROJECT = "kthw-engine-test"
UP_TIMEOUT = 900
COMMAND = "command:remote:Command"
PRIVATE_KEY = "tls:index/privateKey:PrivateKey"
SELF_SIGNED_CERT = "tls:index/selfSignedCert:SelfSignedCert"
CERT_REQUEST = "tls:index/certRequest:CertRequest"
LOCALLY_SIGNED_CERT = "tls:index/locallySignedCert:LocallySignedCert"


@dataclass
class Engine:
    """One stack under the real engine, with the local plugins' state beside it."""

    cli: Cli
    plugins: plugins.Installed
    up_seconds: float = 0.0

    def resources(self) -> list[dict[str, Any]]:
        exported = json.loads(self.cli("stack", "export", "--stack", STACK).stdout)
        found: list[dict[str, Any]] = exported["deployment"].get("resources") or []
        return found

    def state_file(self) -> Path:
        return self.cli.state / ".pulumi" / "stacks" / "kthw" / f"{STACK}.json"

    def outputs(self) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(self.cli("stack", "output", "--json", "--stack", STACK).stdout)
        return found

    def plan(self, key: str, value: str) -> list[dict[str, Any]]:
        """The steps of `pulumi preview --json` with `key` set to `value` (restored afterwards)."""
        steps: list[dict[str, Any]] = self.preview(key, value).get("steps") or []
        return steps

    def preview(self, key: str, value: str) -> dict[str, Any]:
        """`pulumi preview --json` with `key` set to `value` (restored afterwards): steps and diagnostics."""
        before = self.cli("config", "get", key, "--stack", STACK, check=False)
        self.cli("config", "set", key, value, "--stack", STACK)
        try:
            result = self.cli("preview", "--json", "--stack", STACK, timeout=UP_TIMEOUT)
        finally:
            if before.returncode == 0:
                self.cli("config", "set", key, before.stdout.strip(), "--stack", STACK)
            else:
                self.cli("config", "rm", key, "--stack", STACK)
        found: dict[str, Any] = json.loads(result.stdout)
        return found


def name_of(urn: str) -> str:
    return urn.split("::")[-1]


def type_of(urn: str) -> str:
    return urn.split("::")[-2].split("$")[-1]


REPLACE_OPS = {"replace", "create-replacement", "delete-replaced"}
STACK_REFERENCE = "pulumi:pulumi:StackReference"


def changes(steps: list[dict[str, Any]]) -> dict[str, str]:
    """urn -> op for every step that is not `same`; the three steps of a replacement read `replace`.

    The program's StackReference to its own stack (rollout.py) is read at every preview and update,
    changing nothing: it is checked once (below) and left out here.
    """
    reads = [s for s in steps if type_of(s["urn"]) == STACK_REFERENCE]
    assert [s["op"] for s in reads] == ["read"], reads
    return {
        s["urn"]: "replace" if s["op"] in REPLACE_OPS else s["op"]
        for s in steps
        if s["op"] != "same" and type_of(s["urn"]) != STACK_REFERENCE
    }


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    tmp = tmp_path_factory.mktemp("engine")
    cli = isolated_cli(tmp)
    installed = plugins.install(cli.home, tmp / "local-cloud")
    cli.stack(STACK, PROJECT)
    started = time.monotonic()
    # With its preview: every create is planned first with unknowns, as a user's `pulumi up` does.
    cli("up", "--yes", "--stack", STACK, timeout=UP_TIMEOUT)
    result = Engine(cli, installed, time.monotonic() - started)
    print(f"\npulumi up (1+1, real engine, local plugins): {result.up_seconds:.1f} s")
    yield result


def test_up_runs_every_nodes_steps_in_gate_order(engine: Engine) -> None:
    resources = engine.resources()
    commands = {name_of(r["urn"]) for r in resources if r["type"] == COMMAND}
    records = engine.plugins.commands()
    assert [r["operation"] for r in records] == ["create"] * len(records)
    # Every Command in state ran exactly once, on its node's external IP.
    assert sorted(r["resource"] for r in records) == sorted(commands)
    outputs = engine.outputs()
    hosts = {name: ip["external_ip"] for group in ("controllers", "workers") for name, ip in outputs[group].items()}
    assert set(hosts) == {"controller-0", "worker-0"}
    by_host: dict[str, list[str]] = {}
    for record in records:
        by_host.setdefault(str(record["host"]), []).append(str(record["resource"]))
    assert set(by_host) == set(hosts.values()), (by_host.keys(), hosts)
    for node, ip in hosts.items():
        steps = by_host[ip]
        # The SSH gate runs first on every node; every other step on it waits for it.
        assert steps[0].endswith(f"{node}-ssh-ready"), steps
        assert len(steps) > 3, steps
        # controller-0 also drains and uncordons the workers (the admin's credentials live there).
        rollout_steps = ("-bootstrap-drain", "-bootstrap-uncordon")
        assert all(
            node in s or "addons" in s or "smoke-test" in s or "api-frontend" in s or s.endswith(rollout_steps)
            for s in steps
        ), steps
    # The cloud holds what the program declared: one VM per node, a route per worker.
    cloud = engine.plugins.cloud()
    assert sorted(k for k in cloud if k.startswith("instance/")) == ["instance/controller-0", "instance/worker-0"]
    assert [k for k in cloud if k.startswith("route/")] == ["route/kubernetes-route-10-200-0-0-24"]


def test_state_holds_private_keys_only_encrypted(engine: Engine) -> None:
    state = engine.state_file().read_text()
    assert "PRIVATE KEY" not in state
    assert '"ciphertext"' in state
    # The keys are there, encrypted: decrypting the same state shows them.
    shown = engine.cli("stack", "export", "--show-secrets", "--stack", STACK).stdout
    assert "BEGIN EC PRIVATE KEY" in shown and "BEGIN OPENSSH PRIVATE KEY" in shown


def test_second_preview_changes_nothing(engine: Engine) -> None:
    result = engine.cli("preview", "--expect-no-changes", "--diff", "--stack", STACK, check=False, timeout=UP_TIMEOUT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_refresh_then_up_changes_nothing(engine: Engine) -> None:
    """`pulumi up --refresh` reads every resource back (Read) and then has nothing to do."""
    before = len(engine.plugins.commands())
    result = engine.cli(
        "up", "--refresh", "--yes", "--expect-no-changes", "--stack", STACK, check=False, timeout=UP_TIMEOUT
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert engine.plugins.commands()[before:] == []


def test_adding_a_worker_plans_only_its_resources_and_the_smoke_test(engine: Engine) -> None:
    steps = changes(engine.plan("kthw:workerCount", "2"))
    created = {urn for urn, op in steps.items() if op == "create"}
    others = {urn: op for urn, op in steps.items() if op != "create"}
    # docs/configuration.md, "What a change does": the worker's VM, route, API firewall rule, kubelet certificate
    # and bootstrap are added; nothing existing changes except the smoke test.
    assert created and all("worker-1" in name_of(urn) for urn in created), sorted(created)
    created_types = {type_of(urn) for urn in created}
    assert {
        "gcp:compute/instance:Instance",
        "gcp:compute/route:Route",
        "gcp:compute/firewall:Firewall",
        LOCALLY_SIGNED_CERT,
        COMMAND,
    } <= created_types
    assert others and all("smoke-test" in name_of(urn) for urn in others), others


def test_cert_rotation_replaces_leaves_not_the_authorities(engine: Engine) -> None:
    steps = changes(engine.plan("kthw:certRotation", "1"))
    replaced = {name_of(urn) for urn, op in steps.items() if op == "replace"}
    tls = [r for r in engine.resources() if r["type"].startswith("tls:")]
    kept_keys = {f"-{i.file}-key" for i in IDENTITIES if not i.rotate_key}
    for resource in tls:
        name, typ = name_of(resource["urn"]), resource["type"]
        authority = typ == SELF_SIGNED_CERT or name.endswith("ca-key") or name.endswith("-ssh-key")
        key_kept = any(name.endswith(k) for k in kept_keys)
        csr_kept = typ == CERT_REQUEST and any(name.endswith(k.replace("-key", "-csr")) for k in kept_keys)
        if authority or key_kept or csr_kept:
            assert name not in replaced, f"{name} ({typ}) must survive a rotation"
        else:
            assert name in replaced, f"{name} ({typ}) must be replaced by a rotation"
    assert {type_of(u) for u, op in steps.items() if op == "replace"} <= {
        PRIVATE_KEY,
        CERT_REQUEST,
        LOCALLY_SIGNED_CERT,
        COMMAND,
    }, steps


def test_machine_type_updates_the_vms_in_place_and_nothing_else(engine: Engine) -> None:
    steps = changes(engine.plan("kthw:machineType", "e2-standard-2"))
    assert {name_of(urn): op for urn, op in steps.items()} == {
        "kthw-controller-0-instance": "update",
        "kthw-worker-0-instance": "update",
        # GCE stops and starts the controller for it: its etcd ready step runs again (the controller
        # fingerprint is among its triggers), so a next controller would wait for this one's etcd.
        "kthw-controller-0-etcd-ready": "replace",
    }


def test_new_image_replaces_the_vms_and_replace_with_reruns_every_step_on_them(engine: Engine) -> None:
    steps = changes(engine.plan("kthw:image", "debian-cloud/debian-12"))
    replaced = {name_of(urn) for urn, op in steps.items() if op == "replace"}
    assert {"kthw-controller-0-instance", "kthw-worker-0-instance"} <= replaced
    node_steps = [
        name_of(r["urn"])
        for r in engine.resources()
        if r["type"] == COMMAND and name_of(r["urn"]).startswith(("kthw-controller-0-", "kthw-worker-0-"))
    ]
    # Each step names its node's SSH gate in replaceWith; the gate's trigger is the instance id.
    # Not the etcd leave step: replacing it would run its delete (`member remove`), and the
    # controller comes back as the same member from its etcd disk.
    leave = "kthw-controller-0-etcd-leave"
    assert leave in node_steps and leave not in replaced
    assert "kthw-controller-0-etcd-disk" not in replaced
    node_steps.remove(leave)
    assert node_steps and set(node_steps) <= replaced, sorted(set(node_steps) - replaced)
    # No authority, no network: only what lives on or names the VMs.
    assert not {n for n in replaced if n.endswith(("-ca", "-ca-key", "-ssh-key"))}
    assert not {type_of(u) for u in steps} & {"gcp:compute/network:Network", "gcp:compute/subnetwork:Subnetwork"}


def test_the_preview_reads_the_last_update_back_and_warns_before_replacing_the_controller(engine: Engine) -> None:
    """The StackReference to this very stack, under the real engine: after the first `up` (which it
    survived with no outputs to read) it returns the exported fingerprints, and a new image names
    the controller it will replace; a worker-only change warns about nothing."""
    assert set(engine.outputs()[rollout.FINGERPRINTS_OUTPUT]) == {"controller-0"}

    def warnings(preview: dict[str, Any]) -> list[str]:
        return [d["message"] for d in preview.get("diagnostics") or [] if d.get("severity") == "warning"]

    image = warnings(engine.preview("kthw:image", "debian-cloud/debian-12"))
    assert [w for w in image if "replaces or restarts controller-0, the only controller" in w], image
    workers = warnings(engine.preview("kthw:workerCount", "2"))
    assert not [w for w in workers if "replaces or restarts" in w], workers


def test_adding_a_worker_runs_only_its_steps_and_the_smoke_test(engine: Engine) -> None:
    """Scaling through the real update: nothing already on controller-0 or worker-0 runs again."""
    before = len(engine.plugins.commands())
    engine.cli("config", "set", "kthw:workerCount", "2", "--stack", STACK)
    engine.cli("up", "--yes", "--skip-preview", "--stack", STACK, timeout=UP_TIMEOUT)
    ran = engine.plugins.commands()[before:]
    new_ip = engine.outputs()["workers"]["worker-1"]["external_ip"]
    on_new = [r["resource"] for r in ran if r["host"] == new_ip]
    elsewhere = sorted(r["resource"] for r in ran if r["host"] != new_ip)
    assert on_new[0] == "kthw-worker-1-ssh-ready" and len(on_new) > 3, on_new
    assert all(name.startswith("kthw-worker-1-") for name in on_new), on_new
    # The smoke test, replaced by its triggers, is all that runs on the existing nodes, with the new
    # worker's drain and uncordon on controller-0 (they find a new worker: nothing to drain).
    assert elsewhere == [
        "kthw-smoke-test-cluster",
        "kthw-smoke-test-public",
        "kthw-worker-1-bootstrap-drain",
        "kthw-worker-1-bootstrap-uncordon",
    ], elsewhere
    assert sorted(k for k in engine.plugins.cloud() if k.startswith("instance/")) == [
        "instance/controller-0",
        "instance/worker-0",
        "instance/worker-1",
    ]
    result = engine.cli("preview", "--expect-no-changes", "--diff", "--stack", STACK, check=False, timeout=UP_TIMEOUT)
    assert result.returncode == 0, result.stdout + result.stderr


def _instances(engine: Engine) -> dict[str, dict[str, Any]]:
    return {k.split("/", 1)[1]: v for k, v in engine.plugins.cloud().items() if k.startswith("instance/")}


def test_a_machine_type_change_stops_and_starts_the_vms_and_changes_nothing_else(engine: Engine) -> None:
    """Issue 17 §3.1: GCE gives a stopped and started VM a new ephemeral IP, which the plan cannot show
    (it keeps the old one); with a static address per node the IP stays, and nothing on the nodes but
    the controller's etcd ready step (its fingerprint names the machine type) runs again."""
    before = engine.outputs()
    ran_before = len(engine.plugins.commands())
    events_before = len(engine.plugins.instance_events())
    engine.cli("config", "set", "kthw:machineType", "e2-standard-2", "--stack", STACK)
    engine.cli("up", "--yes", "--skip-preview", "--stack", STACK, timeout=UP_TIMEOUT)
    after = engine.outputs()
    assert (after["controllers"], after["workers"]) == (before["controllers"], before["workers"])
    ran = [r["resource"] for r in engine.plugins.commands()[ran_before:]]
    assert ran == ["kthw-controller-0-etcd-ready"], ran
    events = [(e["operation"], e["instance"]) for e in engine.plugins.instance_events()[events_before:]]
    vms = ("controller-0", "worker-0", "worker-1")
    assert sorted(events) == sorted((op, vm) for vm in vms for op in ("stop", "start")), events
    assert {n: (v["status"], v["inputs"]["machineType"]) for n, v in _instances(engine).items()} == {
        vm: ("RUNNING", "e2-standard-2") for vm in vms
    }
    result = engine.cli("preview", "--expect-no-changes", "--stack", STACK, check=False, timeout=UP_TIMEOUT)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("machine_type", "problem"),
    [
        ("e2-standrad-2", "zone us-west1-c offers no such machine type"),
        ("c2-standard-4", "zone us-west1-c offers no such machine type"),
        ("n4-standard-2", "the N4 family takes Hyperdisk only"),
    ],
)
def test_a_machine_type_gce_would_refuse_fails_before_any_vm_stops(
    engine: Engine, machine_type: str, problem: str
) -> None:
    """Issue 17 §3.2: the provider stops a VM before setMachineType and leaves it TERMINATED when GCE
    refuses the type; the program refuses it in preview, and `up` fails before any VM is touched."""
    events_before = len(engine.plugins.instance_events())
    engine.cli("config", "set", "kthw:machineType", machine_type, "--stack", STACK)
    try:
        preview = engine.cli("preview", "--stack", STACK, check=False, timeout=UP_TIMEOUT)
        assert preview.returncode != 0 and problem in preview.stdout + preview.stderr, preview.stdout
        up = engine.cli("up", "--yes", "--skip-preview", "--stack", STACK, check=False, timeout=UP_TIMEOUT)
        assert up.returncode != 0 and problem in up.stdout + up.stderr, up.stdout
    finally:
        engine.cli("config", "set", "kthw:machineType", "e2-standard-2", "--stack", STACK)
    assert engine.plugins.instance_events()[events_before:] == []
    assert {v["status"] for v in _instances(engine).values()} == {"RUNNING"}


BUCKET_NAME = "kthw-engine-test-snapshots"


def test_emptying_the_backup_bucket_puts_the_controller_back_on_the_default_account(engine: Engine) -> None:
    """Issue 17 §3.3: service_account.email is Optional+Computed, so with none given the provider keeps
    the account the VM has; the program names the project's default compute account instead."""
    engine.cli("config", "set", "kthw:etcdBackupBucket", BUCKET_NAME, "--stack", STACK)
    engine.cli("up", "--yes", "--skip-preview", "--stack", STACK, timeout=UP_TIMEOUT)
    own = _instances(engine)["controller-0"]["serviceAccount"]["email"]
    assert own == f"kthw-controllers@{PROJECT}.iam.gserviceaccount.com"
    assert _instances(engine)["worker-0"]["serviceAccount"]["email"] == gcp.default_service_account(PROJECT)
    engine.cli("config", "rm", "kthw:etcdBackupBucket", "--stack", STACK)
    engine.cli("up", "--yes", "--skip-preview", "--stack", STACK, timeout=UP_TIMEOUT)
    controller = _instances(engine)["controller-0"]
    assert controller["serviceAccount"]["email"] == gcp.default_service_account(PROJECT)
    assert controller["status"] == "RUNNING"
    cloud = engine.plugins.cloud()
    assert not [k for k in cloud if k.startswith("serviceAccount/")]
    # retain_on_delete: the stack forgot the bucket, the project keeps it.
    assert f"bucket/{BUCKET_NAME}" in cloud


def test_a_kept_bucket_collides_until_it_is_imported(engine: Engine) -> None:
    """Issue 17 §3.4: bucket names are global; the bucket the last step kept makes a create fail, and
    kthw:etcdBackupBucketImport adopts it."""
    engine.cli("config", "set", "kthw:etcdBackupBucket", BUCKET_NAME, "--stack", STACK)
    failed = engine.cli("up", "--yes", "--skip-preview", "--stack", STACK, check=False, timeout=UP_TIMEOUT)
    assert failed.returncode != 0 and "you already own it" in failed.stdout + failed.stderr, failed.stdout
    engine.cli("config", "set", "kthw:etcdBackupBucketImport", "true", "--stack", STACK)
    engine.cli("up", "--yes", "--skip-preview", "--stack", STACK, timeout=UP_TIMEOUT)
    buckets = [r for r in engine.resources() if r["type"] == "gcp:storage/bucket:Bucket"]
    assert [b["id"] for b in buckets] == [BUCKET_NAME]
    email = _instances(engine)["controller-0"]["serviceAccount"]["email"]
    assert email == f"kthw-controllers@{PROJECT}.iam.gserviceaccount.com"
    # Once adopted, the switch changes nothing more.
    result = engine.cli("preview", "--expect-no-changes", "--stack", STACK, check=False, timeout=UP_TIMEOUT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_destroy_leaves_nothing_but_the_kept_bucket(engine: Engine) -> None:
    engine.cli("destroy", "--yes", "--skip-preview", "--stack", STACK, timeout=UP_TIMEOUT)
    assert [r["type"] for r in engine.resources()] == []
    assert list(engine.plugins.cloud()) == [f"bucket/{BUCKET_NAME}"]
