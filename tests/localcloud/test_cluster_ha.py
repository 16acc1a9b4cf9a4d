"""The highly available shape on the local cloud: day one, then day two without an outage.

Three controllers (etcd quorum, three API servers behind the load balancer) and two workers, in
file order on one stack:

1. `pulumi up` from nothing, at Kubernetes 1.36.3, to the program's own smoke test. Controllers come
   up one after another (each waits for the previous member to be healthy and caught up) while the
   workers, qemu VMs, boot and bootstrap in parallel with them.
2. The real metrics-server and pause behind the smoke test's `kubectl top nodes`, link by link.
3. A preview with no changes, then `up --refresh`, which changes nothing and restarts no service.
4. Day two: Kubernetes 1.36.3 -> 1.36.4 and containerd 2.3.4 -> 2.3.5 in one update, while a prober
   sends a request every 200 ms to the public /version and to a two-replica Deployment with a
   PodDisruptionBudget behind a Service (through the API server's service proxy on the public
   address): no request may fail. Controllers restart one at a time, each back in the pool before
   the next; workers one at a time after every controller, drained before containerd or the kubelet
   restarts. (That a containerd bump alone re-runs nothing on a controller is the unit tier's
   test_trust.py; one update with both keeps CI's time.)
5. `pulumi destroy` leaves nothing.

The figures (failed requests, the longest gap, each node's turn) are printed with -s and kept in
the tier's figures.json.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from components import versions
from tests.localcloud import metrics, mirror, plane, prober, registry
from tests.localcloud.image import Image
from tests.localcloud.services import (
    Services,
    base_config,
    mirror_keys,
    print_timeline,
    smoke_output,
    vms_and_certificates,
)
from tests.localcloud.stack import LocalStack, format_timeline
from tests.localcloud.vm import Accel
from tests.upstream import build

pytestmark = pytest.mark.localcloud

KUBECTL = "sudo /usr/local/bin/kubectl --kubeconfig /var/lib/kubernetes/admin.kubeconfig"
ETCDCTL = (
    "sudo /usr/local/bin/etcdctl --cacert=/etc/etcd/ca.pem --cert=/etc/etcd/kubernetes.pem"
    " --key=/etc/etcd/kubernetes-key.pem"
)
MEMBERS = ("10.240.0.10", "10.240.0.11", "10.240.0.12")
CONTROLLERS = [f"controller-{i}" for i in range(3)]
WORKERS = [f"worker-{i}" for i in range(2)]
# Seconds of probing before and after an update: the baseline, and what the update left behind.
SETTLE_SECONDS = 10


@pytest.fixture(scope="module")
def ha(
    services: Services, base_image: Image, accel: Accel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalStack]:
    config = base_config(3, 2, services.previous, services)
    stack = LocalStack.create("ha", tmp_path_factory.mktemp("ha"), services.namespace, base_image, accel, config)
    try:
        yield stack
    finally:
        stack.cleanup()


def kubectl(stack: LocalStack, args: str, timeout: float = 180) -> str:
    result = stack.ssh("controller-0", f"{KUBECTL} {args}", timeout=timeout)
    assert result.returncode == 0, result
    return result.stdout


def step_outputs(stack: LocalStack, suffix: str) -> dict[str, str]:
    """resource name -> stdout of every command whose name ends with `suffix`, from the state."""
    exported = json.loads(stack("stack", "export", "--show-secrets").stdout)
    return {
        r["urn"].rsplit("::", 1)[-1]: str((r.get("outputs") or {}).get("stdout") or "")
        for r in exported["deployment"]["resources"]
        if r["type"] == "command:remote:Command" and r["urn"].endswith(suffix)
    }


def runs_since(stack: LocalStack, since_ns: int) -> list[dict[str, Any]]:
    """The scripts an update ran, from the engine's event log, as `prober.turns` reads them."""
    return [
        {"resource": e["step"], "at": e["at"], "end": e["end"]}
        for e in stack.timeline()
        if e["step"] != "instance" and e["at"] >= since_ns
    ]


