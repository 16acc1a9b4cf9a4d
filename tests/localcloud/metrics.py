"""Readings of a live local stack's metrics path: the aggregation layer, metrics-server's trust, the real pause.

What the smoke test's `kubectl top nodes` needs, link by link, read on the nodes themselves:
- the API server proxies /apis/metrics.k8s.io to metrics-server with the front-proxy client certificate,
  and metrics-server trusts it through the front-proxy CA the API server publishes; the aggregator's
  own discovery check goes the same way, so the APIService is Available only if that link holds;
- the API server verifies metrics-server's serving certificate against the APIService's caBundle;
- metrics-server verifies each kubelet's serving certificate against the cluster CA (no insecure flag);
- every pod sandbox runs the real pause, pulled from the local registry.
"""

from __future__ import annotations

import base64
import json
import time
from datetime import datetime
from typing import Any

from tests.localcloud import registry
from tests.localcloud.stack import LocalStack

KUBECTL = "sudo /usr/local/bin/kubectl --kubeconfig /var/lib/kubernetes/admin.kubeconfig"
API_SERVICE = "v1beta1.metrics.k8s.io"
CLUSTER_CA = "/var/lib/kubernetes/ca.pem"
FRONT_PROXY_CA = "/var/lib/kubernetes/front-proxy-ca.pem"
# How long the APIService may take to report Available once the smoke test has read the metrics API.
AVAILABLE_SECONDS = 90


def kubectl(stack: LocalStack, args: str) -> str:
    result = stack.ssh("controller-0", f"{KUBECTL} {args}")
    assert result.returncode == 0, f"kubectl {args}: {result.stderr}"
    return result.stdout


def kubectl_json(stack: LocalStack, args: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(kubectl(stack, f"{args} -o json"))
    return found


def node_file(stack: LocalStack, node: str, path: str) -> str:
    result = stack.ssh(node, f"sudo cat {path}")
    assert result.returncode == 0, result.stderr
    return result.stdout


def _when(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def wait_available(stack: LocalStack, seconds: int = AVAILABLE_SECONDS) -> dict[str, Any]:
    """The APIService, once its Available condition is True; fails with the aggregator's own reason and message."""
    deadline = time.monotonic() + seconds
    while True:
        api = kubectl_json(stack, f"get apiservice {API_SERVICE}")
        available = {c["type"]: c for c in api.get("status", {}).get("conditions", [])}.get("Available", {})
        if available.get("status") == "True":
            return api
        assert time.monotonic() < deadline, (
            f"APIService {API_SERVICE} is not Available after {seconds}s: "
            f"{available.get('reason')}: {available.get('message')}"
        )
        time.sleep(5)


def check_aggregation(stack: LocalStack) -> dict[str, Any]:
    """The metrics API through the aggregation layer, with every certificate on the way checked.

    The live links first (the aggregator's own check, then a read), then the configuration behind them.
    """
    api = wait_available(stack)
    # A read through the aggregator: metrics-server authorizes the admin the front proxy names (a caller it
    # did not trust would be system:anonymous, and refused).
    node = json.loads(kubectl(stack, "get --raw /apis/metrics.k8s.io/v1beta1/nodes/worker-0"))
    usage = node["usage"]
    assert usage["cpu"] and usage["memory"] and not usage["memory"].startswith("0"), node
    cluster_ca = node_file(stack, "controller-0", CLUSTER_CA)
    spec = api["spec"]
    # The API server checks metrics-server's serving certificate against the cluster CA, by the service's name.
    assert "insecureSkipTLSVerify" not in spec, spec
    assert base64.b64decode(spec["caBundle"]).decode().strip() == cluster_ca.strip()
    # What metrics-server trusts for the aggregator's identity headers: the front-proxy CA, and only its client.
    published = kubectl_json(stack, "-n kube-system get configmap extension-apiserver-authentication")["data"]
    front_proxy_ca = node_file(stack, "controller-0", FRONT_PROXY_CA)
    assert published["requestheader-client-ca-file"].strip() == front_proxy_ca.strip(), (
        "the API server publishes another request-header CA than the front-proxy CA"
    )
    assert front_proxy_ca.strip() != cluster_ca.strip()
    assert json.loads(published["requestheader-allowed-names"]) == ["front-proxy-client"]
    return api


def check_kubelet_trust(stack: LocalStack, images: registry.Images) -> dict[str, Any]:
    """metrics-server runs the image the stack vouched for and verifies kubelets against the cluster CA."""
    deployment = kubectl_json(stack, "-n kube-system get deployment metrics-server")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    digest = images.manifests[registry.METRICS_SERVER_IMAGE].digest
    assert container["image"] == f"{registry.METRICS_SERVER_IMAGE}@{digest}", container["image"]
    args = container["args"]
    assert "--kubelet-certificate-authority=/etc/metrics-server/ca.crt" in args, args
    assert not [a for a in args if "insecure" in a], args
    secret = kubectl_json(stack, "-n kube-system get secret metrics-server-certs")
    ca = base64.b64decode(secret["data"]["ca.crt"]).decode()
    assert ca.strip() == node_file(stack, "controller-0", CLUSTER_CA).strip()
    pods = kubectl_json(stack, "-n kube-system get pods -l k8s-app=metrics-server")["items"]
    (pod,) = pods
    (status,) = pod["status"]["containerStatuses"]
    assert status["ready"] and status["restartCount"] == 0, status
    assert status["imageID"].endswith(digest), status["imageID"]
    logs = kubectl(stack, "-n kube-system logs deployment/metrics-server")
    assert "x509" not in logs and "Failed to scrape" not in logs, logs[-3000:]
    return pod


def check_pause(stack: LocalStack, images: registry.Images, worker: str = "worker-0") -> None:
    """containerd's sandbox image is the real pause from the registry, running as 65535 in every pod sandbox."""
    listed = stack.ssh(worker, "sudo /usr/local/bin/crictl images -o json")
    assert listed.returncode == 0, listed.stderr
    digest = images.manifests[registry.PAUSE_IMAGE].digest
    pause = [i for i in json.loads(listed.stdout)["images"] if registry.PAUSE_IMAGE in i.get("repoTags", [])]
    assert len(pause) == 1 and f"registry.k8s.io/pause@{digest}" in pause[0]["repoDigests"], pause
    users = stack.ssh(worker, "ps -C pause -o user=,args=")
    rows = [line.split() for line in users.stdout.splitlines()]
    assert rows and all(row == ["65535", "/pause"] for row in rows), users.stdout


def first_scrape_figures(stack: LocalStack, pod: dict[str, Any], api: dict[str, Any]) -> dict[str, float]:
    """Seconds from metrics-server's start to its readiness (its /readyz waits for the first scrape of every
    node) and to the APIService's Available."""
    (status,) = pod["status"]["containerStatuses"]
    started = _when(status["state"]["running"]["startedAt"])
    ready = next(c for c in pod["status"]["conditions"] if c["type"] == "Ready")
    available = next(c for c in api["status"]["conditions"] if c["type"] == "Available")
    return {
        "metrics_server_start_to_ready_s": round(_when(ready["lastTransitionTime"]) - started, 1),
        "metrics_server_start_to_available_s": round(_when(available["lastTransitionTime"]) - started, 1),
    }
