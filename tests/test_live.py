"""Live tier: a real `pulumi up` of a 1+1 cluster on Google Cloud, KTHW's checks, then `pulumi destroy`.

Runs only where it can: the Pulumi CLI on PATH, Google credentials, and KTHW_LIVE_PROJECT naming
the project to spend money in (a dev cluster costs a few cents for the ~15 minutes it lives).

    KTHW_LIVE_PROJECT=my-project venv/bin/python -m pytest -m live tests/test_live.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.tools import find_tool

ROOT = Path(__file__).resolve().parent.parent
ADC = Path.home() / ".config/gcloud/application_default_credentials.json"


def _missing() -> str | None:
    if shutil.which("pulumi") is None:
        return "the Pulumi CLI is not on PATH"
    if not (os.environ.get("GOOGLE_APPLICATION_CREDENTIALS") or os.environ.get("GOOGLE_CREDENTIALS") or ADC.exists()):
        return "no Google Cloud credentials (GOOGLE_APPLICATION_CREDENTIALS or application-default login)"
    if not os.environ.get("KTHW_LIVE_PROJECT"):
        return "KTHW_LIVE_PROJECT is not set to a GCP project to build the cluster in"
    return None


pytestmark = [pytest.mark.live, pytest.mark.skipif(_missing() is not None, reason=f"live tier: {_missing()}")]


def test_up_smoke_destroy() -> None:
    from pulumi import automation as auto

    stack_name = os.environ.get("KTHW_LIVE_STACK", "live-test")
    stack = auto.create_or_select_stack(stack_name=stack_name, work_dir=str(ROOT))
    stack.set_all_config(
        {
            "gcp:project": auto.ConfigValue(os.environ["KTHW_LIVE_PROJECT"]),
            "gcp:region": auto.ConfigValue(os.environ.get("KTHW_LIVE_REGION", "us-west1")),
            "gcp:zone": auto.ConfigValue(os.environ.get("KTHW_LIVE_ZONE", "us-west1-c")),
            "kthw:controllerCount": auto.ConfigValue("1"),
            "kthw:workerCount": auto.ConfigValue("1"),
            "kthw:machineType": auto.ConfigValue("e2-medium"),
        }
    )
    try:
        # The smoke test is the last resource: a successful up means KTHW ch. 13 passed.
        up = stack.up(on_output=print)
        assert up.summary.result == "succeeded"
        outputs = stack.outputs()
        assert outputs["admin_kubeconfig"].secret
        assert set(outputs["workers"].value) == {"worker-0"}

        # And from outside: the exported kubeconfig reaches the API through the load balancer.
        kubectl = find_tool("kubectl")
        if kubectl:
            with tempfile.NamedTemporaryFile("w", suffix=".kubeconfig") as kubeconfig:
                kubeconfig.write(outputs["admin_kubeconfig"].value)
                kubeconfig.flush()
                nodes = subprocess.run(
                    [kubectl, "--kubeconfig", kubeconfig.name, "get", "nodes", "-o", "name"],
                    capture_output=True,
                    text=True,
                    check=True,
                    timeout=60,
                ).stdout
            assert nodes.split() == ["node/worker-0"]

        # A second up with the same config changes nothing.
        again = stack.preview()
        assert set(again.change_summary) <= {"same"}, again.change_summary
    finally:
        stack.destroy(on_output=print)
        stack.workspace.remove_stack(stack_name)
