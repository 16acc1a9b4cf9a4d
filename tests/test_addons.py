"""Add-ons (KTHW ch. 8 RBAC, ch. 12 CoreDNS) and the smoke test (ch. 13): manifests against the real kubectl,
scripts against shellcheck and fake node tools, and the components' wiring under mocks."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml
from pulumi_command import remote as command_remote

from components import addons, bounds
from components import config as config_module
from components.addons import Addons, AddonsArgs, SmokeTest, SmokeTestArgs
from components.config import ClusterConfig
from components.pki import CertPair
from components.render import TEMPLATES, placeholders
from tests.harness import Recording, run_components
from tests.test_api_frontend import ADDRESS, fake_host
from tests.tools import require_tool

GCP = {"gcp:project": "kthw-test", "gcp:region": "us-west1", "gcp:zone": "us-west1-c"}


def load(**kthw: str) -> ClusterConfig:
    return config_module.load(kthw, GCP)


def docs(manifest: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(manifest) if d is not None]


def one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{len(matches)} {kind} named {name}"
    return matches[0]


# --- the real kubectl, offline ---------------------------------------------------------------------
#
# `kubectl apply/create --dry-run=client` need an API server for discovery. `kubectl set ... --local`
# does not: it decodes every object into kubectl's compiled-in Go types (an unknown kind or apiVersion,
# or a wrongly typed field, fails with "unable to decode"), and for the kinds a `set` verb handles it
# prints the typed object back. A field that is not part of the type disappears on that round trip,
# so comparing the output with the input also catches misspelled field names.


def _contained(want: Any, got: Any, path: str = "") -> list[str]:
    """Where `want` is not contained in `got` (dict keys may be added, values must match)."""
    if isinstance(want, dict):
        if not isinstance(got, dict):
            return [f"{path}: {got!r} is not a mapping"]
        return [p for k, v in want.items() for p in _contained(v, got.get(k, "<missing>"), f"{path}.{k}")]
    if isinstance(want, list):
        if not isinstance(got, list) or len(got) != len(want):
            return [f"{path}: {got!r} does not match {want!r}"]
        return [p for i, (w, g) in enumerate(zip(want, got, strict=True)) for p in _contained(w, g, f"{path}[{i}]")]
    return [] if want == got else [f"{path}: {got!r} != {want!r}"]


def kubectl(tmp_path: Path, obj: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    binary = require_tool("kubectl")
    path = tmp_path / f"{obj['kind']}-{obj['metadata']['name'].replace(':', '_')}.yaml"
    path.write_text(yaml.safe_dump(obj))
    empty = tmp_path / "kubeconfig"
    empty.write_text("")
    env = {**os.environ, "KUBECONFIG": str(empty), "HOME": str(tmp_path)}
    return subprocess.run(
        [binary, *args, "--local", "-f", str(path)], capture_output=True, text=True, env=env, timeout=60
    )


MARK = "kthw-check"


def _unmark(kind: str, typed: dict[str, Any]) -> dict[str, Any]:
    """Take the marker a `set` verb added back out, so the rest compares with the input."""
    if kind in ("Deployment", "Pod"):
        pod = typed["spec"]["template"]["spec"] if kind == "Deployment" else typed["spec"]
        for container in pod.get("containers", []) + pod.get("initContainers", []):
            container["env"] = [e for e in container.get("env", []) if e["name"] != "KTHW_CHECK"]
            if not container["env"]:
                del container["env"]
    elif kind == "Service":
        del typed["spec"]["selector"][MARK]
    else:
        typed["subjects"] = [s for s in typed["subjects"] if s["name"] != MARK]
    return typed


def validate_with_kubectl(tmp_path: Path, manifest: str) -> list[str]:
    """Decode every object with kubectl's types; round-trip the kinds a `set` verb prints. Returns kinds seen.

    A `set` verb that changes nothing prints nothing, so each adds a marker that is then taken out.
    """
    kinds = []
    for obj in docs(manifest):
        kind = obj["kind"]
        kinds.append(kind)
        if kind in ("Deployment", "Pod"):
            result = kubectl(tmp_path, obj, "set", "env", "KTHW_CHECK=1", "-o", "json")
        elif kind == "Service":
            selector = ",".join(f"{k}={v}" for k, v in {**obj["spec"]["selector"], MARK: "1"}.items())
            result = kubectl(tmp_path, obj, "set", "selector", selector, "-o", "json")
        elif kind in ("ClusterRoleBinding", "RoleBinding"):
            result = kubectl(tmp_path, obj, "set", "subject", f"--group={MARK}", "-o", "json")
        else:
            # No verb prints these kinds, but each is decoded into its Go type before being refused.
            result = kubectl(tmp_path, obj, "set", "env", "KTHW_CHECK=1", "-o", "json")
            assert result.returncode != 0
            assert "does not have a pod template" in result.stderr, result.stderr
            assert f"*v1.{kind}" in result.stderr, result.stderr
            continue
        assert result.returncode == 0, f"{kind} {obj['metadata']['name']}: {result.stderr}"
        typed = _unmark(kind, json.loads(result.stdout))
        assert typed["kind"] == kind
        assert _contained(obj, typed) == [], f"{kind} lost or changed fields on kubectl's round trip"
    return kinds


def test_kubectl_check_catches_mistakes(tmp_path: Path) -> None:
    """The offline check is not vacuous: a wrong kind, a wrong type and an unknown field all fail."""
    good = docs(addons.render_smoke_manifests())[0]
    bad_kind = {**good, "kind": "Deploymnt"}
    result = kubectl(tmp_path, bad_kind, "set", "env", "KTHW_CHECK=1", "-o", "json")
    assert result.returncode != 0 and "no kind" in result.stderr
    bad_type = json.loads(json.dumps(good))
    bad_type["spec"]["replicas"] = "one"
    result = kubectl(tmp_path, bad_type, "set", "env", "KTHW_CHECK=1", "-o", "json")
    assert result.returncode != 0 and "unmarshal" in result.stderr
    unknown = json.loads(json.dumps(good))
    unknown["spec"]["replicaz"] = 1
    with pytest.raises(AssertionError, match="round trip"):
        validate_with_kubectl(tmp_path, yaml.safe_dump(unknown))


def test_rbac_manifest_is_valid_kubernetes(tmp_path: Path) -> None:
    kinds = validate_with_kubectl(tmp_path, addons.render_apiserver_to_kubelet_rbac())
    assert kinds == ["ClusterRole", "ClusterRoleBinding"]


def test_coredns_manifest_is_valid_kubernetes(tmp_path: Path) -> None:
    kinds = validate_with_kubectl(tmp_path, addons.render_coredns(load()))
    assert kinds == ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "Deployment", "Service"]


def test_smoke_manifests_are_valid_kubernetes(tmp_path: Path) -> None:
    assert validate_with_kubectl(tmp_path, addons.render_smoke_manifests()) == ["Deployment", "Pod"]


# --- manifest values -------------------------------------------------------------------------------


def test_kubelet_rbac_is_kthws() -> None:
    objects = docs(addons.render_apiserver_to_kubelet_rbac())
    role = one(objects, "ClusterRole", "system:kube-apiserver-to-kubelet")
    assert role["metadata"]["annotations"] == {"rbac.authorization.kubernetes.io/autoupdate": "true"}
    assert role["metadata"]["labels"] == {"kubernetes.io/bootstrapping": "rbac-defaults"}
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["nodes/proxy", "nodes/stats", "nodes/log", "nodes/spec", "nodes/metrics"],
            "verbs": ["*"],
        }
    ]
    binding = one(objects, "ClusterRoleBinding", "system:kube-apiserver")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "system:kube-apiserver-to-kubelet",
    }
    assert binding["subjects"] == [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "kubernetes"}]


def test_dns_service_takes_the_tenth_address_of_a_custom_service_cidr() -> None:
    cfg = load(serviceCidr="10.96.0.0/20")
    service = one(docs(addons.render_coredns(cfg)), "Service", "kube-dns")
    assert service["spec"]["clusterIP"] == "10.96.0.10" == cfg.cluster_dns_ip
    assert service["metadata"]["namespace"] == "kube-system"
    assert {(p["port"], p["protocol"]) for p in service["spec"]["ports"]} == {(53, "UDP"), (53, "TCP"), (9153, "TCP")}
    assert one(docs(addons.render_coredns(load())), "Service", "kube-dns")["spec"]["clusterIP"] == "10.32.0.10"


def test_coredns_objects_are_labelled_and_namespaced() -> None:
    for obj in docs(addons.render_coredns(load())):
        assert obj["metadata"]["labels"]["k8s-app"] == "kube-dns", obj["kind"]
        if obj["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert obj["metadata"]["namespace"] == "kube-system", obj["kind"]
        else:
            assert "namespace" not in obj["metadata"]


def test_coredns_deployment() -> None:
    objects = docs(addons.render_coredns(load()))
    deployment = one(objects, "Deployment", "coredns")
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    pod = spec["template"]["spec"]
    assert spec["selector"]["matchLabels"] == spec["template"]["metadata"]["labels"] == {"k8s-app": "kube-dns"}
    assert one(objects, "Service", "kube-dns")["spec"]["selector"] == {"k8s-app": "kube-dns"}
    assert pod["serviceAccountName"] == "coredns"
    assert pod["dnsPolicy"] == "Default"
    (container,) = pod["containers"]
    image, tag = container["image"].rsplit(":", 1)
    assert image == "registry.k8s.io/coredns/coredns"
    assert tag.startswith("v1.") and tuple(int(x) for x in tag[1:].split(".")) >= (1, 12, 0)
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
    }
    # The probes hit the ports the Corefile's `health` and `ready` plugins serve by default.
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": 8080, "scheme": "HTTP"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": 8181, "scheme": "HTTP"}
    assert container["args"] == ["-conf", "/etc/coredns/Corefile"]
    (volume,) = pod["volumes"]
    assert volume["configMap"]["name"] == "coredns"
    sa = one(objects, "ServiceAccount", "coredns")
    binding = one(objects, "ClusterRoleBinding", "system:coredns")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": "kube-system"}
    ]
    role = one(objects, "ClusterRole", "system:coredns")
    assert {"endpointslices"} <= {r for rule in role["rules"] for r in rule["resources"]}


def test_corefile() -> None:
    corefile = one(docs(addons.render_coredns(load())), "ConfigMap", "coredns")["data"]["Corefile"]
    lines = [line.strip() for line in corefile.splitlines()]
    assert lines[0] == ".:53 {"
    assert "kubernetes cluster.local in-addr.arpa ip6.arpa {" in lines
    assert "forward . /etc/resolv.conf {" in lines
    for plugin in ("errors", "ready", "cache 30", "loop", "reload", "loadbalance", "prometheus :9153"):
        assert plugin in lines, plugin
    assert any(line.startswith("health") for line in lines)
    assert corefile.count("{") == corefile.count("}")


def test_smoke_manifests() -> None:
    objects = docs(addons.render_smoke_manifests())
    deployment = one(objects, "Deployment", "kthw-smoke")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"].startswith("nginx:")
    pod = one(objects, "Pod", "kthw-smoke-dns")
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["containers"][0]["command"] == ["nslookup", "kubernetes.default"]
    assert pod["spec"]["containers"][0]["image"] == "busybox:1.28"


# --- scripts ---------------------------------------------------------------------------------------


def rendered_scripts() -> dict[str, str]:
    cfg = load(workerCount="2")
    return {
        "apply-rbac": addons.apply_script("controller-0", "kubelet rbac"),
        "apply-coredns": addons.apply_script("controller-0", "coredns", "kube-system/coredns"),
        "smoke-test": addons.smoke_test_script(cfg, "controller-0"),
        "public-probe": addons.public_probe_script(cfg, "worker-0"),
    }


def test_every_addons_template_is_rendered() -> None:
    assert sorted(p.name for p in (TEMPLATES / "addons").iterdir()) == [
        "Corefile",
        "apply.sh",
        "metrics-server.yaml",
        "public-probe.sh",
        "smoke-test.sh",
    ]
    assert placeholders("addons/Corefile") == {"domain"}


@pytest.mark.parametrize("name", sorted(rendered_scripts()))
def test_scripts_are_shellcheck_clean(tmp_path: Path, name: str) -> None:
    shellcheck = require_tool("shellcheck")
    script = rendered_scripts()[name]
    assert script.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in script
    assert "{{" not in script
    path = tmp_path / f"{name}.sh"
    path.write_text(script)
    result = subprocess.run([shellcheck, "-s", "bash", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout


def _fake_bin(tmp_path: Path, tools: dict[str, str]) -> dict[str, str]:
    """PATH with fake tools; a fake sudo that drops VAR=value and maps /usr/local/bin to the fakes."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tools = {
        "sudo": f"""#!/usr/bin/env bash
while [[ "$1" == *=* ]]; do shift; done
cmd="$1"; shift
exec "{bin_dir}/${{cmd##*/}}" "$@"
""",
        "sleep": "#!/usr/bin/env bash\n",
        **tools,
    }
    for name, body in tools.items():
        path = bin_dir / name
        path.write_text(body)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


