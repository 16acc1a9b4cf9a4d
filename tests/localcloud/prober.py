"""What a client of the cluster sees while `pulumi up` changes it: one request every 200 ms per target.

A `Prober` asks the public address, from the admin's address inside the local cloud's namespace,
as the admin does (the admin kubeconfig's client certificate, the cluster CA), on a new TCP
connection each time, so every request is load-balanced afresh as a new client's would be. Each
answer is recorded with its time, latency and what went wrong; a request fails when it does not
come back 200 within the timeout. The report gives, per target, the requests, the failures, the
longest stretch without a good answer and the latency.
"""

from __future__ import annotations

import base64
import ctypes
import http.client
import itertools
import os
import ssl
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.localcloud import plane

_CLONE_NEWNET = 0x40000000
INTERVAL_SECONDS = 0.2
# A request that has no 200 within this many seconds counts as failed. The slowest success seen
# was 4.95 s (through the service proxy while the two pods moved between workers); the report
# keeps each target's slowest answer and longest gap, so a slow stretch shows even when nothing fails.
TIMEOUT_SECONDS = 10.0
API_PORT = 6443


@dataclass(frozen=True)
class Answer:
    """One request: when it started (monotonic), how long it took, and what went wrong (empty: a 200)."""

    at: float
    took: float
    error: str

    @property
    def ok(self) -> bool:
        return not self.error


def join_namespace(name: str) -> None:
    """Move the calling thread (only it: setns is per thread) into network namespace `name`."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns into {name}: {os.strerror(errno)}")
    finally:
        os.close(fd)


def admin_credentials(outputs: dict[str, Any], directory: Path) -> tuple[Path, Path, Path]:
    """(CA, client certificate, client key) files from the stack's admin kubeconfig, 0600 in `directory`."""
    kubeconfig = yaml.safe_load(str(outputs["admin_kubeconfig"]))
    user = kubeconfig["users"][0]["user"]
    directory.mkdir(parents=True, exist_ok=True)
    files = {
        "ca.pem": str(outputs["ca_certificate"]),
        "admin.pem": base64.b64decode(user["client-certificate-data"]).decode(),
        "admin-key.pem": base64.b64decode(user["client-key-data"]).decode(),
    }
    for name, content in files.items():
        (directory / name).touch(mode=0o600)
        (directory / name).write_text(content)
    return directory / "ca.pem", directory / "admin.pem", directory / "admin-key.pem"


def summary(answers: list[Answer], started: float, stopped: float) -> dict[str, Any]:
    """Requests, failures, the longest stretch without a good answer, and latency, for one target."""
    good = [a.at + a.took for a in answers if a.ok]
    # From the start of the window to the first good answer, between good answers, and to the end.
    edges = [started, *good, stopped]
    longest_gap = max((b - a for a, b in itertools.pairwise(edges)), default=stopped - started)
    took = sorted(a.took for a in answers if a.ok)
    failed = [a for a in answers if not a.ok]
    return {
        "requests": len(answers),
        "failed": len(failed),
        "longest_gap_s": round(longest_gap, 2),
        "latency_p50_ms": round(statistics.median(took) * 1000) if took else None,
        "latency_max_ms": round(took[-1] * 1000) if took else None,
        "failures": [f"{a.at - started:.1f}s: {a.error}" for a in failed[:10]],
    }


class Prober:
    """Sends GET `path` to https://ADDRESS:6443 every 200 ms per target, in threads inside the namespace."""

    def __init__(
        self,
        namespace: str,
        address: str,
        credentials: tuple[Path, Path, Path],
        targets: dict[str, str],
        *,
        interval: float = INTERVAL_SECONDS,
        timeout: float = TIMEOUT_SECONDS,
        source: str = plane.ADMIN_SOURCE,
    ) -> None:
        ca, cert, key = credentials
        self.context = ssl.create_default_context(cafile=str(ca))
        self.context.load_cert_chain(str(cert), str(key))
        # The API server's certificate names the public address as an IP SAN; http.client checks it.
        self.namespace, self.address, self.source = namespace, address, source
        self.targets, self.interval, self.timeout = targets, interval, timeout
        self.answers: dict[str, list[Answer]] = {name: [] for name in targets}
        self.started = self.stopped = 0.0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._probe, args=(n,), daemon=True) for n in targets]

    def ask(self, path: str) -> str:
        """One request on a new connection; "" for a 200, else what went wrong."""
        conn = http.client.HTTPSConnection(
            self.address, API_PORT, context=self.context, timeout=self.timeout, source_address=(self.source, 0)
        )
        try:
            conn.request("GET", path, headers={"Connection": "close"})
            response = conn.getresponse()
            body = response.read()
            if response.status != 200:
                return f"HTTP {response.status}: {body[:120]!r}"
            return ""
        except (OSError, http.client.HTTPException) as e:
            return f"{type(e).__name__}: {e}"
        finally:
            conn.close()

    def _probe(self, name: str) -> None:
        join_namespace(self.namespace)
        path = self.targets[name]
        while not self._stop.is_set():
            at = time.monotonic()
            error = self.ask(path)
            self.answers[name].append(Answer(at, time.monotonic() - at, error))
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - at)))

    def __enter__(self) -> Prober:
        self.started = time.monotonic()
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)
        self.stopped = time.monotonic()

    def report(self) -> dict[str, dict[str, Any]]:
        return {name: summary(answers, self.started, self.stopped) for name, answers in self.answers.items()}

    def failed(self) -> int:
        return sum(1 for answers in self.answers.values() for a in answers if not a.ok)


