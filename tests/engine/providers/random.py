"""A local `random` provider plugin (pulumi-random 4.x): RandomBytes from the OS's CSPRNG.

As in the real provider every input (length, keepers) forces new bytes, and the bytes are secret.
"""

from __future__ import annotations

import uuid
from typing import Any

from tests import fake_tls
from tests.engine.providers.base import Kind, LocalProvider, serve

VERSION = "4.21.4"


def _create(name: str, inputs: dict[str, Any], preview: bool) -> tuple[str, dict[str, Any]]:
    if preview:
        return "", {}
    outputs = fake_tls.new_resource(fake_tls.RANDOM_BYTES, name + uuid.uuid4().hex, inputs)
    if outputs is None:
        raise ValueError("fake_tls does not compute RandomBytes")
    return uuid.uuid4().hex, outputs


KINDS = [
    Kind(
        token=fake_tls.RANDOM_BYTES,
        create=_create,
        secret_outputs=frozenset({"base64", "hex"}),
        computed=frozenset({"base64", "hex"}),
    )
]


if __name__ == "__main__":
    serve(VERSION, LocalProvider(KINDS))