FAKE_KUBECTL = """#!/usr/bin/env bash
args="$*"
echo "$args" >>"$FAKE_LOG"
case "$args" in
  *"create configmap"*) echo "${@: -1}" >>"$FAKE_LOG.configmaps" ;;
  *"top nodes"*) printf '%b' "${FAKE_TOP-worker-0 120m 6% 900Mi 23%\\nworker-1 80m 4% 700Mi 18%\\n}" ;;
  *"get node"*) echo -n "${FAKE_READY:-True}" ;;
  *"create secret"*) echo "kind: Secret" ;;
  *"apply -f -"*) cat >/dev/null ;;
  *"delete pod kthw-smoke-dns"*) ;;
  *"get pod kthw-smoke-dns"*)
    # FAKE_FIRST_PHASE is the first probe pod's end, before the script replaces it once.
    if [ -n "${FAKE_FIRST_PHASE:-}" ] && [ "$(/bin/grep -c "delete pod kthw-smoke-dns" "$FAKE_LOG")" -le 1 ]; then
      echo -n "$FAKE_FIRST_PHASE"
    else
      echo -n "${FAKE_PHASE:-Succeeded}"
    fi ;;
  *"logs kthw-smoke-dns"*)
    printf 'Server:    %s\\nAddress 1: %s kube-dns\\n\\n' "$FAKE_DNS" "$FAKE_DNS"
    printf 'Name:      kubernetes.default\\nAddress 1: %s kubernetes\\n' "$FAKE_SVC" ;;
  *) ;;
esac
"""


