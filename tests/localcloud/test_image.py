"""The image builder's pure parts (mirror choice, cache keys, guest scripts) and the built image's contents."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.localcloud import image
from tests.localcloud.image import Image
from tests.tools import shellcheck

DEB822 = """\
Types: deb
URIs: http://mirror.invalid/other
Suites: trixie
Components: main

Types: deb
URIs: http://mirror.invalid/disabled
Suites: bookworm
Components: main
Enabled: no

Types: deb-src
URIs: http://mirror.invalid/sources
Suites: bookworm
Components: main

Types: deb
# a comment line inside the stanza
URIs: http://mirror.invalid/debian
Suites: bookworm bookworm-updates
Components: main contrib
"""


def _root(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / "etc/apt" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (tmp_path / "etc/apt/sources.list.d").mkdir(parents=True, exist_ok=True)
    return tmp_path


def test_mirror_from_deb822_skips_disabled_source_and_other_suites(tmp_path: Path) -> None:
    root = _root(tmp_path, {"sources.list.d/debian.sources": DEB822})
    assert image.apt_mirror(root) == "http://mirror.invalid/debian"


def test_mirror_from_one_line_sources_with_options(tmp_path: Path) -> None:
    root = _root(
        tmp_path,
        {
            "sources.list": "# deb http://commented.invalid/debian bookworm main\n"
            "deb [signed-by=/usr/share/keyrings/x.gpg] http://mirror.invalid/debian bookworm main\n",
            "sources.list.d/vendor.list": "deb https://vendor.invalid/apt cloud-sdk-bookworm main\n",
        },
    )
    assert image.apt_mirror(root) == "http://mirror.invalid/debian"


def test_mirror_missing_is_an_error_naming_the_suite(tmp_path: Path) -> None:
    root = _root(tmp_path, {"sources.list.d/vendor.list": "deb https://vendor.invalid/apt cloud-sdk-bookworm main\n"})
    with pytest.raises(RuntimeError, match="bookworm"):
        image.apt_mirror(root)


def test_cache_keys_follow_the_inputs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    rootfs, built = image.rootfs_key("http://a.invalid"), image.image_key("http://a.invalid")
    assert (rootfs, built) == (image.rootfs_key("http://a.invalid"), image.image_key("http://a.invalid"))
    assert image.rootfs_key("http://b.invalid") != rootfs
    monkeypatch.setattr(image, "PACKAGES", (*image.PACKAGES, "less"))
    assert image.rootfs_key("http://a.invalid") != rootfs
    monkeypatch.undo()
    # A guest file's change rebuilds the image but not the debootstrap rootfs under it.
    guest = tmp_path / "guest"
    guest.mkdir()
    for source in image.GUEST.iterdir():
        (guest / source.name).write_text(source.read_text())
    monkeypatch.setattr(image, "GUEST", guest)
    assert image.image_key("http://a.invalid") == built
    (guest / "kthw-guest").write_text((guest / "kthw-guest").read_text() + "# changed\n")
    assert image.image_key("http://a.invalid") != built
    assert image.rootfs_key("http://a.invalid") == rootfs


@pytest.mark.parametrize("name", ["kthw-guest", "cloud-init"])
def test_guest_scripts_pass_shellcheck(name: str, tmp_path: Path) -> None:
    shellcheck((image.GUEST / name).read_text(), tmp_path, name)


def _debugfs(root: Path, request: str) -> str:
    result = subprocess.run(["debugfs", "-R", request, str(root)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.localcloud
def test_built_image_has_no_instance_identity_and_runs_the_guest_step(base_image: Image) -> None:
    """Read the ext4 image directly (no mount): nothing per-instance is baked in."""
    listing = _debugfs(base_image.root, "ls -l /etc/ssh")
    assert "sshd_config" in listing
    assert "ssh_host_" not in listing
    assert _debugfs(base_image.root, "cat /etc/machine-id") == ""
    wants = _debugfs(base_image.root, "ls /etc/systemd/system/multi-user.target.wants")
    assert "kthw-guest.service" in wants
    assert "systemd-networkd.service" in wants
    assert "nginx.service" not in wants
    assert _debugfs(base_image.root, "cat /etc/resolv.conf") == "nameserver 10.240.0.1\n"
    assert base_image.kernel.stat().st_size > 1_000_000
    assert base_image.initrd.stat().st_size > 1_000_000
