"""The etcd rollout under mocks: disks that outlive VMs, controllers replaced in sequence, members leaving
before their VM goes, the preview's warning and the shrink rule, the snapshot bucket's least privilege."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from components import config as config_module
from components import etcd, remote
from platforms.gcp.node import ETCD_DEVICE
from tests.harness import Recording, cached, diff, run_program
from tests.tools import find_tool

HA = {"controllerCount": "3", "workerCount": "1"}
NEW_IMAGE = {**HA, "image": "debian-cloud/debian-12"}
COMMAND = "command:remote:Command"


def test_each_controller_has_its_own_etcd_disk_attached_by_a_stable_device_name() -> None:
    ha = cached(HA)
    disks = {r.inputs["name"]: r for r in ha.of_type("gcp:compute/disk:Disk")}
    assert set(disks) == {"controller-0-etcd", "controller-1-etcd", "controller-2-etcd"}
    for i in range(3):
        disk = ha.by_name(f"kthw-controller-{i}-etcd-disk")
        assert disk.inputs["zone"] == "us-west1-c" and disk.inputs["size"] == 10
        instance = ha.by_name(f"kthw-controller-{i}-instance")
        (attached,) = instance.inputs["attachedDisks"]
        assert attached["deviceName"] == "etcd" and attached["mode"] == "READ_WRITE"
        assert attached["source"] == f"https://compute.example/Disk/kthw-controller-{i}-etcd-disk"
        # GCE deletes an attached (non-boot) disk with its instance only when told to: never here.
        assert "autoDelete" not in attached
    assert "attachedDisks" not in ha.by_name("kthw-worker-0-instance").inputs
    assert ETCD_DEVICE == "/dev/disk/by-id/google-etcd"


def test_an_image_change_replaces_vms_but_not_their_etcd_disks() -> None:
    before, after = cached(HA), cached(NEW_IMAGE)
    _, _, changed = diff(before, after)
    for i in range(3):
        assert f"kthw-controller-{i}-instance" in changed
        assert f"kthw-controller-{i}-etcd-disk" not in changed
        # The ready step runs again after the new VM is up, even where GCE only restarts it.
        assert f"kthw-controller-{i}-etcd-ready" in changed
        assert (
            before.by_name(f"kthw-controller-{i}-etcd-ready").inputs["triggers"]
            != after.by_name(f"kthw-controller-{i}-etcd-ready").inputs["triggers"]
        )


@pytest.mark.parametrize("i", [1, 2])
def test_controllers_are_replaced_one_after_another(i: int) -> None:
    ha = cached(HA)
    instance = ha.by_name(f"kthw-controller-{i}-instance")
    # The engine replaces controller-i only once controller-(i-1)'s member is healthy and caught up.
    assert {f"kthw-controller-{i - 1}-etcd-ready", f"kthw-controller-{i - 1}-etcd-leave"} <= instance.depends_on
    # ... and no earlier controller waits for a later one.
    assert not {a for a in ha.ancestors(f"kthw-controller-{i - 1}-etcd-ready") if a.startswith(f"kthw-controller-{i}")}
    assert "kthw-controller-0-instance" in ha.ancestors(f"kthw-controller-{i}-instance")
    # Moving data off a boot disk stops etcd: one controller at a time as well.
    assert f"kthw-controller-{i - 1}-etcd-ready" in ha.by_name(f"kthw-controller-{i}-etcd-mount").depends_on
    assert not ha.by_name("kthw-controller-0-instance").depends_on & {
        f"kthw-controller-{c}-etcd-ready" for c in range(3)
    }


def test_a_member_leaves_the_cluster_before_its_vm_is_deleted() -> None:
    ha = cached(HA)
    for i in range(3):
        leave = ha.by_name(f"kthw-controller-{i}-etcd-leave")
        assert leave.type == COMMAND
        assert leave.inputs["delete"] == remote.capped(f"sudo {etcd.LEAVE_SCRIPT}\n")
        # Deletion runs dependents first: the leave step depends on the VM (its connection), so
        # `member remove` runs while the VM is still there.
        assert f"kthw-controller-{i}-instance" in leave.depends_on
        # A VM replacement must not remove the member: the step is neither replaced with the
        # node's gate nor triggered by anything, so it is only ever updated (create re-runs, a no-op).
        assert leave.options["replace_with"] == [] and "triggers" not in leave.inputs
        assert "member remove" not in leave.inputs["create"]
    # A shrink removes from the highest index down, one at a time: controller-2's leave and VM go
    # before controller-1's leave runs.
    assert "kthw-controller-1-etcd-leave" in ha.ancestors("kthw-controller-2-etcd-leave")
    assert "kthw-controller-0-etcd-leave" in ha.ancestors("kthw-controller-1-etcd-leave")


def test_growing_adds_members_after_the_existing_ones() -> None:
    five = cached({"controllerCount": "5", "workerCount": "1"})
    three = cached(HA)
    added, removed, _ = diff(three, five)
    assert {"kthw-controller-3-instance", "kthw-controller-4-etcd-etcd", "kthw-controller-3-etcd-disk"} <= added
    assert not removed
    assert "kthw-controller-2-etcd-ready" in five.ancestors("kthw-controller-3-etcd-etcd")
    assert "kthw-controller-3-etcd-ready" in five.ancestors("kthw-controller-4-instance")
    # The API servers talk to every member, and the certificate names every controller.
    unit = _bundle_text(five.by_name("kthw-controller-0-control-plane-kube-apiserver"))
    assert "https://10.240.0.13:2379,https://10.240.0.14:2379" in unit


def previous(recording: Recording) -> dict[str, Any]:
    return {key: recording.outputs[key] for key in ("controller_fingerprints", "controllers")}


def test_a_preview_that_replaces_controllers_says_so() -> None:
    last = cached(HA)
    assert set(last.outputs["controller_fingerprints"]) == {"controller-0", "controller-1", "controller-2"}
    warned = run_program(NEW_IMAGE, preview=True, previous_outputs=previous(last))
    (warning,) = [w for w in warned.warnings if "replaces or restarts" in w]
    assert "controller-0, controller-1, controller-2" in warning and "ONE AT A TIME" in warning
    # Nothing about controllers changes: no warning. A new stack (no outputs yet): none either.
    quiet = run_program(HA, preview=True, previous_outputs=previous(last))
    assert not [w for w in quiet.warnings if "replaces or restarts" in w]
    assert not [w for w in cached(HA, preview=True).warnings if "replaces or restarts" in w]


def test_a_preview_warns_about_a_single_controller_going_down() -> None:
    small = {"controllerCount": "1", "workerCount": "1"}
    last = cached(small)
    warned = run_program(
        {**small, "controllerMachineType": "e2-standard-4"}, preview=True, previous_outputs=previous(last)
    )
    (warning,) = [w for w in warned.warnings if "replaces or restarts" in w]
    assert "controller-0, the only controller" in warning and "down" in warning


@pytest.mark.parametrize(
    ("before", "after", "allowed"),
    [(3, 2, True), (3, 1, False), (5, 3, True), (5, 2, False), (2, 1, True), (4, 2, False), (1, 3, True)],
)
def test_shrink_rule(before: int, after: int, allowed: bool) -> None:
    if allowed:
        config_module.check_controller_shrink(before, after)
    else:
        with pytest.raises(config_module.ConfigError, match=f"kthw:controllerCount = {after} is invalid: at least"):
            config_module.check_controller_shrink(before, after)


def test_a_shrink_below_a_majority_fails_the_program() -> None:
    last = cached(HA)
    # ConfigErrors, a RunError: the CLI prints the line without a traceback.
    with pytest.raises(config_module.ConfigErrors, match="3 controllers run now"):
        run_program({"controllerCount": "1", "workerCount": "1"}, preview=True, previous_outputs=previous(last))
    # One at a time is fine.
    run_program({"controllerCount": "2", "workerCount": "1"}, preview=True, previous_outputs=previous(last))


# --- the snapshot bucket ----------------------------------------------------------------------------


def test_no_bucket_by_default() -> None:
    ha = cached(HA)
    assert not ha.of_type("gcp:storage/bucket:Bucket") and not ha.of_type("gcp:serviceaccount/account:Account")
    assert 'bucket=""' in etcd.render_backup_script(config_module.load({}, _GCP).controllers[0], None)


_GCP = {"gcp:region": "us-west1", "gcp:zone": "us-west1-c", "gcp:project": "kthw-test"}


def test_a_bucket_gets_a_writer_account_for_the_controllers_only() -> None:
    rec = cached({**HA, "etcdBackupBucket": "kthw-test-etcd-snapshots"})
    (bucket,) = rec.of_type("gcp:storage/bucket:Bucket")
    assert rec.of_type("gcp:serviceaccount/account:Account")[0].inputs["accountId"] == "kthw-controllers"
    assert bucket.inputs["name"] == "kthw-test-etcd-snapshots"
    assert bucket.inputs["publicAccessPrevention"] == "enforced" and bucket.inputs["uniformBucketLevelAccess"]
    (account,) = rec.of_type("gcp:serviceaccount/account:Account")
    (member,) = rec.of_type("gcp:storage/bucketIAMMember:BucketIAMMember")
    # Create objects in this one bucket: no read, no delete, nothing project-wide.
    assert member.inputs["role"] == "roles/storage.objectCreator"
    assert member.inputs["bucket"] == "kthw-test-etcd-snapshots"
    assert not rec.of_type("gcp:projects/iAMMember:IAMMember") and not rec.of_type("gcp:projects/iAMBinding:IAMBinding")
    for i in range(3):
        sa = rec.by_name(f"kthw-controller-{i}-instance").inputs["serviceAccount"]
        assert account.name in rec.by_name(f"kthw-controller-{i}-instance").depends_on
        assert "storage-rw" in sa["scopes"] and "email" in sa
        files = rec.by_name(f"kthw-controller-{i}-etcd-backup")
        assert 'bucket="kthw-test-etcd-snapshots"' in _bundle_text(files)
    # Workers keep the default compute account, named (tests/test_gce_updates.py), and no storage scope.
    worker = rec.by_name("kthw-worker-0-instance").inputs["serviceAccount"]
    assert worker["email"].endswith("-compute@developer.gserviceaccount.com") and "storage-rw" not in worker["scopes"]


def _bundle_text(rec: Any) -> str:
    from tests.harness import bundle

    return "\n".join(content for content, _ in bundle(rec).values())


@pytest.mark.parametrize("name", ["Bad_Bucket", "goog-snapshots", "a", "my.dotted.bucket", "x" * 64])
def test_bad_bucket_names_are_refused(name: str) -> None:
    with pytest.raises(config_module.ConfigErrors, match="kthw:etcdBackupBucket"):
        config_module.load({"etcdBackupBucket": name}, _GCP)


# --- the disk step, against shims ----------------------------------------------------------------


@pytest.fixture
def shims(tmp_path: Path) -> Path:
    """sudo, blkid, mkfs.ext4, mountpoint and systemctl that log their calls; blkid answers from a file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    scripts = {
        "sudo": 'exec "$@"',
        "blkid": f'echo "blkid $*" >> {log}; cat {tmp_path}/blkid.out 2>/dev/null; exit "$(cat {tmp_path}/blkid.rc)"',
        "mkfs.ext4": f'echo "mkfs.ext4 $*" >> {log}',
        "mountpoint": f"test -f {tmp_path}/mounted",
        "systemctl": f'echo "systemctl $*" >> {log}; if [ "$1" = enable ]; then touch {tmp_path}/mounted; fi',
        "install": f'echo "install $*" >> {log}; cat > /dev/null',
        "cmp": "exit 1",
    }
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text(f"#!/usr/bin/env bash\n{body}\n")
        path.chmod(0o755)
    return tmp_path