def run_smoke(tmp_path: Path, knobs: dict[str, str] | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    cfg = load(workerCount="2", serviceCidr="10.96.0.0/20", **(knobs or {}))
    stored = env.pop("stored", "k8s:enc:aescbc:v1:key1:")
    fake_env = _fake_bin(
        tmp_path,
        {
            "kubectl": FAKE_KUBECTL,
            # The value after the prefix is binary ciphertext in reality.
            "etcdctl": f"#!/usr/bin/env bash\nprintf '%b\\001\\377\\000xyz' '{stored}'\n",
            # The audit log holds what the fake API server was asked to create, unless FAKE_AUDIT=lost.
            "grep": '#!/usr/bin/env bash\n[ "$2" = -- ] && [ "$4" = /var/log/audit.log ] || exit 2\n'
            '[ "${FAKE_AUDIT:-kept}" = kept ] && exec /bin/grep -qF -- "$3" "$FAKE_LOG.configmaps"\nexit 1\n',
        },
    )
    script = tmp_path / "smoke.sh"
    # Short bounds: the fake sleep returns at once, so a check that never passes spins until its deadline.
    script.write_text(addons.smoke_test_script(cfg, "controller-0", check_seconds=1, kubectl_timeout=5))
    return subprocess.run(
        ["bash", str(script)],
        input=addons.render_smoke_manifests(),
        capture_output=True,
        text=True,
        env={
            **fake_env,
            "FAKE_DNS": "10.96.0.10",
            "FAKE_SVC": "10.96.0.1",
            "FAKE_LOG": str(tmp_path / "kubectl.log"),
            **env,
        },
        timeout=60,
    )


def test_smoke_script_passes_on_a_healthy_cluster(tmp_path: Path) -> None:
    result = run_smoke(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "nodes: worker-0 is Ready" in result.stdout and "nodes: worker-1 is Ready" in result.stdout
    assert "encryption: secret kthw-smoke is stored as k8s:enc:aescbc:v1:key1:" in result.stdout
    assert "dns: kubernetes.default -> 10.96.0.1 via 10.96.0.10" in result.stdout
    assert "mydata" not in result.stdout + result.stderr


def test_smoke_script_tries_a_failed_lookup_again_within_its_bound(tmp_path: Path) -> None:
    result = run_smoke(tmp_path, FAKE_FIRST_PHASE="Failed")
    assert result.returncode == 0, result.stderr
    assert "dns: lookup 1 failed, trying again: Server:    10.96.0.10 " in result.stdout
    assert "dns: kubernetes.default -> 10.96.0.1 via 10.96.0.10" in result.stdout
    calls = (tmp_path / "kubectl.log").read_text().splitlines()
    assert sum("delete pod kthw-smoke-dns" in call for call in calls) == 2


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"stored": r"k8s\000\n\014\n\002v1\022\006Secret"},
            "kthw: controller-0: smoke test: encryption: secret kthw-smoke is stored",
        ),
        ({"FAKE_READY": "False"}, "kthw: controller-0: smoke test: nodes: worker-0 is not Ready"),
        ({"FAKE_PHASE": "Failed"}, "kthw: controller-0: smoke test: dns: kthw-smoke-dns ended in phase 'Failed'"),
        (
            {"FAKE_SVC": "10.32.0.1"},
            "kthw: controller-0: smoke test: dns: kubernetes.default did not resolve to 10.96.0.1",
        ),
    ],
    ids=["unencrypted", "node-not-ready", "dns-pod-failed", "wrong-service-ip"],
)
def test_smoke_script_names_the_failed_check(tmp_path: Path, env: dict[str, str], message: str) -> None:
    result = run_smoke(tmp_path, None, **env)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def run_probe(tmp_path: Path, address: str, body: str) -> subprocess.CompletedProcess[str]:
    fake_env = _fake_bin(
        tmp_path, {"curl": f"#!/usr/bin/env bash\necho \"$*\" >>'{tmp_path}/curl.log'\necho '{body}'\n"}
    )
    script = tmp_path / "probe.sh"
    script.write_text(addons.public_probe_script(load(kubernetesVersion="1.36.4"), "worker-0"))
    return subprocess.run(["bash", str(script)], input=address + "\n", capture_output=True, text=True, env=fake_env)


