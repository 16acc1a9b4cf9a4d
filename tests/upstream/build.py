"""Build the real upstream binaries and the Pulumi CLI from the Go module proxy, pinned and cached.

Each recipe is built in a throwaway wrapper module (its go.mod is written here, nothing upstream is
committed): modules whose own go.mod replaces siblings with local paths (k8s.io/kubernetes and its
staging modules, pulumi's pkg and sdk) cannot be `go install`ed, so the wrapper requires them and
pins every sibling to its published version. Results land in the cache, one directory per recipe
and version, and are reused while the recipe is unchanged:

    python -m tests.upstream.build                 # everything
    python -m tests.upstream.build kubernetes etcd # some recipes
    python -m tests.upstream.build --list          # what would be built, and what is cached
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from components import versions

# The Pulumi CLI the real-CLI tier runs: a release served by the Go module proxy, at least the 3.208
# the program needs (replacementTrigger). The Python SDK in requirements.txt may be older.
PULUMI_CLI = "3.274.1"
COREDNS = "1.14.2"


def cache_root() -> Path:
    """Outside the repo, kept between runs: $KTHW_CACHE, else ~/.cache/kthw."""
    return Path(os.environ.get("KTHW_CACHE") or Path.home() / ".cache" / "kthw") / "upstream"


@dataclass(frozen=True)
class Recipe:
    """One build: the wrapper module's requirements, the packages to build and how."""

    name: str
    version: str
    requires: dict[str, str]
    packages: tuple[str, ...]
    # module -> version pins for siblings the upstream go.mod replaces with local paths.
    replaces: dict[str, str] = field(default_factory=dict)
    # A module whose go.mod's local-path replaces are mapped to `staging_version` (k8s.io/kubernetes).
    staging_from: str | None = None
    staging_version: str | None = None
    cgo: bool = False
    tags: tuple[str, ...] = ()
    ldflags: tuple[str, ...] = ()
    apt: tuple[str, ...] = ()  # Debian packages the build needs (runc's libseccomp)
    # Files copied as they are from a module into bin/: (module, version, path in module).
    files: tuple[tuple[str, str, str], ...] = ()

    @property
    def key(self) -> str:
        """A digest of everything that shapes the output, so a changed recipe rebuilds."""
        blob = json.dumps(self.__dict__, sort_keys=True, default=list) + _go_version()
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def out(self) -> Path:
        return cache_root() / f"{self.name}-{self.version}"

    def built(self) -> bool:
        stamp = self.out / ".recipe"
        return stamp.exists() and stamp.read_text() == self.key


def _k8s_version_ldflags(version: str) -> tuple[str, ...]:
    major, minor, _ = version.split(".")
    flags = []
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion=v{version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
        ]
    return tuple(flags)


# The Kubernetes patch release a local-cloud stack starts at before it is bumped to versions.KUBERNETES.
PREVIOUS_KUBERNETES = "1.36.3"


def _kubernetes(name: str, version: str) -> Recipe:
    """The six Kubernetes binaries of one release, version-stamped as the release's own are."""
    return Recipe(
        name,
        version,
        requires={"k8s.io/kubernetes": f"v{version}"},
        packages=tuple(
            f"k8s.io/kubernetes/cmd/{b}"
            for b in (
                "kube-apiserver",
                "kube-controller-manager",
                "kube-scheduler",
                "kubelet",
                "kube-proxy",
                "kubectl",
            )
        ),
        staging_from="k8s.io/kubernetes",
        staging_version="v0." + version.split(".", 1)[1],
        ldflags=_k8s_version_ldflags(version),
    )


