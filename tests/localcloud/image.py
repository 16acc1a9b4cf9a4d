"""The local cloud's boot image: Debian 12 by debootstrap plus a GCE-like guest step, cached by its inputs."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SUITE = "bookworm"
# Besides a bootable systemd machine with sshd: what the program's scripts expect of a GCE
# Ubuntu/Debian image (sudo, curl, tar), and what they would otherwise apt-get from a network the
# local cloud does not have (KTHW ch. 9's socat, conntrack, ipset; nginx for the :80 health check).
PACKAGES = (
    "linux-image-amd64",
    "systemd",
    "systemd-sysv",
    "dbus",
    "iproute2",
    "iputils-ping",
    "openssh-server",
    "ca-certificates",
    "curl",
    "iptables",
    "conntrack",
    "ipset",
    "socat",
    "sudo",
    "kmod",
    "procps",
    "nginx",
)
DEBOOTSTRAP_OPTIONS = ("--variant=minbase", "--merged-usr")
GUEST = Path(__file__).parent / "guest"
# Sparse: the file holds only what is written; room for the program's binaries and images.
IMAGE_SIZE = "6G"


def cache_root() -> Path:
    """The cache directory, outside the repo: $KTHW_CACHE/localcloud, else ~/.cache/kthw/localcloud."""
    return Path(os.environ.get("KTHW_CACHE", Path.home() / ".cache/kthw")) / "localcloud"


def apt_mirror(root: Path = Path("/")) -> str:
    """The Debian mirror apt uses on this machine for the main archive of SUITE (deb822 or one-line sources)."""
    candidates: list[tuple[list[str], list[str], list[str], list[str]]] = []
    sources = root / "etc/apt/sources.list.d"
    for path in sorted(sources.glob("*.sources")) if sources.is_dir() else []:
        for stanza in re.split(r"\n\s*\n", path.read_text()):
            fields: dict[str, list[str]] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line or line[0].isspace():
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.split()
            if fields.get("enabled", ["yes"])[0].lower() == "no":
                continue
            candidates.append(
                (
                    fields.get("types", []),
                    fields.get("uris", []),
                    fields.get("suites", []),
                    fields.get("components", []),
                )
            )
    lists = [root / "etc/apt/sources.list", *(sorted(sources.glob("*.list")) if sources.is_dir() else [])]
    for path in lists:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
            if len(words) >= 4:
                candidates.append(([words[0]], [words[1]], [words[2]], words[3:]))
    for types, uris, suites, components in candidates:
        if "deb" in types and SUITE in suites and "main" in components and uris:
            return uris[0]
    raise RuntimeError(f"no enabled apt source for Debian {SUITE} main under {root}/etc/apt")


def _digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "big") + data)
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Image:
    """A built image: the root filesystem (raw ext4, sparse) and the kernel and initrd to boot it with."""

    root: Path
    kernel: Path
    initrd: Path

    @property
    def tree(self) -> Path:
        """The image's files as a directory (what root.img was made from), for systemd-nspawn."""
        return self.root.parent / "tree"

    def disk_bytes(self) -> int:
        """Disk the bootable image takes (root.img is sparse: its used blocks, not its size)."""
        return sum(p.stat().st_blocks * 512 for p in (self.root, self.kernel, self.initrd))

    @property
    def directory(self) -> Path:
        return self.root.parent


def rootfs_key(mirror: str) -> str:
    """What debootstrap's result depends on: suite, options, package list and mirror."""
    return _digest(SUITE, *DEBOOTSTRAP_OPTIONS, ",".join(PACKAGES), mirror)


def image_key(mirror: str) -> str:
    """What the image depends on: the rootfs, the guest files and this builder's own code."""
    files = sorted(p for p in GUEST.iterdir() if p.is_file())
    return _digest(rootfs_key(mirror), Path(__file__).read_bytes(), *(p.name + "\0" + p.read_text() for p in files))


def _run(argv: list[str], log: Path) -> None:
    with log.open("ab") as out:
        out.write(("$ " + " ".join(argv) + "\n").encode())
        out.flush()
        result = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False)
    if result.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{argv[0]} failed ({result.returncode}); log {log}:\n{tail}")