def test_public_probe_checks_the_version_through_the_address(tmp_path: Path) -> None:
    result = run_probe(tmp_path, ADDRESS, '{"major": "1", "gitVersion": "v1.36.4", "platform": "linux/amd64"}')
    assert result.returncode == 0, result.stderr
    assert f"https://{ADDRESS}:6443/version serves v1.36.4" in result.stdout
    curl = (tmp_path / "curl.log").read_text()
    assert "--cacert /var/lib/kubernetes/ca.pem" in curl and f"https://{ADDRESS}:6443/version" in curl


def test_public_probe_rejects_another_version(tmp_path: Path) -> None:
    result = run_probe(tmp_path, ADDRESS, '{"gitVersion": "v1.35.0"}')
    assert result.returncode != 0
    assert "kthw: worker-0: public probe: " in result.stderr and "gitVersion v1.35.0, want v1.36.4" in result.stderr


def test_public_probe_rejects_a_bad_address(tmp_path: Path) -> None:
    result = run_probe(tmp_path, "not-an-ip; rm -rf /", '{"gitVersion": "v1.36.4"}')
    assert result.returncode != 0
    assert "kthw: worker-0: public probe: " in result.stderr
    assert not (tmp_path / "curl.log").exists()


# --- the components under mocks --------------------------------------------------------------------


