"""The local platform's machinery without booting a guest: settings, seed, qemu command line, switch, download,
providers (real qemu daemons with no bootable disk), and LocalVms under mocks."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from platforms.local import download, provider, qemu, seed, settings, switch
from platforms.local.settings import LocalNode, LocalSettings
from platforms.local.vms import LocalVms, LocalVmsArgs
from tests import processes
from tests.harness import run_components, watch
from tests.tools import require_tool

CIDR = "10.240.0.0/24"
CONTROLLER = LocalNode("controller-0", "controller", "10.240.0.10")
WORKER = LocalNode("worker-0", "worker", "10.240.0.20")
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGsm5Bq0yXg0vK4kV6p3ZlPrXd4I5o4n1x1b5p0m2Q5X kthw"


def _settings(tmp_path: Path, **overrides: Any) -> LocalSettings:
    return replace(LocalSettings(state_dir=str(tmp_path / "state"), cache_dir=str(tmp_path / "cache")), **overrides)


# --- settings -------------------------------------------------------------------------------------


def test_ports_follow_the_host_number_so_scaling_keeps_every_port(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    assert settings.ssh_port(s, CONTROLLER, CIDR) == 21010
    assert settings.api_port(s, CONTROLLER, CIDR) == 22010
    assert settings.ssh_port(s, WORKER, CIDR) == 21020
    assert settings.api_port(s, WORKER, CIDR) is None
    assert settings.ssh_port(replace(s, port_base=30000), LocalNode("worker-3", "worker", "10.240.0.23"), CIDR) == 30023


def test_macs_are_locally_administered_unicast_and_distinct_per_nic_and_node() -> None:
    macs = {f(n.internal_ip) for n in (CONTROLLER, WORKER) for f in (settings.cluster_mac, settings.nat_mac)}
    assert len(macs) == 4
    for mac in macs:
        first = int(mac.split(":")[0], 16)
        assert first & 0b10 and not first & 0b01, mac
    assert settings.cluster_mac("10.240.0.10") == "52:54:0a:f0:00:0a"


def test_default_image_is_the_pinned_debian_genericcloud_release() -> None:
    assert settings.DEFAULT_IMAGE_URL.endswith("/debian-12-genericcloud-amd64-20250210-2019.qcow2")
    assert settings.DEFAULT_IMAGE_SHA512.startswith("a58d86525d75fd8e") and len(settings.DEFAULT_IMAGE_SHA512) == 128


def test_defaults_follow_xdg_directories() -> None:
    env = {"HOME": "/home/ada"}
    assert settings.default_state_dir("kthw", "local", env) == "/home/ada/.local/state/kthw/kthw-local"
    assert settings.default_cache_dir(env) == "/home/ada/.cache/kthw/images"
    env = {"HOME": "/home/ada", "XDG_STATE_HOME": "/s", "XDG_CACHE_HOME": "/c"}
    assert settings.default_state_dir("kthw", "dev", env) == "/s/kthw/kthw-dev"
    assert settings.default_cache_dir(env) == "/c/kthw/images"


def test_good_settings_have_no_problems(tmp_path: Path) -> None:
    assert settings.problems(_settings(tmp_path), [CONTROLLER, WORKER], CIDR) == []


@pytest.mark.parametrize(
    ("overrides", "nodes", "expected"),
    [
        ({"image_sha512": "abc"}, [WORKER], "kthw:localImageSha512"),
        ({"image_url": "ftp://x/y.qcow2"}, [WORKER], "kthw:localImageUrl"),
        ({"state_dir": "relative/dir"}, [WORKER], "kthw:localStateDir = 'relative/dir'"),
        ({"cache_dir": "~/cache"}, [WORKER], "kthw:localCacheDir"),
        ({"memory_mb": 512}, [WORKER], "kthw:localMemoryMb = 512"),
        ({"cpus": 0}, [WORKER], "kthw:localCpus"),
        ({"disk_gb": 2}, [WORKER], "kthw:localDiskGb"),
        ({"accel": "hvf"}, [WORKER], "kthw:localAccel"),
        ({"port_base": 80}, [WORKER], "at least 1024"),
        ({"port_base": 64600}, [WORKER], "pass 65535"),
        ({"ssh_user": "root"}, [WORKER], "root"),
        ({}, [WORKER, WORKER], "worker-0 is listed twice"),
        ({}, [LocalNode("worker-0", "worker", "10.241.0.20")], "outside nodeCidr"),
        ({}, [LocalNode("worker-0", "etcd", "10.240.0.20")], "neither controller nor worker"),
        ({"state_dir": "/" + "d" * 100}, [WORKER], "longer than a unix socket path"),
    ],
)
def test_each_bad_setting_gets_one_line_naming_it(
    tmp_path: Path, overrides: dict[str, Any], nodes: list[LocalNode], expected: str
) -> None:
    found = settings.problems(_settings(tmp_path, **overrides), nodes, CIDR)
    assert len(found) == 1, found
    assert expected in found[0]


# --- seed -----------------------------------------------------------------------------------------


def test_user_data_gives_the_user_the_key_and_passwordless_sudo_and_the_hostname() -> None:
    text = seed.user_data(WORKER, "kthw", KEY + "\n")
    assert text.startswith("#cloud-config\n")
    doc = yaml.safe_load(text)
    assert doc["hostname"] == "worker-0"
    (user,) = doc["users"]
    assert user["name"] == "kthw"
    assert user["ssh_authorized_keys"] == [KEY]
    assert user["sudo"] == "ALL=(ALL) NOPASSWD:ALL"
    assert user["lock_passwd"] is True
    assert "ssh_pwauth" not in doc, "cloud-init would restart sshd under the SSH gate"
    assert "rsa" not in doc["ssh_genkeytypes"]


def test_network_config_puts_the_internal_ip_on_the_cluster_nic_and_dhcp_on_nat() -> None:
    doc = yaml.safe_load(seed.network_config(CONTROLLER, CIDR))
    assert doc["version"] == 2
    cluster, nat = doc["ethernets"]["cluster"], doc["ethernets"]["nat"]
    assert cluster["match"] == {"macaddress": "52:54:0a:f0:00:0a"}
    assert cluster["addresses"] == ["10.240.0.10/24"]
    assert cluster["dhcp4"] is False and "gateway4" not in cluster and "routes" not in cluster
    assert nat["match"] == {"macaddress": "52:56:0a:f0:00:0a"}
    assert nat["dhcp4"] is True


def test_meta_data_names_the_instance() -> None:
    assert yaml.safe_load(seed.meta_data(WORKER)) == {"instance-id": "kthw-worker-0", "local-hostname": "worker-0"}


# --- qemu command line ----------------------------------------------------------------------------


def _layout(tmp_path: Path, node: LocalNode, ssh: int, api: int | None) -> qemu.VmLayout:
    return qemu.VmLayout(
        name=node.name,
        directory=tmp_path / "vms" / node.name,
        vm_socket=tmp_path / "net" / f"{node.name}.sock",
        switch_socket=tmp_path / "net" / switch.SWITCH_SOCKET,
        cluster_mac=settings.cluster_mac(node.internal_ip),
        nat_mac=settings.nat_mac(node.internal_ip),
        ssh_port=ssh,
        api_port=api,
        memory_mb=1024,
        cpus=1,
    )


def test_command_line_forwards_ssh_and_api_on_loopback_only(tmp_path: Path) -> None:
    argv = qemu.command_line(_layout(tmp_path, CONTROLLER, 21010, 22010), "tcg")
    nat = argv[argv.index("-netdev") + 1]
    assert nat == "user,id=nat,hostfwd=tcp:127.0.0.1:21010-:22,hostfwd=tcp:127.0.0.1:22010-:6443"
    worker = qemu.command_line(_layout(tmp_path, WORKER, 21020, None), "tcg")
    assert "user,id=nat,hostfwd=tcp:127.0.0.1:21020-:22" in worker
    assert not any(":6443" in a for a in worker)


def test_command_line_joins_the_switch_by_datagram_socket_and_reads_a_vvfat_seed(tmp_path: Path) -> None:
    argv = qemu.command_line(_layout(tmp_path, WORKER, 21020, None), "kvm")
    joined = " ".join(argv)
    assert f"local.path={tmp_path}/net/worker-0.sock" in joined
    assert f"remote.path={tmp_path}/net/switch.sock" in joined
    assert f"dir={tmp_path}/vms/worker-0/seed,label=cidata,read-only=on" in joined
    assert "virtio-net-pci,netdev=cluster,mac=52:54:0a:f0:00:14" in argv
    assert argv[argv.index("-accel") + 1] == "kvm"
    assert argv[-3:] == ["-pidfile", f"{tmp_path}/vms/worker-0/qemu.pid", "-daemonize"]
    assert qemu.accel_args("tcg") == ["-accel", "tcg,thread=multi", "-cpu", "max"]


def test_asking_for_tcg_never_probes_kvm() -> None:
    assert qemu.choose_accel("tcg") == "tcg"


def test_accel_auto_follows_kvm_usability() -> None:
    assert qemu.choose_accel("auto") == ("tcg" if qemu.kvm_unusable() else "kvm")


# --- the switch -----------------------------------------------------------------------------------


def _frame(destination: str, source: str, payload: bytes = b"x" * 46) -> bytes:
    return bytes.fromhex(destination.replace(":", "")) + bytes.fromhex(source.replace(":", "")) + b"\x08\x00" + payload


@contextlib.contextmanager
def _switch(directory: Path) -> Iterator[subprocess.Popen[bytes]]:
    directory.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen([sys.executable, "-I", switch.__file__, str(directory)], stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not (directory / switch.PID_FILE).exists():
            assert process.poll() is None, "the switch exited"
            assert time.monotonic() < deadline, "the switch wrote no pid file"
            time.sleep(0.02)
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)


def _port(directory: Path, name: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(directory / f"{name}.sock"))
    s.settimeout(0.3)
    return s


def _received(s: socket.socket) -> list[bytes]:
    got = []
    with contextlib.suppress(TimeoutError):
        while True:
            got.append(s.recv(65536))
    return got


A, B, C = "52:54:00:00:00:0a", "52:54:00:00:00:0b", "52:54:00:00:00:0c"
BROADCAST = "ff:ff:ff:ff:ff:ff"


def test_switch_floods_broadcast_then_forwards_learned_unicast_only_to_its_port(tmp_path: Path) -> None:
    net = tmp_path / "net"
    with _switch(net) as process:
        a, b, c = (_port(net, n) for n in "abc")
        hub = str(net / switch.SWITCH_SOCKET)
        a.sendto(_frame(BROADCAST, A, b"who-has"), hub)
        assert _received(b) == [_frame(BROADCAST, A, b"who-has")]
        assert _received(c) == [_frame(BROADCAST, A, b"who-has")]
        assert _received(a) == [], "a frame went back to its sender"
        b.sendto(_frame(A, B, b"is-at"), hub)
        assert _received(a) == [_frame(A, B, b"is-at")]
        assert _received(c) == [], "a unicast to a learned MAC was flooded"
        # An unknown destination floods, as on any switch.
        a.sendto(_frame(C, A, b"hello"), hub)
        assert _received(b) == [_frame(C, A, b"hello")] and _received(c) == [_frame(C, A, b"hello")]
        # A port that went away (its VM stopped) costs nothing: the switch keeps serving the others.
        a.close()
        (net / "a.sock").unlink()
        b.sendto(_frame(A, B, b"lost"), hub)
        c.sendto(_frame(B, C, b"still"), hub)
        assert _received(b) == [_frame(B, C, b"still")]
        assert process.poll() is None
        assert int((net / switch.PID_FILE).read_text()) == process.pid
    assert not (net / switch.SWITCH_SOCKET).exists() and not (net / switch.PID_FILE).exists()


# --- download -------------------------------------------------------------------------------------


def test_download_verifies_sha512_before_the_file_gets_its_cached_name(tmp_path: Path) -> None:
    source = tmp_path / "image.qcow2"
    source.write_bytes(b"disk" * 1000)
    digest = hashlib.sha512(source.read_bytes()).hexdigest()
    target = tmp_path / "cache" / f"{digest}.img"
    wrong = tmp_path / "cache" / f"{'0' * 128}.img"
    with pytest.raises(download.ChecksumMismatchError, match=digest):
        download.fetch(source.as_uri(), "0" * 128, wrong)
    assert not wrong.exists() and list((tmp_path / "cache").iterdir()) == []
    assert download.fetch(source.as_uri(), digest, target) == target
    assert target.read_bytes() == source.read_bytes()
    assert target.stat().st_mode & 0o777 == 0o444
    # Cached: the URL is not read again.
    assert download.fetch("http://127.0.0.1:9/never-read", digest, target) == target


# --- providers: diffs -----------------------------------------------------------------------------

VM_PROPS: dict[str, Any] = {
    "name": "worker-0",
    "directory": "/s/vms/worker-0",
    "net_dir": "/s/net",
    "base_image": "/c/x.img",
    "disk_gb": 20,
    "memory_mb": 2048,
    "cpus": 2,
    "accel": "auto",
    "cluster_mac": "52:54:0a:f0:00:14",
    "nat_mac": "52:56:0a:f0:00:14",
    "ssh_port": 21020,
    "api_port": 0,
    "seed": {"user-data": "#cloud-config\n", "meta-data": "", "network-config": ""},
}


def test_vm_diff_numbers_from_the_engine_as_floats_are_no_change() -> None:
    olds = {**VM_PROPS, "disk_gb": 20.0, "memory_mb": 2048.0, "ssh_port": 21020.0, "accel_used": "tcg"}
    result = provider.VmProvider().diff("worker-0", olds, VM_PROPS)
    assert result.changes is False and result.replaces == []


def test_vm_diff_restarts_for_memory_and_replaces_for_a_new_seed() -> None:
    memory = provider.VmProvider().diff("worker-0", VM_PROPS, {**VM_PROPS, "memory_mb": 4096})
    assert memory.changes is True and memory.replaces == []
    key = {**VM_PROPS, "seed": {**VM_PROPS["seed"], "user-data": "#cloud-config\nother\n"}}
    replaced = provider.VmProvider().diff("worker-0", VM_PROPS, key)
    assert replaced.replaces == ["seed"] and replaced.delete_before_replace is True


def test_image_diff_new_url_same_digest_is_an_update_new_digest_a_replacement() -> None:
    olds = {"url": "http://a/x", "sha512": "1" * 128, "cache_dir": "/c", "path": "/c/1.img", "format": "qcow2"}
    moved = provider.ImageProvider().diff("i", olds, {**olds, "url": "http://b/x"})
    assert moved.changes is True and moved.replaces == []
    assert provider.ImageProvider().diff("i", olds, {**olds, "sha512": "2" * 128}).replaces == ["sha512"]


def test_reads_of_what_is_gone_return_an_empty_id(tmp_path: Path) -> None:
    vm = {**VM_PROPS, "directory": str(tmp_path / "vms/worker-0"), "net_dir": str(tmp_path / "net")}
    assert provider.VmProvider().read("worker-0", vm).id == ""
    assert provider.SwitchProvider().read(str(tmp_path / "net"), {"net_dir": str(tmp_path / "net")}).id == ""
    assert provider.ImageProvider().read("x", {"path": str(tmp_path / "none.img")}).id == ""


# --- providers: real processes --------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _qemu() -> None:
    for tool in (qemu.QEMU, qemu.QEMU_IMG):
        require_tool(tool)


def test_switch_provider_starts_a_daemon_that_read_sees_and_delete_ends(tmp_path: Path) -> None:
    state = tmp_path / "state"
    props = {"net_dir": str(state / "net")}
    p = provider.SwitchProvider()
    created = p.create(props)
    pid = int((state / "net" / switch.PID_FILE).read_text())
    try:
        assert os.getsid(pid) == pid, "the switch must lead a session of its own to outlive the plugin"
        assert p.read(created.id or "", created.outs or {}).id == created.id
        assert (state / "net").stat().st_mode & 0o777 == 0o700
    finally:
        p.delete(created.id or "", created.outs or {})
        alive = processes.kill_naming(str(state))
    assert alive == {}, "delete left the switch running"
    assert not state.exists(), "delete leaves no files"


def test_vm_provider_runs_qemu_as_a_daemon_restarts_it_on_update_and_removes_it_on_delete(tmp_path: Path) -> None:
    _qemu()
    base = tmp_path / "base.qcow2"
    subprocess.run([qemu.QEMU_IMG, "create", "-q", "-f", "qcow2", str(base), "64M"], check=True)
    net = tmp_path / "state" / "net"
    switches = provider.SwitchProvider()
    switches.create({"net_dir": str(net)})
    props = {
        **VM_PROPS,
        "directory": str(tmp_path / "state/vms/worker-0"),
        "net_dir": str(net),
        "base_image": str(base),
        # Under TCG a disk with nothing bootable idles in the firmware: a real daemon, no guest.
        "accel": "tcg",
        "memory_mb": 128,
        "cpus": 1,
        "ssh_port": _free_port(),
    }
    vms = provider.VmProvider()
    created = vms.create(props)
    outs = created.outs or {}
    pid_file = tmp_path / "state/vms/worker-0/qemu.pid"
    try:
        first = qemu.running_pid(pid_file, str(pid_file))
        # qemu's -daemonize leaves the session of its caller (the plugin, which the engine ends).
        assert first is not None and os.getsid(first) != os.getsid(0)
        assert outs["accel_used"] == "tcg"
        assert (tmp_path / "state/vms/worker-0/seed/user-data").read_text() == "#cloud-config\n"
        assert (net / "worker-0.sock").exists()
        assert qemu.port_taken(props["ssh_port"]), "nothing listens on the forwarded SSH port"
        # Its id is its disk's: the node's steps hang off it (a new disk must be bootstrapped anew).
        assert re.fullmatch(r"worker-0-[0-9a-f]{8}", created.id or ""), created.id
        assert vms.read(created.id or "", outs).id == created.id
        disk = tmp_path / "state/vms/worker-0/disk.qcow2"
        disk_inode = disk.stat().st_ino
        updated = vms.update("worker-0", outs, {**props, "memory_mb": 192})
        second = qemu.running_pid(pid_file, str(pid_file))
        assert second not in (None, first)
        assert disk.stat().st_ino == disk_inode, "an update must keep the disk"
        assert f"{props['memory_mb']}" not in Path(f"/proc/{second}/cmdline").read_bytes().decode().split("\0")
        # A VM that died (host reboot) reads as gone; its disk stays for the next create.
        os.kill(second or 0, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while vms.read("worker-0", updated.outs or {}).id != "":
            assert time.monotonic() < deadline, "a killed VM still reads as running"
            time.sleep(0.1)
        qemu_io = [qemu.QEMU_IMG.replace("-img", "-io"), "-f", "qcow2"]
        subprocess.run([*qemu_io, "-c", "write -P 0x5a 0 64k", str(disk)], check=True, capture_output=True)
        again = vms.create({**props, "memory_mb": 192})
        assert again.id == created.id, "a VM started on its kept disk is the same node"
        # -U: read beside the running qemu, which holds the image's write lock.
        kept = subprocess.run([*qemu_io, "-r", "-U", "-c", "read -P 0x5a 0 64k", str(disk)], capture_output=True)
        assert kept.returncode == 0 and b"Pattern verification failed" not in kept.stdout, kept.stdout
        # Replaced: the old one deleted with its disk, the new one a new disk, so a new id.
        vms.delete(again.id or "", {**props, "memory_mb": 192})
        replaced = vms.create(props)
        assert replaced.id != created.id and (replaced.id or "").startswith("worker-0-"), replaced.id
    finally:
        vms.delete("worker-0", props)
        switches.delete(str(net), {"net_dir": str(net)})
    # Never leave a daemon behind, even when the provider failed to stop it.
    assert processes.kill_naming(str(tmp_path)) == {}
    assert not (tmp_path / "state").exists()


def test_a_taken_port_fails_the_create_naming_the_port_and_the_setting(tmp_path: Path) -> None:
    _qemu()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        props = {**VM_PROPS, "directory": str(tmp_path / "vms/worker-0"), "net_dir": str(tmp_path / "net")}
        with pytest.raises(RuntimeError, match=rf"127\.0\.0\.1:{port} is taken.*kthw:localPortBase"):
            provider.VmProvider().create({**props, "ssh_port": port, "base_image": str(tmp_path / "none")})


# --- LocalVms under mocks -------------------------------------------------------------------------


def test_local_vms_registers_image_switch_and_one_vm_per_node_with_computed_ports(tmp_path: Path) -> None:
    s = _settings(tmp_path)

    def build() -> None:
        vms = LocalVms("local", LocalVmsArgs([CONTROLLER, WORKER], CIDR, KEY, s))
        watch("ports", {n: (m.host, m.ssh_port, m.api_port) for n, m in vms.machines.items()})

    recording = run_components(build)
    by_name = {r.name: r for r in recording.resources}
    assert by_name["local"].type == "kthw:local:LocalVms"
    assert by_name["local-image"].type == "pulumi-python:dynamic/kthw-local:BaseImage"
    assert by_name["local-image"].inputs["sha512"] == settings.DEFAULT_IMAGE_SHA512
    assert by_name["local-switch"].inputs["net_dir"] == str(tmp_path / "state/net")
    controller, worker = by_name["local-controller-0"], by_name["local-worker-0"]
    assert controller.type == worker.type == "pulumi-python:dynamic/kthw-local:VirtualMachine"
    assert (controller.inputs["ssh_port"], controller.inputs["api_port"]) == (21010, 22010)
    assert (worker.inputs["ssh_port"], worker.inputs["api_port"]) == (21020, 0)
    assert KEY in worker.inputs["seed"]["user-data"]
    assert "10.240.0.20/24" in worker.inputs["seed"]["network-config"]
    assert "local-switch" in worker.depends_on
    assert recording.values["ports"].value == {
        "controller-0": ("127.0.0.1", 21010, 22010),
        "worker-0": ("127.0.0.1", 21020, None),
    }


def test_local_vms_refuses_bad_settings_before_registering_anything(tmp_path: Path) -> None:
    def build() -> None:
        LocalVms("local", LocalVmsArgs([WORKER, WORKER], CIDR, KEY, _settings(tmp_path, memory_mb=1)))

    with pytest.raises(Exception, match=r"kthw:localMemoryMb = 1.*worker-0 is listed twice"):
        run_components(build)


def test_commas_in_paths_are_doubled_as_qemu_reads_them(tmp_path: Path) -> None:
    layout = _layout(tmp_path / "a,b", WORKER, 21020, None)
    joined = " ".join(qemu.command_line(layout, "tcg"))
    assert f"file.filename={tmp_path}/a,,b/vms/worker-0/disk.qcow2" in joined
    assert f"local.path={tmp_path}/a,,b/net/worker-0.sock," in joined
