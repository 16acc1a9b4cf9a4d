"""What every local provider plugin shares: plain values, input diffing, and the engine protocol.

Each plugin is a `pulumi.provider.experimental` Provider serving a few resource types. A type is a
`Kind`: its defaults, which inputs GCE/the real provider can change in place (every other input
forces a replacement, as ForceNew does in the Terraform providers these wrap), which outputs are
secret, and how to create, update and delete it. Outputs carry the inputs under `__inputs` (as
terraform-bridged providers keep `__meta`): Diff compares new inputs with the last applied inputs,
exactly, while nested outputs such as an instance's NAT IP may enrich what the program reads.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pulumi.provider.experimental.property_value import Computed, PropertyValue
from pulumi.provider.experimental.provider import (
    CheckRequest,
    CheckResponse,
    ConfigureRequest,
    ConfigureResponse,
    CreateRequest,
    CreateResponse,
    DeleteRequest,
    DiffRequest,
    DiffResponse,
    PropertyDiff,
    PropertyDiffKind,
    Provider,
    UpdateRequest,
    UpdateResponse,
)
from pulumi.provider.experimental.server import main
from pulumi.runtime import rpc

INPUTS = "__inputs"
# How the engine and the SDKs spell an unknown value on the wire (pulumi.runtime.rpc.UNKNOWN); the
# framework's unmarshal passes it through as a plain string.
UNKNOWN_WIRE = rpc.UNKNOWN


class Unknown:
    """A value the engine does not know yet (a preview before its dependencies exist)."""

    def __eq__(self, other: object) -> bool:
        return False  # an unknown never equals anything: it may change

    def __hash__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return "<unknown>"


UNKNOWN = Unknown()


def plain(value: PropertyValue) -> Any:
    """A PropertyValue as plain Python, secrets unwrapped, unknowns as UNKNOWN."""
    inner = value.value
    if isinstance(inner, Computed) or inner == UNKNOWN_WIRE:
        return UNKNOWN
    if isinstance(inner, str | bool | float) or inner is None:
        return inner
    if isinstance(inner, Mapping):
        return {k: plain(v) for k, v in inner.items()}
    if isinstance(inner, list | tuple):
        return [plain(v) for v in inner]
    raise TypeError(f"unsupported input value {inner!r}")


def plain_map(values: Mapping[str, PropertyValue]) -> dict[str, Any]:
    return {k: plain(v) for k, v in values.items()}


def has_unknown(value: Any) -> bool:
    if isinstance(value, Unknown):
        return True
    if isinstance(value, Mapping):
        return any(has_unknown(v) for v in value.values())
    if isinstance(value, list):
        return any(has_unknown(v) for v in value)
    return False


def wrap(value: Any, secret: bool = False) -> PropertyValue:
    """Plain Python as a PropertyValue (numbers become floats, as on the wire)."""
    if isinstance(value, Unknown):
        # The SDK (3.272) cannot marshal its own Computed; the wire form of "unknown" is this string.
        out = PropertyValue(UNKNOWN_WIRE)
    elif isinstance(value, PropertyValue):
        out = value
    elif isinstance(value, bool) or value is None or isinstance(value, str):
        out = PropertyValue(value)
    elif isinstance(value, int | float):
        out = PropertyValue(float(value))
    elif isinstance(value, Mapping):
        out = PropertyValue({k: wrap(v) for k, v in value.items()})
    elif isinstance(value, list | tuple):
        out = PropertyValue([wrap(v) for v in value])
    else:
        raise TypeError(f"unsupported output value {value!r}")
    return out.with_secret(True) if secret else out


@dataclass(frozen=True)
class Kind:
    """One resource type: defaults, in-place-updatable inputs, secret outputs, and its operations.

    `create(name, inputs) -> (id, outputs)` and `update(id, name, old_outputs, inputs) -> outputs`
    return the computed outputs only (inputs are copied into the outputs by the provider);
    `preview=True` asks for the same computation with no side effect.
    """

    token: str
    create: Callable[[str, dict[str, Any], bool], tuple[str, dict[str, Any]]]
    delete: Callable[[str, str, dict[str, Any]], None] = lambda _id, _name, _outputs: None
    update: Callable[[str, str, dict[str, Any], dict[str, Any], bool], dict[str, Any]] | None = None
    defaults: Callable[[dict[str, Any]], dict[str, Any]] = lambda inputs: {}
    updatable: frozenset[str] = frozenset()
    # A finer rule than `updatable` for one input: (old, new) -> does the change force a replacement?
    replace_if: Mapping[str, Callable[[Any, Any], bool]] = field(default_factory=dict)
    secret_outputs: frozenset[str] = frozenset()
    # Computed outputs the create preview leaves unknown (what the cloud decides).
    computed: frozenset[str] = frozenset()


def diff_inputs(kind: Kind, old: Mapping[str, Any], new: Mapping[str, Any]) -> DiffResponse:
    """Which inputs changed, and which of those force a replacement."""
    diffs: list[str] = []
    replaces: list[str] = []
    detailed: dict[str, PropertyDiff] = {}
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key), new.get(key)
        if not has_unknown(after) and before == after:
            continue
        diffs.append(key)
        rule = kind.replace_if.get(key)
        replace = has_unknown(after) or rule(before, after) if rule is not None else key not in kind.updatable
        if key not in old:
            change = PropertyDiffKind.ADD_REPLACE if replace else PropertyDiffKind.ADD
        elif key not in new:
            change = PropertyDiffKind.DELETE_REPLACE if replace else PropertyDiffKind.DELETE
        else:
            change = PropertyDiffKind.UPDATE_REPLACE if replace else PropertyDiffKind.UPDATE
        detailed[key] = PropertyDiff(change, input_diff=True)
        if replace:
            replaces.append(key)
    return DiffResponse(changes=bool(diffs), replaces=replaces, diffs=diffs, detailed_diff=detailed)


class LocalProvider(Provider):
    """A provider serving `kinds`, with the engine's secret and preview rules applied uniformly."""

    def __init__(self, kinds: list[Kind], *, threaded: bool = False) -> None:
        self.kinds = {k.token: k for k in kinds}
        self.config: dict[str, Any] = {}
        # Operations block (a script over SSH runs for minutes): a threaded provider runs each in a
        # worker thread, so the engine's parallel creates run in parallel, as a Go provider's do.
        # Unthreaded kinds (the gcp backend's read-modify-write JSON state) run one at a time.
        self.threaded = threaded

    async def _call(self, function: Callable[..., Any], *args: Any) -> Any:
        if self.threaded:
            return await asyncio.to_thread(function, *args)
        return function(*args)

    def kind(self, urn: str) -> Kind:
        token = urn.split("::")[-2].split("$")[-1]
        found = self.kinds.get(token)
        if found is None:
            raise ValueError(f"this local provider does not implement {token}")
        return found

    async def configure(self, request: ConfigureRequest) -> ConfigureResponse:
        self.config = plain_map(request.args)
        return ConfigureResponse(accept_secrets=True, supports_preview=True, accept_outputs=True, accept_resources=True)

    async def check(self, request: CheckRequest) -> CheckResponse:
        kind = self.kind(request.urn)
        news = dict(request.new_inputs)
        for key, value in kind.defaults(plain_map(news)).items():
            news.setdefault(key, wrap(value))
        return CheckResponse(inputs=news)

    async def diff(self, request: DiffRequest) -> DiffResponse:
        kind = self.kind(request.urn)
        old_inputs = request.old_state.get(INPUTS)
        old = plain(old_inputs) if old_inputs is not None else {}
        new = plain_map(request.new_inputs)
        for key in request.ignore_changes:
            new.pop(key, None)
            old.pop(key, None)
        return diff_inputs(kind, old, new)

    def _outputs(
        self, kind: Kind, inputs: Mapping[str, PropertyValue], computed: Mapping[str, Any]
    ) -> dict[str, PropertyValue]:
        outputs = dict(inputs)
        for key, value in computed.items():
            outputs[key] = wrap(value)
        for key in kind.secret_outputs:
            if key in outputs:
                outputs[key] = outputs[key].with_secret(True)
        outputs[INPUTS] = PropertyValue(dict(inputs))
        return outputs

    async def create(self, request: CreateRequest) -> CreateResponse:
        kind = self.kind(request.urn)
        inputs = plain_map(request.properties)
        if request.preview:
            computed = {key: UNKNOWN for key in kind.computed}
            if not has_unknown(inputs):
                _, known = kind.create(request.name, inputs, True)
                computed.update({k: v for k, v in known.items() if k not in kind.computed})
            return CreateResponse(resource_id="", properties=self._outputs(kind, request.properties, computed))
        resource_id, computed = await self._call(kind.create, request.name, inputs, False)
        return CreateResponse(resource_id=resource_id, properties=self._outputs(kind, request.properties, computed))

    async def update(self, request: UpdateRequest) -> UpdateResponse:
        kind = self.kind(request.urn)
        if kind.update is None:
            raise ValueError(f"{kind.token} cannot be updated in place")
        olds = plain_map(request.olds)
        olds.pop(INPUTS, None)
        computed = await self._call(
            kind.update, request.resource_id, request.name, olds, plain_map(request.news), request.preview
        )
        return UpdateResponse(properties=self._outputs(kind, request.news, computed))

    async def delete(self, request: DeleteRequest) -> None:
        kind = self.kind(request.urn)
        outputs = plain_map(request.properties)
        outputs.pop(INPUTS, None)
        await self._call(kind.delete, request.resource_id, request.name, outputs)


def load(spec: str) -> Any:
    """The object a "package.module:name" spec names: how a later tier swaps in its own backend or executor."""
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def serve(version: str, provider: Provider) -> None:
    """Run as the engine starts a plugin: `pulumi-resource-<name> <engine address> [flags]`."""
    main(sys.argv[1:], version, provider)