FAKE_CA = "-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n"
FAKE_CERT = "-----BEGIN CERTIFICATE-----\nMS\n-----END CERTIFICATE-----\n"
FAKE_KEY = "-----BEGIN EC PRIVATE KEY-----\nKEY\n-----END EC PRIVATE KEY-----\n"


def build(cfg: ClusterConfig, *, with_workers: bool = True) -> None:
    controller, _ = fake_host("controller-0")
    worker, _ = fake_host("worker-0")
    conn = command_remote.ConnectionArgs(host=ADDRESS)
    healthy = command_remote.Command("control-plane-healthy", connection=conn, create="true")
    workers_ready = [command_remote.Command(f"{w.name}-ready", connection=conn, create="true") for w in cfg.workers]
    frontend = command_remote.Command("frontend-ready", connection=conn, create="true")
    add = Addons(
        "addons",
        AddonsArgs(
            cfg,
            controller,
            depends_on=[healthy],
            workers_ready=workers_ready if with_workers else [],
            ca_cert=FAKE_CA,
            metrics_server_tls=CertPair(pulumi.Output.from_input(FAKE_CERT), pulumi.Output.secret(FAKE_KEY)),
        ),
    )
    SmokeTest(
        "smoke",
        SmokeTestArgs(
            cfg,
            controller=controller,
            probe=worker,
            public_address=pulumi.Output.from_input(ADDRESS),
            depends_on=[add.dns, *([add.metrics_server] if add.metrics_server else []), frontend, *workers_ready],
        ),
    )


@pytest.fixture(scope="module")
def wired() -> Recording:
    cfg = load(workerCount="2")
    return run_components(lambda: build(cfg))


def test_rbac_then_coredns_after_the_workers(wired: Recording) -> None:
    rbac, dns = wired.by_name("addons-rbac"), wired.by_name("addons-coredns")
    assert {"controller-0-gate", "control-plane-healthy"} <= rbac.depends_on
    assert rbac.inputs["stdin"] == addons.render_apiserver_to_kubelet_rbac()
    assert "kubectl --kubeconfig /var/lib/kubernetes/admin.kubeconfig" in rbac.inputs["create"]
    assert {"addons-rbac", "worker-0-ready", "worker-1-ready", "control-plane-healthy"} <= dns.depends_on
    assert dns.inputs["stdin"] == addons.render_coredns(load(workerCount="2"))
    assert 'rollout="kube-system/coredns"' in dns.inputs["create"]
    assert "stdin" not in rbac.secret_paths | dns.secret_paths  # manifests are plain


