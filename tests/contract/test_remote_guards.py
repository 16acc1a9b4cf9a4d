"""The program's guards against the real pulumi-resource-command 1.2.1, with its own remote steps on a loopback sshd.

What the real provider does that the program must guard against (issue 17, section 2), each shown
with the program's own steps (programs/guards.py) under the built CLI and the real provider:

- With logging on, a line longer than 64 KiB hangs the step forever: every logged step folds its
  lines (components/remote.py `capped`), so a 70,000-character line finishes.
- customTimeouts bound only the SSH dial: a script that outlives its custom timeout runs to its
  end, and what ends a hung script is its own bound (components/bounds.py): the node's SSH gate
  gives up on a cloud-init that never finishes, with its `kthw: NODE: ...` message.
- stdout and stderr go to the state as they are: after an up, an update and failed steps (a failed
  create and a failed update of a secret deploy) no private key, token, kubeconfig or encryption
  key is in clear in any file the backend wrote.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from components import remote
from tests.contract.harness import REAL, ProgramStack, is_secret
from tests.contract.sshd import HOSTS, Sshd, keygen
from tests.processes import kill_tree

LONG_LINE = 70_000
# The bound the SSH gate gets here (the program's is 600 s), and what `timeout --kill-after` adds.
CLOUD_INIT_BOUND, KILL_AFTER = 3, 10


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    directory = tmp_path_factory.mktemp("guards-sshd")
    # deploy.sh keeps its per-step stamps under $KTHW_STATE (else /var/lib/kthw).
    server = Sshd.start(directory / "sshd", key_names=("A",), env={"KTHW_STATE": str(directory / "kthw-state")})
    yield server
    server.stop()


def stack(tmp: Path, sshd: Sshd, scenario: str, **spec: Any) -> ProgramStack:
    base = {
        "host": HOSTS[0],
        "port": sshd.ports[0],
        "user": sshd.user,
        "key": str(sshd.directory / "client-A"),
    }
    config = {"spec": json.dumps({**base, **spec}), "scenario": scenario}
    return ProgramStack.create(tmp, "guards.py", REAL, config)


def test_a_logged_line_over_64_kib_finishes(sshd: Sshd, tmp_path: Path) -> None:
    """Without the fold the real provider never returns: the up is killed at its bound and the test fails."""
    guards = stack(tmp_path, sshd, "long-line")
    try:
        guards.up("long-line", timeout=120)
    except subprocess.TimeoutExpired as hung:
        pytest.fail(f"a logged {LONG_LINE}-character line hung the step (killed after {hung.timeout} s)")
    step = guards.resources(show_secrets=True)["long-line"]["outputs"]
    out, err = step["stdout"], step["stderr"]
    # Every line is folded below the reader's limit, and nothing is lost.
    assert max(len(line) for line in out.splitlines()) == remote.LOG_LINE_BYTES
    assert out.replace("\n", "") == "x" * LONG_LINE + "done"
    assert err.replace("\n", "") == "y" * LONG_LINE
    assert guards.timings["long-line"] < 60, guards.timings


def test_custom_timeouts_stop_no_script_and_the_gates_own_bound_ends_a_hung_one(sshd: Sshd, tmp_path: Path) -> None:
    # A cloud-init that never finishes, on the sessions' PATH (the gate runs it through sudo); it
    # notes its pid, so whatever outlives its session here still ends with the test.
    hung, pids = sshd.bin_dir / "cloud-init", tmp_path / "cloud-init.pids"
    hung.write_text(f'#!/bin/sh\necho "$$" >> {pids}\nexec sleep 600\n')
    hung.chmod(0o755)
    try:
        guards = stack(tmp_path, sshd, "bounds", cloud_init_timeout=CLOUD_INIT_BOUND, gate_timeout="2s")
        result = guards.up("bounds", check=False, timeout=120)
    except subprocess.TimeoutExpired as stuck:
        pytest.fail(f"nothing ended the hung gate: the up was killed after {stuck.timeout} s")
    finally:
        hung.unlink()
        for pid in pids.read_text().split() if pids.exists() else []:
            kill_tree(int(pid))
    assert result.returncode != 0
    gate = result.errors["node-x-ssh-ready"]
    assert f"kthw: node-x: ssh gate: cloud-init did not finish within {CLOUD_INIT_BOUND}s" in gate, gate
    # The gate gave up by itself, well inside what a step may take: its 2 s custom timeout did not.
    assert guards.timings["bounds"] < CLOUD_INIT_BOUND + KILL_AFTER + 30, guards.timings
    state = guards.resources(show_secrets=True)
    assert "node-x-ssh-ready" not in state
    # A 2 s custom timeout did not stop a 6 s script: it ran to its end and its step succeeded.
    assert state["outlives-its-timeout"]["outputs"]["stdout"] == "slept"
    assert "outlives-its-timeout" not in result.errors


def _secrets(directory: Path, label: str) -> dict[str, str]:
    """Fresh key material: a PEM key and certificate, an OpenSSH key, a token and an encryption key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"kthw-guards-{label}")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return {
        "pem": pem.decode(),
        "cert": cert.public_bytes(serialization.Encoding.PEM).decode(),
        "openssh": keygen(directory / f"ssh-{label}", f"kthw-guards-{label}").private,
        "token": secrets.token_hex(16),
        "enc_key": base64.b64encode(os.urandom(32)).decode(),
    }


