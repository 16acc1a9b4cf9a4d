"""qemu for the local platform: the accelerator, a VM's command line (pure), and its daemon's life on this host."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from platforms.local.seed import SEED_LABEL

QEMU = "qemu-system-x86_64"
QEMU_IMG = "qemu-img"
# What qemu prints when a hostfwd port cannot be bound (7.2): the one start failure a user can fix alone.
HOSTFWD_FAILED = "Could not set up host forwarding rule"


@dataclass(frozen=True)
class VmLayout:
    """Everything a VM's command line names: files, sockets, NICs, ports and size."""

    name: str
    directory: Path  # disk.qcow2, seed/, console.log, qemu.pid, qemu.log
    vm_socket: Path  # the cluster NIC's end of the switch
    switch_socket: Path
    cluster_mac: str
    nat_mac: str
    ssh_port: int
    api_port: int | None
    memory_mb: int
    cpus: int

    @property
    def disk(self) -> Path:
        return self.directory / "disk.qcow2"

    @property
    def seed(self) -> Path:
        return self.directory / "seed"

    @property
    def console(self) -> Path:
        return self.directory / "console.log"

    @property
    def pid_file(self) -> Path:
        return self.directory / "qemu.pid"

    @property
    def log(self) -> Path:
        return self.directory / "qemu.log"


