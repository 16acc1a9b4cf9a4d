"""The base image in the cache: downloaded once per SHA-512, checked before it is ever used."""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from pathlib import Path

CHUNK = 1 << 20
TIMEOUT_SECONDS = 60


class ChecksumMismatchError(RuntimeError):
    """What was downloaded is not the image the stack names."""


def sha512_of(path: Path) -> str:
    digest = hashlib.sha512()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(url: str, sha512: str, target: Path) -> Path:
    """`target`, downloading `url` there first unless it is already cached.

    The file gets its name (by SHA-512) only once its digest matched: a partial or wrong download
    never looks cached, and two stacks downloading at once each write their own temporary file.
    """
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha512()
    fd, partial = tempfile.mkstemp(dir=target.parent, prefix=".download-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
            while chunk := response.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
        found = digest.hexdigest()
        if found != sha512:
            raise ChecksumMismatchError(
                f"{url}: SHA-512 is {found}, the stack expects {sha512} (kthw:localImageSha512)"
            )
        # Read-only: every VM's overlay reads it, none may write it.
        os.chmod(partial, 0o444)
        os.replace(partial, target)
    finally:
        Path(partial).unlink(missing_ok=True)
    return target
