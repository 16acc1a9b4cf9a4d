"""A Python language host for the real Pulumi CLI, standing in for `pulumi-language-python`.

The Go module proxy serves the CLI (pkg/v3) and the SDK (sdk/v3) but not the module of the real
Python language host (sdk/python/cmd/pulumi-language-python), so tests.upstream.build cannot build
it. This host does the host's part of the protocol and nothing else: it lists the program's
provider plugins from the `pulumi-plugin.json` files its virtualenv's packages ship, and it runs the
program through the SDK's own `pulumi-language-python-exec` (copied by the build from sdk/v3 at the
CLI's version), which is where the engine-facing behaviour lives: config, the resource monitor,
and how an exception reaches the user (a `pulumi.RunError` as one error line, anything else as a
traceback). The engine starts it as a plugin: it prints its port, then serves until killed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import empty_pb2, json_format
from pulumi.runtime.proto import language_pb2, language_pb2_grpc, plugin_pb2

# The exit code pulumi-language-python-exec uses for "an error was already shown to the user".
_SHOWN_TO_USER = 32

# Run inside the program's virtualenv: every installed package that ships a pulumi-plugin.json.
_LIST_PLUGINS = r"""
import importlib.metadata as md, json, pathlib
found = []
for dist in md.distributions():
    for f in dist.files or []:
        if f.name == "pulumi-plugin.json" and len(f.parts) == 2:
            data = json.loads(pathlib.Path(dist.locate_file(f)).read_text())
            if data.get("resource"):
                found.append(data)
print(json.dumps(found))
"""


def _options(info: language_pb2.ProgramInfo) -> dict[str, Any]:
    return json_format.MessageToDict(info.options) if info.HasField("options") else {}


def _python(info: language_pb2.ProgramInfo) -> str:
    """The interpreter of the project's `virtualenv` option (relative to Pulumi.yaml), else this one."""
    venv = _options(info).get("virtualenv")
    if venv:
        path = Path(venv)
        if not path.is_absolute():
            path = Path(info.root_directory) / path
        candidate = path / "bin" / "python"
        if candidate.exists():
            return str(candidate)
        raise RuntimeError(f"the project's virtualenv {path} has no bin/python; run `pulumi install`")
    return sys.executable


class LanguageHost(language_pb2_grpc.LanguageRuntimeServicer):
    """The host's half of the LanguageRuntime protocol, for Python programs."""

    def __init__(self, engine: str, exec_script: Path) -> None:
        self.engine = engine
        self.exec_script = exec_script

    def Handshake(self, request: Any, context: Any) -> Any:  # noqa: N802 (gRPC names)
        return language_pb2.LanguageHandshakeResponse()

    def GetPluginInfo(self, request: Any, context: Any) -> Any:  # noqa: N802
        import pulumi

        return plugin_pb2.PluginInfo(version=getattr(pulumi, "__version__", "3.0.0"))

    def _plugins(self, info: language_pb2.ProgramInfo) -> list[dict[str, Any]]:
        out = subprocess.run(
            [_python(info), "-c", _LIST_PLUGINS], capture_output=True, text=True, check=True, timeout=120
        )
        return list(json.loads(out.stdout))

    def _dependencies(self, info: language_pb2.ProgramInfo, message: Any) -> list[Any]:
        return [
            message(name=p["name"], kind="resource", version=p.get("version", ""), server=p.get("server", ""))
            for p in self._plugins(info)
        ]

    def GetRequiredPackages(self, request: Any, context: Any) -> Any:  # noqa: N802
        packages = self._dependencies(request.info, plugin_pb2.PackageDependency)
        return language_pb2.GetRequiredPackagesResponse(packages=packages)

    def GetRequiredPlugins(self, request: Any, context: Any) -> Any:  # noqa: N802
        plugins = self._dependencies(request.info, plugin_pb2.PluginDependency)
        return language_pb2.GetRequiredPluginsResponse(plugins=plugins)

    def GetProgramDependencies(self, request: Any, context: Any) -> Any:  # noqa: N802
        return language_pb2.GetProgramDependenciesResponse()

    def InstallDependencies(self, request: Any, context: Any) -> Any:  # noqa: N802
        # The tests hand the project a ready virtualenv; there is nothing to install.
        return iter(())

    def Run(self, request: Any, context: Any) -> Any:  # noqa: N802
        info = request.info
        program = str(Path(info.program_directory) / (info.entry_point or "."))
        args = [
            _python(info),
            "-u",
            str(self.exec_script),
            "--monitor",
            request.monitor_address,
            "--engine",
            self.engine,
            "--project",
            request.project,
            "--root_directory",
            info.root_directory,
            "--stack",
            request.stack,
            "--pwd",
            request.pwd,
            "--dry_run",
            "true" if request.dryRun else "false",
            "--parallel",
            str(request.parallel),
            "--organization",
            request.organization,
            program,
            *request.args,
        ]
        env = {
            **os.environ,
            "PULUMI_CONFIG": json.dumps(dict(request.config)),
            "PULUMI_CONFIG_SECRET_KEYS": json.dumps(list(request.configSecretKeys)),
        }
        # Its own session: the engine interrupts its plugins' process group when it is done, and the
        # program must end on its own (its resource monitor goes away), not from our signal.
        code = subprocess.run(args, env=env, cwd=request.pwd or None, start_new_session=True).returncode
        if code == 0:
            return language_pb2.RunResponse()
        if code == _SHOWN_TO_USER:
            return language_pb2.RunResponse(bail=True)
        return language_pb2.RunResponse(error=f"Program exited with non-zero exit code: {code}")

    def About(self, request: Any, context: Any) -> Any:  # noqa: N802
        return language_pb2.AboutResponse(executable=sys.executable, version=sys.version.split()[0])

    def Cancel(self, request: Any, context: Any) -> Any:  # noqa: N802
        return empty_pb2.Empty()


def main(argv: list[str]) -> int:
    # The engine passes flags of its own (tracing, logging) and its address last.
    engine = argv[-1] if argv else ""
    exec_script = Path(os.environ.get("KTHW_PYTHON_EXEC") or Path(__file__).with_name("pulumi-language-python-exec"))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    language_pb2_grpc.add_LanguageRuntimeServicer_to_server(LanguageHost(engine, exec_script), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    # The engine stops its plugins with SIGINT or SIGTERM: end quietly, as a plugin should.
    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopped.set())
    stopped.wait()
    server.stop(grace=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
