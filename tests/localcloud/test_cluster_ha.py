"""The highly available shape on the local cloud: three controllers and two workers, day one.

In file order on one stack:

1. `pulumi up` from nothing, at Kubernetes 1.36.3, to the program's own smoke test. Controllers come
   up one after another (each waits for the previous member to be healthy and caught up) while the
   workers, qemu VMs, boot and bootstrap in parallel with them.
2. `pulumi destroy` leaves nothing.

The day-two scenario of issue 18 (a patch bump under a 200 ms prober, a workers-only containerd
bump) passes on this tier but is not in CI, for time: run alone here it took 528 s and 338 s with
0 failed requests, which would put a cold `.ci/run` over its 70 minutes on this machine. It is
`git show 70da926:tests/localcloud/test_cluster_ha.py` (prober.py is its tool).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.localcloud import plane
from tests.localcloud.image import Image
from tests.localcloud.services import Services, base_config, print_timeline, smoke_output
from tests.localcloud.stack import LocalStack
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


def test_destroy_3x2_leaves_nothing_behind(ha: LocalStack, figures: dict[str, object]) -> None:
    ha.destroy()
    figures[f"{ha.name}_timings"] = ha.timings
    assert ha.nodes() == {}
    assert ha.installed.cloud() == {}
    assert plane.leftovers(ha.namespace.name) == []
