"""The build recipes of tests/upstream/build.py: where the upstream archives are found and how they are checked."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest

from tests.harness import ROOT
from tests.upstream import build

ARCHIVE_RECIPES = ("pulumi-resource-command", "pulumi-language-python")


def _recipe(name: str) -> build.Recipe:
    return next(r for r in build.recipes() if r.name == name)


def _tiny_archive(path: Path) -> str:
    """A small tar.gz at `path`; returns its SHA-256."""
    data = b"package main\n"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("src/main.go")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_plugins_come_from_the_shared_archives_pinned_by_digest() -> None:
    command, host = (_recipe(n) for n in ARCHIVE_RECIPES)
    assert command.version == "1.2.1" and host.version == "3.259.0"
    assert command.archive is not None and host.archive is not None
    assert command.archive.file == "pulumi-command-v1.2.1-provider.tar.gz"
    assert command.archive.sha256 == "fb75e890a529036cbf095567c56b21f71bf4225312f4d31a1e2683d8e64d5731"
    assert host.archive.sha256 == "2ce827cb6325a6b67a2716f84fbfe914d87886e9c2b38eb39636388b974b669f"
    # The host runs programs through the -exec script beside its own executable.
    assert any(path.endswith("pulumi-language-python-exec") for _, _, path in host.files)


def test_the_dynamic_provider_launcher_is_on_path_beside_the_cli() -> None:
    """The CLI's own Python pieces come from sdk/v3 at the CLI's version; the host's -exec from its own."""
    host = _recipe("pulumi-language-python")
    shipped = {Path(path).name: (module, version) for module, version, path in host.files}
    sdk = "github.com/pulumi/pulumi/sdk/v3"
    assert shipped["pulumi-resource-pulumi-python"] == (sdk, f"v{build.PULUMI_CLI}")
    assert shipped["pulumi-language-python-exec"] == (sdk, f"v{build.LANGUAGE_PYTHON}")
    cli = _recipe("pulumi")
    assert {Path(path).name for _, _, path in cli.files} == {"pulumi-language-python-exec"}


def test_an_archive_change_changes_the_key_and_proxy_recipes_keep_theirs() -> None:
    command = _recipe("pulumi-resource-command")
    assert command.archive is not None
    other = replace(command, archive=replace(command.archive, sha256="0" * 64))
    assert other.key != command.key
    # Adding the archive field must not rebuild every cached proxy recipe.
    etcd = _recipe("etcd")
    assert "archive" not in etcd.key_fields()


def test_sources_are_found_by_variable_then_beside_the_clone(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(build.SOURCES_ENV, str(tmp_path))
    assert build.sources_dir() == tmp_path
    monkeypatch.delenv(build.SOURCES_ENV)
    beside = tmp_path / "clone-parent" / "shared" / "upstream"
    beside.mkdir(parents=True)
    monkeypatch.setattr(build, "DEFAULT_SOURCES", (beside, tmp_path / "elsewhere"))
    assert build.sources_dir() == beside
    beside.rmdir()
    (tmp_path / "elsewhere").mkdir()
    assert build.sources_dir() == tmp_path / "elsewhere"
    assert build.DEFAULT_SOURCES[0] == beside


def test_default_sources_start_beside_the_clone() -> None:
    assert build.DEFAULT_SOURCES[0] == ROOT.parent / "shared" / "upstream"


def test_a_missing_or_altered_archive_stops_the_build(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(build.SOURCES_ENV, str(tmp_path))
    digest = _tiny_archive(tmp_path / "tiny.tar.gz")
    good = build.Archive(file="tiny.tar.gz", sha256=digest, module_dir="src")
    assert build.verified_archive(good) == tmp_path / "tiny.tar.gz"

    with pytest.raises(SystemExit, match=r"upstream archive absent\.tar\.gz not found \(looked in .*KTHW_UPSTREAM"):
        build.verified_archive(replace(good, file="absent.tar.gz"))
    with pytest.raises(SystemExit, match=f"has sha256 {digest}, expected {'0' * 64}: refusing to build it"):
        build.verified_archive(replace(good, sha256="0" * 64))


def test_the_build_command_fails_without_the_archives(tmp_path: Path) -> None:
    """`python -m tests.upstream.build` exits non-zero, naming the archive, before any Go work."""
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "KTHW_CACHE": str(tmp_path / "cache"),
        build.SOURCES_ENV: str(tmp_path / "no-archives"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "tests.upstream.build", "pulumi-resource-command"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "upstream archive pulumi-command-v1.2.1-provider.tar.gz not found" in result.stderr, result.stderr
    assert not (tmp_path / "cache" / "upstream" / "pulumi-resource-command-1.2.1").exists()
