"""The local cloud's container images, built here, and the registry (Debian's docker-registry) that serves them.

Every image the cluster pulls is built as a linux/amd64 OCI image from what this machine has:
the real pause (pause.c compiled here), CoreDNS and metrics-server built from source, Debian's
busybox-static for busybox, and Debian's nginx with the shared libraries it links. They are pushed
over the registry HTTP API v2 under the repository names containerd asks a mirror for
(docker.io/library/nginx:1.28 as /v2/library/nginx/manifests/1.28), so the program's
kthw:registryMirrors sends a worker's pulls of docker.io and registry.k8s.io to one local registry.
The program pulls metrics-server by digest: the local stack vouches for this build's digest
(`metrics_server_digests`, for kthw:imageDigests).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import shutil
import subprocess
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from components import addons
from components import images as pinned
from tests import upstream
from tests.localcloud import oci
from tests.localcloud.image import cache_root
from tests.localcloud.mirror import in_namespace, start_listening
from tests.localcloud.oci import Entry
from tests.upstream import build

# Where the lead's namespace serves the registry: the bridge's own address (net.GATEWAY), port 5000.
PORT = 5000
# The sandbox image containerd 2.3 runs for every pod when its config names none (the program's does
# not): its built-in default, as `containerd config default` prints it.
PAUSE_IMAGE = "registry.k8s.io/pause:3.10.2"
# Image references in full, as containerd normalises the program's (nginx:1.28 is docker.io/library/nginx).
BUSYBOX_IMAGE = "docker.io/library/" + addons.SMOKE_BUSYBOX_IMAGE
NGINX_IMAGE = "docker.io/library/" + addons.SMOKE_NGINX_IMAGE
COREDNS_IMAGE = addons.COREDNS_IMAGE
# The release the upstream build makes (the Go module proxy's), under the tag the program names for
# kthw:metricsServerVersion; pods ask for it by the digest metrics_server_digests() vouches for.
METRICS_SERVER_IMAGE = f"{addons.METRICS_SERVER_REPOSITORY}:{pinned.tag(build.METRICS_SERVER)}"
IMAGES = (PAUSE_IMAGE, COREDNS_IMAGE, METRICS_SERVER_IMAGE, BUSYBOX_IMAGE, NGINX_IMAGE)

BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static: one static binary
NGINX = Path("/usr/sbin/nginx")  # Debian's nginx (.ci/run installs it)
NGINX_HTML = Path("/usr/share/nginx/html/index.html")
NGINX_MIME_TYPES = Path("/etc/nginx/mime.types")
# The official nginx image runs its workers as user nginx (101) and logs to the container's stdout/stderr.
NGINX_CONF = """\
user nginx;
worker_processes 1;
error_log stderr notice;
pid /run/nginx.pid;

events {
    worker_connections 1024;
}

http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log /var/log/nginx/access.log;
    sendfile on;

    server {
        listen 80;
        server_name localhost;
        location / {
            root /usr/share/nginx/html;
            index index.html;
        }
    }
}
"""
# busybox 1.28 (the smoke test's image) resolved nslookup's name through the C library, which applies
# resolv.conf's search list and ndots, so `nslookup kubernetes.default` found the service; Debian's
# busybox (1.35) asks for the name exactly as given and gets NXDOMAIN. This wrapper restores 1.28's
# lookup order around the real applet (options other than a name and a server go straight to it).
NSLOOKUP_SCRIPT = """\
#!/bin/sh
# kthw local cloud: nslookup that tries resolv.conf's search list first, as busybox 1.28's did.
case "$1" in -*) exec /bin/busybox nslookup "$@" ;; esac
name="$1"
shift
search=""
ndots=1
if [ -r /etc/resolv.conf ]; then
  while read -r key rest; do
    case "$key" in
      search | domain) search="$rest" ;;
      options)
        for option in $rest; do
          case "$option" in ndots:*) ndots="${option#ndots:}" ;; esac
        done
        ;;
    esac
  done </etc/resolv.conf
fi
dots=$(printf '%s' "$name" | tr -cd . | wc -c)
case "$name" in
  *.) ;;
  *)
    if [ "$dots" -lt "$ndots" ]; then
      for domain in $search; do
        if out=$(/bin/busybox nslookup "$name.$domain" "$@" 2>&1); then
          printf '%s\\n' "$out"
          exit 0
        fi
      done
    fi
    ;;
