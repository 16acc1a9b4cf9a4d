"""Trust and scale: no-op re-runs, small scaling diffs, and a secrets audit over everything registered."""

from __future__ import annotations

import base64
import io
import json
import tarfile
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness import Recording, cached, diff, longest_chain, run_program

HA = {"controllerCount": "3", "workerCount": "3"}
COMMAND = "command:remote:Command"


def fingerprint(recording: Recording) -> list[tuple[str, str, str, list[str], list[str]]]:
    return sorted(
        (r.type, r.name, json.dumps(r.inputs, sort_keys=True), sorted(r.depends_on), sorted(r.secret_paths))
        for r in recording.resources
    )


def test_two_evaluations_register_identical_resources() -> None:
    first, second = run_program(HA), run_program(HA)
    assert len(first.resources) > 50
    assert fingerprint(first) == fingerprint(second)
    assert first.outputs == second.outputs


def test_preview_and_update_register_the_same_resources(ha: Recording) -> None:
    assert sorted(r.name for r in cached(HA, preview=True).resources) == sorted(r.name for r in ha.resources)


def test_adding_a_worker_only_adds(ha: Recording) -> None:
    bigger = cached({**HA, "workerCount": "4"})
    added, removed, changed = diff(ha, bigger)
    assert removed == set()
    # The smoke test names every node it checks; it is meant to run again on a new node set.
    assert {n for n in changed if "-smoke-test-" not in n} == set()
    assert {n for n in added if not n.startswith("kthw-worker-3")} == {
        "kthw-network-route-worker-3",
        "kthw-api-frontend-allow-api-from-worker-3",
        "kthw-pki-worker-3-key",
        "kthw-pki-worker-3-csr",
        "kthw-pki-worker-3-cert",
    }


def test_removing_a_worker_only_removes(ha: Recording) -> None:
    bigger = cached({**HA, "workerCount": "4"})
    added, removed, changed = diff(bigger, ha)
    assert added == set()
    assert {n for n in changed if "-smoke-test-" not in n} == set()
    assert removed and all("worker-3" in n for n in removed), removed


def test_kubernetes_version_changes_only_install_steps(ha: Recording) -> None:
    upgraded = cached({**HA, "kubernetesVersion": "1.36.5"})
    added, removed, changed = diff(ha, upgraded)
    assert added == removed == set()
    types = {r.name: r.type for r in ha.resources}
    assert changed and {types[n] for n in changed} == {COMMAND}
    # etcd, containerd and the gates do not care about the Kubernetes version
    assert not [n for n in changed if n.endswith(("-etcd-etcd", "-containerd", "-ssh-ready"))]
    assert {"kthw-controller-0-control-plane-binaries", "kthw-worker-2-bootstrap-binaries"} <= changed
    assert {"kthw-controller-0-control-plane-kube-apiserver", "kthw-worker-2-bootstrap-kubelet"} <= changed


def test_a_containerd_bump_runs_again_on_the_workers_only(ha: Recording) -> None:
    """What a containerd bump re-runs: each worker's turn around its containerd, and no controller step.

    The local cloud's day-two bump changes Kubernetes and containerd in one update; this is the
    containerd half alone.
    """
    bumped = cached({**HA, "containerdVersion": "2.3.5"})
    added, removed, changed = diff(ha, bumped)
    assert added == removed == set()
    turn = ("binaries", "drain", "containerd", "ready", "uncordon")
    assert changed == {f"kthw-worker-{i}-bootstrap-{step}" for i in range(3) for step in turn}


def test_admin_source_ranges_change_only_the_external_firewall(ha: Recording) -> None:
    narrowed = cached({**HA, "adminSourceRanges": '["198.51.100.0/24"]'})
    assert diff(ha, narrowed) == (set(), set(), {"kthw-network-allow-external"})


def test_controller_count_reissues_the_api_server_certificate(ha: Recording) -> None:
    bigger = cached({**HA, "controllerCount": "5"})
    _, _, changed = diff(ha, bigger)
    assert "kthw-pki-kubernetes-csr" in changed
    assert not [n for n in changed if n.endswith("-instance") or n.startswith("kthw-pki-ca")]