def run_disk(shims: Path, blkid_rc: int, blkid_out: str = "") -> tuple[subprocess.CompletedProcess[str], str]:
    (shims / "blkid.rc").write_text(str(blkid_rc))
    (shims / "blkid.out").write_text(blkid_out)
    # A real block device stands in for the etcd disk: the shims never touch it.
    script = etcd.render_disk_script(config_module.load({}, _GCP).controllers[0], "/dev/loop0")
    script = script.replace(etcd.MOUNT_POINT, str(shims / "mnt"))
    env = {"PATH": f"{shims / 'bin'}:/usr/bin:/bin"}
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=30)
    log = shims / "calls.log"
    return result, log.read_text() if log.exists() else ""


def test_the_disk_step_formats_only_a_blank_disk(shims: Path) -> None:
    if not Path("/dev/loop0").is_block_device() or find_tool("bash") is None:
        message = "no /dev/loop0 block device to stand in for the disk"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    blank, calls = run_disk(shims, 2)
    assert blank.returncode == 0, blank.stderr
    assert (
        "mkfs.ext4 -q -L etcd -m 0 /dev/loop0" in calls and "systemctl enable --quiet --now var-lib-etcd.mount" in calls
    )
    (shims / "calls.log").unlink()
    (shims / "mounted").unlink()
    kept, calls = run_disk(shims, 0, "ext4\n")
    assert kept.returncode == 0, kept.stderr
    assert "mkfs" not in calls and "enable --quiet --now var-lib-etcd.mount" in calls
    (shims / "calls.log").unlink()
    other, calls = run_disk(shims, 0, "xfs\n")
    assert other.returncode == 1 and "holds a xfs signature" in other.stderr and "mkfs" not in calls