esac
exec /bin/busybox nslookup "$name" "$@"
"""
PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\nnobody:x:65534:\n"


@dataclass(frozen=True)
class Images:
    """The built images: an OCI layout holding them all, and reference -> manifest descriptor."""

    layout: Path
    manifests: dict[str, oci.Descriptor]


def _require(path: Path, package: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: apt-get install {package} (.ci/run does)")
    return path


def _busybox_layer() -> oci.Blob:
    """/bin/busybox and a /bin link per applet, with a minimal /etc: the base of busybox, pause and nginx."""
    busybox = _require(BUSYBOX, "busybox-static")
    # Debian's plain busybox package links libc; an image holds no libc, so only the static build will do.
    if subprocess.run(["ldd", str(busybox)], capture_output=True).returncode == 0:
        raise FileNotFoundError(f"{busybox} is dynamically linked: apt-get install busybox-static (.ci/run does)")
    applets = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, check=True).stdout.split()
    entries = [Entry("/bin/busybox", 0o755, source=busybox)]
    entries += [Entry(f"/bin/{a}", 0o777, link="busybox") for a in applets if a not in {"busybox", "nslookup"}]
    entries.append(Entry("/bin/nslookup", 0o755, data=NSLOOKUP_SCRIPT.encode()))
    entries += [
        Entry("/etc/passwd", data=PASSWD.encode()),
        Entry("/etc/group", data=GROUP.encode()),
        Entry("/tmp", 0o1777, directory=True),
        Entry("/root", 0o700, directory=True),
        Entry("/var", 0o755, directory=True),
    ]
    return oci.layer(entries)


def _pause_layer() -> oci.Blob:
    """The real image is FROM scratch with the static /pause alone."""
    return oci.layer([Entry("/pause", 0o755, source=upstream.require("pause") / "pause")])


def _metrics_server_layer() -> oci.Blob:
    """/metrics-server and what the real image's distroless/static base gives a Go program: users, a /tmp."""
    return oci.layer(
        [
            Entry("/metrics-server", 0o755, source=upstream.require("metrics-server") / "metrics-server"),
            Entry(
                "/etc/passwd", data=(PASSWD + "nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n").encode()
            ),
            Entry("/etc/group", data=(GROUP + "nonroot:x:65532:\n").encode()),
            Entry("/tmp", 0o1777, directory=True),
        ]
    )


def _coredns_layer() -> oci.Blob:
    """/coredns with cap_net_bind_service=+ep, run as nonroot (65532), as the real image (distroless) has it."""
    binary = upstream.require("coredns") / "coredns"
    return oci.layer(
        [
            Entry(
                "/coredns",
                0o755,
                source=binary,
                xattrs=(("security.capability", oci.file_capability(oci.CAP_NET_BIND_SERVICE)),),
            ),
            Entry(
                "/etc/passwd", data=(PASSWD + "nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n").encode()
            ),
            Entry("/etc/group", data=(GROUP + "nonroot:x:65532:\n").encode()),
            Entry("/home/nonroot", 0o700, directory=True, uid=65532, gid=65532),
            Entry("/tmp", 0o1777, directory=True),
        ]
    )


def _shared_libraries(binary: Path) -> list[tuple[str, Path]]:
    """(path the loader asks for, file on this machine) for every library `binary` links, per ldd."""
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True).stdout
    found: list[tuple[str, Path]] = []
    for line in out.splitlines():
        words = line.split()
        if "=>" in words:
            target = words[words.index("=>") + 1]
            if target.startswith("/"):
                found.append((target, Path(target).resolve()))
        elif words and words[0].startswith("/"):  # the loader itself
            found.append((words[0], Path(words[0]).resolve()))
    return found