def kvm_unusable() -> str | None:
    """Why this host cannot run a stock Debian kernel under KVM, or None if it can.

    /dev/kvm must open read-write (the kvm group, no root). A host whose only KVM backend is
    kvm_pvm (nested virtualisation without VMX/SVM) runs only PVM-enabled guest kernels at speed;
    Debian's kernel crawls there, slower than emulation.
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


def choose_accel(requested: str) -> str:
    """ "kvm" or "tcg" for a requested "auto", "kvm" or "tcg"; asking for KVM where it does not work fails."""
    if requested == "tcg":
        return "tcg"
    why_not = kvm_unusable()
    if requested == "kvm" and why_not is not None:
        raise RuntimeError(f"kthw:localAccel is kvm but {why_not}")
    return "tcg" if why_not is not None else "kvm"


def accel_args(accel: str) -> list[str]:
    if accel == "kvm":
        return ["-accel", "kvm", "-cpu", "host"]
    # Every vCPU on a host thread of its own; "max" gives the guest every feature TCG emulates.
    return ["-accel", "tcg,thread=multi", "-cpu", "max"]


def _opt(path: Path) -> str:
    """A path as a qemu option value: qemu splits options at commas and reads ",," as one comma."""
    return str(path).replace(",", ",,")


def command_line(layout: VmLayout, accel: str) -> list[str]:
    """The qemu command that runs the VM as a daemon: NAT NIC first (cloud-init's fallback DHCPs the first NIC)."""
    forwards = f"hostfwd=tcp:127.0.0.1:{layout.ssh_port}-:22"
    if layout.api_port is not None:
        forwards += f",hostfwd=tcp:127.0.0.1:{layout.api_port}-:6443"
    return [
        QEMU,
        "-name",
        f"{layout.name},process=kthw-{layout.name}",
        *accel_args(accel),
        "-smp",
        str(layout.cpus),
        "-m",
        str(layout.memory_mb),
        "-nodefaults",
        "-display",
        "none",
        # Appended, not truncated: the console of every boot of this VM, for a post-mortem.
        "-chardev",
        f"file,id=console,path={_opt(layout.console)},append=on",
        "-serial",
        "chardev:console",
        "-blockdev",
        f"driver=qcow2,node-name=disk,file.driver=file,file.filename={_opt(layout.disk)}",
        "-device",
        "virtio-blk-pci,drive=disk,bootindex=0",
        # The NoCloud seed as a read-only FAT disk made by qemu from the directory: no root, no mkisofs.
        "-blockdev",
        f"driver=vvfat,node-name=seed,dir={_opt(layout.seed)},label={SEED_LABEL},read-only=on",
        "-device",
        "virtio-blk-pci,drive=seed",
        "-netdev",
        f"user,id=nat,{forwards}",
        "-device",
        f"virtio-net-pci,netdev=nat,mac={layout.nat_mac}",
        "-netdev",
        "dgram,id=cluster,local.type=unix,"
        f"local.path={_opt(layout.vm_socket)},remote.type=unix,remote.path={_opt(layout.switch_socket)}",
        "-device",
        f"virtio-net-pci,netdev=cluster,mac={layout.cluster_mac}",
        "-device",
        "virtio-rng-pci",
        "-pidfile",
        str(layout.pid_file),
        "-daemonize",
    ]


def image_format(path: Path) -> str:
    """The disk format qemu-img detects (qcow2 for Debian's cloud images; raw also works)."""
    out = _qemu_img("info", "--output=json", str(path))
    found: str = json.loads(out)["format"]
    return found


def create_overlay(base: Path, disk: Path, size_gb: int) -> None:
    """A qcow2 of `size_gb` backed by the base image: the VM writes here, the base stays as downloaded."""
    _qemu_img("create", "-q", "-f", "qcow2", "-F", image_format(base), "-b", str(base), str(disk), f"{size_gb}G")


def _qemu_img(*args: str) -> str:
    result = subprocess.run([QEMU_IMG, *args], capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{QEMU_IMG} {args[0]}: {result.stderr.strip()}")
    return result.stdout


def port_taken(port: int) -> bool:
    """Whether something on this host already listens on 127.0.0.1:port (or holds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def check_ports(layout: VmLayout) -> None:
    """Fail, naming the port and the setting, if another process holds one of the VM's forwarded ports."""
    for port in (layout.ssh_port, layout.api_port):
        if port is not None and port_taken(port):
            raise RuntimeError(
                f"{layout.name}: 127.0.0.1:{port} is taken on this host; free it or choose another kthw:localPortBase"
            )


_PF_KTHREAD = 0x00200000


def _holds(pid: int, marker: str) -> bool:
    """Whether `pid` is the process whose command line names `marker` and any of its threads has not exited.

    A killed qemu (many threads) can show a zombie main thread, and threads whose memory (so
    their command line) is gone, while they still release its sockets and ports: it is gone only
    once every thread has exited. A stale pid file (after a reboot) may name an unrelated process
    or a kernel thread: those are not ours.
    """
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    exiting = False
    for task in tasks:
        try:
            fields = Path(f"/proc/{pid}/task/{task}/stat").read_text().rsplit(")", 1)[1].split()
            raw = Path(f"/proc/{pid}/task/{task}/cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        if fields[0] in ("Z", "X") or int(fields[6]) & _PF_KTHREAD:
            continue
        if raw:
            return marker in raw.decode(errors="replace").split("\0")
        exiting = True
    return exiting


def running_pid(pid_file: Path, marker: str) -> int | None:
    """The pid in `pid_file` while that process (named by `marker` on its command line) holds anything."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if _holds(pid, marker) else None


def stop(pid_file: Path, marker: str, timeout: float = 20.0) -> None:
    """End the process `pid_file` names (SIGTERM, then SIGKILL after `timeout`); nothing if it is gone."""
    pid = running_pid(pid_file, marker)
    if pid is None:
        return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        # The process itself, not its pid file: a process may remove that file on its way out and
        # still be running (seen with the switch, under load).
        while time.monotonic() < deadline:
            if not _holds(pid, marker):
                return
            time.sleep(0.1)
    raise RuntimeError(f"process {pid} ({marker}) did not exit after SIGKILL")


def start(layout: VmLayout, accel: str) -> int:
    """Start the VM's qemu as a daemon (it outlives this process); its pid once qemu says it is running.

    qemu daemonizes only after its devices are set up, so a port it cannot bind or a file it
    cannot open fails here, with its own message.
    """
    check_ports(layout)
    # A socket left by a VM that did not exit cleanly (host reboot) would fail qemu's bind().
    layout.vm_socket.unlink(missing_ok=True)
    layout.pid_file.unlink(missing_ok=True)
    argv = command_line(layout, accel)
    with layout.log.open("ab") as log:
        log.write(("$ " + " ".join(argv) + "\n").encode())
        log.flush()
        result = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, timeout=120)
    if result.returncode != 0:
        tail = layout.log.read_text(errors="replace").splitlines()[-15:]
        hint = "; a port is taken: choose another kthw:localPortBase" if HOSTFWD_FAILED in "\n".join(tail) else ""
        raise RuntimeError(f"{layout.name}: qemu exited with {result.returncode}{hint}:\n" + "\n".join(tail))
    pid = running_pid(layout.pid_file, str(layout.pid_file))
    if pid is None:
        raise RuntimeError(f"{layout.name}: qemu daemonized but no live process is named in {layout.pid_file}")
    return pid


def missing_tools() -> list[str]:
    """What this host lacks to run the local platform, one line each (empty: nothing)."""
    return [
        f"{tool} is not on PATH (Debian: apt-get install qemu-system-x86 qemu-utils)"
        for tool in (QEMU, QEMU_IMG)
        if shutil.which(tool) is None
    ]
