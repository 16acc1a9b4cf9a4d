"""The local platform's resources as Python dynamic providers: base image, switch and VM on this host.

Why a dynamic provider rather than `command.local.Command` with create and delete scripts: a VM
is a process that can die under Pulumi's feet (a host reboot, the OOM killer), and only a
provider's Read can say so. Here Read reports a VM, a switch or a cached image that is gone with
an empty id, which the engine takes as deleted; `pulumi up --refresh` then starts it again, a
VM from the disk it kept. A Command's state would claim the VM runs until `--replace`. The
provider also decides per field what a change means (memory restarts the VM on its disk, a new
key or image replaces it), checks each port before qemu binds it, and keeps its code in typed
Python instead of shell strings. The engine runs it through the SDK's `pulumi-resource-pulumi-python`
launcher in the project's directory, where `platforms.local` imports: the serialized provider
names its class by module, so the state does not change with the code.

Everything here runs without root: qemu's user-mode NAT and datagram sockets, files under the
user's state and cache directories, and /dev/kvm only through the kvm group.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ReadResult, ResourceProvider, UpdateResult

from platforms.local import download, qemu, switch
from platforms.local.qemu import VmLayout

# How long a new switch may take to bind its socket and write its pid file.
SWITCH_START_SECONDS = 15.0
# Beside a VM's disk: the VM's id, made when the disk is. A VM started again on its kept disk keeps
# its id (its node is bootstrapped already); a new disk is a new id, which re-runs the node's steps.
DISK_ID_FILE = "disk.id"


def _changed(olds: dict[str, Any], news: dict[str, Any], keys: tuple[str, ...]) -> list[str]:
    """The keys whose value differs (numbers compare as numbers: the engine hands ints back as floats)."""

    def norm(value: Any) -> Any:
        return int(value) if isinstance(value, float) and value.is_integer() else value

    return [k for k in keys if norm(olds.get(k)) != norm(news.get(k))]


def _diff(olds: dict[str, Any], news: dict[str, Any], replace: tuple[str, ...], update: tuple[str, ...]) -> DiffResult:
    replaces = _changed(olds, news, replace)
    changes = bool(replaces or _changed(olds, news, update))
    # Every replacement reuses names, paths and ports: the old one must go first.
    return DiffResult(changes=changes, replaces=replaces, delete_before_replace=True)


def _remove_empty(*directories: Path) -> None:
    for directory in directories:
        with contextlib.suppress(OSError):
            directory.rmdir()


class ImageProvider(ResourceProvider):
    """The base image in the user's cache, by SHA-512: created by downloading it, never deleted."""

    serialize_as_secret_always = False
    REPLACE: ClassVar[tuple[str, ...]] = ("sha512", "cache_dir")
    UPDATE: ClassVar[tuple[str, ...]] = ("url",)

    def _outs(self, props: dict[str, Any]) -> dict[str, Any]:
        target = Path(props["cache_dir"]) / f"{props['sha512']}.img"
        download.fetch(props["url"], props["sha512"], target)
        return {
            "url": props["url"],
            "sha512": props["sha512"],
            "cache_dir": props["cache_dir"],
            "path": str(target),
            "format": qemu.image_format(target),
        }

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(props["sha512"], self._outs(props))

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        return _diff(olds, news, self.REPLACE, self.UPDATE)

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(self._outs(news))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        path = props.get("path")
        if not path or not Path(path).is_file():
            return ReadResult("", {})
        return ReadResult(id_, props)

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        """Nothing: the cache outlives stacks (the next `up` of any stack reuses the download)."""