def _nginx_layer() -> oci.Blob:
    """Debian's nginx binary, its libraries, mime.types and welcome page, and a foreground-ready config."""
    nginx = _require(NGINX, "nginx")
    entries = [Entry("/usr/sbin/nginx", 0o755, source=nginx)]
    entries += [Entry(path, 0o755, source=source) for path, source in _shared_libraries(nginx)]
    entries += [
        Entry("/etc/nginx/nginx.conf", data=NGINX_CONF.encode()),
        Entry("/etc/nginx/mime.types", source=_require(NGINX_MIME_TYPES, "nginx")),
        Entry("/usr/share/nginx/html/index.html", source=_require(NGINX_HTML, "nginx")),
        Entry("/etc/passwd", data=(PASSWD + "nginx:x:101:101:nginx:/nonexistent:/bin/false\n").encode()),
        Entry("/etc/group", data=(GROUP + "nginx:x:101:\n").encode()),
        Entry("/var/log/nginx/access.log", 0o777, link="/dev/stdout"),
        Entry("/var/log/nginx/error.log", 0o777, link="/dev/stderr"),
        Entry("/var/lib/nginx", 0o755, directory=True),
        Entry("/var/cache/nginx", 0o755, directory=True),
        Entry("/run", 0o755, directory=True),
    ]
    return oci.layer(entries)


def image_specs() -> list[oci.ImageSpec]:
    """Every image the cluster's pods use, as the local cloud builds it."""
    busybox = _busybox_layer()
    return [
        oci.ImageSpec(BUSYBOX_IMAGE, (busybox,), cmd=("sh",)),
        # As build/pause/Dockerfile makes it: FROM scratch, USER 65535:65535, ENTRYPOINT ["/pause"].
        oci.ImageSpec(PAUSE_IMAGE, (_pause_layer(),), entrypoint=("/pause",), user="65535:65535"),
        # As metrics-server's Dockerfile makes it: USER 65534, ENTRYPOINT ["/metrics-server"]; the
        # Deployment passes the flags (and runs it as 1000).
        oci.ImageSpec(METRICS_SERVER_IMAGE, (_metrics_server_layer(),), entrypoint=("/metrics-server",), user="65534"),
        # The real image: ENTRYPOINT ["/coredns"], USER nonroot:nonroot; the Deployment passes -conf.
        oci.ImageSpec(
            COREDNS_IMAGE,
            (_coredns_layer(),),
            entrypoint=("/coredns",),
            user="65532:65532",
            exposed_ports=("53/tcp", "53/udp"),
        ),
        # As the official image runs it: nginx in the foreground; SIGQUIT is its graceful stop.
        oci.ImageSpec(
            NGINX_IMAGE,
            (busybox, _nginx_layer()),
            cmd=("nginx", "-g", "daemon off;"),
            exposed_ports=("80/tcp",),
            stop_signal="SIGQUIT",
        ),
    ]


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _key() -> str:
    """The images' inputs: the host files they copy, the CoreDNS build, and the modules that shape them."""
    nginx = _require(NGINX, "nginx")
    files = [_require(BUSYBOX, "busybox-static"), nginx, NGINX_HTML, NGINX_MIME_TYPES]
    files += [source for _, source in _shared_libraries(nginx)]
    inputs = {str(p): _file_digest(p) for p in files}
    for recipe in ("coredns", "pause", "metrics-server"):
        inputs[f"{recipe}-recipe"] = (upstream.require(recipe).parent / ".recipe").read_text()
    for module in (Path(__file__), Path(oci.__file__)):
        inputs[module.name] = _file_digest(module)
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def build_images() -> Images:
    """Every image in one OCI layout under the kthw cache, built once per set of inputs."""
    layout = cache_root() / f"images-{_key()}"
    if (layout / "index.json").exists():
        return Images(layout, oci.read_layout(layout))
    partial = layout.with_name(layout.name + ".part")
    shutil.rmtree(partial, ignore_errors=True)
    oci.write_layout(partial, image_specs())
    partial.rename(layout)
    return Images(layout, oci.read_layout(layout))


# --- the registry ---------------------------------------------------------------------------------


def split_reference(reference: str) -> tuple[str, str, str]:
    """registry host, repository, tag of a full reference: registry.k8s.io/coredns/coredns:v1.14.2."""
    host, _, rest = reference.partition("/")
    repository, _, tag = rest.rpartition(":")
    if not host or not repository or not tag:
        raise ValueError(f"{reference!r} is not host/repository:tag")
    return host, repository, tag


def metrics_server_digests(images: Images) -> dict[str, str]:
    """kthw:imageDigests for these images: the local build's metrics-server, which no published digest matches."""
    return {pinned.METRICS_SERVER: images.manifests[METRICS_SERVER_IMAGE].digest}


