"""The local cloud's nodes: qemu VMs booted from the cached image with a per-VM overlay and metadata."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.localcloud.image import Image, cache_root
from tests.localcloud.net import GATEWAY, Namespace

# Each node is an e2-standard-2 on GCE; here one vCPU and enough memory for a kubelet or a
# control plane, so that six fit on a 2-core, 24 GiB machine.
MEMORY_MB = 1536
KERNEL_CMDLINE = "root=/dev/vda rw console=ttyS0 panic=-1 net.ifnames=0"


@dataclass(frozen=True)
class Accel:
    """One way to run a guest: qemu arguments and kernel command line additions."""

    name: str
    args: tuple[str, ...]
    cmdline: str = ""


# Tried in order. On these machines /dev/kvm opens but the guest crawls or hangs with the usual
# CPU models, so each candidate is probed with a real kernel before it is trusted.
KVM_CANDIDATES = (
    Accel("kvm-max", ("-accel", "kvm", "-cpu", "max")),
    Accel("kvm-host-noarchcap", ("-accel", "kvm", "-cpu", "host,-arch-capabilities")),
    Accel(
        "kvm-q35-qemu64",
        ("-machine", "q35,accel=kvm", "-cpu", "qemu64,+ssse3,+sse4.1,+sse4.2,+popcnt", "-no-hpet"),
        "clocksource=kvm-clock tsc=reliable",
    ),
)
TCG = Accel("tcg", ("-accel", "tcg,thread=multi", "-cpu", "max"))


def kvm_usable() -> str | None:
    """Why KVM cannot run a stock Debian kernel here, or None if it may (then a probe decides).

    /dev/kvm must open read-write. A kernel whose only KVM backend is kvm_pvm (PVM: nested
    virtualisation without VMX/SVM, as on these machines) runs only PVM-enabled guest kernels at
    speed; Debian's kernel runs there in KVM's instruction emulator, slower than TCG (measured:
    no console output within 300 s, where TCG panics on a missing root in about 12 s).
    """
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as error:
        return f"/dev/kvm: {error.strerror}"
    os.close(fd)
    modules = Path("/sys/module")
    if (modules / "kvm_pvm").is_dir() and not any((modules / m).is_dir() for m in ("kvm_intel", "kvm_amd")):
        return "the host's KVM is kvm_pvm, which runs only PVM guest kernels at speed"
    return None


def probe(image: Image, accel: Accel, timeout: float = 60.0) -> float | None:
    """Seconds until the image's kernel, booted with no root disk, reaches its root-mount panic; None if it does not.

    That panic is printed after the kernel decompressed, calibrated its clocks and probed devices,
    the steps a broken CPU model or clock hangs in.
    """
    argv = [
        "qemu-system-x86_64",
        *accel.args,
        "-m",
        "512",
        "-nodefaults",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
        "-kernel",
        str(image.kernel),
        "-append",
        f"console=ttyS0 panic=-1 root=/dev/nonexistent rootwait=0 {accel.cmdline}".strip(),
    ]
    start = time.monotonic()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        assert process.stdout is not None
        out = b""
        os.set_blocking(process.stdout.fileno(), False)
        while time.monotonic() - start < timeout:
            chunk = process.stdout.read() or b""
            out += chunk
            if b"Kernel panic" in out or b"VFS: Unable to mount root" in out:
                return time.monotonic() - start
            if process.poll() is not None and not chunk:
                return None
            time.sleep(0.2)
        return None
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def choose_accel(image: Image, timeout: float = 30.0) -> tuple[Accel, dict[str, str]]:
    """The first KVM candidate whose probe passes, else TCG; with what each step found, for the record.

    A candidate slower than `timeout` to its root-mount panic loses to TCG anyway (about 12 s here).
    KTHW_LOCALCLOUD_ACCEL names a mode to use without probing.
    """
    forced = os.environ.get("KTHW_LOCALCLOUD_ACCEL")
    everything = {a.name: a for a in (*KVM_CANDIDATES, TCG)}
    if forced:
        if forced not in everything:
            raise ValueError(f"KTHW_LOCALCLOUD_ACCEL={forced!r}: expected one of {sorted(everything)}")
        return everything[forced], {"forced": forced}
    why_not = kvm_usable()
    if why_not is not None:
        return TCG, {"kvm": why_not}
    found: dict[str, str] = {}
    for accel in KVM_CANDIDATES:
        seconds = probe(image, accel, timeout)
        found[accel.name] = f"{seconds:.1f}s" if seconds is not None else f"no root-mount panic within {timeout:.0f}s"
        if seconds is not None:
            return accel, found
    return TCG, found


@dataclass(frozen=True)
class Instance:
    """What GCE would know about an instance: its name, addresses and `ssh-keys` metadata."""

    name: str
    internal_ip: str
    external_ip: str
    ssh_keys: str

    def metadata(self) -> dict[str, str]:
        """The guest step's metadata keys (tests/localcloud/guest/kthw-guest reads them)."""
        prefix = GATEWAY.network.prefixlen
        return {
            "name": self.name,
            "ip": f"{self.internal_ip}/{prefix}",
            "gateway": str(GATEWAY.ip),
            "external-ip": self.external_ip,
            "ssh-keys": self.ssh_keys,
        }


