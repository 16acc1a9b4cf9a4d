"""The 3+3 shape on the local cloud: etcd quorum across three controllers, three API servers behind the proxy.

Scenario 1 of issue 13 on the highly available shape: `pulumi up` from nothing to the program's own
smoke test, then destroy. Controllers come up one after another (each waits for the previous
member to be healthy and caught up) while the three workers, qemu VMs, boot and bootstrap in
parallel with them.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from components import versions
from tests.localcloud import plane
from tests.localcloud.image import Image
from tests.localcloud.services import Services, base_config, print_timeline, smoke_output
from tests.localcloud.stack import LocalStack
from tests.localcloud.vm import Accel

pytestmark = pytest.mark.localcloud

KUBECTL = "sudo /usr/local/bin/kubectl --kubeconfig /var/lib/kubernetes/admin.kubeconfig"
ETCDCTL = (
    "sudo /usr/local/bin/etcdctl --cacert=/etc/etcd/ca.pem --cert=/etc/etcd/kubernetes.pem"
    " --key=/etc/etcd/kubernetes-key.pem"
)
MEMBERS = ("10.240.0.10", "10.240.0.11", "10.240.0.12")


@pytest.fixture(scope="module")
def large(
    services: Services, base_image: Image, accel: Accel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalStack]:
    config = base_config(3, 3, services.current, services)
    stack = LocalStack.create("ha", tmp_path_factory.mktemp("ha"), services.namespace, base_image, accel, config)
    try:
        yield stack
    finally:
        stack.cleanup()


def test_up_3x3_ends_with_the_smoke_test_passing(large: LocalStack, figures: dict[str, object]) -> None:
    large.up("up_3+3")
    print_timeline(large, "3+3 up", figures)
    out = smoke_output(large)
    ready_lines = [f"nodes: worker-{i} is Ready" for i in range(3)]
    for check in (*ready_lines, "encryption:", "deployment:", "dns:", "audit:", f"serves v{versions.KUBERNETES}"):
        assert check in out, out
    nodes = large.nodes()
    assert sorted(nodes) == [f"{role}-{i}" for role in ("controller", "worker") for i in range(3)]

    members = large.ssh("controller-0", f"{ETCDCTL} --endpoints=https://127.0.0.1:2379 member list -w simple")
    started = sorted(line.split(", ")[2] for line in members.stdout.splitlines() if ", started, " in line)
    assert started == ["controller-0", "controller-1", "controller-2"], members
    endpoints = ",".join(f"https://{ip}:2379" for ip in MEMBERS)
    health = large.ssh("controller-1", f"{ETCDCTL} --endpoints={endpoints} endpoint health")
    healthy = {line.split("//")[1].split(":")[0] for line in health.stdout.splitlines() if " is healthy" in line}
    assert health.returncode == 0 and healthy == set(MEMBERS), health

    # Every API server registers its own address as an endpoint of the kubernetes service.
    api = large.ssh("controller-2", f"{KUBECTL} get endpoints kubernetes -o jsonpath='{{.subsets[*].addresses[*].ip}}'")
    assert sorted(api.stdout.split()) == list(MEMBERS), api
    ready = large.ssh(
        "controller-0",
        f"{KUBECTL} get nodes -o jsonpath='{{range .items[*]}}{{.metadata.name}}="
        '{.status.conditions[?(@.type=="Ready")].status} {end}\'',
    )
    assert sorted(ready.stdout.split()) == ["worker-0=True", "worker-1=True", "worker-2=True"], ready


def test_destroy_3x3_leaves_nothing_behind(large: LocalStack, figures: dict[str, object]) -> None:
    large.destroy()
    figures[f"{large.name}_timings"] = large.timings
    assert large.nodes() == {}
    assert large.installed.cloud() == {}
    assert plane.leftovers(large.namespace.name) == []
