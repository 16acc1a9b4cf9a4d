"""Build the real upstream binaries and the Pulumi CLI from the Go module proxy, pinned and cached.

Each recipe is built in a throwaway wrapper module (its go.mod is written here, nothing upstream is
committed): modules whose own go.mod replaces siblings with local paths (k8s.io/kubernetes and its
staging modules, pulumi's pkg and sdk) cannot be `go install`ed, so the wrapper requires them and
pins every sibling to its published version. Results land in the cache, one directory per recipe
and version, and are reused while the recipe is unchanged:

    python -m tests.upstream.build                 # everything
    python -m tests.upstream.build kubernetes etcd # some recipes
    python -m tests.upstream.build --list          # what would be built, and what is cached

Two Pulumi plugins are not served by the proxy at all (`github.com/pulumi/pulumi-command/provider`
was never tagged; the Python language host's module answers 403): they build from the unmodified
upstream archives in `../shared/upstream/` (see its README), checked against their SHA-256 first,
extracted to a throwaway directory and built there. Those archives are build inputs only.
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
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from components import versions

# The Pulumi CLI the real-CLI tier runs: a release served by the Go module proxy, at least the 3.208
# the program needs (replacementTrigger). The Python SDK in requirements.txt may be older.
PULUMI_CLI = "3.274.1"
COREDNS = "1.14.2"
# The two plugins built from ../shared/upstream: the command provider the pulumi-command SDK in
# requirements.txt asks for (its pulumi-plugin.json), and the newest Python language host whose
# source could be had (it speaks the CLI's language-host protocol).
COMMAND_PROVIDER = "1.2.1"
LANGUAGE_PYTHON = "3.259.0"
# Where the archives are looked for: this variable, else ../shared/upstream beside the clone
# (CI's clean clone has it), else the workplace's shared folder.
SOURCES_ENV = "KTHW_UPSTREAM_SOURCES"
REPO = Path(__file__).resolve().parent.parent.parent
DEFAULT_SOURCES = (REPO.parent / "shared" / "upstream", Path("/work/shared/upstream"))


def cache_root() -> Path:
    """Outside the repo, kept between runs: $KTHW_CACHE, else ~/.cache/kthw."""
    return Path(os.environ.get("KTHW_CACHE") or Path.home() / ".cache" / "kthw") / "upstream"


@dataclass(frozen=True)
class Archive:
    """An upstream source archive (../shared/upstream): its file, its SHA-256, and how to build it."""

    file: str
    sha256: str
    # The Go module's directory inside the archive: the build runs there.
    module_dir: str
    # `go mod edit` arguments, then `go mod tidy`: pins the siblings the module replaces with local
    # paths that the archive does not hold.
    edits: tuple[str, ...] = ()


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
    # Built from an upstream archive instead of a wrapper module: `packages` are then relative to
    # the archive's module directory, and `requires` is empty.
    archive: Archive | None = None

    def key_fields(self) -> dict[str, object]:
        """Everything that shapes the output; `archive` only where set, so proxy recipes keep their keys."""
        shape = dict(self.__dict__)
        if self.archive is None:
            del shape["archive"]
        else:
            shape["archive"] = asdict(self.archive)
        return shape

    @property
    def key(self) -> str:
        """A digest of everything that shapes the output, so a changed recipe rebuilds."""
        blob = json.dumps(self.key_fields(), sort_keys=True, default=list) + _go_version()
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
# The containerd patch release after the program's, for the local cloud's workers-only bump (issue 18):
# the module proxy serves no 2.3 release before versions.CONTAINERD (2.3.4), so the bump goes up.
NEXT_CONTAINERD = "2.3.5"


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


def _containerd(name: str, version: str) -> Recipe:
    """containerd, its runc shim and ctr, version-stamped as the release's own are."""
    return Recipe(
        name,
        version,
        requires={"github.com/containerd/containerd/v2": f"v{version}"},
        packages=(
            "github.com/containerd/containerd/v2/cmd/containerd",
            "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2",
            "github.com/containerd/containerd/v2/cmd/ctr",
        ),
        tags=("no_btrfs", "no_devmapper", "no_zfs"),
        ldflags=(f"-X github.com/containerd/containerd/v2/version.Version=v{version}",),
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
        _containerd("containerd", versions.CONTAINERD),
        # The patch release after the program's, for the local cloud's containerd bump (issue 18).
        _containerd("containerd-next", NEXT_CONTAINERD),
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
        Recipe(
            "pulumi-resource-command",
            COMMAND_PROVIDER,
            requires={},
            packages=("./cmd/pulumi-resource-command",),
            ldflags=(f"-X github.com/pulumi/pulumi-command/provider/pkg/version.Version={COMMAND_PROVIDER}",),
            archive=Archive(
                file=f"pulumi-command-v{COMMAND_PROVIDER}-provider.tar.gz",
                sha256="fb75e890a529036cbf095567c56b21f71bf4225312f4d31a1e2683d8e64d5731",
                module_dir=f"pulumi-command-v{COMMAND_PROVIDER}/provider",
            ),
        ),
        Recipe(
            "pulumi-language-python",
            LANGUAGE_PYTHON,
            requires={},
            packages=(".",),
            ldflags=(f"-X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version={LANGUAGE_PYTHON}",),
            archive=Archive(
                file=f"pulumi-language-python-v{LANGUAGE_PYTHON}.tar.gz",
                sha256="2ce827cb6325a6b67a2716f84fbfe914d87886e9c2b38eb39636388b974b669f",
                module_dir=f"pulumi-language-python-v{LANGUAGE_PYTHON}/sdk/python/cmd/pulumi-language-python",
                edits=(
                    "-dropreplace=github.com/pulumi/pulumi/pkg/v3",
                    "-dropreplace=github.com/pulumi/pulumi/sdk/v3",
                    f"-require=github.com/pulumi/pulumi/pkg/v3@v{LANGUAGE_PYTHON}",
                    f"-require=github.com/pulumi/pulumi/sdk/v3@v{LANGUAGE_PYTHON}",
                ),
            ),
            # What a CLI release ships for Python beside `pulumi`, each piece at the version of what
            # calls it: the host runs programs through the `-exec` script beside its own executable
            # (its own release's), and the engine starts `pulumi-resource-pulumi-python` from PATH
            # for a Python dynamic provider (`pulumi.dynamic`; the CLI's release). This directory
            # is on PATH next to the CLI's; the CLI's own recipe is left as it is, so its cache stays valid.
            files=(
                ("github.com/pulumi/pulumi/sdk/v3", f"v{LANGUAGE_PYTHON}", "python/cmd/pulumi-language-python-exec"),
                ("github.com/pulumi/pulumi/sdk/v3", f"v{PULUMI_CLI}", "python/dist/pulumi-resource-pulumi-python"),
            ),
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


def sources_dir() -> Path:
    """Where the upstream archives are: $KTHW_UPSTREAM_SOURCES, else the first default that exists."""
    if os.environ.get(SOURCES_ENV):
        return Path(os.environ[SOURCES_ENV])
    return next((d for d in DEFAULT_SOURCES if d.is_dir()), DEFAULT_SOURCES[0])


def verified_archive(archive: Archive) -> Path:
    """The archive's path, after checking its SHA-256; a missing or altered archive stops the build."""
    path = sources_dir() / archive.file
    if not path.is_file():
        searched = os.environ.get(SOURCES_ENV) or " or ".join(str(d) for d in DEFAULT_SOURCES)
        raise SystemExit(
            f"upstream archive {archive.file} not found (looked in {searched}; set ${SOURCES_ENV} "
            "to the folder that holds it, see ../shared/upstream/README.md)"
        )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != archive.sha256:
        raise SystemExit(
            f"upstream archive {path} has sha256 {digest}, expected {archive.sha256}: refusing to build it"
        )
    return path


def _build_archive(recipe: Recipe, archive: Archive, out_bin: Path, env: dict[str, str], tmp: Path) -> None:
    """Extract a verified archive into `tmp` and build its packages there, as its README's recipe does."""
    path = verified_archive(archive)
    tmp.mkdir()
    with tarfile.open(path) as tar:
        tar.extractall(tmp, filter="data")
    module = tmp / archive.module_dir
    if archive.edits:
        _go(["mod", "edit", *archive.edits], module, env)
        _go(["mod", "tidy"], module, env)
    args = ["build", "-trimpath", "-buildvcs=false", "-o", str(out_bin) + "/"]
    args += ["-ldflags", " ".join(("-s", "-w", *recipe.ldflags))]
    _go([*args, *recipe.packages], module, env)
    if not (out_bin / recipe.name).is_file():
        raise SystemExit(
            f"{recipe.name}: the build made {sorted(p.name for p in out_bin.iterdir())}, not {recipe.name}"
        )


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
    if recipe.archive is not None:
        verified_archive(recipe.archive)  # before anything is downloaded or built
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
        staging = recipe.out.with_name(recipe.out.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        (staging / "bin").mkdir(parents=True)
        if recipe.archive is not None:
            _build_archive(recipe, recipe.archive, staging / "bin", env, wrapper / "src")
        else:
            _build_wrapper(recipe, staging / "bin", env, wrapper)
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


def _build_wrapper(recipe: Recipe, out_bin: Path, env: dict[str, str], wrapper: Path) -> None:
    """Build the recipe's packages from a throwaway module that requires them (the proxy serves them)."""
    replaces = _inherited_replaces(recipe, env, wrapper)
    lines = ["module kthw.test/upstream-build", "", "go 1.26", ""]
    lines += [f"require {module} {version}" for module, version in sorted(recipe.requires.items())]
    lines += [f"replace {module} => {target}" for module, target in sorted(replaces.items())]
    (wrapper / "go.mod").write_text("\n".join(lines) + "\n")
    args = ["build", "-trimpath", "-o", str(out_bin) + "/"]
    if recipe.tags:
        args += ["-tags", ",".join(recipe.tags)]
    args += ["-ldflags", " ".join(("-s", "-w", *recipe.ldflags))]
    _go(["mod", "download"], wrapper, env)
    _go([*args, *recipe.packages], wrapper, env)
    _rename_mains(recipe, out_bin)


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
    parser.add_argument("--jobs", type=int, default=1, help="builds at a time (default: 1)")
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
    # One build at a time unless asked: Go's compiler alone keeps two cores busy. Two at a time
    # left none idle either, and took longer (cold, on 2 cores, the same day: 1442 s against 1191 s
    # one at a time). Each build has its own wrapper and staging directory, and Go's caches take
    # concurrent users, so --jobs 2 is safe where there are cores to spare.
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for _ in pool.map(build, chosen):
            pass
    print(f"upstream builds: {time.monotonic() - start:.0f} s in all", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
