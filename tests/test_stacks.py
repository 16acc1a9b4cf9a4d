"""The project file declares the contract, and the example stack files evaluate cleanly."""

from __future__ import annotations

import json

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


def cli_config(stack: str) -> dict[str, str]:
    """The config the Pulumi CLI hands the program for a stack file (its workspace's mergeConfig).

    Stack values first, then each declared key's value or default; a declared key of the project's
    namespace with neither, and no stack value, is required: the CLI stops before running anything.
    """
    values = stack_config(stack)
    missing = []
    for key, spec in PROJECT["config"].items():
        full = key if ":" in key else f"kthw:{key}"
        if full in values:
            continue
        fill = spec.get("default", spec.get("value"))
        if fill is None:  # the CLI's test: Default != nil || Value != nil
            missing.append(full)
            continue
        values[full] = fill if isinstance(fill, str) else json.dumps(fill)
    if missing:
        pytest.fail(f"Stack {stack!r} is missing configuration values: {', '.join(sorted(missing))}")
    return values


def test_every_declared_key_has_type_description_and_default() -> None:
    """The CLI refuses to run a stack that leaves a declared key without a default unset."""
    declared = PROJECT["config"]
    assert set(declared) >= CONTRACT
    for key, spec in declared.items():
        assert spec["type"] in {"string", "integer", "boolean", "array", "object"}, key
        assert len(spec["description"]) > 10, key
        assert spec.get("default") is not None, f"{key}: no default, so the CLI requires every stack to set it"


def test_every_declared_key_is_read_and_checked_by_the_program() -> None:
    """Pulumi.yaml is the list of keys: each one declared there reaches load(), which refuses a bad value."""
    assert set(config.declared_keys()) == set(PROJECT["config"])
    for key in PROJECT["config"]:
        with pytest.raises(config.ConfigErrors) as caught:
            config.load({key: "!!"}, {"gcp:region": "us-west1", "gcp:zone": "us-west1-c"})
        assert [p.split(" = ")[0] for p in caught.value.problems] == [f"kthw:{key}"], caught.value.problems


def test_declared_defaults_are_the_programs_defaults() -> None:
    """`pulumi up` fills in Pulumi.yaml's defaults; they must mean what the program assumes."""
    declared = {k: v["default"] for k, v in PROJECT["config"].items()}
    from_yaml = config.load(declared, {"gcp:region": "us-west1", "gcp:zone": "us-west1-c"})
    from_code = config.load({}, {"gcp:region": "us-west1", "gcp:zone": "us-west1-c"})
    assert from_yaml == from_code
    assert from_yaml.binary_mirror is None and from_yaml.workers[0].machine_type == "e2-standard-2"


@pytest.mark.parametrize(("stack", "controllers", "workers"), [("dev", 1, 1), ("ha", 3, 3)])
def test_example_stack_evaluates(stack: str, controllers: int, workers: int) -> None:
    values = cli_config(stack)
    assert values["gcp:project"] == config.PROJECT_PLACEHOLDER and values["gcp:region"] and values["gcp:zone"]
    assert values["kthw:binaryMirror"] == "" and values["kthw:workerMachineType"] == ""
    # as after the README's `pulumi config set gcp:project ...`
    recording = run_program({**values, "gcp:project": "my-kthw-project"})
    vms = [r.inputs["name"] for r in recording.of_type("gcp:compute/instance:Instance")]
    assert sorted(vms) == [f"controller-{i}" for i in range(controllers)] + [f"worker-{i}" for i in range(workers)]
    assert recording.warnings == []
    assert len(recording.outputs["workers"]) == workers


def test_stack_list_values_reach_the_program_as_json() -> None:
    assert json.loads(stack_config("ha")["kthw:adminSourceRanges"]) == ["0.0.0.0/0"]


def test_the_placeholder_project_is_refused_before_anything_is_created() -> None:
    with pytest.raises(config.ConfigErrors, match="gcp:project = 'your-gcp-project' is invalid: your own project"):
        run_program(stack_config("dev"))


def test_docs_error_example_is_the_real_output() -> None:
    """docs/configuration.md's `pulumi config set` lines, loaded as the CLI hands them over, give its example."""
    docs = (ROOT / "docs" / "configuration.md").read_text()
    section = docs.split("Bad values and unknown keys stop the program", 1)[1]
    commands, output = (block.split("\n", 1)[1] for block in section.split("```")[1:4:2])
    values = {}
    for line in commands.strip().splitlines():
        key, value = line.removeprefix("pulumi config set kthw:").split()
        values[key] = value
    assert values, commands
    with pytest.raises(config.ConfigErrors) as caught:
        config.load(values, {"gcp:region": "us-west1", "gcp:zone": "us-west1-c"})
    assert caught.value.problems == output.strip().splitlines()
