"""tests/localcloud/registry.py and oci.py: the images built here, pushed to docker-registry, pulled by real containerd.

containerd and crictl are the upstream builds; containerd runs the program's own rendered
config.toml (only its paths moved under the test's directory) and the program's rendered hosts.toml
per kthw:registryMirrors entry, all inside a namespace of the test's own where the registry listens.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from components import addons, config, worker
from components import images as images_module
from tests import upstream
from tests.localcloud import mirror, oci, registry
from tests.localcloud.conftest import _missing
from tests.localcloud.net import GATEWAY, Namespace
from tests.tools import require_tool
from tests.upstream import build

ADDRESS = str(GATEWAY.ip)
URL = f"http://{ADDRESS}:{registry.PORT}"
REGION = {"gcp:region": "us-west1", "gcp:zone": "us-west1-c"}
# containerd's default container capabilities (ctr drops by name, it has no "ALL").
DEFAULT_CAPS = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)


@pytest.fixture(scope="module")
def images() -> registry.Images:
    for path, package in ((registry.BUSYBOX, "busybox-static"), (registry.NGINX, "nginx")):
        if not path.exists():
            _missing(f"{path} is missing: apt-get install {package}")
    return registry.build_images()


def metrics_server_digest(images: registry.Images) -> str:
    return images.manifests[registry.METRICS_SERVER_IMAGE].digest


def metrics_server_config(images: registry.Images) -> dict[str, object]:
    """What a local stack sets: the built release, and its digest vouched for (no published digest matches it)."""
    return {
        "metricsServerVersion": build.METRICS_SERVER,
        "imageDigests": registry.metrics_server_digests(images),
        "registryMirrors": registry.registry_mirrors(URL),
    }


def manifest(images: registry.Images, reference: str) -> dict[str, object]:
    return json.loads(oci.blob_path(images.layout, images.manifests[reference].digest).read_bytes())


def image_config(images: registry.Images, reference: str) -> dict[str, object]:
    digest = manifest(images, reference)["config"]["digest"]  # type: ignore[index]
    return json.loads(oci.blob_path(images.layout, str(digest)).read_bytes())


def layer_members(images: registry.Images, reference: str) -> dict[str, tarfile.TarInfo]:
    """Every path of the image's layers, upper layers winning."""
    found: dict[str, tarfile.TarInfo] = {}
    for layer in manifest(images, reference)["layers"]:  # type: ignore[attr-defined]
        with tarfile.open(oci.blob_path(images.layout, layer["digest"])) as tar:
            found |= {m.name: m for m in tar.getmembers()}
    return found


def test_every_image_the_cluster_pulls_is_built(images: registry.Images) -> None:
    program = {addons.COREDNS_IMAGE, addons.SMOKE_NGINX_IMAGE, addons.SMOKE_BUSYBOX_IMAGE}
    built = set(images.manifests)
    assert {r.removeprefix("docker.io/library/") for r in built} >= program
    assert registry.PAUSE_IMAGE in built
    # The program names metrics-server by tag and digest; the tag is the built release's.
    stack = config.load(metrics_server_config(images), REGION)
    assert addons.metrics_server_image(stack) == f"{registry.METRICS_SERVER_IMAGE}@{metrics_server_digest(images)}"
    for reference in built:
        cfg = image_config(images, reference)
        assert (cfg["os"], cfg["architecture"]) == ("linux", "amd64"), reference


def test_pause_is_the_sandbox_image_containerd_runs_with_the_programs_config() -> None:
    """The program names no sandbox image, so containerd's built-in default is what every pod pulls."""
    assert "sandbox" not in worker.render_containerd_config()
    containerd = upstream.require("containerd") / "containerd"
    default = subprocess.run([str(containerd), "config", "default"], capture_output=True, text=True, timeout=30)
    assert f"sandbox = '{registry.PAUSE_IMAGE}'" in default.stdout


def test_a_warm_image_build_costs_next_to_nothing(images: registry.Images) -> None:
    start = time.monotonic()
    again = registry.build_images()
    elapsed = time.monotonic() - start
    assert again == images
    assert elapsed < 2.0, f"a warm image build took {elapsed:.2f}s"
    print(f"\nimages warm build: {elapsed:.2f}s")


def test_images_are_reproducible(images: registry.Images, tmp_path: Path) -> None:
    """A rebuild gives the same manifest digests: a second run pushes nothing new and pods see the same images."""
    again = oci.write_layout(tmp_path / "layout", registry.image_specs())
    assert {r: d.digest for r, d in again.items()} == {r: d.digest for r, d in images.manifests.items()}