def probed_update(stack: LocalStack, config: dict[str, Any], label: str) -> tuple[prober.Prober, int]:
    """`pulumi up` of `config` while the prober runs; the prober and the update's start (ns)."""
    outputs = stack.outputs()
    credentials = prober.admin_credentials(outputs, stack.run_dir / "prober")
    address = str(outputs["kubernetes_public_address"])
    with prober.Prober(stack.namespace.name, address, credentials, prober.TARGETS) as probe:
        time.sleep(SETTLE_SECONDS)
        assert probe.failed() == 0, probe.report()  # the baseline: everything answers before the update
        stack.write_config(config)
        since = time.time_ns()
        stack.up(label)
        time.sleep(SETTLE_SECONDS)
    return probe, since


def test_up_3x2_ends_with_the_smoke_test_passing(ha: LocalStack, figures: dict[str, object]) -> None:
    ha.up("up_3+2")
    print_timeline(ha, "3+2 up", figures)
    out = smoke_output(ha)
    ready_lines = [f"nodes: {w} is Ready" for w in WORKERS]
    served = f"serves v{build.PREVIOUS_KUBERNETES}"
    for check in (
        *ready_lines,
        "encryption:",
        "deployment:",
        "dns:",
        "audit:",
        f"metrics: kubectl top nodes reports {' '.join(WORKERS)}",
        served,
    ):
        assert check in out, out
    assert sorted(ha.nodes()) == sorted(CONTROLLERS + WORKERS)

    members = ha.ssh("controller-0", f"{ETCDCTL} --endpoints=https://127.0.0.1:2379 member list -w simple")
    started = sorted(line.split(", ")[2] for line in members.stdout.splitlines() if ", started, " in line)
    assert started == CONTROLLERS, members
    endpoints = ",".join(f"https://{ip}:2379" for ip in MEMBERS)
    health = ha.ssh("controller-1", f"{ETCDCTL} --endpoints={endpoints} endpoint health")
    healthy = {line.split("//")[1].split(":")[0] for line in health.stdout.splitlines() if " is healthy" in line}
    assert health.returncode == 0 and healthy == set(MEMBERS), health
    # Every API server registers its own address as an endpoint of the kubernetes service.
    api = kubectl(ha, "get endpoints kubernetes -o jsonpath='{.subsets[*].addresses[*].ip}'")
    assert sorted(api.split()) == list(MEMBERS), api
    # A fresh cluster's workers were not drained: nothing ran on them yet.
    drains = step_outputs(ha, "-bootstrap-drain")
    assert sorted(drains) == [f"kthw-{w}-bootstrap-drain" for w in WORKERS]
    assert all("not registered yet" in out for out in drains.values()), drains


def test_metrics_come_through_the_aggregation_layer_from_verified_kubelets(
    ha: LocalStack, figures: dict[str, object]
) -> None:
    """The real metrics-server and pause behind the smoke test's `kubectl top nodes`, link by link."""
    images = registry.build_images()
    api = metrics.check_aggregation(ha)
    pod = metrics.check_kubelet_trust(ha, images)
    metrics.check_pause(ha, images, pod["spec"]["nodeName"])
    steps = {e["step"]: round(e["end_s"] - e["start_s"], 1) for e in ha.timeline() if e["op"] == "create"}
    figures["metrics_server_step_s"] = steps["kthw-addons-metrics-server"]
    figures.update(metrics.first_scrape_figures(ha, pod, api))
    print(f"\nmetrics-server: {', '.join(f'{k}={v}' for k, v in figures.items() if k.startswith('metrics_server'))}")


def test_preview_then_up_refresh_change_nothing_and_restart_nothing(ha: LocalStack) -> None:
    ha("preview", "--expect-no-changes")
    before = ha.service_starts()
    # Every service started once and never crashed: active, with no restart by systemd.
    assert all(state.startswith("active/0/") for units in before.values() for state in units.values()), before
    ha.up("up_refresh", "--refresh")
    ha("preview", "--expect-no-changes")
    assert ha.service_starts() == before