def test_coredns_does_not_wait_for_a_rollout_without_workers() -> None:
    cfg = load(workerCount="1")
    recording = run_components(lambda: build(cfg, with_workers=False))
    assert 'rollout=""' in recording.by_name("addons-coredns").inputs["create"]


def test_smoke_test_runs_last_and_reruns_on_version_or_node_changes(wired: Recording) -> None:
    cluster, public = wired.by_name("smoke-cluster"), wired.by_name("smoke-public")
    assert {"addons-coredns", "frontend-ready", "worker-0-ready", "worker-1-ready"} <= cluster.depends_on
    assert "smoke-cluster" in public.depends_on and "worker-0-gate" in public.depends_on
    assert cluster.inputs["stdin"] == addons.render_smoke_manifests()
    assert public.inputs["stdin"] == ADDRESS
    triggers = cluster.inputs["triggers"]
    version = load().versions.kubernetes
    assert triggers[:6] == [version, "controller-0", "controller-1", "controller-2", "worker-0", "worker-1"]
    # A replaced dependency has a new id, which re-runs the test.
    assert "addons-coredns-id" in triggers and "frontend-ready-id" in triggers
    assert public.inputs["triggers"][-1] == ADDRESS


def test_metrics_server_step_carries_its_key_as_a_secret_after_the_workers(wired: Recording) -> None:
    step = wired.by_name("addons-metrics-server")
    assert {"addons-rbac", "control-plane-healthy", "worker-0-ready", "worker-1-ready"} <= step.depends_on
    assert {"stdin"} <= step.secret_paths and step.inputs["logging"] == "none"
    assert {"stdout", "stderr"} <= set(step.options["additional_secret_outputs"])
    assert step.inputs["stdin"] == addons.metrics_server_manifests(load(workerCount="2"), FAKE_CA, FAKE_CERT, FAKE_KEY)
    assert 'rollout="kube-system/metrics-server"' in step.inputs["create"]
    assert "PRIVATE KEY" not in step.inputs["create"]
    assert "addons-metrics-server" in wired.by_name("smoke-cluster").depends_on


def test_no_metrics_server_step_when_it_is_off() -> None:
    cfg = load(workerCount="2", metricsServer="false")
    recording = run_components(lambda: build(cfg))
    assert not [r.name for r in recording.resources if "metrics" in r.name]
    assert 'metrics=""' in recording.by_name("smoke-cluster").inputs["create"]


# --- metrics-server ----------------------------------------------------------------------------------

# apiregistration.k8s.io/v1 APIServiceSpec's fields (kubectl has no Go type for APIService to decode into).
API_SERVICE_SPEC_FIELDS = {
    "service", "group", "version", "insecureSkipTLSVerify", "caBundle", "groupPriorityMinimum", "versionPriority",
}  # fmt: skip


def metrics_objects(**kthw: str) -> list[dict[str, Any]]:
    return docs(addons.metrics_server_manifests(load(**kthw), FAKE_CA, FAKE_CERT, FAKE_KEY))


def test_metrics_server_manifest_is_valid_kubernetes(tmp_path: Path) -> None:
    manifest = addons.metrics_server_manifests(load(), FAKE_CA, FAKE_CERT, FAKE_KEY)
    known = [o for o in docs(manifest) if o["kind"] != "APIService"]
    kinds = validate_with_kubectl(tmp_path, yaml.safe_dump_all(known))
    assert kinds == [
        "Secret", "ServiceAccount", "ClusterRole", "ClusterRole", "ClusterRoleBinding", "ClusterRoleBinding",
        "RoleBinding", "Service", "Deployment",
    ]  # fmt: skip
    (api_service,) = [o for o in docs(manifest) if o["kind"] == "APIService"]
    assert api_service["apiVersion"] == "apiregistration.k8s.io/v1"
    assert set(api_service["spec"]) <= API_SERVICE_SPEC_FIELDS
    assert set(api_service["spec"]["service"]) == {"name", "namespace", "port"}