def test_the_mount_unit_names_the_device_and_the_mount_point() -> None:
    unit = etcd.render_mount_unit(ETCD_DEVICE)
    assert "What=/dev/disk/by-id/google-etcd\n" in unit and "Where=/var/lib/etcd\n" in unit
    assert etcd.DATA_DIR.startswith(etcd.MOUNT_POINT + "/") and etcd.BACKUP_DIR.startswith(etcd.MOUNT_POINT + "/")


def test_another_cluster_name_gets_its_own_disks_and_account() -> None:
    """Two clusters in one project: the etcd disks and the controllers' account must not collide."""
    names = config_module.GceNames("blue")
    rec = cached({**HA, "clusterName": "blue", "etcdBackupBucket": "kthw-blue-etcd-snapshots"})
    disks = sorted(d.inputs["name"] for d in rec.of_type("gcp:compute/disk:Disk"))
    assert disks == ["blue-controller-0-etcd", "blue-controller-1-etcd", "blue-controller-2-etcd"]
    (account,) = rec.of_type("gcp:serviceaccount/account:Account")
    assert account.inputs["accountId"] == names.backup_account != config_module.GceNames().backup_account
    assert 6 <= len(names.backup_account) <= 30
    assert names.backup_account != config_module.GceNames("green").backup_account