def qmp_socket(workdir: Path) -> Path:
    """The VM's QMP socket: short, under /tmp, since a unix socket's path has at most 107 bytes."""
    return Path("/tmp") / f"kthw-qmp-{hashlib.sha256(str(workdir).encode()).hexdigest()[:16]}.sock"


def powerdown(workdir: Path) -> bool:
    """Press the VM's ACPI power button over QMP (GCE's stop): the guest shuts down and, with
    -no-reboot, qemu exits. False when the monitor does not answer."""
    try:
        with socket.socket(socket.AF_UNIX) as conn:
            conn.settimeout(10)
            conn.connect(str(qmp_socket(workdir)))
            reader = conn.makefile("r")
            reader.readline()  # the greeting
            for command in ("qmp_capabilities", "system_powerdown"):
                conn.sendall(json.dumps({"execute": command}).encode() + b"\n")
                while "return" not in (reply := json.loads(reader.readline() or "{}")) and "error" not in reply:
                    pass  # events may come first
        return True
    except (OSError, ValueError):
        return False


def mac_address(ip: str) -> str:
    """A stable locally administered MAC from the internal IP, so each NIC is distinct."""
    packed = ipaddress.ip_address(ip).packed
    return "52:54:" + ":".join(f"{b:02x}" for b in packed)


@dataclass
class VM:
    """One running qemu VM inside the namespace, with its overlay disk, metadata files and console log."""

    instance: Instance
    image: Image
    accel: Accel
    namespace: Namespace
    workdir: Path
    memory_mb: int = MEMORY_MB
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    started: float = field(default=0.0, init=False)

    @property
    def console(self) -> Path:
        return self.workdir / "console.log"

    def start(self, keep_disk: bool = False) -> VM:
        """Boot the VM; `keep_disk` boots the overlay a stopped VM left (GCE's start after a stop)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        overlay = self.workdir / "disk.qcow2"
        if not (keep_disk and overlay.exists()):
            subprocess.run(
                ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(self.image.root), str(overlay)],
                check=True,
                timeout=60,
            )
        meta = self.workdir / "metadata"
        meta.mkdir(exist_ok=True)
        fw_cfg: list[str] = []
        for key, value in self.instance.metadata().items():
            (meta / key).write_text(value)
            fw_cfg += ["-fw_cfg", f"name=opt/kthw/{key},file={meta / key}"]
        tap = self.namespace.add_tap(f"tap-{self.instance.internal_ip.rsplit('.', 1)[1]}")
        argv = self.namespace.command(
            "qemu-system-x86_64",
            *self.accel.args,
            "-name",
            self.instance.name,
            "-m",
            str(self.memory_mb),
            "-smp",
            "1",
            "-nodefaults",
            "-display",
            "none",
            "-serial",
            f"file:{self.console}",
            "-no-reboot",
            # The monitor a stop uses to press the power button, as GCE's stop does (ACPI).
            "-qmp",
            f"unix:{qmp_socket(self.workdir)},server=on,wait=off",
            "-kernel",
            str(self.image.kernel),
            "-initrd",
            str(self.image.initrd),
            "-append",
            f"{KERNEL_CMDLINE} {self.accel.cmdline}".strip(),
            "-drive",
            f"file={overlay},if=virtio,format=qcow2,cache=unsafe",
            "-netdev",
            f"tap,id=n0,ifname={tap},script=no,downscript=no",
            "-device",
            f"virtio-net-pci,netdev=n0,mac={mac_address(self.instance.internal_ip)}",
            "-device",
            "virtio-rng-pci",
            *fw_cfg,
        )
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=(self.workdir / "qemu.log").open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def cpu_seconds(self) -> float:
        """CPU time qemu has used so far: boot cost independent of how loaded the host is."""
        assert self.process is not None
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        """Kill this VM's qemu (its own process group, nothing else) and drop its overlay."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        (self.workdir / "disk.qcow2").unlink(missing_ok=True)
        qmp_socket(self.workdir).unlink(missing_ok=True)


def scratch_dir(name: str) -> Path:
    """A fresh per-run directory under the cache (overlays are large; the repo and /tmp stay clean)."""
    path = cache_root() / "runs" / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path
