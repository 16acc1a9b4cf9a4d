"""Run kthw under Pulumi's mocks and record every resource it registers.

`run_components(build)` runs any program (a function that constructs resources) in a stack; `run_program`
and `cached` run the whole __main__.py that way. The mock monitor is the real one from the SDK; this module
only watches what passes through it: each resource's type, name, parent, dependencies, options and inputs
(with which inputs were secret), and the stack outputs. Inside `build`, `watch(name, output)` asks for an
Output's final value, secret-ness and known-ness (`Recording.values`). tls and random resources get real
values from tests/fake_tls.py, so certificates in the recording are real X.509 that tests can verify; every
GCP resource gets a self link, and remote commands an empty stdout and stderr.
"""

from __future__ import annotations

import asyncio
import base64
import io
import ipaddress
import os
import runpy
import sys
import tarfile
import zlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime import mocks, rpc, settings
from pulumi.runtime.sync_await import _sync_await

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import fake_tls  # noqa: E402

SECRET_SIG = rpc._special_secret_sig
SIG_KEY = rpc._special_sig_key

# A small cluster in a made-up project; tests override keys as they need.
BASE_CONFIG: dict[str, str] = {
    "gcp:project": "kthw-test",
    "gcp:region": "us-west1",
    "gcp:zone": "us-west1-c",
}
# Keys a stack holds as secrets (`pulumi config set --secret`), as the CLI tells the program.
SECRET_KEYS = ("kthw:sshPrivateKey",)


@dataclass
class Recorded:
    """One registered resource as the engine saw it."""

    type: str
    name: str
    urn: str
    parent: str | None
    inputs: dict[str, Any]
    secret_paths: set[str]
    depends_on: set[str]
    options: dict[str, Any]
    outputs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Resolved:
    """A watched Output after the program ran: its value (None when unknown), and whether it was secret and known."""

    value: Any
    secret: bool
    known: bool


@dataclass
class Recording:
    """Everything one evaluation of the program registered."""

    resources: list[Recorded]
    outputs: dict[str, Any]
    secret_outputs: set[str]
    warnings: list[str]
    preview: bool
    values: dict[str, Resolved] = field(default_factory=dict)

    def by_name(self, name: str) -> Recorded:
        matches = [r for r in self.resources if r.name == name]
        if len(matches) != 1:
            raise KeyError(f"{len(matches)} resources named {name!r}")
        return matches[0]

    def of_type(self, token: str) -> list[Recorded]:
        return [r for r in self.resources if r.type == token]

    def names(self) -> set[str]:
        return {r.name for r in self.resources}

    def ancestors(self, name: str) -> set[str]:
        """Every resource `name` waits for, directly or through others (dependencies, not parents)."""
        by_name = {r.name: r for r in self.resources}
        seen: set[str] = set()
        stack = list(by_name[name].depends_on)
        while stack:
            dep = stack.pop()
            if dep in seen or dep not in by_name:
                continue
            seen.add(dep)
            stack.extend(by_name[dep].depends_on)
        return seen


def bundle(rec: Recorded) -> dict[str, tuple[str, int]]:
    """The files a remote deploy step carries on stdin (a base64 tar): path -> (content, mode)."""
    raw = base64.b64decode(rec.inputs["stdin"])
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        return {
            "/" + m.name: (tar.extractfile(m).read().decode(), m.mode)  # type: ignore[union-attr]
            for m in tar.getmembers()
        }


