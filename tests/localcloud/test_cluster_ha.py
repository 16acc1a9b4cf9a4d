"""The highly available shape on the local cloud: day one, then day two without an outage.

Three controllers (etcd quorum, three API servers behind the load balancer) and two workers, in
file order on one stack:

1. `pulumi up` from nothing, at Kubernetes 1.36.3, to the program's own smoke test. Controllers come
   up one after another (each waits for the previous member to be healthy and caught up) while the
   workers, qemu VMs, boot and bootstrap in parallel with them.
2. The patch bump to 1.36.4 while a prober sends a request every 200 ms to the public /version and
   to a two-replica Deployment with a PodDisruptionBudget behind a Service (through the API
   server's service proxy on the public address): no request may fail. Controllers restart one at
   a time, each back in the pool before the next; workers one at a time, drained first.
3. A containerd bump (2.3.4 -> 2.3.5) restarts containerd on the workers only, each drained first.
4. `pulumi destroy` leaves nothing.

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
from tests.localcloud import mirror, plane, prober
from tests.localcloud.image import Image
from tests.localcloud.registry import NGINX_IMAGE
from tests.localcloud.services import MIRROR_URL, Services, base_config, print_timeline, smoke_output
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
    for check in (*ready_lines, "encryption:", "deployment:", "dns:", "audit:", served):
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


def test_patch_bump_drops_no_request(ha: LocalStack, services: Services, figures: dict[str, object]) -> None:
    manifest = json.dumps({"apiVersion": "v1", "kind": "List", "items": prober.manifest(NGINX_IMAGE)})
    kubectl(ha, f"apply -f - <<'EOF'\n{manifest}\nEOF")
    kubectl(ha, f"rollout status deployment/{prober.APP} --timeout=300s", timeout=330)
    spread = kubectl(ha, f"get pods -l app={prober.APP} -o jsonpath='{{.items[*].spec.nodeName}}'")
    before = ha.service_starts()

    bumped = {**ha.config, **{f"kthw:{k}": v for k, v in services.current.config(MIRROR_URL).items()}}
    probe, since = probed_update(ha, bumped, "up_patch_bump")
    report = probe.report()
    nodes = prober.turns(runs_since(ha, since), since, CONTROLLERS + WORKERS)
    figures["ha_patch_bump"] = {"probe": report, "turns": nodes, "pods_before": spread.split()}
    print(f"\n--- 3+2 patch bump: prober ---\n{json.dumps(report, indent=2)}")
    print(f"--- 3+2 patch bump: turns (s from the start of `up`) ---\n{json.dumps(nodes, indent=2)}")
    hosts = {n["external_ip"]: name for name, n in ha.nodes().items()}
    print(format_timeline([e for e in ha.timeline() if e["at"] >= since], hosts))

    # Every service that runs the new version restarted, exactly once, on every node.
    after = ha.service_starts()
    for node in CONTROLLERS:
        for unit in ("kube-apiserver", "kube-controller-manager", "kube-scheduler"):
            assert after[node][unit] != before[node][unit], (node, unit)
        assert after[node]["etcd"] == before[node]["etcd"], node
    for node in WORKERS:
        assert after[node]["kubelet"] != before[node]["kubelet"], node
        assert after[node]["containerd"] == before[node]["containerd"], node
    # One controller at a time, each back in the pool before the next restarts anything.
    for previous, current in itertools.pairwise(CONTROLLERS):
        assert nodes[current]["kube-apiserver_start_s"] >= nodes[previous]["in-service_end_s"], nodes
    # Workers after every controller (no kubelet newer than an API server), one at a time, drained first.
    last_controller = max(nodes[c]["in-service_end_s"] for c in CONTROLLERS)
    first, second = sorted(WORKERS, key=lambda w: nodes[w]["uncordon_end_s"])
    assert nodes[first]["kubelet_start_s"] >= max(nodes[first]["drain_end_s"], last_controller), nodes
    assert nodes[second]["drain_end_s"] >= nodes[first]["uncordon_end_s"], nodes
    drains = step_outputs(ha, "-bootstrap-drain")
    assert all("cordoned and drained" in out for out in drains.values()), drains
    assert kubectl(ha, "get nodes -o jsonpath='{.items[*].spec.unschedulable}'").strip() == ""
    # The goal: not one request failed.
    assert probe.failed() == 0, report
    assert f"serves v{versions.KUBERNETES}" in smoke_output(ha)


def test_containerd_bump_restarts_it_on_drained_workers_only(
    ha: LocalStack, services: Services, figures: dict[str, object]
) -> None:
    started = time.monotonic()
    # The mirror serves the next containerd release too (its own upstream build).
    newer = mirror.build_mirror(services.mirror_root, containerd_version=build.NEXT_CONTAINERD)
    figures["containerd_next_mirror_seconds"] = round(time.monotonic() - started, 1)
    before = ha.service_starts()
    bumped = {**ha.config, **{f"kthw:{k}": v for k, v in newer.config(MIRROR_URL).items()}}
    assert bumped["kthw:containerdVersion"] == build.NEXT_CONTAINERD
    probe, since = probed_update(ha, bumped, "up_containerd_bump")
    report = probe.report()
    nodes = prober.turns(runs_since(ha, since), since, CONTROLLERS + WORKERS)
    figures["ha_containerd_bump"] = {"probe": report, "turns": nodes}
    print(f"\n--- 3+2 containerd bump: prober ---\n{json.dumps(report, indent=2)}")
    print(f"--- 3+2 containerd bump: turns ---\n{json.dumps(nodes, indent=2)}")

    after = ha.service_starts()
    # Controllers: nothing restarted, no step of theirs ran.
    assert {n: after[n] for n in CONTROLLERS} == {n: before[n] for n in CONTROLLERS}
    assert not [n for n in CONTROLLERS if n in nodes], nodes
    for node in WORKERS:
        assert after[node]["containerd"] != before[node]["containerd"], node
        # kubelet.service Requires= containerd, so systemd restarts it with containerd; kube-proxy stays.
        assert after[node]["kube-proxy"] == before[node]["kube-proxy"], node
        # containerd restarted only once its node was drained, and the node came back after.
        assert nodes[node]["containerd_start_s"] >= nodes[node]["drain_end_s"], nodes
        assert nodes[node]["uncordon_start_s"] >= nodes[node]["ready_end_s"], nodes
        version = ha.ssh(node, "/usr/local/bin/containerd --version")
        assert f"v{build.NEXT_CONTAINERD}" in version.stdout, version
    first, second = sorted(WORKERS, key=lambda w: nodes[w]["uncordon_end_s"])
    assert nodes[second]["drain_end_s"] >= nodes[first]["uncordon_end_s"], nodes
    # No pod of the probed workload on a worker while its containerd restarted: each drain said so,
    # and the budget kept one replica serving throughout.
    drains = step_outputs(ha, "-bootstrap-drain")
    assert all("cordoned and drained" in out for out in drains.values()), drains
    assert probe.failed() == 0, report
    placed = kubectl(ha, f"get pods -l app={prober.APP} -o jsonpath='{{.items[*].status.phase}}'")
    assert placed.split() == ["Running", "Running"], placed


def test_destroy_3x2_leaves_nothing_behind(ha: LocalStack, figures: dict[str, object]) -> None:
    ha.destroy()
    figures[f"{ha.name}_timings"] = ha.timings
    assert ha.nodes() == {}
    assert ha.installed.cloud() == {}
    assert plane.leftovers(ha.namespace.name) == []
