"""Fixtures of the local cloud tier: tools, root, the cached image, the chosen accelerator, a namespace."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from tests.localcloud import image as image_module
from tests.localcloud.image import Image
from tests.localcloud.net import Namespace
from tests.localcloud.services import Services, running
from tests.localcloud.vm import Accel, choose_accel, scratch_dir

# Debian packages that provide each tool (.ci/run installs them).
TOOLS = {
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-img": "qemu-utils",
    "debootstrap": "debootstrap",
    "mkfs.ext4": "e2fsprogs",
    "debugfs": "e2fsprogs",
    "nsenter": "util-linux",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "ip": "iproute2",
    "systemd-nspawn": "systemd-container",
}


# The module that runs last in the tier: the 3+2 day-two scenario, whose bound (not one request
# fails while every node restarts) a busy machine threatens most. .ci/run starts the other tiers
# beside this one; they are done before it gets here.
LAST = "test_cluster_ha.py"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "localcloud: boots real VMs from a debootstrap image (root, qemu, debootstrap)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """LAST's tests go to the end; the sort is stable, so everything else keeps its order."""
    items.sort(key=lambda item: item.path.name == LAST)


def _missing(reason: str) -> None:
    """Under CI a missing prerequisite fails the tier; elsewhere it skips, saying what to install."""
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def figures() -> Iterator[dict[str, object]]:
    """Timings the tier measured, printed at the end and kept in the cache as figures.json."""
    found: dict[str, object] = {}
    yield found
    if found:
        out = image_module.cache_root() / "figures.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(found, indent=2, sort_keys=True) + "\n")
        print("\nlocalcloud figures:", json.dumps(found, sort_keys=True))


@pytest.fixture(scope="session")
def prerequisites() -> None:
    missing = sorted({pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None})
    if missing:
        _missing(f"local cloud tools missing: apt-get install {' '.join(missing)}")
    if os.geteuid() != 0:
        _missing("the local cloud needs root (network namespaces, taps, debootstrap)")


@pytest.fixture(scope="session")
def base_image(prerequisites: None, figures: dict[str, object]) -> Image:
    start = time.monotonic()
    built = image_module.build()
    figures["image_seconds"] = round(time.monotonic() - start, 1)
    figures["image_disk_mib"] = round(built.disk_bytes() / 2**20)
    return built


@pytest.fixture(scope="session")
def accel(base_image: Image, figures: dict[str, object]) -> Accel:
    chosen, probes = choose_accel(base_image)
    figures["accel"] = chosen.name
    figures["accel_probes"] = probes
    return chosen


@pytest.fixture
def namespace(prerequisites: None) -> Iterator[Namespace]:
    """A fresh namespace per test, deleted (with whatever the test left running in it) even on failure."""
    ns = Namespace().create()
    try:
        yield ns
    finally:
        ns.destroy()


@pytest.fixture(scope="module")
def services(prerequisites: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    """Per test module: a namespace with the admin's address, the binary mirror and the registry."""
    with running(tmp_path_factory) as found:
        yield found


@pytest.fixture
def deadline() -> Iterator[float]:
    """A hard bound on one test: SIGALRM raises in the test after KTHW_LOCALCLOUD_TIMEOUT seconds (900)."""
    seconds = int(os.environ.get("KTHW_LOCALCLOUD_TIMEOUT", "900"))

    def expire(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError(f"local cloud test exceeded {seconds}s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield time.monotonic() + seconds
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def workdir(request: pytest.FixtureRequest) -> Iterator[Path]:
    """This test's scratch directory under the cache: consoles kept for a post-mortem, overlays dropped."""
    path = scratch_dir(re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name))
    yield path
    for overlay in path.rglob("*.qcow2"):
        overlay.unlink()
