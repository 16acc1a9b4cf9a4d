"""Restarts in any order never split etcd: after a power loss every controller boots when it boots.

Real etcd members on loopback with the program's own files (tests/etcd_real.py). A power loss is
every member killed at once; each then starts as systemd would start it (the membership script as
ExecStartPre, repeated every 5 s while it refuses). Whatever the order, and also when the founder
comes back with an empty etcd disk before anyone else answers, there must be exactly one cluster
afterwards, the one from before, holding every key.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from components import config as config_module
from components import etcd
from tests import etcd_real
from tests.test_control_plane import build
from tests.test_etcd_lifecycle import KEYS, put_all, read_all

GCP = {"gcp:region": "us-west1", "gcp:zone": "us-west1-c", "gcp:project": "kthw-test"}
THREE = config_module.load({"controllerCount": 3, "workerCount": 1}, GCP)
NAMES = tuple(c.name for c in THREE.controllers)


@pytest.fixture(scope="module")
def recording() -> object:
    return build(THREE)


@pytest.fixture
def three(tmp_path: Path, recording: object) -> Iterator[etcd_real.Loopback]:
    etcd_real.require_etcd()
    cluster = etcd_real.Loopback(tmp_path, recording, THREE)  # type: ignore[arg-type]
    try:
        for name in NAMES:
            cluster.bring_up(name)
        put_all(cluster, KEYS)
        yield cluster
    finally:
        cluster.stop_all()


def power_loss(cluster: etcd_real.Loopback) -> set[str]:
    """Kill every member at once; the cluster ID they all reported before."""
    before = set(cluster.cluster_ids().values())
    assert len(before) == 1, before
    for member in cluster.members.values():
        member.kill()
    return before


def boot_together(cluster: etcd_real.Loopback, names: tuple[str, ...]) -> dict[str, list[str]]:
    """Start `names` at the same time, each retried as systemd would; what each refused attempt said."""
    refused: dict[str, list[str]] = {}
    errors: list[BaseException] = []

    def boot(name: str) -> None:
        try:
            refused[name] = cluster.start_as_systemd_would(name)
        except BaseException as e:  # reported by the test's thread below
            errors.append(e)

    threads = [threading.Thread(target=boot, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return refused


def assert_one_cluster(cluster: etcd_real.Loopback, before: set[str]) -> None:
    for name in NAMES:
        ready = cluster.members[name].ready(120)
        assert ready.returncode == 0, f"{name}: {ready.stderr}\n{cluster.members[name].tail()}"
    after = cluster.cluster_ids()
    assert sorted(after) == list(NAMES)
    assert set(after.values()) == before, after
    assert cluster.member_names() == set(NAMES)
    for member in cluster.running():
        assert read_all(cluster, member.client) == KEYS, member.spec.name


def test_every_controller_boots_at_once(three: etcd_real.Loopback) -> None:
    before = power_loss(three)
    boot_together(three, NAMES)
    assert_one_cluster(three, before)


def test_the_founder_boots_last(three: etcd_real.Loopback) -> None:
    before = power_loss(three)
    boot_together(three, NAMES[1:])
    for name in NAMES[1:]:
        assert three.members[name].ready(120).returncode == 0
    boot_together(three, NAMES[:1])
    assert_one_cluster(three, before)


def test_a_founder_whose_etcd_disk_was_lost_joins_instead_of_founding(three: etcd_real.Loopback) -> None:
    before = power_loss(three)
    founder = three.members[NAMES[0]]
    # A new, empty etcd disk; the boot disk (and its marker) is the one it had.
    shutil.rmtree(founder.path(etcd.MOUNT_POINT))
    founder.path(etcd.MOUNT_POINT).mkdir(parents=True)
    # It boots first, alone: nobody answers, and it must not found a cluster of its own.
    alone = founder.start()
    assert alone.returncode == 1, alone.stderr
    assert "not founding a second one" in alone.stderr
    assert not founder.data_dir.exists()
    # Then the others boot while it keeps retrying; it joins their cluster, re-added as a new member.
    boot_together(three, NAMES)
    assert_one_cluster(three, before)
    assert "removing it to add it again" in (founder.root / "membership.log").read_text()


def test_a_founder_that_lost_both_disks_founds_only_when_nothing_else_exists(tmp_path: Path, recording: object) -> None:
    # The first bootstrap: no marker anywhere, nobody answers, so controller-0 founds.
    etcd_real.require_etcd()
    cluster = etcd_real.Loopback(tmp_path, recording, THREE)  # type: ignore[arg-type]
    try:
        founder = cluster.members[NAMES[0]]
        assert not any(founder.path(m).exists() for m in etcd.FOUNDED_MARKERS)
        cluster.bring_up(NAMES[0])
        # Once its member is healthy, both disks carry the marker.
        assert all(founder.path(m).exists() for m in etcd.FOUNDED_MARKERS)
        assert "ETCD_INITIAL_CLUSTER_STATE=new\n" in founder.path(etcd.ENV_FILE).read_text()
    finally:
        cluster.stop_all()