def recipes() -> list[Recipe]:
    """Every build, at the program's default versions (components/versions.py)."""
    k8s = versions.KUBERNETES
    return [
        Recipe(
            "etcd",
            versions.ETCD,
            requires={
                "go.etcd.io/etcd/server/v3": f"v{versions.ETCD}",
                "go.etcd.io/etcd/etcdctl/v3": f"v{versions.ETCD}",
                "go.etcd.io/etcd/etcdutl/v3": f"v{versions.ETCD}",
            },
            packages=("go.etcd.io/etcd/server/v3", "go.etcd.io/etcd/etcdctl/v3", "go.etcd.io/etcd/etcdutl/v3"),
            ldflags=(f"-X go.etcd.io/etcd/api/v3/version.GitSHA=v{versions.ETCD}",),
        ),
        _kubernetes("kubernetes", k8s),
        # The patch release before the program's, for the local cloud's upgrade scenario (issue 13).
        _kubernetes("kubernetes-previous", PREVIOUS_KUBERNETES),
        Recipe(
            "containerd",
            versions.CONTAINERD,
            requires={"github.com/containerd/containerd/v2": f"v{versions.CONTAINERD}"},
            packages=(
                "github.com/containerd/containerd/v2/cmd/containerd",
                "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2",
                "github.com/containerd/containerd/v2/cmd/ctr",
            ),
            tags=("no_btrfs", "no_devmapper", "no_zfs"),
            ldflags=(f"-X github.com/containerd/containerd/v2/version.Version=v{versions.CONTAINERD}",),
        ),
        Recipe(
            "runc",
            versions.RUNC,
            requires={"github.com/opencontainers/runc": f"v{versions.RUNC}"},
            packages=("github.com/opencontainers/runc",),
            cgo=True,
            tags=("seccomp", "urfave_cli_no_docs"),
            ldflags=(f"-X main.version={versions.RUNC}",),
            apt=("libseccomp-dev", "pkg-config"),
        ),
        Recipe(
            "cni-plugins",
            versions.CNI,
            requires={"github.com/containernetworking/plugins": f"v{versions.CNI}"},
            packages=tuple(
                f"github.com/containernetworking/plugins/plugins/{p}"
                for p in ("main/bridge", "main/loopback", "ipam/host-local", "meta/portmap")
            ),
        ),
        Recipe(
            "crictl",
            versions.CRICTL,
            requires={"sigs.k8s.io/cri-tools": f"v{versions.CRICTL}"},
            packages=("sigs.k8s.io/cri-tools/cmd/crictl",),
            ldflags=(f"-X sigs.k8s.io/cri-tools/pkg/version.Version=v{versions.CRICTL}",),
        ),
        Recipe(
            "coredns",
            COREDNS,
            requires={"github.com/coredns/coredns": f"v{COREDNS}"},
            packages=("github.com/coredns/coredns",),
        ),
        Recipe(
            "pulumi",
            PULUMI_CLI,
            requires={
                "github.com/pulumi/pulumi/pkg/v3": f"v{PULUMI_CLI}",
                "github.com/pulumi/pulumi/sdk/v3": f"v{PULUMI_CLI}",
            },
            packages=("github.com/pulumi/pulumi/pkg/v3/cmd/pulumi",),
            # pkg/v3's own go.mod swaps the clipboard module for a fork; the wrapper must too.
            staging_from="github.com/pulumi/pulumi/pkg/v3",
            ldflags=(f"-X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=v{PULUMI_CLI}",),
            # The SDK's program runner, which a CLI release ships beside the Python language host.
            files=(("github.com/pulumi/pulumi/sdk/v3", f"v{PULUMI_CLI}", "python/cmd/pulumi-language-python-exec"),),
        ),
        *image_recipes(),
    ]


