"""The prober's arithmetic: failures, the longest gap without a good answer, and each node's turn."""

from __future__ import annotations

from typing import Any

from tests.localcloud.prober import Answer, manifest, summary, turns


def test_a_clean_run_has_no_failure_and_a_gap_of_one_interval() -> None:
    answers = [Answer(at=10.0 + 0.2 * i, took=0.05, error="") for i in range(50)]
    found = summary(answers, started=10.0, stopped=20.0)
    assert found["requests"] == 50 and found["failed"] == 0 and found["failures"] == []
    # From the last answer (at 19.85) to the end of the window.
    assert found["longest_gap_s"] == 0.2
    assert found["latency_p50_ms"] == 50


def test_an_outage_is_counted_and_measured() -> None:
    answers = [Answer(at=float(i), took=0.1, error="") for i in range(5)]
    answers += [Answer(at=5.0 + i, took=1.0, error="ConnectionRefusedError: refused") for i in range(3)]
    answers += [Answer(at=8.0, took=0.1, error="")]
    found = summary(answers, started=0.0, stopped=9.0)
    assert found["failed"] == 3
    assert found["failures"][0] == "5.0s: ConnectionRefusedError: refused"
    # The last good answer before it ended at 4.1, the first after it at 8.1.
    assert found["longest_gap_s"] == 4.0


def _run(resource: str, start_s: float, end_s: float) -> dict[str, Any]:
    return {"resource": resource, "at": int(start_s * 1e9), "end": int(end_s * 1e9)}


def test_turns_per_node_and_the_time_a_worker_was_out() -> None:
    commands = [
        _run("kthw-controller-0-control-plane-kube-apiserver", 100, 130),
        _run("kthw-controller-0-control-plane-in-service", 140, 160),
        _run("kthw-worker-0-bootstrap-binaries", 100, 110),
        _run("kthw-worker-0-bootstrap-drain", 170, 180),
        _run("kthw-worker-0-bootstrap-uncordon", 220, 222),
        _run("kthw-worker-1-bootstrap-drain", 170, 230),
        _run("kthw-worker-1-bootstrap-uncordon", 270, 271),
        _run("kthw-worker-2-bootstrap-drain", 50, 60),  # an earlier update
    ]
    found = turns(commands, since_ns=int(100e9), nodes=["controller-0", "worker-0", "worker-1", "worker-2"])
    assert found["controller-0"]["took_s"] == 60.0
    assert found["controller-0"]["in-service_end_s"] == 60.0
    # The binaries step downloads while others work: it is not part of a worker's turn.
    assert found["worker-0"]["start_s"] == 70.0 and found["worker-0"]["out_s"] == 52.0
    # worker-1 waited for worker-0's slot: it was out from worker-0's uncordon on.
    assert found["worker-1"]["out_s"] == 49.0
    assert "worker-2" not in found


def test_the_probed_workload_survives_a_drain() -> None:
    deployment, service, budget = manifest("docker.io/library/nginx:1.28")
    assert deployment["spec"]["replicas"] == 2
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["lifecycle"]["preStop"]["sleep"]["seconds"] > 0
    assert "readinessProbe" in container
    assert budget["spec"]["minAvailable"] == 1
    assert service["spec"]["selector"] == budget["spec"]["selector"]["matchLabels"]
