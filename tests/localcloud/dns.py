"""The local cloud's stand-in for GCE's internal DNS: instance names resolve to internal IPs.

On GCE the metadata server answers every VM's queries, resolving other instances of the project by
name; KTHW relies on it (the API server reaches each kubelet by its node name). Here dnsmasq on the
namespace's gateway address answers from a hosts file the gcp backend rewrites at every instance
change, and forwards nothing: no query leaves the namespace.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from tests.localcloud.net import GATEWAY


def _pid(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    return pid


def sync(namespace_name: str, workdir: Path, names: Mapping[str, str]) -> None:
    """Serve `names` (instance name -> internal IP); start dnsmasq on first use, reload it after."""
    workdir.mkdir(parents=True, exist_ok=True)
    hosts = workdir / "hosts"
    tmp = hosts.with_suffix(".tmp")
    tmp.write_text("".join(f"{ip} {name}\n" for name, ip in sorted(names.items())))
    tmp.replace(hosts)
    pid_file = workdir / "dnsmasq.pid"
    pid = _pid(pid_file)
    if pid is not None:
        os.kill(pid, signal.SIGHUP)  # dnsmasq re-reads --addn-hosts files on SIGHUP
        return
    dnsmasq = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    argv = [
        "nsenter",
        f"--net=/run/netns/{namespace_name}",
        dnsmasq,
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        "--no-dhcp-interface=*",
        f"--addn-hosts={hosts}",
        f"--listen-address={GATEWAY.ip}",
        "--bind-interfaces",
        "--user=root",
        f"--pid-file={pid_file}",
        f"--log-facility={workdir / 'dnsmasq.log'}",
    ]
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 10
    while _pid(pid_file) is None:
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(
                f"dnsmasq did not start: {(workdir / 'dnsmasq.log').read_text(errors='replace')[-2000:]}"
            )
        time.sleep(0.1)


def stop(workdir: Path) -> None:
    """Stop the DNS server, if it runs."""
    pid = _pid(workdir / "dnsmasq.pid")
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