def registry_mirrors(url: str) -> dict[str, str]:
    """kthw:registryMirrors for a registry at `url` that holds every image: each source registry -> url."""
    return {split_reference(ref)[0]: url for ref in IMAGES}


def registry_config(address: str, port: int, storage: Path) -> dict[str, object]:
    """docker-registry's config: filesystem storage under `storage`, plain HTTP on address:port, no auth."""
    return {
        "version": 0.1,
        "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(storage)},
            "delete": {"enabled": True},
            "cache": {"blobdescriptor": "inmemory"},
        },
        "http": {"addr": f"{address}:{port}", "secret": "kthw-local-cloud"},
    }


def serve_registry(
    namespace_name: str, address: str, port: int, storage_dir: Path, binary: str = "docker-registry"
) -> subprocess.Popen[bytes]:
    """Debian's docker-registry on address:port inside the namespace, in its own session; returns once it listens.

    storage_dir holds the config (registry.yml), the data (data/) and the log (registry.log).
    """
    found = shutil.which(binary)
    if found is None:
        raise FileNotFoundError(f"{binary} is missing: apt-get install docker-registry (.ci/run does)")
    storage_dir.mkdir(parents=True, exist_ok=True)
    config = storage_dir / "registry.yml"
    # JSON is YAML: the registry reads this file as it is.
    config.write_text(json.dumps(registry_config(address, port, storage_dir / "data"), indent=2) + "\n")
    return start_listening(namespace_name, [found, "serve", str(config)], address, port, storage_dir / "registry.log")


class _Client:
    """The few registry API v2 calls a push needs, over one plain-HTTP connection (no proxy settings apply)."""

    def __init__(self, url: str) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme != "http" or not parsed.hostname:
            raise ValueError(f"push speaks plain http to a local registry, not {url!r}")
        self.connection = http.client.HTTPConnection(parsed.hostname, parsed.port or 80, timeout=60)

    def call(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> http.client.HTTPResponse:
        self.connection.request(method, path, body=body, headers={"Content-Length": str(len(body)), **(headers or {})})
        response = self.connection.getresponse()
        response.read()
        return response

    def expect(self, response: http.client.HTTPResponse, status: int, what: str) -> None:
        if response.status != status:
            raise RuntimeError(f"registry: {what}: HTTP {response.status} {response.reason}")

    def push_blob(self, repository: str, digest: str, data: bytes) -> None:
        if self.call("HEAD", f"/v2/{repository}/blobs/{digest}").status == 200:
            return
        started = self.call("POST", f"/v2/{repository}/blobs/uploads/")
        self.expect(started, 202, f"start upload of {digest} to {repository}")
        location = urllib.parse.urlsplit(started.headers["Location"])
        query = f"{location.query}&" if location.query else ""
        done = self.call(
            "PUT",
            f"{location.path}?{query}digest={urllib.parse.quote(digest)}",
            data,
            {"Content-Type": "application/octet-stream"},
        )
        self.expect(done, 201, f"upload of {digest} to {repository}")


def push(images: Images, registry_url: str, namespace_name: str | None = None) -> dict[str, str]:
    """Push every image (blobs, then the manifest under its tag); returns reference -> pushed manifest digest.

    With `namespace_name`, the connection is made from inside that network namespace.
    """

    def run() -> dict[str, str]:
        client = _Client(registry_url)
        pushed: dict[str, str] = {}
        for reference, descriptor in sorted(images.manifests.items()):
            _, repository, tag = split_reference(reference)
            manifest = oci.blob_path(images.layout, descriptor.digest).read_bytes()
            parsed = json.loads(manifest)
            for blob in [parsed["config"], *parsed["layers"]]:
                client.push_blob(repository, blob["digest"], oci.blob_path(images.layout, blob["digest"]).read_bytes())
            put = client.call("PUT", f"/v2/{repository}/manifests/{tag}", manifest, {"Content-Type": oci.MANIFEST})
            client.expect(put, 201, f"manifest {reference}")
            pushed[reference] = put.headers["Docker-Content-Digest"]
        return pushed

    return in_namespace(namespace_name, run) if namespace_name else run()


if __name__ == "__main__":
    start = time.monotonic()
    built = build_images()
    print(f"images: {built.layout} in {time.monotonic() - start:.1f}s")
    for ref, d in sorted(built.manifests.items()):
        print(f"  {ref} {d.digest}")