def test_cert_rotation_reissues_leaves_but_not_the_ca(ha: Recording) -> None:
    rotated = cached({**HA, "certRotation": "1"})
    assert diff(ha, rotated) == (set(), set(), set())  # inputs are unchanged: the trigger replaces
    triggers = {r.name: r.options["replacement_trigger"] for r in rotated.resources}
    before = {r.name: r.options["replacement_trigger"] for r in ha.resources}
    rotated_names = {n for n in triggers if triggers[n] != before.get(n)}
    assert "kthw-pki-admin-cert" in rotated_names
    assert "kthw-pki-worker-2-cert" in rotated_names
    assert not [n for n in rotated_names if n.startswith("kthw-pki-ca")]


def test_no_worker_waits_for_another_worker(ha: Recording) -> None:
    for r in ha.resources:
        for i in range(3):
            if f"worker-{i}" not in r.name:
                continue
            others = {f"worker-{j}" for j in range(3)} - {f"worker-{i}"}
            waits_on = [a for a in ha.ancestors(r.name) if any(o in a for o in others)]
            assert waits_on == [], f"{r.name} waits for {waits_on}"


def test_dependency_depth_does_not_grow_with_workers() -> None:
    assert longest_chain(cached({"controllerCount": "3", "workerCount": "3"})) == longest_chain(
        cached({"controllerCount": "3", "workerCount": "12"})
    )


# --- secrets audit ---------------------------------------------------------------------------------