def test_metrics_server_verifies_every_hop() -> None:
    objects = metrics_objects()
    deployment = one(objects, "Deployment", "metrics-server")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == addons.metrics_server_image(load())
    args = dict(a.removeprefix("--").partition("=")[::2] for a in container["args"])
    certs = "/etc/metrics-server"
    assert args == {
        "secure-port": "10250",
        "tls-cert-file": f"{certs}/tls.crt",
        "tls-private-key-file": f"{certs}/tls.key",
        "kubelet-certificate-authority": f"{certs}/ca.crt",
        "kubelet-preferred-address-types": "InternalIP",
        "kubelet-use-node-status-port": "",
        "metric-resolution": "15s",
    }
    assert "kubelet-insecure-tls" not in str(objects)
    (mount,) = container["volumeMounts"]
    assert mount["mountPath"] == certs and mount["readOnly"] is True
    (volume,) = deployment["spec"]["template"]["spec"]["volumes"]
    secret = one(objects, "Secret", volume["secret"]["secretName"])
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert data == {"ca.crt": FAKE_CA, "tls.crt": FAKE_CERT, "tls.key": FAKE_KEY}
    # The API server verifies metrics-server against the cluster CA, by the service's name.
    api_service = one(objects, "APIService", "v1beta1.metrics.k8s.io")["spec"]
    assert "insecureSkipTLSVerify" not in api_service
    assert base64.b64decode(api_service["caBundle"]).decode() == FAKE_CA
    service = one(objects, "Service", api_service["service"]["name"])
    assert service["metadata"]["namespace"] == api_service["service"]["namespace"] == "kube-system"
    (port,) = service["spec"]["ports"]
    assert port["port"] == api_service["service"]["port"] == 443
    assert port["targetPort"] == container["ports"][0]["name"] and container["ports"][0]["containerPort"] == 10250
    assert service["spec"]["selector"] == deployment["spec"]["template"]["metadata"]["labels"]
    assert (api_service["group"], api_service["version"]) == ("metrics.k8s.io", "v1beta1")


OWN_DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("kthw", "image"),
    [
        # The default and 0.8.0 by registry.k8s.io's published index digests.
        (
            {},
            "registry.k8s.io/metrics-server/metrics-server:v0.8.1"
            "@sha256:b2d2efaf5ac3b366ed0f839d2412a2c4279d4fc2a2a733f12c52133faed36c41",
        ),
        (
            {"metricsServerVersion": "v0.8.0"},
            "registry.k8s.io/metrics-server/metrics-server:v0.8.0"
            "@sha256:89258156d0e9af60403eafd44da9676fd66f600c7934d468ccc17e42b199aee2",
        ),
        # A digest the user vouches for wins over the pinned one, and pins a version the program does not know.
        (
            {"imageDigests": json.dumps({"metrics-server": OWN_DIGEST})},
            f"{addons.METRICS_SERVER_REPOSITORY}:v0.8.1@{OWN_DIGEST}",
        ),
        (
            {"metricsServerVersion": "0.9.1", "imageDigests": json.dumps({"metrics-server": OWN_DIGEST})},
            f"{addons.METRICS_SERVER_REPOSITORY}:v0.9.1@{OWN_DIGEST}",
        ),
    ],
)
def test_metrics_server_image_is_pulled_by_digest(kthw: dict[str, str], image: str) -> None:
    deployment = one(metrics_objects(**kthw), "Deployment", "metrics-server")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == image


def test_metrics_server_is_not_killed_while_it_starts() -> None:
    """Liveness waits for a startup probe that allows as long as the add-on step waits for the rollout.

    Seen on the local cloud's emulated worker: with liveness alone (3 x 10 s, 1 s timeouts) metrics-server
    was killed before it listened, restarted four times, and starved the node's other pods.
    """
    deployment = one(metrics_objects(), "Deployment", "metrics-server")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    startup, liveness, readiness = (container[p] for p in ("startupProbe", "livenessProbe", "readinessProbe"))
    assert startup["httpGet"] == liveness["httpGet"] == {"path": "/livez", "port": "https", "scheme": "HTTPS"}
    assert startup["periodSeconds"] * startup["failureThreshold"] >= bounds.DNS_ROLLOUT_SECONDS
    assert all(probe["timeoutSeconds"] >= 5 for probe in (startup, liveness, readiness))