class SwitchProvider(ResourceProvider):
    """The switch process (platforms/local/switch.py) serving the stack's net directory."""

    serialize_as_secret_always = False
    REPLACE: ClassVar[tuple[str, ...]] = ("net_dir",)

    def create(self, props: dict[str, Any]) -> CreateResult:
        net_dir = Path(props["net_dir"])
        net_dir.mkdir(parents=True, exist_ok=True)
        # Only this user reaches the sockets: the cluster network is private to the stack's owner.
        net_dir.chmod(0o700)
        pid_file = net_dir / switch.PID_FILE
        if qemu.running_pid(pid_file, str(net_dir)) is None:
            pid_file.unlink(missing_ok=True)
            with (net_dir / "switch.log").open("ab") as log:
                # A session of its own: the engine ends its plugins' process groups, not this one.
                subprocess.Popen(
                    [sys.executable, "-I", str(Path(switch.__file__).resolve()), str(net_dir)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=net_dir,
                    start_new_session=True,
                )
            deadline = time.monotonic() + SWITCH_START_SECONDS
            while qemu.running_pid(pid_file, str(net_dir)) is None:
                if time.monotonic() > deadline:
                    tail = (net_dir / "switch.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"the switch in {net_dir} did not start:\n{tail}")
                time.sleep(0.05)
        outs = {"net_dir": str(net_dir), "socket": str(net_dir / switch.SWITCH_SOCKET)}
        return CreateResult(str(net_dir), outs)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        return _diff(olds, news, self.REPLACE, ())

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        net_dir = props.get("net_dir", id_)
        if qemu.running_pid(Path(net_dir) / switch.PID_FILE, net_dir) is None:
            return ReadResult("", {})
        return ReadResult(id_, props)

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        net_dir = Path(props["net_dir"])
        qemu.stop(net_dir / switch.PID_FILE, str(net_dir))
        shutil.rmtree(net_dir, ignore_errors=True)
        # The switch goes last (every VM depends on it): the state directory goes with it if empty.
        _remove_empty(net_dir.parent / "vms", net_dir.parent)


class VmProvider(ResourceProvider):
    """One qemu VM: an overlay on the base image, a NoCloud seed, two NICs, run as a daemon."""

    serialize_as_secret_always = False
    # What the guest was made from or is known by: a change makes a new VM (and a new disk).
    REPLACE: ClassVar[tuple[str, ...]] = (
        "name",
        "directory",
        "net_dir",
        "base_image",
        "disk_gb",
        "cluster_mac",
        "nat_mac",
        "seed",
    )
    # What only its qemu process is started with: a change restarts it on the same disk.
    UPDATE: ClassVar[tuple[str, ...]] = ("memory_mb", "cpus", "accel", "ssh_port", "api_port")

    @staticmethod
    def layout(props: dict[str, Any]) -> VmLayout:
        net_dir = Path(props["net_dir"])
        api = int(props["api_port"])
        return VmLayout(
            name=props["name"],
            directory=Path(props["directory"]),
            vm_socket=net_dir / f"{props['name']}.sock",
            switch_socket=net_dir / switch.SWITCH_SOCKET,
            cluster_mac=props["cluster_mac"],
            nat_mac=props["nat_mac"],
            ssh_port=int(props["ssh_port"]),
            api_port=api or None,
            memory_mb=int(props["memory_mb"]),
            cpus=int(props["cpus"]),
        )

    def _start(self, props: dict[str, Any]) -> dict[str, Any]:
        layout = self.layout(props)
        # Before anything is written: a taken port leaves nothing behind to clean up.
        qemu.check_ports(layout)
        layout.directory.mkdir(parents=True, exist_ok=True)
        layout.directory.chmod(0o700)
        layout.seed.mkdir(exist_ok=True)
        for name, content in sorted(props["seed"].items()):
            (layout.seed / name).write_text(content)
        id_file = layout.directory / DISK_ID_FILE
        # A disk that is already there is this VM's own, kept across a host reboot: boot it again.
        if not layout.disk.exists():
            # The id first: a disk is never there without one of its own.
            id_file.write_text(f"{props['name']}-{secrets.token_hex(4)}")
            qemu.create_overlay(Path(props["base_image"]), layout.disk, int(props["disk_gb"]))
        elif not id_file.exists():
            # A disk kept from before disk ids, when a VM's id was its name, keeps that id.
            id_file.write_text(props["name"])
        accel = qemu.choose_accel(props["accel"])
        qemu.start(layout, accel)
        return {**props, "accel_used": accel, "console": str(layout.console)}

    def create(self, props: dict[str, Any]) -> CreateResult:
        outs = self._start(props)
        return CreateResult((Path(props["directory"]) / DISK_ID_FILE).read_text(), outs)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        return _diff(olds, news, self.REPLACE, self.UPDATE)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        old = self.layout(olds)
        qemu.stop(old.pid_file, str(old.pid_file))
        return UpdateResult(self._start(news))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        if "directory" not in props:
            return ReadResult("", {})
        layout = self.layout(props)
        if qemu.running_pid(layout.pid_file, str(layout.pid_file)) is None:
            return ReadResult("", {})
        return ReadResult(id_, props)

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        layout = self.layout(props)
        qemu.stop(layout.pid_file, str(layout.pid_file))
        shutil.rmtree(layout.directory, ignore_errors=True)
        layout.vm_socket.unlink(missing_ok=True)


class BaseImage(pulumi.dynamic.Resource, module="kthw-local", name="BaseImage"):
    """The verified base image in the cache; `path` is what every VM's overlay is backed by."""

    path: pulumi.Output[str]

    def __init__(
        self, name: str, url: str, sha512: str, cache_dir: str, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        props = {"url": url, "sha512": sha512, "cache_dir": cache_dir, "path": None, "format": None}
        super().__init__(ImageProvider(), name, props, opts)


class Switch(pulumi.dynamic.Resource, module="kthw-local", name="Switch"):
    """The stack's cluster network: a switch process and the directory of its sockets."""

    socket: pulumi.Output[str]

    def __init__(self, name: str, net_dir: str, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(SwitchProvider(), name, {"net_dir": net_dir, "socket": None}, opts)


class VirtualMachine(pulumi.dynamic.Resource, module="kthw-local", name="VirtualMachine"):
    """One node's qemu VM; `accel_used` says whether it runs under KVM or TCG."""

    accel_used: pulumi.Output[str]
    console: pulumi.Output[str]

    def __init__(self, name: str, props: dict[str, pulumi.Input[Any]], opts: pulumi.ResourceOptions | None = None):
        super().__init__(VmProvider(), name, {**props, "accel_used": None, "console": None}, opts)
