"""The quick run, `pytest -m "not slow"`: the unit and artifact tiers alone, never a test that needs a build."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests import upstream
from tests.harness import ROOT

# A test file of each tier, and files that mix quick tests with ones that need a build.
FILES = (
    "tests/test_config.py",
    "tests/test_etcd.py",
    "tests/test_etcd_lifecycle.py",
    "tests/test_worker.py",
    "tests/test_real_control_plane.py",
    "tests/test_real_cli.py",
    "tests/test_live.py",
    "tests/engine/test_providers.py",
    "tests/localcloud/test_plane.py",
)
# Collects FILES as a plain `pytest` would and prints each test's markers (parameters dropped).
COLLECT = """
import json, sys
import pytest

class Markers:
    def pytest_collection_finish(self, session):
        found = {}
        for item in session.items:
            found.setdefault(item.nodeid.split("[")[0], set()).update(m.name for m in item.iter_markers())
        print("MARKERS " + json.dumps({k: sorted(v) for k, v in found.items()}))

sys.exit(pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", *sys.argv[1:]], plugins=[Markers()]))
"""


@pytest.fixture(scope="module")
def markers() -> dict[str, set[str]]:
    """Every test of FILES -> the names of its markers."""
    result = subprocess.run(
        [sys.executable, "-c", COLLECT, *FILES], capture_output=True, text=True, cwd=ROOT, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("MARKERS "))
    return {test: set(names) for test, names in json.loads(line.removeprefix("MARKERS ")).items()}


def test_the_quick_run_leaves_out_every_slow_tier(markers: dict[str, set[str]]) -> None:
    quick = {test for test, names in markers.items() if "slow" not in names}
    assert "tests/test_config.py::test_defaults_follow_kthw" in quick
    # etcd on loopback: a cluster the module shares is quick; one started for each test is the lifecycle tier.
    assert "tests/test_etcd.py::test_the_first_member_founds_and_the_others_join" in quick
    assert "tests/test_etcd_lifecycle.py::test_a_replaced_member_rejoins_from_its_kept_data" not in quick
    # Pure tests beside the real control plane stay; the ones on the plane (a build) go.
    assert "tests/test_real_control_plane.py::test_into_root_moves_node_paths_and_nothing_else" in quick
    assert "tests/test_real_control_plane.py::test_etcd_members_form_one_cluster" not in quick
    assert "tests/test_worker.py::test_containerd_reads_the_config" not in quick  # calls upstream.require itself
    assert "tests/test_real_cli.py::test_cli_version" not in quick  # through the cli fixture
    assert not {t for t in quick if t.startswith(("tests/engine/", "tests/localcloud/", "tests/test_live.py"))}
    assert len(quick) > len(markers) / 2
    assert {test.split("::")[0] for test in markers} == set(FILES)


@pytest.mark.parametrize(("tier", "member"), [
    ("lifecycle", "tests/test_etcd_lifecycle.py::test_backups_are_kept_by_count_and_restore_into_a_working_cluster"),
    ("upstream", "tests/test_worker.py::test_containerd_pulls_through_the_rendered_mirror"),
    ("engine", "tests/engine/test_providers.py::test_private_key_is_real_and_secret"),
    ("localcloud", "tests/localcloud/test_plane.py::test_firewall_enforces_the_programs_rules"),
    ("live", "tests/test_live.py::test_up_smoke_destroy"),
])  # fmt: skip
def test_each_slow_tier_is_a_marker_of_its_own(markers: dict[str, set[str]], tier: str, member: str) -> None:
    assert {tier, "slow"} <= markers[member]


def test_a_build_asked_for_by_a_quick_test_fails_it(request: pytest.FixtureRequest) -> None:
    """tests/conftest.py marks by the calls it sees; a test it missed fails instead of slowing the quick run."""
    ask = upstream.require  # by another name, which tests/conftest.py does not see: this test is not marked
    assert request.node.get_closest_marker("slow") is None
    assert upstream.running is request.node
    with pytest.raises(pytest.fail.Exception, match="needs the containerd build but is not marked slow"):
        ask("containerd")