def test_image_runtime_settings_match_the_real_images(images: registry.Images) -> None:
    nginx = image_config(images, registry.NGINX_IMAGE)["config"]
    assert nginx["Cmd"] == ["nginx", "-g", "daemon off;"]  # type: ignore[index]
    coredns = image_config(images, registry.COREDNS_IMAGE)["config"]
    # The Deployment's args (-conf ...) follow the image's entrypoint, as with the real image.
    assert coredns["Entrypoint"] == ["/coredns"] and coredns["User"] == "65532:65532"  # type: ignore[index]
    pause = image_config(images, registry.PAUSE_IMAGE)["config"]
    assert pause["Entrypoint"] == ["/pause"] and pause["User"] == "65535:65535"  # type: ignore[index]
    # The real pause: one static binary, FROM scratch.
    pause_files = layer_members(images, registry.PAUSE_IMAGE)
    assert sorted(pause_files) == ["pause"], sorted(pause_files)
    pause_binary = upstream.require("pause") / "pause"
    assert subprocess.run(["ldd", str(pause_binary)], capture_output=True).returncode != 0, "pause is not static"
    metrics = image_config(images, registry.METRICS_SERVER_IMAGE)["config"]
    assert metrics["Entrypoint"] == ["/metrics-server"] and metrics["User"] == "65534"  # type: ignore[index]
    assert layer_members(images, registry.METRICS_SERVER_IMAGE)["tmp"].mode == 0o1777
    busybox = layer_members(images, registry.BUSYBOX_IMAGE)
    for applet in ("sh", "sleep", "cat", "ls"):
        assert busybox[f"bin/{applet}"].issym() and busybox[f"bin/{applet}"].linkname == "busybox", applet
    assert busybox["bin/nslookup"].isfile() and busybox["bin/nslookup"].mode == 0o755
    coredns_files = layer_members(images, registry.COREDNS_IMAGE)
    cap = coredns_files["coredns"].pax_headers["SCHILY.xattr.security.capability"].encode("latin-1")
    assert cap == oci.file_capability(oci.CAP_NET_BIND_SERVICE)
    assert {m.mtime for m in coredns_files.values()} == {0}