def strings(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from strings(v, f"{path}.{k}" if path else k)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from strings(v, f"{path}[{i}]")


def unbundle(text: str) -> str:
    """The files inside a deploy step's stdin (a base64 tar), or "" when stdin is something else."""
    try:
        with tarfile.open(fileobj=io.BytesIO(base64.b64decode(text, validate=True))) as tar:
            return "\n".join(tar.extractfile(m).read().decode() for m in tar.getmembers() if m.isfile())  # type: ignore[union-attr]
    except (ValueError, tarfile.TarError):
        return ""


def sensitive(text: str, encryption_key: str) -> bool:
    return "PRIVATE KEY" in text or encryption_key in text or "client-key-data" in text


def encryption_key(recording: Recording) -> str:
    (random_bytes,) = recording.of_type("random:index/randomBytes:RandomBytes")
    key = random_bytes.outputs["base64"]
    assert len(key) == 44
    return str(key)


@pytest.mark.parametrize("preview", [False, True], ids=["update", "preview"])
def test_every_sensitive_input_is_secret(preview: bool) -> None:
    recording = cached(HA, preview=preview)
    key = encryption_key(cached(HA))
    found = 0
    for r in recording.resources:
        for path, text in strings(r.inputs):
            if sensitive(text, key) or (r.type == COMMAND and path == "stdin" and sensitive(unbundle(text), key)):
                found += 1
                assert path.split(".")[0].split("[")[0] in r.secret_paths, f"{r.name}.{path} is not secret"
    assert found > 10


def test_no_command_line_carries_key_material(ha: Recording) -> None:
    key = encryption_key(ha)
    for r in ha.of_type(COMMAND):
        for field in ("create", "update", "delete"):
            text = r.inputs.get(field) or ""
            assert not sensitive(text, key), f"{r.name}.{field} carries key material"
            assert "BEGIN CERTIFICATE" not in text, f"{r.name}.{field} carries a certificate: use stdin"


def test_commands_with_secret_stdin_log_nothing(ha: Recording) -> None:
    secret_stdin = [r for r in ha.of_type(COMMAND) if "stdin" in r.secret_paths]
    assert len(secret_stdin) > 10
    for r in secret_stdin:
        assert r.inputs["logging"] == "none", r.name
        assert {"stdout", "stderr"} <= set(r.options["additional_secret_outputs"]), r.name


def test_sensitive_stack_outputs_are_secret(ha: Recording) -> None:
    key = encryption_key(ha)
    for name, value in ha.outputs.items():
        if any(sensitive(text, key) for _, text in strings(value)):
            assert name in ha.secret_outputs, name
    assert {"admin_kubeconfig", "ssh_private_key"} <= ha.secret_outputs
    assert "ca_certificate" not in ha.secret_outputs
    assert "kubernetes_public_address" not in ha.secret_outputs


# --- the bootstrap graph ---------------------------------------------------------------------------


def test_every_step_on_a_node_waits_for_its_ssh_gate(ha: Recording) -> None:
    nodes = [f"controller-{i}" for i in range(3)] + [f"worker-{i}" for i in range(3)]
    for r in ha.of_type(COMMAND):
        if r.name.endswith("-ssh-ready"):
            continue
        host = r.inputs["connection"]["host"]
        (node,) = [
            n for n in nodes if ha.outputs["controllers" if "controller" in n else "workers"][n]["external_ip"] == host
        ]
        assert f"kthw-{node}-ssh-ready" in ha.ancestors(r.name), f"{r.name} does not wait for {node}'s gate"


def test_smoke_test_is_the_last_step(ha: Recording) -> None:
    last = ha.ancestors("kthw-smoke-test-public")
    commands = {r.name for r in ha.of_type(COMMAND)} - {"kthw-smoke-test-public"}
    assert commands <= last, sorted(commands - last)


def test_workers_start_after_every_control_plane_is_healthy(ha: Recording) -> None:
    for i in range(3):
        for step in ("kubelet", "kube-proxy"):
            waits = ha.ancestors(f"kthw-worker-{i}-bootstrap-{step}")
            assert {f"kthw-controller-{c}-control-plane-healthy" for c in range(3)} <= waits
            assert "kthw-api-frontend-forwarding-rule" in waits


def test_no_api_server_starts_before_its_etcd_member_is_ready(ha: Recording) -> None:
    for c in range(3):
        waits = ha.ancestors(f"kthw-controller-{c}-control-plane-kube-apiserver")
        assert f"kthw-controller-{c}-etcd-ready" in waits
    # Members (re)start one at a time: each after the previous one is healthy and caught up, and
    # never after a later one.
    for c in range(3):
        earlier = {f"kthw-controller-{m}-etcd-ready" for m in range(c)}
        later = {f"kthw-controller-{m}-etcd-etcd" for m in range(c + 1, 3)}
        waits = ha.ancestors(f"kthw-controller-{c}-etcd-etcd")
        assert earlier <= waits and not later & waits


# --- audit logging, the aggregation layer and metrics-server on an existing cluster -------------------

BARE = {**HA, "auditLevel": "off", "metricsServer": "false"}


def test_turning_on_audit_and_metrics_server_replaces_no_vm(ha: Recording) -> None:
    """From a cluster built without them, enabling both only adds resources and updates commands."""
    bare = cached(BARE)
    added, removed, changed = diff(bare, ha)
    assert removed == set()
    assert added == {
        "kthw-addons-metrics-server",
        "kthw-pki-metrics-server-key",
        "kthw-pki-metrics-server-csr",
        "kthw-pki-metrics-server-cert",
    }
    types = {r.name: r.type for r in ha.resources}
    assert {types[n] for n in changed} == {COMMAND}
    # Only the API servers (their policy and flags), their health checks and the smoke test (new checks,
    # and a new step it waits for) change.
    assert changed == {
        *(
            f"kthw-controller-{i}-control-plane-{step}"
            for i in range(3)
            for step in ("kube-apiserver", "kube-apiserver-ready", "healthy", "in-service")
        ),
        "kthw-smoke-test-cluster",
        "kthw-smoke-test-public",
    }
    instances = {r.name: r.inputs for r in ha.of_type("gcp:compute/instance:Instance")}
    assert len(instances) == 6
    assert instances == {r.name: r.inputs for r in bare.of_type("gcp:compute/instance:Instance")}
    for name in instances:
        assert bare.by_name(name).options == ha.by_name(name).options, name


def test_the_aggregation_layer_is_there_with_the_knobs_off() -> None:
    bare = cached(BARE)
    assert {"kthw-pki-front-proxy-ca", "kthw-pki-front-proxy-client-cert"} <= bare.names()
    assert not [n for n in bare.names() if "metrics-server" in n]
    unit = unbundle(bare.by_name("kthw-controller-0-control-plane-kube-apiserver").inputs["stdin"])
    assert "--enable-aggregator-routing=true" in unit and "--requestheader-client-ca-file=" in unit
    assert "--audit-" not in unit and "kind: Policy" not in unit


def test_smoke_test_waits_for_metrics_server(ha: Recording) -> None:
    assert "kthw-addons-metrics-server" in ha.ancestors("kthw-smoke-test-cluster")
    assert {f"kthw-worker-{i}-bootstrap-ready" for i in range(3)} <= ha.ancestors("kthw-addons-metrics-server")