def test_metrics_server_rbac() -> None:
    objects = metrics_objects()
    sa = {"kind": "ServiceAccount", "name": "metrics-server", "namespace": "kube-system"}
    one(objects, "ServiceAccount", "metrics-server")
    bindings = {
        ("ClusterRoleBinding", "system:metrics-server"): ("ClusterRole", "system:metrics-server"),
        ("ClusterRoleBinding", "metrics-server:system:auth-delegator"): ("ClusterRole", "system:auth-delegator"),
        ("RoleBinding", "metrics-server-auth-reader"): ("Role", "extension-apiserver-authentication-reader"),
    }
    for (kind, name), (role_kind, role) in bindings.items():
        binding = one(objects, kind, name)
        assert binding["subjects"] == [sa], name
        assert (binding["roleRef"]["kind"], binding["roleRef"]["name"]) == (role_kind, role), name
    assert one(objects, "RoleBinding", "metrics-server-auth-reader")["metadata"]["namespace"] == "kube-system"
    rules = one(objects, "ClusterRole", "system:metrics-server")["rules"]
    # The kubelets' /metrics/resource is authorized as nodes/metrics (their webhook authorization).
    assert {"apiGroups": [""], "resources": ["nodes/metrics"], "verbs": ["get"]} in rules
    reader = one(objects, "ClusterRole", "system:aggregated-metrics-reader")
    assert reader["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert reader["rules"] == [
        {"apiGroups": ["metrics.k8s.io"], "resources": ["pods", "nodes"], "verbs": ["get", "list", "watch"]}
    ]


def test_what_metrics_server_dials_is_in_the_certificates(tmp_path: Path) -> None:
    """Kubelets at their InternalIP, metrics-server at <service>.<namespace>.svc: both names are in the real certs."""
    from tests.test_pki import build_pki, cert, make_config, openssl_verify, write_bundle

    cfg = make_config(controllerCount=1, workerCount=2)
    run = build_pki(cfg)
    paths = write_bundle(cfg, run, tmp_path)
    container = one(metrics_objects(), "Deployment", "metrics-server")["spec"]["template"]["spec"]["containers"][0]
    assert "--kubelet-preferred-address-types=InternalIP" in container["args"]
    for worker in cfg.workers:
        result = openssl_verify(
            paths["ca"], paths[f"kubelet:{worker.name}"], "-purpose", "sslserver", "-verify_ip", worker.internal_ip
        )
        assert result.returncode == 0, (worker.name, result.stderr)
    api_service = one(metrics_objects(), "APIService", "v1beta1.metrics.k8s.io")["spec"]["service"]
    name = f"{api_service['name']}.{api_service['namespace']}.svc"
    result = openssl_verify(paths["ca"], paths["metrics_server"], "-purpose", "sslserver", "-verify_hostname", name)
    assert result.returncode == 0, result.stderr
    assert cert(run, "metrics_server").issuer == cert(run, "ca").subject


def test_smoke_script_checks_audit_and_metrics(tmp_path: Path) -> None:
    result = run_smoke(tmp_path)
    assert result.returncode == 0, result.stderr
    (created,) = (tmp_path / "kubectl.log.configmaps").read_text().split()
    assert created.startswith("kthw-smoke-audit-")
    assert f"audit: /var/log/audit.log records the creation of configmap {created}" in result.stdout
    assert "metrics: kubectl top nodes reports worker-0 worker-1" in result.stdout
    calls = (tmp_path / "kubectl.log").read_text()
    assert f"-n default delete configmap {created}" in calls
    assert "top nodes --no-headers --request-timeout=10s" in calls


def test_smoke_script_skips_audit_and_metrics_when_off(tmp_path: Path) -> None:
    result = run_smoke(tmp_path, {"auditLevel": "off", "metricsServer": "false"})
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "kubectl.log.configmaps").exists()
    assert "top nodes" not in (tmp_path / "kubectl.log").read_text()
    assert "audit:" not in result.stdout and "metrics:" not in result.stdout


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FAKE_AUDIT": "lost"}, "smoke test: audit: no event for configmap kthw-smoke-audit-"),
        (
            {"FAKE_TOP": "worker-0 120m 6% 900Mi 23%\\n"},
            "smoke test: metrics: kubectl top nodes has no figures for worker-1",
        ),
        ({"FAKE_TOP": ""}, "smoke test: metrics: kubectl top nodes has no figures for worker-0 worker-1"),
    ],
    ids=["no-audit-event", "one-node-missing", "no-metrics-api"],
)
def test_smoke_script_names_a_failed_audit_or_metrics_check(tmp_path: Path, env: dict[str, str], message: str) -> None:
    result = run_smoke(tmp_path, None, **env)
    assert result.returncode != 0
    assert f"kthw: controller-0: {message}" in result.stderr, result.stderr