def _unwrap(value: Any, path: str, secrets: set[str]) -> Any:
    """Strip secret markers from deserialized inputs, noting the top-level keys that held one."""
    if isinstance(value, dict):
        if value.get(SIG_KEY) == SECRET_SIG:
            secrets.add(path)
            return _unwrap(value.get("value"), path, secrets)
        return {k: _unwrap(v, path, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_unwrap(v, path, secrets) for v in value]
    return value


def _fake_ip(name: str) -> str:
    """A stable TEST-NET-3 address for an instance or static address, by its name."""
    return str(ipaddress.ip_address("203.0.113.0") + (sum(name.encode()) % 250) + 1)


class _Mocks(mocks.Mocks):
    def __init__(self, preview: bool, previous_outputs: Mapping[str, Any] | None = None) -> None:
        self.preview = preview
        # What a StackReference reads: the stack's outputs from its last update ({} for a new stack).
        self.previous_outputs = dict(previous_outputs or {})

    def new_resource(self, args: mocks.MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        # Inputs that were secret arrive wrapped in the engine's secret marker; providers see plain values.
        inputs = {k: _unwrap(v, k, set()) for k, v in args.inputs.items()}
        outputs = dict(inputs)
        computed = fake_tls.new_resource(args.typ, args.name, inputs)
        if computed is not None:
            outputs.update(computed)
        elif args.typ == "pulumi:pulumi:StackReference":
            outputs["outputs"] = self.previous_outputs
            outputs["secretOutputNames"] = []
        elif args.typ == "gcp:compute/address:Address":
            outputs["address"] = _fake_ip(args.name)
        elif args.typ == "gcp:compute/instance:Instance":
            interfaces = outputs.get("networkInterfaces") or [{}]
            # A given NAT IP (a static address) is the VM's; otherwise GCE picks an ephemeral one.
            given = [ac.get("natIp") for ac in interfaces[0].get("accessConfigs") or [] if isinstance(ac, dict)]
            interfaces[0]["accessConfigs"] = [{"natIp": (given[:1] or [None])[0] or _fake_ip(args.name)}]
            outputs["networkInterfaces"] = interfaces
            outputs["instanceId"] = str(zlib.crc32(args.name.encode()))
            outputs["selfLink"] = f"https://compute/{args.inputs.get('zone')}/instances/{args.name}"
        elif args.typ == "gcp:serviceaccount/account:Account":
            outputs["email"] = f"{inputs.get('accountId')}@kthw-test.iam.gserviceaccount.com"
        elif args.typ.startswith("command:remote:Command"):
            outputs.setdefault("stdout", "")
            outputs.setdefault("stderr", "")
        if args.typ.startswith("gcp:"):
            # Every GCP resource has one; e.g. a forwarding rule targets its pool's.
            outputs.setdefault("selfLink", f"https://compute.example/{args.typ.split(':')[-1]}/{args.name}")
        return f"{args.name}-id", outputs

    def call(self, args: mocks.MockCallArgs) -> dict[str, Any]:  # type: ignore[override]
        # The gcp lookups the program makes, answered as the local gcp plugin answers them (its
        # sample of GCE's machine types per zone; the project's default compute account).
        from tests.engine.providers import gce_catalog, gcp

        project = str(args.args.get("project") or BASE_CONFIG["gcp:project"])
        if args.token == "gcp:compute/getMachineTypes:getMachineTypes":
            zone = str(args.args.get("zone") or BASE_CONFIG["gcp:zone"])
            wanted = str(args.args.get("filter") or "").partition("=")[2].strip().strip('"')
            found = [m for m in gce_catalog.machine_types(project, zone) if not wanted or m["name"] == wanted]
            return {"machineTypes": found, "zone": zone, "project": project, "filter": args.args.get("filter")}
        if args.token == "gcp:compute/getDefaultServiceAccount:getDefaultServiceAccount":
            email = gcp.default_service_account(project)
            return {"email": email, "member": f"serviceAccount:{email}", "project": project}
        return {}


class _RecordingMonitor(mocks.MockMonitor):
    def __init__(self, mocks_: _Mocks) -> None:
        super().__init__(mocks_)
        self.recorded: list[Recorded] = []
        self.urn_names: dict[str, str] = {}
        self.stack_outputs: dict[str, Any] = {}
        self.stack_secret_outputs: set[str] = set()

    def RegisterResource(self, request: Any) -> Any:  # noqa: N802 (the gRPC method's name)
        response = super().RegisterResource(request)
        if request.type == "pulumi:pulumi:Stack":
            return response
        self.urn_names[response.urn] = request.name
        secrets: set[str] = set()
        raw = rpc.deserialize_properties(request.object, keep_unknowns=True, keep_internal=True)
        inputs = {k: _unwrap(v, k, secrets) for k, v in (raw or {}).items()}
        deps = set(request.dependencies)
        for prop in request.propertyDependencies.values():
            deps.update(prop.urns)
        options = {
            "delete_before_replace": request.deleteBeforeReplace,
            "additional_secret_outputs": list(request.additionalSecretOutputs),
            "custom_timeouts": {
                "create": request.customTimeouts.create,
                "update": request.customTimeouts.update,
            },
            "replace_on_changes": list(request.replaceOnChanges),
            "replacement_trigger": _replacement_trigger(request),
            "replace_with": list(request.replace_with),
            "import": request.importId or None,
            "retain_on_delete": request.retainOnDelete,
        }
        state = self.resources.get(response.urn)
        self.recorded.append(
            Recorded(
                type=request.type,
                name=request.name,
                urn=response.urn,
                parent=request.parent or None,
                inputs=inputs,
                secret_paths=secrets,
                depends_on=deps,
                options=options,
                outputs=dict(state.state) if state else {},
            )
        )
        return response

    def RegisterResourceOutputs(self, request: Any) -> Any:  # noqa: N802
        # urn:pulumi:STACK::PROJECT::TYPE::NAME, where TYPE is the chain of parent types.
        if request.urn.split("::")[2] == "pulumi:pulumi:Stack":
            raw = rpc.deserialize_properties(request.outputs, keep_internal=True)
            for key, value in (raw or {}).items():
                secrets: set[str] = set()
                self.stack_outputs[key] = _unwrap(value, key, secrets)
                if secrets:
                    self.stack_secret_outputs.add(key)
        return super().RegisterResourceOutputs(request)


def _replacement_trigger(request: Any) -> Any:
    if not request.HasField("replacement_trigger"):
        return None
    from google.protobuf import json_format

    return json_format.MessageToDict(request.replacement_trigger)


def _stack_name() -> str:
    return "kthw-test-stack"


class _WarningLog:
    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warning(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self.warnings.append(msg)

    def __getattr__(self, _name: str) -> Any:
        return lambda *args, **kwargs: None


def _run_main() -> None:
    """Run __main__.py as the Pulumi CLI would: as __main__, from the project directory."""
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        runpy.run_path(str(ROOT / "__main__.py"), run_name="__main__")
    finally:
        os.chdir(cwd)


# The Outputs `watch` was given during the current run_components, by name; None outside one.
_watched: dict[str, pulumi.Output[Any]] | None = None


def watch(name: str, output: pulumi.Input[Any]) -> pulumi.Output[Any]:
    """Inside run_components' `build`: resolve `output` after the program, into the Recording's values[name]."""
    if _watched is None:
        raise RuntimeError("watch() works only while run_components runs a build")
    if name in _watched:
        raise KeyError(f"{name!r} is watched twice")
    out = pulumi.Output.from_input(output)
    _watched[name] = out
    return out


def run_components(
    build: Callable[[], object],
    *,
    config: Mapping[str, str] | None = None,
    preview: bool = False,
    previous_outputs: Mapping[str, Any] | None = None,
) -> Recording:
    """Run `build` as a Pulumi program in a stack under mocks, with the given config, and record it all.

    Config keys without a namespace are kthw's; BASE_CONFIG fills in the rest. What `build` returns is ignored.
    Raises whatever the program raises (ConfigErrors for bad config), after the runtime is reset.
    """
    global _watched
    full = {**BASE_CONFIG, **{k if ":" in k else f"kthw:{k}": v for k, v in (config or {}).items()}}
    watched: dict[str, pulumi.Output[Any]] = {}
    values: dict[str, Resolved] = {}

    async def resolve() -> None:
        for name, out in watched.items():
            values[name] = Resolved(await out.future(), await out.is_secret(), await out.is_known())

    def program() -> Awaitable[None]:
        build()
        return resolve()

    # The runtime's futures bind to the event loop current when they are made, and set_mocks
    # already makes the root stack: the loop must be in place first.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    settings.reset_options()
    pulumi.runtime.set_all_config(dict(full), secret_keys=[k for k in SECRET_KEYS if k in full])
    log = _WarningLog()
    monitor = _RecordingMonitor(_Mocks(preview, previous_outputs))
    _watched = watched
    try:
        mocks.set_mocks(
            monitor.mocks,
            project="kthw",
            stack=_stack_name(),
            preview=preview,
            logger=log,  # type: ignore[arg-type]
            monitor=monitor,
        )
        # set_mocks makes and finishes a root stack of its own; drop it so that run_in_stack's
        # stack, like the CLI's, is the one that collects `pulumi.export`s.
        settings.set_root_resource(None)  # type: ignore[arg-type]
        _sync_await(pulumi.runtime.stack.run_in_stack(program))
    except Exception as error:
        # What had been registered when the program failed: tests assert it is nothing.
        error.registered = [r.name for r in monitor.recorded]  # type: ignore[attr-defined]
        raise
    finally:
        _watched = None
        asyncio.set_event_loop(None)
        loop.close()
        pulumi.runtime.set_all_config({}, secret_keys=[])

    names = monitor.urn_names
    for rec in monitor.recorded:
        rec.parent = names.get(rec.parent) if rec.parent else None  # the root stack becomes None
        rec.depends_on = {names.get(d, d) for d in rec.depends_on}
        rec.options["replace_with"] = [names.get(u, u) for u in rec.options["replace_with"]]
    return Recording(
        resources=monitor.recorded,
        outputs=monitor.stack_outputs,
        secret_outputs=monitor.stack_secret_outputs,
        warnings=log.warnings,
        preview=preview,
        values=values,
    )


def run_program(
    config: Mapping[str, str] | None = None, *, preview: bool = False, previous_outputs: Mapping[str, Any] | None = None
) -> Recording:
    """Evaluate __main__.py with the given stack config (namespaced keys) and record it all.

    `previous_outputs` are the stack outputs of the last update, as the program reads them back.
    """
    return run_components(_run_main, config=config, preview=preview, previous_outputs=previous_outputs)


_CACHE: dict[tuple[tuple[tuple[str, str], ...], bool], Recording] = {}


def cached(config: Mapping[str, str] | None = None, *, preview: bool = False) -> Recording:
    """run_program, once per (config, mode) for the whole test session; treat the result as read-only."""
    key = (tuple(sorted((config or {}).items())), preview)
    if key not in _CACHE:
        _CACHE[key] = run_program(config, preview=preview)
    return _CACHE[key]


def stack_config(stack: str) -> dict[str, str]:
    """A stack file's config as the CLI hands it to the program: strings, lists as JSON."""
    import json

    import yaml

    raw = yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text())["config"]
    return {key: json.dumps(value) if isinstance(value, list | dict) else str(value) for key, value in raw.items()}


def diff(before: Recording, after: Recording) -> tuple[set[str], set[str], set[str]]:
    """(added, removed, changed) resource names between two evaluations, comparing inputs."""
    old = {r.name: r.inputs for r in before.resources}
    new = {r.name: r.inputs for r in after.resources}
    changed = {name for name in old.keys() & new.keys() if old[name] != new[name]}
    return new.keys() - old.keys(), old.keys() - new.keys(), changed


def longest_chain(recording: Recording) -> int:
    """The number of resources on the longest dependency chain: how many steps run one after another."""
    by_name = {r.name: r for r in recording.resources}
    depth: dict[str, int] = {}

    def visit(name: str) -> int:
        if name not in depth:
            deps = [d for d in by_name[name].depends_on if d in by_name]
            depth[name] = 1 + max((visit(d) for d in deps), default=0)
        return depth[name]

    return max(visit(r.name) for r in recording.resources if not r.type.startswith("kthw:index:"))
