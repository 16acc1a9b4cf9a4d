"""The whole Cluster's wiring: what the smoke test waits for and re-runs on, and what the CA depends on."""

from __future__ import annotations

import pytest

from tests.conftest import HA
from tests.harness import Recording, cached

SMOKE_STEPS = ("kthw-smoke-test-cluster", "kthw-smoke-test-public")


@pytest.mark.parametrize("step", SMOKE_STEPS)
def test_the_smoke_test_waits_for_every_worker_ready_step(ha: Recording, step: str) -> None:
    """Directly, not only through CoreDNS: each worker's ready and uncordon steps are the smoke test's dependencies."""
    smoke = ha.by_name(step)
    ready = {f"kthw-worker-{i}-bootstrap-{s}" for i in range(3) for s in ("ready", "uncordon")}
    assert {r.name for r in ha.resources if r.name.endswith(("-bootstrap-ready", "-bootstrap-uncordon"))} == ready
    assert ready <= smoke.depends_on, sorted(smoke.depends_on)


@pytest.mark.parametrize("step", SMOKE_STEPS)
def test_a_rebuilt_worker_re_runs_the_smoke_test(ha: Recording, step: str) -> None:
    """A rebuilt worker replaces its ready step (replace_with its gate), whose new id is a smoke-test trigger."""
    smoke = ha.by_name(step)
    for i in range(3):
        ready = ha.by_name(f"kthw-worker-{i}-bootstrap-ready")
        assert ready.options["replace_with"] == [f"kthw-worker-{i}-ssh-ready"]
        # The mock monitor gives every resource the id "<name>-id": the trigger is this worker's ready step's id.
        assert f"{ready.name}-id" in smoke.inputs["triggers"], smoke.inputs["triggers"]
    assert [t for t in smoke.inputs["triggers"] if str(t).startswith("worker-")] == ["worker-0", "worker-1", "worker-2"]


def test_the_smoke_test_is_last_on_every_worker_chain(ha: Recording) -> None:
    """Nothing but the public probe waits for the cluster check; it waits for every worker's every step."""
    ancestors = ha.ancestors("kthw-smoke-test-public")
    for i in range(3):
        steps = {r.name for r in ha.resources if r.name.startswith(f"kthw-worker-{i}-bootstrap-")}
        steps.discard(f"kthw-worker-{i}-bootstrap")  # the component itself
        assert steps and steps <= ancestors, sorted(steps - ancestors)
    assert "kthw-smoke-test-cluster" in ancestors


def ca_inputs(recording: Recording) -> dict[str, dict[str, object]]:
    return {r.name: r.inputs for r in recording.resources if r.name in {"kthw-pki-ca-key", "kthw-pki-ca"}}


def test_cert_validity_leaves_the_ca_alone(ha: Recording) -> None:
    """certValidityHours is the leaves' lifetime: a non-default one re-issues leaves, and the CA's inputs stay."""
    short = cached({**HA, "certValidityHours": "48"})
    before, after = ca_inputs(ha), ca_inputs(short)
    assert set(before) == {"kthw-pki-ca-key", "kthw-pki-ca"}
    assert after == before
    assert before["kthw-pki-ca"]["validityPeriodHours"] == 20 * 8760
    # ... while the setting did reach the leaves, so the comparison above is not vacuous.
    assert ha.by_name("kthw-pki-admin-cert").inputs["validityPeriodHours"] == 8760
    assert short.by_name("kthw-pki-admin-cert").inputs["validityPeriodHours"] == 48