# --- what the prober asks for: the API itself, and a workload behind a Service --------------------

APP = "kthw-probe"
# Through the API server's service proxy on the public address: the prober needs no route to a
# node, and each request crosses the load balancer, an API server and the pod network.
SERVICE_PATH = f"/api/v1/namespaces/default/services/http:{APP}:80/proxy/"
TARGETS = {"version": "/version", "service": SERVICE_PATH}
# Two replicas, spread over the workers, that a drain may take down only one at a time; each keeps
# serving for a few seconds after its endpoint goes away (preStop), while the removal spreads.
PRE_STOP_SECONDS = 5


def manifest(image: str) -> list[dict[str, Any]]:
    """The probed workload: a Deployment of `image` (an HTTP server on :80), its Service and its budget."""
    labels = {"app": APP}
    pod = {
        "metadata": {"labels": labels},
        "spec": {
            "affinity": {
                "podAntiAffinity": {
                    "preferredDuringSchedulingIgnoredDuringExecution": [
                        {
                            "weight": 100,
                            "podAffinityTerm": {
                                "labelSelector": {"matchLabels": labels},
                                "topologyKey": "kubernetes.io/hostname",
                            },
                        }
                    ]
                }
            },
            "containers": [
                {
                    "name": "web",
                    "image": image,
                    "ports": [{"containerPort": 80}],
                    # 5 s to answer, not the default 1 s: once, with both replicas on one TCG
                    # worker (the other drained) and a second test process on the cores, the
                    # Service had no ready endpoint for 1.4 s before that worker's turn began,
                    # which we read as three missed 1 s probes, not as the upgrade's doing.
                    "readinessProbe": {"httpGet": {"path": "/", "port": 80}, "periodSeconds": 2, "timeoutSeconds": 5},
                    "lifecycle": {"preStop": {"sleep": {"seconds": PRE_STOP_SECONDS}}},
                }
            ],
        },
    }
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": APP, "namespace": "default"},
            "spec": {"replicas": 2, "selector": {"matchLabels": labels}, "template": pod},
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": APP, "namespace": "default"},
            "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 80}]},
        },
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": APP, "namespace": "default"},
            "spec": {"minAvailable": 1, "selector": {"matchLabels": labels}},
        },
    ]


def turns(commands: list[dict[str, Any]], since_ns: int, nodes: list[str]) -> dict[str, dict[str, float]]:
    """Per node, from the command record of one update: when its steps ran (seconds from `since_ns`).

    A controller's turn runs from its first control-plane restart to the end of its in-service
    step; a worker's from its drain (which includes the wait for a slot) to its uncordon, with the
    time it was out (drained, restarted, back) counted from the later of its drain's start and the
    previous worker's uncordon.
    """
    found: dict[str, dict[str, float]] = {}
    runs = [c for c in commands if c["at"] >= since_ns]
    for node in nodes:
        prefix = f"kthw-{node}-control-plane-" if "controller" in node else f"kthw-{node}-bootstrap-"
        mine = [c for c in runs if c["resource"].startswith(prefix) and not c["resource"].endswith("-binaries")]
        if not mine:
            continue
        steps = {c["resource"].removeprefix(prefix): c for c in mine}
        start = min(c["at"] for c in mine)
        end = max(c["end"] for c in mine)
        found[node] = {
            "start_s": round((start - since_ns) / 1e9, 1),
            "end_s": round((end - since_ns) / 1e9, 1),
            "took_s": round((end - start) / 1e9, 1),
            **{f"{step}_end_s": round((c["end"] - since_ns) / 1e9, 1) for step, c in steps.items()},
            **{f"{step}_start_s": round((c["at"] - since_ns) / 1e9, 1) for step, c in steps.items()},
        }
    workers = sorted((n for n in found if "worker" in n), key=lambda n: found[n].get("drain_end_s", 0.0))
    previous_out = 0.0
    for node in workers:
        turn = found[node]
        if "uncordon_end_s" in turn and "drain_start_s" in turn:
            began = max(turn["drain_start_s"], previous_out)
            turn["out_s"] = round(turn["uncordon_end_s"] - began, 1)
            previous_out = turn["uncordon_end_s"]
    return found
