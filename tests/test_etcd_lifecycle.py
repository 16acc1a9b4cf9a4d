"""etcd keeps its data through what a controller goes through: replacement, lost disk, grow, shrink, restore.

Every scenario runs real etcd members on loopback with the program's own files (tests/etcd_real.py):
the membership script decides how each starts, the ready script waits, the leave script removes a
member, the backup and restore scripts take and restore a snapshot. The figures printed with -s are
what docs/performance.md reports.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from components import config as config_module
from components import etcd
from tests import etcd_real
from tests.test_control_plane import build

GCP = {"gcp:region": "us-west1", "gcp:zone": "us-west1-c", "gcp:project": "kthw-test"}
THREE = config_module.load({"controllerCount": 3, "workerCount": 1}, GCP)
FIVE = config_module.load({"controllerCount": 5, "workerCount": 1}, GCP)
KEYS = {f"kthw/key-{i}": f"value-{i}" for i in range(20)}


class Prober(threading.Thread):
    """Writes and reads a key through the running members every 100 ms; records every failure.

    A member that is about to leave is named in `leaving` first and no longer probed: when it
    removes itself its raft stops, and a request that happens to be in flight on it at that
    instant fails once with "raft: stopped" (CI saw it). That is the leaving member's own clients
    losing it, not the cluster losing its quorum, which is what this prober measures.
    """

    def __init__(self, cluster: etcd_real.Loopback) -> None:
        super().__init__(daemon=True)
        self.cluster = cluster
        self.stop = threading.Event()
        self.leaving: set[str] = set()
        self.ok = 0
        self.failures: list[str] = []
        self.rounds = 0

    def stop_probing(self, name: str) -> None:
        """Leave `name` out from the next round on; returns once the round under way has ended."""
        self.leaving.add(name)
        under_way = self.rounds
        while self.rounds == under_way and self.is_alive():
            time.sleep(0.02)

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            endpoints = ",".join(m.client for m in self.cluster.running() if m.spec.name not in self.leaving)
            put = self.cluster.etcdctl("put", "kthw/probe", str(n), endpoints=endpoints)
            get = self.cluster.etcdctl("get", "kthw/probe", "--print-value-only", endpoints=endpoints)
            if put.returncode == 0 and get.stdout.strip() == str(n):
                self.ok += 1
            else:
                self.failures.append(f"{n}: {put.stderr.strip()[-200:]} {get.stderr.strip()[-200:]}")
            self.rounds += 1
            time.sleep(0.1)


def put_all(cluster: etcd_real.Loopback, keys: dict[str, str]) -> None:
    for key, value in keys.items():
        result = cluster.etcdctl("put", key, value, endpoints=cluster.endpoints())
        assert result.returncode == 0, result.stderr


def read_all(cluster: etcd_real.Loopback, endpoint: str) -> dict[str, str]:
    """Every kthw/key-* as the member at `endpoint` serves it (serializable: its own copy, not the leader's)."""
    result = cluster.etcdctl("get", "kthw/key-", "--prefix", "--consistency=s", endpoints=endpoint)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    return dict(zip(lines[0::2], lines[1::2], strict=True))


@pytest.fixture(scope="module")
def recordings() -> dict[int, object]:
    return {3: build(THREE), 5: build(FIVE)}


@pytest.fixture
def three(tmp_path: Path, recordings: dict[int, object]) -> Iterator[etcd_real.Loopback]:
    etcd_real.require_etcd()
    cluster = etcd_real.Loopback(tmp_path, recordings[3], THREE)  # type: ignore[arg-type]
    try:
        for c in THREE.controllers:
            cluster.bring_up(c.name)
        put_all(cluster, KEYS)
        yield cluster
    finally:
        cluster.stop_all()


def test_a_replaced_member_rejoins_from_its_kept_data(three: etcd_real.Loopback) -> None:
    member = three.members["controller-1"]
    member_id = three.etcdctl("endpoint", "status", "-w", "fields", endpoints=member.client).stdout
    # The VM goes; the disk stays. A key written meanwhile must reach it when it is back.
    member.kill()
    put_all(three, {"kthw/key-while-away": "written"})
    began = time.monotonic()
    membership = member.start()
    assert membership.returncode == 0, membership.stderr
    # It starts as itself: no member add, no new cluster, the same member ID.
    assert "added to cluster" not in membership.stderr
    assert member.path(etcd.ENV_FILE).read_text().startswith("ETCD_INITIAL_CLUSTER_STATE=existing\n")
    ready = member.ready()
    took = time.monotonic() - began
    assert ready.returncode == 0, ready.stderr + member.tail()
    print(f"\none-member replacement (same data dir): {took:.1f} s from start to healthy and caught up")
    again = three.etcdctl("endpoint", "status", "-w", "fields", endpoints=member.client).stdout
    assert _field(again, "MemberID") == _field(member_id, "MemberID")
    assert read_all(three, member.client) == {**KEYS, "kthw/key-while-away": "written"}
    assert three.member_names() == {"controller-0", "controller-1", "controller-2"}


def test_a_member_whose_disk_was_lost_is_removed_and_added_again(three: etcd_real.Loopback) -> None:
    member = three.members["controller-2"]
    member.kill()
    # A new, empty disk: the cluster still lists controller-2 as a started member.
    shutil.rmtree(member.data_dir)
    began = time.monotonic()
    membership = member.start()
    assert membership.returncode == 0, membership.stderr
    assert "removing it to add it again" in membership.stderr
    ready = member.ready()
    assert ready.returncode == 0, ready.stderr + member.tail()
    print(f"\none-member replacement (empty data dir): {time.monotonic() - began:.1f} s")
    assert read_all(three, member.client) == KEYS
    assert three.member_names() == {"controller-0", "controller-1", "controller-2"}


def test_grow_three_to_five_and_shrink_back_keeps_every_key_and_quorum(
    three: etcd_real.Loopback, recordings: dict[int, object]
) -> None:
    prober = Prober(three)
    prober.start()
    try:
        # The new controllers' files come from the five-controller program; as the chain of ready
        # steps orders it, controller-3 joins first, then controller-4.
        three.add_config(recordings[5], FIVE)  # type: ignore[arg-type]
        began = time.monotonic()
        for name in ("controller-3", "controller-4"):
            three.bring_up(name)
            env = three.members[name].path(etcd.ENV_FILE).read_text()
            assert "ETCD_INITIAL_CLUSTER_STATE=existing\n" in env
        grew = time.monotonic() - began
        assert three.member_names() == {f"controller-{i}" for i in range(5)}
        for m in three.running():
            assert read_all(three, m.client) == KEYS, m.spec.name

        # Shrink: each leaving member's delete step (its leave script) runs before its VM goes,
        # highest index first, as the dependencies order the deletions.
        began = time.monotonic()
        for name in ("controller-4", "controller-3"):
            prober.stop_probing(name)
            leave = three.members[name].script(etcd.LEAVE_SCRIPT, timeout=180)
            assert leave.returncode == 0, leave.stderr
            assert "removed" in leave.stderr
            three.members[name].kill()
        shrank = time.monotonic() - began
    finally:
        prober.stop.set()
        prober.join()
    print(
        f"\ngrow 3 -> 5: {grew:.1f} s; shrink 5 -> 3: {shrank:.1f} s; "
        f"probes {prober.ok} ok, {len(prober.failures)} failed"
    )
    assert three.member_names() == {"controller-0", "controller-1", "controller-2"}
    for m in three.running():
        assert read_all(three, m.client) == KEYS, m.spec.name
    # Quorum held throughout: every write-then-read through the cluster succeeded.
    assert prober.ok > 10
    assert prober.failures == []


def test_leaving_twice_or_as_the_last_member_is_harmless(three: etcd_real.Loopback) -> None:
    member = three.members["controller-2"]
    first = member.script(etcd.LEAVE_SCRIPT, timeout=180)
    assert first.returncode == 0 and "removed" in first.stderr, first.stderr
    member.kill()
    # A delete that runs again (a retried `pulumi destroy`) finds nothing to do.
    again = member.script(etcd.LEAVE_SCRIPT, timeout=180)
    assert again.returncode == 0 and "not a member" in again.stderr, again.stderr
    three.members["controller-1"].script(etcd.LEAVE_SCRIPT, timeout=180)
    three.members["controller-1"].kill()
    last = three.members["controller-0"].script(etcd.LEAVE_SCRIPT, timeout=180)
    assert last.returncode == 0 and "the last member" in last.stderr, last.stderr
    assert three.member_names() == {"controller-0"}


def test_a_removed_member_that_comes_back_joins_as_new(three: etcd_real.Loopback) -> None:
    # controllerCount 3 -> 2 -> 3 with the disk kept by hand: the old member ID is gone for good.
    member = three.members["controller-2"]
    assert member.script(etcd.LEAVE_SCRIPT, timeout=180).returncode == 0
    member.kill()
    membership = member.start()
    assert membership.returncode == 0, membership.stderr
    assert "no longer lists" in membership.stderr
    ready = member.ready()
    assert ready.returncode == 0, ready.stderr + member.tail()
    assert read_all(three, member.client) == KEYS


def test_backups_are_kept_by_count_and_restore_into_a_working_cluster(
    tmp_path: Path, three: etcd_real.Loopback, recordings: dict[int, object]
) -> None:
    source = three.members["controller-0"]
    script = source.path(etcd.BACKUP_SCRIPT)
    # The backup step's script, as deployed; retention cut to 2 so the test can pass it.
    script.write_text(
        etcd.render_backup_script(source.spec, None)
        .replace(f'keep="{etcd.BACKUP_KEEP}"', 'keep="2"')
        .replace(etcd.LOCAL_URL, source.local)
        .replace(etcd.CONFIG_DIR + "/", f"{source.root}{etcd.CONFIG_DIR}/")
        .replace(etcd.MOUNT_POINT, f"{source.root}{etcd.MOUNT_POINT}")
        .replace(etcd.ETCDCTL, str(etcd_real.ETCDCTL))
    )
    for _ in range(3):
        result = source.script(etcd.BACKUP_SCRIPT)
        assert result.returncode == 0, result.stderr
        time.sleep(1.1)  # snapshot names carry the second
    snapshots = sorted(source.path(etcd.BACKUP_DIR).glob("controller-0-*.db"))
    assert len(snapshots) == 2
    assert not list(source.path(etcd.BACKUP_DIR).glob("*.part"))
    latest = snapshots[-1]

    # Disaster: every member is gone. A fresh cluster on new addresses, restored from the snapshot.
    three.stop_all()
    restored = etcd_real.Loopback(tmp_path / "restored", recordings[3], THREE)  # type: ignore[arg-type]
    try:
        first = restored.members["controller-0"]
        began = time.monotonic()
        restore = first.script(etcd.RESTORE_SCRIPT, str(latest))
        assert restore.returncode == 0, restore.stderr
        restored.bring_up("controller-0")
        # The others join it with empty data dirs, as in a grow.
        for name in ("controller-1", "controller-2"):
            restored.bring_up(name)
        print(f"\nrestore from a snapshot to three healthy members: {time.monotonic() - began:.1f} s")
        assert restored.member_names() == {"controller-0", "controller-1", "controller-2"}
        for m in restored.running():
            assert read_all(restored, m.client) == KEYS, m.spec.name
    finally:
        restored.stop_all()


def _field(fields: str, key: str) -> str:
    for line in fields.splitlines():
        name, _, value = line.partition(" : ")
        if name.strip('"') == key:
            return value.strip()
    raise KeyError(key)


def test_a_leave_whose_answer_is_lost_still_ends(three: etcd_real.Loopback, tmp_path: Path) -> None:
    """`member remove` goes through but its answer is lost (the member's own server stops under the
    request): the retry finds no such member, and the leave step must count that as done."""
    assert etcd_real.ETCDCTL is not None
    shim = tmp_path / "etcdctl-losing-answers"
    shim.write_text(
        "#!/usr/bin/env bash\n"
        f'"{etcd_real.ETCDCTL}" "$@" || exit\n'
        'for arg in "$@"; do [ "${arg}" != remove ] || { echo "Error: context deadline exceeded" >&2; exit 1; }; done\n'
    )
    shim.chmod(0o755)
    member = three.members["controller-2"]
    script = member.path(etcd.LEAVE_SCRIPT)
    script.write_text(script.read_text().replace(str(etcd_real.ETCDCTL), str(shim)))
    leave = subprocess.run(
        ["bash", str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "KTHW_ETCD_LEAVE_TIMEOUT": "15"},
    )
    assert leave.returncode == 0, leave.stderr
    assert "removed" in leave.stderr
    member.kill()
    assert three.member_names() == {"controller-0", "controller-1"}