def _b64_forms(text: str) -> list[str]:
    """`text` as it shows inside any base64 stream (three alignments), trimmed to the stable middle."""
    forms = []
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + text.encode()).decode()
        forms.append(encoded[4:-4])
    return forms


def _in_clear(material: dict[str, str]) -> list[str]:
    """What must never be found in clear: each secret, its body lines, and their base64 forms."""
    needles = [material["token"], material["enc_key"]]
    for key in ("pem", "openssh"):
        body = [line for line in material[key].splitlines() if line and not line.startswith("-----")]
        needles += [line for line in body if len(line) >= 32]
    needles += _b64_forms(material["token"]) + _b64_forms(material["enc_key"])
    needles += [form for line in material["pem"].splitlines()[1:3] for form in _b64_forms(line)]
    return needles


MARKERS = ("PRIVATE KEY-----", "client-key-data", "kind: EncryptionConfiguration")


def test_no_key_token_kubeconfig_or_encryption_key_in_clear_in_the_state(sshd: Sshd, tmp_path: Path) -> None:
    material_dir = tmp_path / "material"
    material_dir.mkdir()
    files = tmp_path / "node-files"
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the step wants a directory\n")
    spec = {"files": str(files), "blocked": str(blocked), "secrets": str(tmp_path / "secrets.json")}
    guards = stack(tmp_path, sshd, "secrets", **spec)
    used: list[dict[str, str]] = []

    def phase(n: int) -> None:
        used.append(_secrets(material_dir, str(n)))
        (tmp_path / "secrets.json").write_text(json.dumps(used[-1]))
        guards.configure({"phase": str(n)})

    phase(1)
    guards.up("up")
    assert (files / "token.csv").read_text().startswith(used[0]["token"])
    phase(2)
    guards.up("update")
    assert (files / "token.csv").read_text().startswith(used[1]["token"])
    phase(3)
    failed = guards.up("failed", check=False)
    assert failed.returncode != 0
    assert "could not install" in failed.errors["broken-files"], failed.errors
    assert "could not install" in failed.errors["secret-files"], failed.errors

    state = guards.resources()
    assert "broken-files" not in state  # a failed create leaves nothing
    for name in ("secret-files", "key-on-stdin"):
        outputs = state[name]["outputs"]
        assert all(is_secret(outputs[k]) for k in ("stdin", "stdout", "stderr")), (name, outputs)
    assert not is_secret(state["logged"]["outputs"]["stdout"])

    found: dict[str, list[str]] = {}
    files_written = guards.state_files()
    assert any(p.name == "contract.json" for p in files_written), files_written
    for path in files_written:
        text = path.read_text(errors="replace")
        hits = [m for m in MARKERS if m in text]
        hits += [n[:12] + "..." for material in used for n in _in_clear(material) if n in text]
        if hits:
            found[str(path.relative_to(guards.cli.state))] = hits
    assert found == {}


def test_the_scan_finds_a_secret_written_in_clear(tmp_path: Path) -> None:
    """The needles match what a leak would look like: a key in a tar in base64, a kubeconfig's key data."""
    material = _secrets(tmp_path, "probe")
    bundle = remote.pack([("/etc/kthw/key.pem", material["pem"], 0o600), ("/etc/kthw/t", material["token"], 0o600)])
    assert any(n in bundle for n in _in_clear(material))
    client_key = base64.b64encode(material["pem"].encode()).decode()
    assert any(n in client_key for n in _in_clear(material))
    assert any(n in json.dumps({"stdout": material["openssh"]}) for n in _in_clear(material))
