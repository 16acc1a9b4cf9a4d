"""The project file declares the contract, and the example stack files evaluate cleanly."""

from __future__ import annotations

import json

import pulumi
import pytest
import yaml

from components import config
from tests.harness import ROOT, run_program, stack_config

PROJECT = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
CONTRACT = {
    "controllerCount", "workerCount", "nodeCidr", "clusterCidr", "serviceCidr", "machineType", "image",
    "adminSourceRanges", "kubernetesVersion", "etcdVersion", "containerdVersion", "runcVersion", "cniVersion",
    "crictlVersion",
}  # fmt: skip


def test_project_name_and_runtime() -> None:
    assert PROJECT["name"] == "kthw"
    assert PROJECT["runtime"]["name"] == "python"
    assert PROJECT["runtime"]["options"]["virtualenv"] == "venv"


def test_every_key_the_program_reads_is_declared_with_type_and_description() -> None:
    declared = PROJECT["config"]
    assert set(declared) == set(config.KEYS)
    assert set(declared) >= CONTRACT
    for key, spec in declared.items():
        assert spec["type"] in {"string", "integer", "boolean", "array"}, key
        assert len(spec["description"]) > 10, key


def test_declared_defaults_are_the_programs_defaults() -> None:
    """`pulumi up` fills in Pulumi.yaml's defaults; they must mean what the program assumes."""
    declared = {k: v["default"] for k, v in PROJECT["config"].items() if "default" in v}
    from_yaml = config.load(declared, {"gcp:region": "us-west1", "gcp:zone": "us-west1-c"})
    from_code = config.load({}, {"gcp:region": "us-west1", "gcp:zone": "us-west1-c"})
    assert from_yaml == from_code
    # The CLI refuses `pulumi up` when a declared key has no default and no value ("Stack 'dev' is missing
    # configuration values ..."): every key, optional ones included, declares a default ("" means unset).
    assert set(PROJECT["config"]) == set(declared)
    assert {k for k, v in declared.items() if v == ""} == {"controllerMachineType", "workerMachineType", "binaryMirror"}


@pytest.mark.parametrize(("stack", "controllers", "workers"), [("dev", 1, 1), ("ha", 3, 3)])
def test_example_stack_evaluates(stack: str, controllers: int, workers: int) -> None:
    values = stack_config(stack)
    assert values["gcp:project"] == config.PROJECT_PLACEHOLDER and values["gcp:region"] and values["gcp:zone"]
    # as after the README's `pulumi config set gcp:project ...`
    recording = run_program({**values, "gcp:project": "my-kthw-project"})
    vms = [r.inputs["name"] for r in recording.of_type("gcp:compute/instance:Instance")]
    assert sorted(vms) == [f"controller-{i}" for i in range(controllers)] + [f"worker-{i}" for i in range(workers)]
    assert recording.warnings == []
    assert len(recording.outputs["workers"]) == workers


def test_stack_list_values_reach_the_program_as_json() -> None:
    assert json.loads(stack_config("ha")["kthw:adminSourceRanges"]) == ["0.0.0.0/0"]


def test_the_placeholder_project_is_refused_before_anything_is_created() -> None:
    with pytest.raises(pulumi.RunError, match="gcp:project = 'your-gcp-project' is invalid: your own project"):
        run_program(stack_config("dev"))