def test_a_kubernetes_and_containerd_bump_drops_no_request(
    ha: LocalStack, services: Services, figures: dict[str, object]
) -> None:
    manifest = json.dumps({"apiVersion": "v1", "kind": "List", "items": prober.manifest(registry.NGINX_IMAGE)})
    kubectl(ha, f"apply -f - <<'EOF'\n{manifest}\nEOF")
    kubectl(ha, f"rollout status deployment/{prober.APP} --timeout=300s", timeout=330)
    spread = kubectl(ha, f"get pods -l app={prober.APP} -o jsonpath='{{.items[*].spec.nodeName}}'")
    before = ha.service_starts()
    kept = vms_and_certificates(ha)
    # The mirror serves the current Kubernetes and the next containerd release (its own upstream build).
    newer = mirror.build_mirror(services.mirror_root, containerd_version=build.NEXT_CONTAINERD)
    bumped = {**ha.config, **mirror_keys(newer)}
    assert bumped["kthw:kubernetesVersion"] == versions.KUBERNETES != ha.config["kthw:kubernetesVersion"]
    # The stack so far ran the program's default containerd, so its file does not name one.
    assert "kthw:containerdVersion" not in ha.config
    assert bumped["kthw:containerdVersion"] == build.NEXT_CONTAINERD != versions.CONTAINERD

    probe, since = probed_update(ha, bumped, "up_day_two_bump")
    report = probe.report()
    nodes = prober.turns(runs_since(ha, since), since, CONTROLLERS + WORKERS)
    figures["ha_day_two_bump"] = {"probe": report, "turns": nodes, "pods_before": spread.split()}
    print(f"\n--- 3+2 day-two bump: prober ---\n{json.dumps(report, indent=2)}")
    print(f"--- 3+2 day-two bump: turns (s from the start of `up`) ---\n{json.dumps(nodes, indent=2)}")
    hosts = {n["external_ip"]: name for name, n in ha.nodes().items()}
    print(format_timeline([e for e in ha.timeline() if e["at"] >= since], hosts))

    # An upgrade in place: no VM, key or certificate was replaced.
    assert vms_and_certificates(ha) == kept
    # Every service that runs a new version restarted on every node; etcd did not.
    after = ha.service_starts()
    for node in CONTROLLERS:
        for unit in ("kube-apiserver", "kube-controller-manager", "kube-scheduler"):
            assert after[node][unit] != before[node][unit], (node, unit)
        assert after[node]["etcd"] == before[node]["etcd"], node
    for node in WORKERS:
        for unit in ("containerd", "kubelet", "kube-proxy"):
            assert after[node][unit] != before[node][unit], (node, unit)
        version = ha.ssh(node, "/usr/local/bin/containerd --version")
        assert f"v{build.NEXT_CONTAINERD}" in version.stdout, version
    # One controller at a time, each back in the pool before the next restarts anything.
    for previous, current in itertools.pairwise(CONTROLLERS):
        assert nodes[current]["kube-apiserver_start_s"] >= nodes[previous]["in-service_end_s"], nodes
    # Workers after every controller (no kubelet newer than an API server), one at a time: each
    # drained before containerd or the kubelet restarts, Ready again before it is uncordoned.
    last_controller = max(nodes[c]["in-service_end_s"] for c in CONTROLLERS)
    for node in WORKERS:
        turn = nodes[node]
        assert turn["drain_start_s"] >= last_controller, nodes
        assert min(turn["containerd_start_s"], turn["kubelet_start_s"]) >= turn["drain_end_s"], nodes
        assert turn["uncordon_start_s"] >= turn["ready_end_s"], nodes
    first, second = sorted(WORKERS, key=lambda w: nodes[w]["uncordon_end_s"])
    assert nodes[second]["drain_end_s"] >= nodes[first]["uncordon_end_s"], nodes
    drains = step_outputs(ha, "-bootstrap-drain")
    assert all("cordoned and drained" in out for out in drains.values()), drains
    assert kubectl(ha, "get nodes -o jsonpath='{.items[*].spec.unschedulable}'").strip() == ""
    placed = kubectl(ha, f"get pods -l app={prober.APP} -o jsonpath='{{.items[*].status.phase}}'")
    assert placed.split() == ["Running", "Running"], placed
    # The goal: not one request failed.
    assert probe.failed() == 0, report
    assert f"serves v{versions.KUBERNETES}" in smoke_output(ha)


def test_destroy_3x2_leaves_nothing_behind(ha: LocalStack, figures: dict[str, object]) -> None:
    ha.destroy()
    figures[f"{ha.name}_timings"] = ha.timings
    assert ha.nodes() == {}
    assert ha.installed.cloud() == {}
    assert plane.leftovers(ha.namespace.name) == []