def test_image_scripts_pass_shellcheck_as_busybox_sh(tmp_path: Path) -> None:
    binary = require_tool("shellcheck")
    for name, script in (("nslookup", registry.NSLOOKUP_SCRIPT),):
        path = tmp_path / name
        path.write_text(script)
        result = subprocess.run([binary, "--shell=sh", str(path)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout


def test_registry_mirrors_is_a_valid_program_config(images: registry.Images) -> None:
    mirrors = registry.registry_mirrors(URL)
    assert mirrors == {"docker.io": URL, "registry.k8s.io": URL}
    cfg = config.load({"registryMirrors": mirrors}, REGION)
    assert dict(cfg.registry_mirrors) == mirrors


# --- the registry and containerd, for real ---------------------------------------------------------


@dataclass
class Cloud:
    """The namespace, the registry in it, and a containerd started with the program's rendered config."""

    ns: Namespace
    work: Path
    bins: Path
    pushed: dict[str, str]
    env: dict[str, str]

    @property
    def socket(self) -> str:
        return str(self.work / "containerd.sock")

    def run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            mirror.netns_command(self.ns.name, *argv), capture_output=True, text=True, env=self.env, timeout=timeout
        )

    def ctr(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.run(str(self.bins / "ctr"), "--address", self.socket, "-n", "k8s.io", *argv, timeout=timeout)

    def crictl(self, *argv: str) -> subprocess.CompletedProcess[str]:
        crictl = upstream.require("crictl") / "crictl"
        endpoint = f"unix://{self.socket}"
        return self.run(str(crictl), "--runtime-endpoint", endpoint, "--image-endpoint", endpoint, *argv)


def containerd_config(work: Path) -> str:
    """The program's config.toml with its registry path (and containerd's own dirs) under `work`."""
    rendered = worker.render_containerd_config()
    assert f"config_path = '{worker.REGISTRY_CONFIG_PATH}'" in rendered
    rendered = rendered.replace(worker.REGISTRY_CONFIG_PATH, str(work / "certs.d"))
    # Top-level keys before the first table: TOML puts them in the root table.
    own = f"root = '{work}/root'\nstate = '{work}/state'\n"
    return own + rendered + f"\n[grpc]\n  address = '{work}/containerd.sock'\n"


@pytest.fixture(scope="module")
def cloud(images: registry.Images, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    for tool in ("ip", "nsenter", "docker-registry"):
        if shutil.which(tool) is None:
            _missing(f"{tool} is missing (.ci/run installs iproute2, util-linux and docker-registry)")
    if os.geteuid() != 0:
        _missing("the registry tests need root (network namespaces, containerd)")
    bins = upstream.require("containerd")
    runc = upstream.require("runc")
    work = tmp_path_factory.mktemp("registry")
    ns = Namespace(name=f"kthw-reg-{uuid.uuid4().hex[:8]}").create()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        processes.append(registry.serve_registry(ns.name, ADDRESS, registry.PORT, work / "registry"))
        pushed = registry.push(images, URL, ns.name)
        # The files the program puts on a worker for this kthw:registryMirrors, moved under the test's directory.
        stack = config.load({"registryMirrors": registry.registry_mirrors(URL)}, REGION)
        for file in worker.registry_files(stack):
            path = work / "certs.d" / Path(file.path).relative_to(worker.REGISTRY_CONFIG_PATH)
            path.parent.mkdir(parents=True)
            path.write_text(str(file.content))
        assert sorted(p.parent.name for p in (work / "certs.d").glob("*/hosts.toml")) == [
            "docker.io",
            "registry.k8s.io",
        ]
        (work / "containerd.toml").write_text(containerd_config(work))
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        env["PATH"] = f"{bins}:{runc}:{env.get('PATH', '/usr/bin:/bin')}"
        with (work / "containerd.log").open("wb") as log:
            processes.append(
                subprocess.Popen(
                    mirror.netns_command(ns.name, str(bins / "containerd"), "--config", str(work / "containerd.toml")),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            )
        deadline = time.monotonic() + 30
        while not (work / "containerd.sock").exists():
            assert processes[-1].poll() is None, (work / "containerd.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "containerd did not start"
            time.sleep(0.1)
        yield Cloud(ns, work, bins, pushed, env)
    finally:
        for p in reversed(processes):
            p.kill()
            p.wait()
        ns.destroy()
        subprocess.run(["umount", "-R", str(work / "root")], capture_output=True, check=False)


def test_push_stores_each_image_under_the_name_containerd_asks_a_mirror_for(
    cloud: Cloud, images: registry.Images
) -> None:
    assert cloud.pushed == {r: d.digest for r, d in images.manifests.items()}

    def fetch(path: str) -> tuple[int, str]:
        with socket.create_connection((ADDRESS, registry.PORT), timeout=10) as s:
            accept = f"Accept: {oci.MANIFEST}\r\n"
            s.sendall(f"HEAD {path} HTTP/1.0\r\nHost: {ADDRESS}\r\n{accept}\r\n".encode())
            head = s.makefile("rb").read().decode()
        status = int(head.split()[1])
        digest = next((line.split(":", 1)[1].strip() for line in head.splitlines() if line.startswith("Docker-")), "")
        return status, digest

    got = mirror.in_namespace(cloud.ns.name, lambda: fetch("/v2/library/nginx/manifests/1.28"))
    assert got == (200, images.manifests[registry.NGINX_IMAGE].digest)
    got = mirror.in_namespace(cloud.ns.name, lambda: fetch("/v2/coredns/coredns/manifests/v1.14.2"))
    assert got == (200, images.manifests[registry.COREDNS_IMAGE].digest)


def test_the_cri_pulls_every_image_through_the_programs_hosts_toml(cloud: Cloud, images: registry.Images) -> None:
    """What a kubelet asks of containerd (CRI PullImage), with the images named as the program's pods name them."""
    metrics_server = addons.metrics_server_image(config.load(metrics_server_config(images), REGION))
    names = [
        registry.PAUSE_IMAGE,
        addons.COREDNS_IMAGE,
        metrics_server,
        addons.SMOKE_NGINX_IMAGE,
        addons.SMOKE_BUSYBOX_IMAGE,
    ]
    for name in names:
        pulled = cloud.crictl("pull", name)
        assert pulled.returncode == 0, f"{name}: {pulled.stderr}\n{(cloud.work / 'containerd.log').read_text()[-3000:]}"
    listed = cloud.ctr("images", "ls")
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line.split()[2] for line in listed.stdout.splitlines()[1:]}
    # A reference with a digest is pulled by the digest alone: containerd keeps it as repository@digest.
    by_digest = f"{addons.METRICS_SERVER_REPOSITORY}@{metrics_server_digest(images)}"
    assert rows.get(by_digest) == metrics_server_digest(images), sorted(rows)
    for reference, descriptor in images.manifests.items():
        if reference != registry.METRICS_SERVER_IMAGE:
            assert rows.get(reference) == descriptor.digest, reference


def test_a_digest_the_registry_does_not_hold_fails_the_pull(cloud: Cloud, images: registry.Images) -> None:
    """The tag is there, but the reference's digest wins: another digest (the published release's) is not pulled."""
    published = images_module.PINNED[("metrics-server", build.METRICS_SERVER)]
    pulled = cloud.crictl("pull", f"{registry.METRICS_SERVER_IMAGE}@{published}")
    assert pulled.returncode != 0
    # containerd drops the tag of a reference with a digest and resolves the digest alone.
    assert f"failed to resolve image: {addons.METRICS_SERVER_REPOSITORY}@{published}: not found" in pulled.stderr, (
        pulled.stderr
    )


def test_metrics_server_runs_as_the_images_entrypoint(cloud: Cloud, images: registry.Images) -> None:
    program = addons.metrics_server_image(config.load(metrics_server_config(images), REGION))
    assert cloud.crictl("pull", program).returncode == 0
    # What the CRI stored for the program's reference: the repository at the digest.
    pulled = f"{addons.METRICS_SERVER_REPOSITORY}@{metrics_server_digest(images)}"
    version = cloud.ctr("run", "--rm", pulled, "ms-version", "/metrics-server", "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"v{build.METRICS_SERVER}", version.stdout


def test_nginx_runs_as_the_containers_entrypoint_and_serves_port_80(cloud: Cloud) -> None:
    assert cloud.crictl("pull", addons.SMOKE_NGINX_IMAGE).returncode == 0
    version = cloud.ctr("run", "--rm", "--net-host", registry.NGINX_IMAGE, "nginx-v", "nginx", "-v")
    assert version.returncode == 0, version.stderr
    assert "nginx version: nginx/" in version.stdout + version.stderr
    started = cloud.ctr("run", "-d", "--net-host", registry.NGINX_IMAGE, "nginx-80")
    assert started.returncode == 0, started.stderr
    try:
        mirror.wait_listening(cloud.ns.name, ADDRESS, 80)

        def get() -> bytes:
            with socket.create_connection((ADDRESS, 80), timeout=10) as s:
                s.sendall(f"GET / HTTP/1.0\r\nHost: {ADDRESS}\r\n\r\n".encode())
                return s.makefile("rb").read()

        page = mirror.in_namespace(cloud.ns.name, get)
        assert page.startswith(b"HTTP/1.1 200 OK"), page[:200]
        assert b"<title>Welcome to nginx!</title>" in page
    finally:
        cloud.ctr("task", "kill", "-s", "SIGKILL", "nginx-80")
        time.sleep(0.5)
        cloud.ctr("task", "delete", "-f", "nginx-80")
        cloud.ctr("container", "delete", "nginx-80")


def test_coredns_as_nonroot_answers_busybox_nslookup_the_way_the_smoke_test_reads_it(cloud: Cloud) -> None:
    """CoreDNS (uid 65532, every capability dropped but NET_BIND_SERVICE, as the Deployment runs it) binds :53;
    busybox's nslookup, with a pod's resolv.conf, resolves kubernetes.default through the search list."""
    for name in (addons.COREDNS_IMAGE, addons.SMOKE_BUSYBOX_IMAGE):
        assert cloud.crictl("pull", name).returncode == 0
    dns_ip, service_ip = ADDRESS, "10.32.0.1"
    conf = cloud.work / "coredns"
    conf.mkdir(exist_ok=True)
    (conf / "Corefile").write_text(
        f".:53 {{\n  bind {dns_ip}\n  hosts {{\n    {service_ip} kubernetes.default.svc.cluster.local\n  }}\n}}\n"
    )
    resolv = cloud.work / "resolv.conf"
    resolv.write_text(
        f"search default.svc.cluster.local svc.cluster.local cluster.local\nnameserver {dns_ip}\noptions ndots:5\n"
    )
    started = cloud.ctr(
        "run",
        "-d",
        "--net-host",
        *(arg for cap in DEFAULT_CAPS if cap != "CAP_NET_BIND_SERVICE" for arg in ("--cap-drop", cap)),
        "--mount",
        f"type=bind,src={conf},dst=/etc/coredns,options=rbind:ro",
        registry.COREDNS_IMAGE,
        "coredns",
        "/coredns",
        "-conf",
        "/etc/coredns/Corefile",
    )
    assert started.returncode == 0, started.stderr
    try:
        mirror.wait_listening(cloud.ns.name, dns_ip, 53)
        tasks = cloud.ctr("task", "ls").stdout
        pid = next(line.split()[1] for line in tasks.splitlines() if line.startswith("coredns "))
        status = Path(f"/proc/{pid}/status").read_text()
        assert "\nUid:\t65532\t65532\t65532\t65532\n" in status, status
        # Only NET_BIND_SERVICE is left, and it is effective for a non-root process only through the file capability.
        assert "\nCapBnd:\t0000000000000400\n" in status and "\nCapEff:\t0000000000000400\n" in status, status

        def busybox(name: str, *command: str) -> subprocess.CompletedProcess[str]:
            # The namespace itself rather than --net-host, which would mount the host's resolv.conf over the pod's.
            return cloud.ctr(
                "run",
                "--rm",
                "--with-ns",
                f"network:/run/netns/{cloud.ns.name}",
                "--mount",
                f"type=bind,src={resolv},dst=/etc/resolv.conf,options=rbind:ro",
                registry.BUSYBOX_IMAGE,
                name,
                *command,
            )

        lookup = busybox("nslookup", "nslookup", "kubernetes.default")
        # Why the image wraps the applet: Debian's busybox asks for the name as given, without the search list.
        bare = busybox("bare-nslookup", "/bin/busybox", "nslookup", "kubernetes.default")
        assert bare.returncode != 0 and "can't find kubernetes.default" in bare.stdout, bare.stdout
    finally:
        cloud.ctr("task", "kill", "-s", "SIGKILL", "coredns")
        time.sleep(0.5)
        cloud.ctr("task", "delete", "-f", "coredns")
        cloud.ctr("container", "delete", "coredns")
    out = lookup.stdout
    assert lookup.returncode == 0, out + lookup.stderr
    # The smoke test's two checks: the "Server:" line names the cluster DNS; an Address after "Name:" is the service IP.
    assert any(line.split()[:2] == ["Server:", dns_ip] for line in out.splitlines()), out
    answer = out.split("Name:", 1)[1]
    assert any(w == service_ip for line in answer.splitlines() if line.startswith("Address") for w in line.split()), out


def test_the_real_pause_holds_as_65535_until_sigterm_then_exits_at_once(cloud: Cloud) -> None:
    assert cloud.crictl("pull", registry.PAUSE_IMAGE).returncode == 0
    version = cloud.ctr("run", "--rm", registry.PAUSE_IMAGE, "pause-v", "/pause", "-v")
    assert version.returncode == 0 and version.stdout.startswith("pause.c v3.10.2-"), version.stdout + version.stderr
    started = cloud.ctr("run", "-d", registry.PAUSE_IMAGE, "pause")
    assert started.returncode == 0, started.stderr
    try:
        time.sleep(1)
        row = next(line for line in cloud.ctr("task", "ls").stdout.splitlines() if line.startswith("pause "))
        assert " RUNNING" in row, row
        status = Path(f"/proc/{row.split()[1]}/status").read_text()
        assert "\nUid:\t65535\t65535\t65535\t65535\n" in status, status
        begin = time.monotonic()
        assert cloud.ctr("task", "kill", "-s", "SIGTERM", "pause").returncode == 0
        while "RUNNING" in next(
            (line for line in cloud.ctr("task", "ls").stdout.splitlines() if line.startswith("pause ")), ""
        ):
            assert time.monotonic() - begin < 5, "pause ignored SIGTERM"
            time.sleep(0.1)
    finally:
        cloud.ctr("task", "kill", "-s", "SIGKILL", "pause")
        cloud.ctr("task", "delete", "-f", "pause")
        cloud.ctr("container", "delete", "pause")


def test_a_mirror_that_does_not_answer_fails_the_pull(cloud: Cloud) -> None:
    """The pulls above came from the mirror: pointed at a port where nothing listens, the same pull fails
    (the fallback to the registry itself has no route out of the namespace)."""
    hosts = cloud.work / "certs.d" / "docker.io" / "hosts.toml"
    good = hosts.read_text()
    hosts.write_text(worker.render_hosts_toml("docker.io", f"http://{ADDRESS}:{registry.PORT + 1}"))
    try:
        pulled = cloud.crictl("pull", addons.SMOKE_BUSYBOX_IMAGE)
    finally:
        hosts.write_text(good)
    assert pulled.returncode != 0
    # containerd asked the mirror for the very path push() stored the image under.
    assert f"http://{ADDRESS}:{registry.PORT + 1}/v2/library/busybox/manifests/1.28" in pulled.stderr, pulled.stderr
    assert cloud.crictl("pull", addons.SMOKE_BUSYBOX_IMAGE).returncode == 0