def _rootfs(mirror: str, cache: Path) -> Path:
    """debootstrap into the cache once per rootfs key; a partial directory never counts as built."""
    target = cache / f"rootfs-{rootfs_key(mirror)}"
    if (target / ".kthw-complete").exists():
        return target
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    log = cache / f"{target.name}.log"
    log.write_text("")
    _run(
        [
            "debootstrap",
            *DEBOOTSTRAP_OPTIONS,
            f"--include={','.join(PACKAGES)}",
            SUITE,
            str(partial),
            mirror,
        ],
        log,
    )
    (partial / ".kthw-complete").write_text(json.dumps({"suite": SUITE, "mirror": mirror, "packages": PACKAGES}))
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def _customise(stage: Path) -> None:
    """Turn the debootstrap result into a cloud image: the guest step, no shared identity, no outbound jobs."""
    (stage / "usr/local/sbin").mkdir(parents=True, exist_ok=True)
    (stage / "usr/local/bin").mkdir(parents=True, exist_ok=True)
    shutil.copy(GUEST / "kthw-guest", stage / "usr/local/sbin/kthw-guest")
    shutil.copy(GUEST / "cloud-init", stage / "usr/local/bin/cloud-init")
    for name in ("usr/local/sbin/kthw-guest", "usr/local/bin/cloud-init"):
        (stage / name).chmod(0o755)
    units = stage / "etc/systemd/system"
    shutil.copy(GUEST / "kthw-guest.service", units / "kthw-guest.service")
    wants = units / "multi-user.target.wants"
    wants.mkdir(exist_ok=True)
    for unit, target in (
        ("kthw-guest.service", "/etc/systemd/system/kthw-guest.service"),
        ("systemd-networkd.service", "/lib/systemd/system/systemd-networkd.service"),
    ):
        link = wants / unit
        link.unlink(missing_ok=True)
        link.symlink_to(target)
    # The timers would only fail against a network the local cloud does not have, leaving systemd
    # "degraded"; masked like any unit an image does not want.
    # e2scrub_reap cleans up LVM snapshots these disks never have, and costs ~20 s of emulated CPU at boot.
    masked = ("apt-daily.timer", "apt-daily-upgrade.timer", "apt-daily.service", "apt-daily-upgrade.service")
    for unit in (*masked, "e2scrub_reap.service"):
        link = units / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    # Preinstalled only because nodes cannot apt-get it: like a fresh GCE image, nothing listens
    # on :80 until the program enables nginx on a controller.
    (wants / "nginx.service").unlink(missing_ok=True)
    # Per-instance identity is made at first boot: machine-id (empty means "first boot" to
    # systemd) and SSH host keys (kthw-guest runs ssh-keygen -A).
    # debootstrap leaves the .debs it installed; nodes have no use for them.
    for deb in (stage / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()
    (stage / "etc/machine-id").write_text("")
    (stage / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    for key in (stage / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (stage / "etc/hostname").write_text("localhost\n")
    (stage / "etc/hosts").write_text("127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n")
    # The namespace's router is the only resolver a node could have (the host's is never copied in).
    resolv = stage / "etc/resolv.conf"
    resolv.unlink(missing_ok=True)
    resolv.write_text("nameserver 10.240.0.1\n")
    (stage / "etc/fstab").write_text("/dev/vda / ext4 rw,errors=remount-ro 0 1\n")
    (stage / "etc/ssh/sshd_config.d").mkdir(exist_ok=True)
    (stage / "etc/ssh/sshd_config.d/10-kthw.conf").write_text(
        "PasswordAuthentication no\nUseDNS no\n"
        "HostKey /etc/ssh/ssh_host_ed25519_key\nHostKey /etc/ssh/ssh_host_ecdsa_key\n"
    )
    (stage / "etc/modules-load.d/kthw-guest.conf").write_text("qemu_fw_cfg\n")


def build(cache: Path | None = None, mirror: str | None = None) -> Image:
    """The image for the current inputs, built (and cached) if needed."""
    cache = cache or cache_root()
    mirror = mirror or apt_mirror()
    cache.mkdir(parents=True, exist_ok=True)
    directory = cache / f"image-{image_key(mirror)}"
    image = Image(directory / "root.img", directory / "vmlinuz", directory / "initrd.img")
    if (directory / ".kthw-complete").exists():
        return image
    rootfs = _rootfs(mirror, cache)
    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    stage = partial / "stage"
    partial.mkdir(parents=True)
    log = partial / "build.log"
    _run(["cp", "-a", "--reflink=auto", str(rootfs), str(stage)], log)
    (stage / ".kthw-complete").unlink()
    _customise(stage)
    kernels = sorted((stage / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise RuntimeError(f"no kernel under {stage}/boot")
    # Only what mounting the virtio root needs: a 6 MB initrd instead of 35 MB of every driver,
    # which the emulated CPU otherwise spends seconds unpacking at each boot.
    (stage / "etc/initramfs-tools/conf.d/kthw").write_text("MODULES=list\n")
    (stage / "etc/initramfs-tools/modules").write_text("virtio_pci\nvirtio_blk\next4\n")
    version = kernels[-1].name.removeprefix("vmlinuz-")
    _run(["chroot", str(stage), "update-initramfs", "-u", "-k", version], log)
    initrds = sorted((stage / "boot").glob(f"initrd.img-{version}"))
    shutil.copy(kernels[-1], partial / "vmlinuz")
    shutil.copy(initrds[-1], partial / "initrd.img")
    _run(["mkfs.ext4", "-q", "-F", "-L", "kthw-root", "-d", str(stage), str(partial / "root.img"), IMAGE_SIZE], log)
    # The same tree, kept for nodes that are systemd-nspawn machines rather than VMs.
    stage.rename(partial / "tree")
    (partial / ".kthw-complete").write_text(kernels[-1].name + "\n")
    shutil.rmtree(directory, ignore_errors=True)
    partial.rename(directory)
    _prune(cache, keep={directory.name, rootfs.name})
    return image


def _prune(cache: Path, keep: set[str]) -> None:
    """Drop images and rootfs trees of older inputs: only the current ones are ever booted."""
    for path in cache.iterdir():
        stem = path.name.removesuffix(".log")
        if not path.name.startswith(("image-", "rootfs-")) or stem in keep:
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def main() -> None:
    """`python -m tests.localcloud.image`: build (or find) the image and print where it is and how long it took."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cache", type=Path, default=None)
    args = parser.parse_args()
    start = time.monotonic()
    image = build(args.cache)
    print(
        json.dumps(
            {
                "image": str(image.root),
                "kernel": str(image.kernel),
                "initrd": str(image.initrd),
                "seconds": round(time.monotonic() - start, 1),
                "disk_bytes": image.disk_bytes(),
            }
        )
    )


if __name__ == "__main__":
    main()