def _go_version() -> str:
    """Part of every recipe's key: a new Go rebuilds. Without Go nothing matches, so nothing counts as built."""
    try:
        return subprocess.run(["go", "env", "GOVERSION"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "no-go-toolchain"


def _go(args: list[str], cwd: Path, env: dict[str, str]) -> None:
    result = subprocess.run(["go", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"go {' '.join(args[:3])}... failed in {cwd}:\n{result.stdout}{result.stderr}")


def _module_dir(module: str, version: str, env: dict[str, str], cwd: Path) -> Path:
    result = subprocess.run(
        ["go", "mod", "download", "-json", f"{module}@{version}"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    info = json.loads(result.stdout or "{}")
    if result.returncode != 0 or "Error" in info:
        raise SystemExit(f"cannot download {module}@{version}: {info.get('Error', result.stderr)}")
    return Path(info["Dir"])


_LOCAL_REPLACE = re.compile(r"^\s*(?:replace\s+)?(\S+)(?:\s+\S+)?\s+=>\s+(\.\.?/\S*)\s*$")
_MODULE_REPLACE = re.compile(r"^\s*(?:replace\s+)?(\S+)(?:\s+\S+)?\s+=>\s+([^./\s]\S*)\s+(v\S+)\s*$")


def _inherited_replaces(recipe: Recipe, env: dict[str, str], cwd: Path) -> dict[str, str]:
    """The upstream module's replaces, as the wrapper must state them (Go ignores a dependency's).

    Local-path replaces (siblings in one repository) become the sibling's published version; a
    replace by another module (a fork) is kept as it is.
    """
    if recipe.staging_from is None:
        return {}
    gomod = _module_dir(recipe.staging_from, recipe.requires[recipe.staging_from], env, cwd) / "go.mod"
    out: dict[str, str] = {}
    for line in gomod.read_text().splitlines():
        if m := _LOCAL_REPLACE.match(line):
            module = m.group(1)
            if module in recipe.requires:
                continue
            version = recipe.staging_version or recipe.requires[recipe.staging_from]
            out[module] = f"{module} {version}"
        elif m := _MODULE_REPLACE.match(line):
            out[m.group(1)] = f"{m.group(2)} {m.group(3)}"
    return out


def build(recipe: Recipe, log: bool = True) -> Path:
    """Build one recipe into the cache unless it is there already; return its bin directory."""
    bin_dir = recipe.out / "bin"
    if recipe.built():
        if log:
            print(f"{recipe.name} {recipe.version}: cached in {bin_dir}", flush=True)
        return bin_dir
    if isinstance(recipe, CProgram):
        return _build_c(recipe, log)
    for package in recipe.apt:
        if shutil.which("dpkg-query") and subprocess.run(["dpkg-query", "-W", package], capture_output=True).returncode:
            raise SystemExit(f"{recipe.name} needs the Debian package {package} (.ci/run installs it)")
    start = time.monotonic()
    env = {
        **os.environ,
        "CGO_ENABLED": "1" if recipe.cgo else "0",
        "GOFLAGS": "-mod=mod",
        "GOTOOLCHAIN": "local",
        "GOWORK": "off",
    }
    with tempfile.TemporaryDirectory(prefix=f"kthw-build-{recipe.name}-") as tmp:
        wrapper = Path(tmp)
        replaces = _inherited_replaces(recipe, env, wrapper)
        lines = ["module kthw.test/upstream-build", "", "go 1.26", ""]
        lines += [f"require {module} {version}" for module, version in sorted(recipe.requires.items())]
        lines += [f"replace {module} => {target}" for module, target in sorted(replaces.items())]
        (wrapper / "go.mod").write_text("\n".join(lines) + "\n")
        staging = recipe.out.with_name(recipe.out.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        (staging / "bin").mkdir(parents=True)
        args = ["build", "-trimpath", "-o", str(staging / "bin") + "/"]
        if recipe.tags:
            args += ["-tags", ",".join(recipe.tags)]
        args += ["-ldflags", " ".join(("-s", "-w", *recipe.ldflags))]
        _go(["mod", "download"], wrapper, env)
        _go([*args, *recipe.packages], wrapper, env)
        _rename_mains(recipe, staging / "bin")
        for module, version, path in recipe.files:
            target = staging / "bin" / Path(path).name
            shutil.copyfile(_module_dir(module, version, env, wrapper) / path, target)
            target.chmod(0o755)
        (staging / ".recipe").write_text(recipe.key)
        shutil.rmtree(recipe.out, ignore_errors=True)
        staging.rename(recipe.out)
    if log:
        print(f"{recipe.name} {recipe.version}: built in {time.monotonic() - start:.0f} s", flush=True)
    return bin_dir


def _rename_mains(recipe: Recipe, bin_dir: Path) -> None:
    """`go build -o dir/` names a binary after its package's last path element: fix etcd's."""
    if recipe.name == "etcd" and (bin_dir / "server").exists():
        (bin_dir / "server").rename(bin_dir / "etcd")


# --- the local cloud's images (issue 20): metrics-server and the real pause -----------------------
#
# The two programs behind the last stand-in images of the local cloud's registry. metrics-server is
# a Go program like the rest; pause is C, so it gets a recipe kind of its own, built with this
# machine's gcc from the Kubernetes module the `kubernetes` recipe downloads anyway.

# The metrics-server release the Go module proxy serves (it does not serve 0.8.1, the program's default).
METRICS_SERVER = "0.8.0"
# The sandbox image containerd 2.3 runs for every pod (`containerd config default`), and the tag the
# Kubernetes tree's build/pause/Makefile gives the pause.c it holds.
PAUSE = "3.10.2"
PAUSE_SOURCE = "build/pause/linux/pause.c"
PAUSE_MAKEFILE_TAG = re.compile(r"^TAG \?= (\S+)$", re.MULTILINE)


@dataclass(frozen=True)
class CProgram(Recipe):
    """One C file from a Go module's tree, compiled statically with this machine's gcc and stripped.

    `requires` names the one module, `source` the file in it; the binary is named after the file.
    """

    source: str = ""
    cflags: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        blob = json.dumps(self.__dict__, sort_keys=True, default=list) + _gcc_version()
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def image_recipes() -> list[Recipe]:
    """metrics-server at the version the proxy serves, and the real pause of versions.KUBERNETES's tree."""
    return [
        Recipe(
            "metrics-server",
            METRICS_SERVER,
            requires={"sigs.k8s.io/metrics-server": f"v{METRICS_SERVER}"},
            packages=("sigs.k8s.io/metrics-server/cmd/metrics-server",),
            # What its Makefile stamps: `metrics-server --version` prints it.
            ldflags=(f"-X k8s.io/client-go/pkg/version.gitVersion=v{METRICS_SERVER}",),
        ),
        CProgram(
            "pause",
            PAUSE,
            requires={"k8s.io/kubernetes": f"v{versions.KUBERNETES}"},
            packages=(),
            apt=("gcc", "libc6-dev"),  # libc6-dev holds the static libc.a
            source=PAUSE_SOURCE,
            # The Makefile's flags; `pause -v` prints the version, as the release's does.
            cflags=("-Os", "-Wall", "-Werror", "-static", f"-DVERSION=v{PAUSE}-kthw-k8s-v{versions.KUBERNETES}"),
        ),
    ]


def _gcc_version() -> str:
    """Part of a C program's key: another compiler rebuilds. Without gcc nothing matches."""
    try:
        return subprocess.run(["gcc", "-dumpfullversion"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "no-gcc"


def _build_c(recipe: CProgram, log: bool) -> Path:
    """Compile the recipe's C file into the cache; its module comes through the Go module proxy."""
    for package in recipe.apt:
        if shutil.which("dpkg-query") and subprocess.run(["dpkg-query", "-W", package], capture_output=True).returncode:
            raise SystemExit(f"{recipe.name} needs the Debian package {package} (.ci/run installs it)")
    if shutil.which("gcc") is None:
        raise SystemExit(f"{recipe.name} needs gcc: apt-get install gcc libc6-dev")
    start = time.monotonic()
    env = {**os.environ, "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local", "GOWORK": "off"}
    ((module, version),) = recipe.requires.items()
    with tempfile.TemporaryDirectory(prefix=f"kthw-build-{recipe.name}-") as tmp:
        wrapper = Path(tmp)
        (wrapper / "go.mod").write_text("module kthw.test/upstream-build\n\ngo 1.26\n")
        tree = _module_dir(module, version, env, wrapper)
        source = tree / recipe.source
        if recipe.name == "pause":
            _check_pause_tag(recipe, source.parent.parent / "Makefile")
        staging = recipe.out.with_name(recipe.out.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        (staging / "bin").mkdir(parents=True)
        binary = staging / "bin" / source.stem
        for argv in (["gcc", *recipe.cflags, "-o", str(binary), str(source)], ["strip", str(binary)]):
            result = subprocess.run(argv, capture_output=True, text=True)
            if result.returncode != 0:
                raise SystemExit(f"{' '.join(argv)} failed:\n{result.stdout}{result.stderr}")
        (staging / ".recipe").write_text(recipe.key)
        shutil.rmtree(recipe.out, ignore_errors=True)
        staging.rename(recipe.out)
    if log:
        print(f"{recipe.name} {recipe.version}: built in {time.monotonic() - start:.0f} s", flush=True)
    return recipe.out / "bin"


def _check_pause_tag(recipe: CProgram, makefile: Path) -> None:
    """The tree's own pause tag must be the one the recipe builds: containerd asks for that tag."""
    found = PAUSE_MAKEFILE_TAG.search(makefile.read_text())
    if found is None or found.group(1) != recipe.version:
        tag = found.group(1) if found else "none"
        raise SystemExit(f"pause: {makefile} tags pause {tag}, the recipe builds {recipe.version}: update PAUSE")


# --- end of the local cloud's images ---------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="recipes to build (default: all)")
    parser.add_argument("--list", action="store_true", help="show recipes and whether each is cached")
    args = parser.parse_args(argv)
    chosen = [r for r in recipes() if not args.names or r.name in args.names]
    unknown = set(args.names) - {r.name for r in recipes()}
    if unknown:
        parser.error(f"unknown recipe(s): {', '.join(sorted(unknown))}")
    if args.list:
        for r in chosen:
            print(f"{r.name:12} {r.version:10} {'cached' if r.built() else 'missing'}  {r.out}")
        return 0
    start = time.monotonic()
    for recipe in chosen:
        build(recipe)
    print(f"upstream builds: {time.monotonic() - start:.0f} s in all", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
