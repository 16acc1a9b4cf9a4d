"""A stand-in for Debian's official cloud image, built here: a bootable qcow2 with GRUB and real cloud-init.

What Debian's genericcloud image is to the product, this is to the tests of the local platform:
one disk with a partition table and GRUB in its MBR, booted by qemu's firmware (not -kernel),
configured at first boot by Debian's own cloud-init package from a NoCloud seed (netplan and
systemd-networkd render its network config, as on Debian's image), plus the packages the
program's scripts would otherwise apt-get (image.PACKAGES), since the test VMs reach no mirror.
It starts from the local cloud's cached debootstrap tree (image._rootfs) and adds packages with
apt in a chroot; both steps are cached by their inputs, like image.py's.

Building needs root (loop device, mount, chroot for grub-install); the tests run as root. The
product never builds images: it downloads Debian's and checks its SHA-512.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.localcloud import image

# On top of image.PACKAGES: cloud-init and what Debian's cloud images use it with (growpart for the
# root partition, netplan + networkd + resolved for the network), and GRUB for BIOS boot.
CLOUD_PACKAGES = (
    "cloud-init",
    "cloud-guest-utils",
    "fdisk",
    "e2fsprogs",
    "netplan.io",
    "systemd-resolved",
    "grub-pc",
    # cloud-init's locale module sets en_US.UTF-8 at first boot, as on Debian's images.
    "locales",
)
# The disk's virtual size; sparse, and each VM's overlay grows past it (growpart).
DISK_SIZE = 3 * 2**30
PARTITION_START = 2048  # sectors: 1 MiB, room for GRUB's core.img behind the MBR
SECTOR = 512
KERNEL_ARGS = "ro console=tty0 console=ttyS0,115200"


@dataclass(frozen=True)
class CloudImage:
    """A built image: the qcow2 and its SHA-512 (what kthw:localImageSha512 names)."""

    path: Path
    sha512: str

    def disk_bytes(self) -> int:
        return self.path.stat().st_blocks * 512


def cloud_rootfs_key(mirror: str) -> str:
    return image._digest(image.rootfs_key(mirror), *CLOUD_PACKAGES)


def cloud_image_key(mirror: str) -> str:
    return image._digest(cloud_rootfs_key(mirror), Path(__file__).read_bytes())


@contextlib.contextmanager
def _chroot_mounts(root: Path, log: Path) -> Iterator[None]:
    """/dev, /proc and /sys inside `root` for the duration (apt's maintainer scripts, grub-install)."""
    mounted: list[Path] = []
    try:
        for name, argv in (
            ("dev", ["mount", "--bind", "/dev", str(root / "dev")]),
            ("proc", ["mount", "-t", "proc", "proc", str(root / "proc")]),
            ("sys", ["mount", "--bind", "/sys", str(root / "sys")]),
        ):
            (root / name).mkdir(exist_ok=True)
            image._run(argv, log)
            mounted.append(root / name)
        yield
    finally:
        for path in reversed(mounted):
            subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def _cloud_rootfs(mirror: str, cache: Path) -> Path:
    """The debootstrap tree plus CLOUD_PACKAGES, installed by apt in a chroot; cached by its key."""
    target = cache / f"cloudrootfs-{cloud_rootfs_key(mirror)}"
    if (target / ".kthw-complete").exists():
        return target
    base = image._rootfs(mirror, cache)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    log = cache / f"{target.name}.log"
    log.write_text("")
    image._run(["cp", "-a", "--reflink=auto", str(base), str(partial)], log)
    (partial / ".kthw-complete").unlink()
    # No daemon may start inside the build chroot (ssh, nginx, resolved): policy-rc.d says no.
    policy = partial / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    resolv = partial / "etc/resolv.conf"
    resolv.unlink(missing_ok=True)
    shutil.copy("/etc/resolv.conf", resolv)
    # grub-pc asks which disks to install to; the image builder installs it itself.
    # The locale cloud-init will set, generated now rather than by the emulated CPU at first boot.
    selections = (
        "grub-pc grub-pc/install_devices multiselect\n"
        "grub-pc grub-pc/install_devices_empty boolean true\n"
        "locales locales/locales_to_be_generated multiselect en_US.UTF-8 UTF-8\n"
        "locales locales/default_environment_locale select en_US.UTF-8\n"
    )
    env = ["env", "DEBIAN_FRONTEND=noninteractive", "LC_ALL=C"]
    with _chroot_mounts(partial, log):
        subprocess.run(
            ["chroot", str(partial), "debconf-set-selections"], input=selections.encode(), check=True, timeout=60
        )
        image._run([*env, "chroot", str(partial), "apt-get", "update"], log)
        image._run(
            [*env, "chroot", str(partial), "apt-get", "install", "-y", "--no-install-recommends", *CLOUD_PACKAGES],
            log,
        )
        image._run([*env, "chroot", str(partial), "apt-get", "clean"], log)
    policy.unlink()
    (partial / ".kthw-complete").write_text(json.dumps({"packages": CLOUD_PACKAGES}))
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def _customise(stage: Path, root_uuid: str, kernel: str) -> None:
    """A cloud image's first-boot state: no identity, cloud-init to give one, GRUB to boot it."""
    (stage / "etc/machine-id").write_text("")
    (stage / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    for key in (stage / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (stage / "etc/hostname").write_text("localhost\n")
    (stage / "etc/hosts").write_text("127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n")
    (stage / "etc/fstab").write_text(f"UUID={root_uuid} / ext4 rw,discard,errors=remount-ro 0 1\n")
    resolv = stage / "etc/resolv.conf"
    resolv.unlink(missing_ok=True)
    resolv.symlink_to("../run/systemd/resolve/stub-resolv.conf")
    units = stage / "etc/systemd/system"
    wants = units / "multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    for unit in ("systemd-networkd.service", "systemd-resolved.service"):
        link = wants / unit
        link.unlink(missing_ok=True)
        link.symlink_to(f"/lib/systemd/system/{unit}")
    # Preinstalled for the program, started by it: nothing listens on :80 on a fresh node.
    (wants / "nginx.service").unlink(missing_ok=True)
    # e2scrub_reap looks for LVM snapshots these disks never have, at ~20 s of emulated CPU per boot.
    reap = units / "e2scrub_reap.service"
    reap.unlink(missing_ok=True)
    reap.symlink_to("/dev/null")
    for deb in (stage / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()
    # Only what mounting the virtio root needs: the emulated CPU unpacks a 35 MB initrd for seconds.
    (stage / "etc/initramfs-tools/conf.d/kthw").write_text("MODULES=list\n")
    (stage / "etc/initramfs-tools/modules").write_text("virtio_pci\nvirtio_blk\next4\n")
    # GRUB's menu, written here rather than probed by grub-mkconfig (no udev, no /dev/disk/by-uuid).
    grub = stage / "boot/grub"
    grub.mkdir(parents=True, exist_ok=True)
    (grub / "grub.cfg").write_text(
        "set timeout=0\n"
        "insmod part_msdos\ninsmod ext2\n"
        f"search --no-floppy --fs-uuid --set=root {root_uuid}\n"
        "menuentry debian {\n"
        f"  linux /boot/vmlinuz-{kernel} root=UUID={root_uuid} {KERNEL_ARGS}\n"
        f"  initrd /boot/initrd.img-{kernel}\n"
        "}\n"
    )


def _partition_table(disk: Path) -> None:
    """An MBR with one bootable Linux partition from PARTITION_START to the end of the disk."""
    sectors = DISK_SIZE // SECTOR - PARTITION_START
    entry = bytes([0x80, 0xFE, 0xFF, 0xFF, 0x83, 0xFE, 0xFF, 0xFF])
    entry += PARTITION_START.to_bytes(4, "little") + sectors.to_bytes(4, "little")
    with disk.open("r+b") as f:
        f.seek(440)
        f.write(uuid.uuid4().bytes[:4] + b"\0\0" + entry + bytes(48) + b"\x55\xaa")


def _install(stage: Path, disk: Path, root_uuid: str, work: Path, log: Path) -> None:
    """The stage as the disk's ext4 partition, GRUB in the disk's MBR and the gap behind it.

    Without the kernel's partition support (this host's kernel has none: no /dev/loopNp1),
    grub-install cannot find the partition, so the builder does its two steps itself: grub-mkimage
    makes a core image whose prefix names the partition, and grub-bios-setup writes the MBR code
    and embeds that core image, run in a chroot of the partition (a loop device at its offset).
    """
    size = DISK_SIZE - PARTITION_START * SECTOR
    modules = stage / "boot/grub/i386-pc"
    shutil.copytree(stage / "usr/lib/grub/i386-pc", modules)
    image._run(
        [
            "chroot", str(stage), "grub-mkimage", "-O", "i386-pc", "-d", "/usr/lib/grub/i386-pc",
            "-o", "/boot/grub/i386-pc/core.img", "-p", "(hd0,msdos1)/boot/grub", "biosdisk", "part_msdos", "ext2",
        ],
        log,
    )  # fmt: skip
    filesystem = work / "root.ext4"
    image._run(
        ["mkfs.ext4", "-q", "-F", "-L", "root", "-U", root_uuid, "-d", str(stage), str(filesystem), f"{size // 1024}k"],
        log,
    )
    with disk.open("wb") as f:
        f.truncate(DISK_SIZE)
    _partition_table(disk)
    image._run(
        ["dd", f"if={filesystem}", f"of={disk}", "bs=1M", f"seek={PARTITION_START * SECTOR // 2**20}",
         "conv=notrunc,sparse", "status=none"],
        log,
    )  # fmt: skip
    filesystem.unlink()
    loop = subprocess.run(
        ["losetup", "--find", "--show", "--offset", str(PARTITION_START * SECTOR), "--sizelimit", str(size), str(disk)],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()  # fmt: skip
    mnt = work / "mnt"
    mnt.mkdir()
    try:
        image._run(["mount", loop, str(mnt)], log)
        target = mnt / "tmp/disk.raw"
        try:
            target.touch()
            image._run(["mount", "--bind", str(disk), str(target)], log)
            (mnt / "tmp/device.map").write_text("(hd0) /tmp/disk.raw\n")
            with _chroot_mounts(mnt, log):
                image._run(
                    ["chroot", str(mnt), "grub-bios-setup", "-d", "/boot/grub/i386-pc", "-m", "/tmp/device.map",
                     "/tmp/disk.raw"],
                    log,
                )  # fmt: skip
        finally:
            subprocess.run(["umount", str(target)], check=False, capture_output=True)
            target.unlink(missing_ok=True)
            (mnt / "tmp/device.map").unlink(missing_ok=True)
            subprocess.run(["umount", str(mnt)], check=False, capture_output=True)
    finally:
        subprocess.run(["losetup", "-d", loop], check=False, capture_output=True)


def _sha512(path: Path) -> str:
    digest = hashlib.sha512()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def build(cache: Path | None = None, mirror: str | None = None) -> CloudImage:
    """The cloud image for the current inputs, built (and cached) if needed."""
    cache = cache or image.cache_root()
    mirror = mirror or image.apt_mirror()
    cache.mkdir(parents=True, exist_ok=True)
    directory = cache / f"cloudimage-{cloud_image_key(mirror)}"
    done = directory / ".kthw-complete"
    if done.exists():
        return CloudImage(directory / "disk.qcow2", done.read_text().strip())
    rootfs = _cloud_rootfs(mirror, cache)
    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    log = partial / "build.log"
    stage = partial / "stage"
    image._run(["cp", "-a", "--reflink=auto", str(rootfs), str(stage)], log)
    (stage / ".kthw-complete").unlink()
    kernels = sorted((stage / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise RuntimeError(f"no kernel under {stage}/boot")
    kernel = kernels[-1].name.removeprefix("vmlinuz-")
    root_uuid = str(uuid.uuid4())
    _customise(stage, root_uuid, kernel)
    image._run(["chroot", str(stage), "update-initramfs", "-u", "-k", kernel], log)
    raw = partial / "disk.raw"
    _install(stage, raw, root_uuid, partial, log)
    shutil.rmtree(stage)
    image._run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(partial / "disk.qcow2")], log)
    raw.unlink()
    digest = _sha512(partial / "disk.qcow2")
    (partial / "SHA512SUMS").write_text(f"{digest}  disk.qcow2\n")
    (partial / ".kthw-complete").write_text(digest + "\n")
    shutil.rmtree(directory, ignore_errors=True)
    partial.rename(directory)
    _prune(cache, keep={directory.name, rootfs.name})
    return CloudImage(directory / "disk.qcow2", digest)


def _prune(cache: Path, keep: set[str]) -> None:
    """Drop cloud images and cloud rootfs trees of older inputs (image.py prunes its own)."""
    for path in cache.iterdir():
        stem = path.name.removesuffix(".log")
        if not path.name.startswith(("cloudimage-", "cloudrootfs-")) or stem in keep:
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def main() -> None:
    """`python -m tests.localcloud.cloud_image`: build (or find) the image; print its path, digest, time, size."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cache", type=Path, default=None)
    args = parser.parse_args()
    start = time.monotonic()
    built = build(args.cache)
    print(
        json.dumps(
            {
                "image": str(built.path),
                "sha512": built.sha512,
                "seconds": round(time.monotonic() - start, 1),
                "disk_bytes": built.disk_bytes(),
            }
        )
    )


if __name__ == "__main__":
    main()
