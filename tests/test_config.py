"""Config validation: every class of bad input fails before any resource, naming key, value and rule."""

from __future__ import annotations

import json
import re

import pulumi
import pytest

from components import config
from components.config import ConfigErrors
from tests.harness import run_program

GCP = {"gcp:project": "kthw-test", "gcp:region": "us-west1", "gcp:zone": "us-west1-c"}


def load(**kthw: object) -> config.ClusterConfig:
    return config.load(kthw, GCP)


def test_defaults_follow_kthw() -> None:
    cfg = load()
    assert [(n.name, n.internal_ip) for n in cfg.controllers] == [
        ("controller-0", "10.240.0.10"),
        ("controller-1", "10.240.0.11"),
        ("controller-2", "10.240.0.12"),
    ]
    assert [(n.name, n.internal_ip, n.pod_cidr) for n in cfg.workers] == [
        ("worker-0", "10.240.0.20", "10.200.0.0/24"),
        ("worker-1", "10.240.0.21", "10.200.1.0/24"),
        ("worker-2", "10.240.0.22", "10.200.2.0/24"),
    ]
    assert cfg.kubernetes_service_ip == "10.32.0.1"
    assert cfg.cluster_dns_ip == "10.32.0.10"
    assert cfg.etcd_initial_cluster == (
        "controller-0=https://10.240.0.10:2380,controller-1=https://10.240.0.11:2380,"
        "controller-2=https://10.240.0.12:2380"
    )
    assert cfg.etcd_servers == "https://10.240.0.10:2379,https://10.240.0.11:2379,https://10.240.0.12:2379"
    assert cfg.admin_source_ranges == ("0.0.0.0/0",)


def test_values_arrive_as_strings_from_the_cli() -> None:
    cfg = load(
        controllerCount="1",
        workerCount="5",
        nodeCidr="192.168.10.0/24",
        clusterCidr="172.16.0.0/16",
        serviceCidr="10.96.0.0/20",
        adminSourceRanges='["198.51.100.0/24", "192.0.2.7/32"]',
        kubernetesVersion="v1.35.2",
    )
    assert cfg.workers[4].internal_ip == "192.168.10.24"
    assert cfg.workers[4].pod_cidr == "172.16.4.0/24"
    assert cfg.kubernetes_service_ip == "10.96.0.1"
    assert cfg.cluster_dns_ip == "10.96.0.10"
    assert cfg.admin_source_ranges == ("198.51.100.0/24", "192.0.2.7/32")
    assert cfg.versions.kubernetes == "1.35.2"


def test_per_role_machine_types() -> None:
    cfg = load(machineType="e2-medium", workerMachineType="n2-standard-4")
    assert {n.machine_type for n in cfg.controllers} == {"e2-medium"}
    assert {n.machine_type for n in cfg.workers} == {"n2-standard-4"}


BAD = [
    # non-CIDR strings
    ({"nodeCidr": "10.240.0.0"}, "kthw:nodeCidr = '10.240.0.0' is invalid: an IPv4 CIDR"),
    ({"clusterCidr": "banana"}, "kthw:clusterCidr = 'banana' is invalid: an IPv4 CIDR"),
    ({"serviceCidr": "10.32.0.1/24"}, "kthw:serviceCidr = '10.32.0.1/24' is invalid: an IPv4 CIDR with no host bits"),
    ({"nodeCidr": "8.8.8.0/24"}, "kthw:nodeCidr = '8.8.8.0/24' is invalid: a private (RFC 1918) range"),
    ({"adminSourceRanges": '["10.0.0.0/33"]'}, "kthw:adminSourceRanges = '10.0.0.0/33' is invalid"),
    ({"adminSourceRanges": "0.0.0.0/0"}, "kthw:adminSourceRanges = '0.0.0.0/0' is invalid: a list of CIDRs"),
    ({"adminSourceRanges": "[]"}, "kthw:adminSourceRanges = [] is invalid: a non-empty list"),
    # one GCE firewall rule holds one address family, and the subnet is IPv4-only
    (
        {"adminSourceRanges": '["2001:db8::/32"]'},
        "kthw:adminSourceRanges = '2001:db8::/32' is invalid: an IPv4 CIDR: the subnet is IPv4-only, "
        "and one GCE firewall rule cannot mix address families",
    ),
    (
        {"adminSourceRanges": '["198.51.100.0/24", "::/0"]'},
        "kthw:adminSourceRanges = '::/0' is invalid: an IPv4 CIDR: the subnet is IPv4-only",
    ),
    # prefixes that cannot hold the nodes
    (
        {"nodeCidr": "10.240.0.0/28"},
        "kthw:nodeCidr = '10.240.0.0/28' is invalid: a range with room for workers from host .20 and GCE's 2 "
        "reserved last addresses: /27 or larger",
    ),
    ({"nodeCidr": "10.240.0.0/27", "workerCount": "11"}, "kthw:workerCount = 11 is invalid: between 1 and 10"),
    ({"clusterCidr": "10.200.0.0/23", "workerCount": "3"}, "kthw:workerCount = 3 is invalid: between 1 and 2"),
    ({"clusterCidr": "10.200.0.0/25"}, "kthw:clusterCidr = '10.200.0.0/25' is invalid: a prefix of /24 or shorter"),
    (
        {"serviceCidr": "10.32.0.0/29"},
        "kthw:serviceCidr = '10.32.0.0/29' is invalid: a range that holds the cluster DNS",
    ),
    # overlapping ranges
    (
        {"clusterCidr": "10.240.0.0/16"},
        "kthw:clusterCidr = '10.240.0.0/16' is invalid: a range that does not overlap kthw:nodeCidr (10.240.0.0/24)",
    ),
    # the key the user changed is the one named, with the one it collides with
    (
        {"nodeCidr": "10.200.0.0/24"},
        "kthw:nodeCidr = '10.200.0.0/24' is invalid: a range that does not overlap kthw:clusterCidr (10.200.0.0/16)",
    ),
    (
        {"serviceCidr": "10.200.5.0/24"},
        "kthw:serviceCidr = '10.200.5.0/24' is invalid: a range that does not overlap kthw:clusterCidr (10.200.0.0/16)",
    ),
    # counts
    ({"controllerCount": "0"}, "kthw:controllerCount = 0 is invalid: between 1 and 10"),
    ({"controllerCount": "11"}, "kthw:controllerCount = 11 is invalid: between 1 and 10"),
    ({"workerCount": "0"}, "kthw:workerCount = 0 is invalid: between 1 and 234"),
    ({"workerCount": "-1"}, "kthw:workerCount = -1 is invalid: between 1 and"),
    ({"workerCount": "300"}, "kthw:workerCount = 300 is invalid: between 1 and 234"),
    ({"workerCount": "three"}, "kthw:workerCount = 'three' is invalid: a whole number"),
    # names GCE would reject
    ({"machineType": "E2_Standard"}, "kthw:machineType = 'E2_Standard' is invalid: a GCE name"),
    ({"workerMachineType": "-e2"}, "kthw:workerMachineType = '-e2' is invalid: a GCE name"),
    ({"image": "Ubuntu 24.04"}, "kthw:image = 'Ubuntu 24.04' is invalid: an image family or name"),
    ({"sshUser": "root"}, "kthw:sshUser = 'root' is invalid"),
    # versions and the rest
    ({"kubernetesVersion": "latest"}, "kthw:kubernetesVersion = 'latest' is invalid: a release version"),
    ({"etcdVersion": "3.6"}, "kthw:etcdVersion = '3.6' is invalid: a release version"),
    ({"binaryMirror": "ftp://mirror"}, "kthw:binaryMirror = 'ftp://mirror' is invalid: an http(s) URL"),
    ({"certValidityHours": "1"}, "kthw:certValidityHours = 1 is invalid: between 24 hours and ten years"),
    ({"certRotation": "-1"}, "kthw:certRotation = -1 is invalid"),
    # the cluster name every GCE name derives from
    ({"clusterName": "Dev"}, "kthw:clusterName = 'Dev' is invalid: a GCE name"),
    (
        {"clusterName": "kubernetes"},
        "kthw:clusterName = 'kubernetes' is invalid: a name other than 'kubernetes': the default cluster's subnet "
        "and health check have it",
    ),
    (
        {"clusterName": "a" * 40},
        f"kthw:clusterName = '{'a' * 40}' is invalid: at most 39 characters for this cluster: the longest GCE name "
        f"made from it, '{'a' * 40}-allow-api-from-worker-0', must fit in 63",
    ),
    # a typo in a key is caught, not silently replaced by the default
    ({"workercount": "5"}, "kthw:workercount is not a known key: did you mean kthw:workerCount?"),
    ({"AdminSourceRange": "[]"}, "kthw:AdminSourceRange is not a known key: did you mean kthw:adminSourceRanges?"),
]


@pytest.mark.parametrize(
    ("values", "message"), BAD, ids=[next(iter(v)) + "=" + str(next(iter(v.values()))) for v, _ in BAD]
)
def test_bad_config_names_key_value_and_rule(values: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigErrors) as caught:
        load(**values)
    assert len(caught.value.problems) == 1, caught.value.problems
    assert str(caught.value).startswith(message), str(caught.value)


@pytest.mark.parametrize(
    ("gcp", "message"),
    [
        ({"gcp:region": None}, "gcp:region = None is invalid: required"),
        ({"gcp:region": "US-West1"}, "gcp:region = 'US-West1' is invalid: a GCE name"),
        ({"gcp:zone": "europe-west1-b"}, "gcp:zone = 'europe-west1-b' is invalid: a zone of region 'us-west1'"),
        ({"gcp:project": "My_Project"}, "gcp:project = 'My_Project' is invalid: a GCP project ID"),
    ],
)
def test_bad_gcp_settings(gcp: dict[str, str | None], message: str) -> None:
    with pytest.raises(ConfigErrors) as caught:
        config.load({}, {**GCP, **gcp})
    assert str(caught.value).startswith(message), str(caught.value)


def test_bad_config_stops_the_program_before_any_resource() -> None:
    with pytest.raises(ConfigErrors, match=re.escape("kthw:nodeCidr = '10.240.0.0/33' is invalid")) as caught:
        run_program({"nodeCidr": "10.240.0.0/33"})
    assert caught.value.registered == []  # type: ignore[attr-defined]


def test_every_problem_is_one_line_of_one_run_error() -> None:
    """The language host prints a RunError's message alone (any other exception comes with a traceback)."""
    with pytest.raises(ConfigErrors) as caught:
        load(workerCount="0", sshUser="root", kubernetesVersion="latest", certValidityHours="x", machineTyp="e2")
    assert isinstance(caught.value, pulumi.RunError)
    assert (
        str(caught.value).splitlines()
        == caught.value.problems
        == [
            "kthw:machineTyp is not a known key: did you mean kthw:machineType?",
            "kthw:workerCount = 0 is invalid: between 1 and 234 "
            "(nodeCidr 10.240.0.0/24 and clusterCidr 10.200.0.0/16 hold at most 234 workers)",
            "kthw:sshUser = 'root' is invalid: a Linux user name other than root: "
            "lowercase letters, digits, '_' and '-', at most 32",
            "kthw:certValidityHours = 'x' is invalid: a whole number",
            "kthw:kubernetesVersion = 'latest' is invalid: a release version like 1.32.3 (a leading 'v' is allowed)",
        ]
    )


@pytest.mark.parametrize(
    ("values", "problems"),
    [
        # workerCount's limit hangs on nodeCidr: only its own lower bound is checked
        ({"nodeCidr": "banana", "workerCount": "500"}, ["kthw:nodeCidr = 'banana' is invalid: an IPv4 CIDR"]),
        ({"clusterCidr": "10.200.0.0/25", "workerCount": "2"}, ["kthw:clusterCidr = '10.200.0.0/25' is invalid"]),
        (
            {"nodeCidr": "banana", "workerCount": "0"},
            ["kthw:nodeCidr = 'banana' is invalid", "kthw:workerCount = 0 is invalid: at least 1"],
        ),
        # unset per-role types follow machineType: one problem, not three
        ({"machineType": "E2"}, ["kthw:machineType = 'E2' is invalid"]),
        (
            {"machineType": "E2", "workerMachineType": "N2"},
            ["kthw:machineType = 'E2'", "kthw:workerMachineType = 'N2'"],
        ),
        # the zone is checked against the region only when the region is valid
        ({"gcp:region": "US"}, ["gcp:region = 'US' is invalid"]),
    ],
)
def test_a_check_that_needs_a_refused_value_is_skipped(values: dict[str, str], problems: list[str]) -> None:
    gcp = {**GCP, **{k: v for k, v in values.items() if k.startswith("gcp:")}}
    with pytest.raises(ConfigErrors) as caught:
        config.load({k: v for k, v in values.items() if ":" not in k}, gcp)
    assert len(caught.value.problems) == len(problems), caught.value.problems
    for line, start in zip(caught.value.problems, problems, strict=True):
        assert line.startswith(start), line


def test_the_smallest_node_cidr_the_message_names_is_accepted() -> None:
    cfg = load(nodeCidr="10.240.0.0/27", workerCount="10", controllerCount="1")
    assert cfg.workers[-1].internal_ip == "10.240.0.29"  # .30 is GCE's reserved, .31 the broadcast
    assert config.MIN_NODE_CIDR_PREFIX == 27


def test_the_valid_keys_are_pulumi_yamls() -> None:
    """Pulumi.yaml is the one list of keys; the message lists them when no key is close."""
    assert "workerCount" in config.declared_keys()
    with pytest.raises(ConfigErrors) as caught:
        load(zzzzzzzz="1")
    assert caught.value.problems == [
        "kthw:zzzzzzzz is not a known key: Pulumi.yaml declares "
        + ", ".join(f"kthw:{k}" for k in config.declared_keys())
    ]


def test_unknown_keys_stop_the_program_under_the_sdks_config() -> None:
    """from_stack sees every key of the stack's config, not only the ones it asks for."""
    with pytest.raises(ConfigErrors) as caught:
        run_program({"workercount": "5"})
    assert caught.value.problems == ["kthw:workercount is not a known key: did you mean kthw:workerCount?"]
    assert caught.value.registered == []  # type: ignore[attr-defined]


def test_from_stack_reads_the_config_the_language_host_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's language host hands the config over as PULUMI_CONFIG; keys there are checked too."""
    pulumi.runtime.set_all_config({})
    monkeypatch.setenv(
        "PULUMI_CONFIG",
        json.dumps({**GCP, "kthw:workerCount": "2", "kthw:clustername": "dev", "other:key": "x"}),
    )
    with pytest.raises(ConfigErrors) as caught:
        config.from_stack()
    assert caught.value.problems == ["kthw:clustername is not a known key: did you mean kthw:clusterName?"]
    monkeypatch.setenv("PULUMI_CONFIG", json.dumps({**GCP, "kthw:workerCount": "2", "kthw:clusterName": "dev"}))
    cfg = config.from_stack()
    assert [w.name for w in cfg.workers] == ["dev-worker-0", "dev-worker-1"]


def test_even_controller_count_is_allowed_with_a_quorum_warning() -> None:
    recording = run_program({"controllerCount": "2", "workerCount": "1"})
    assert [w for w in recording.warnings if "controllerCount = 2 is even" in w], recording.warnings
    assert "etcd needs 2 members for quorum" in recording.warnings[0]
    assert {r.inputs["name"] for r in recording.of_type("gcp:compute/instance:Instance")} == {
        "controller-0",
        "controller-1",
        "worker-0",
    }


def test_odd_controller_count_warns_nothing(small) -> None:  # type: ignore[no-untyped-def]
    assert small.warnings == []


def test_audit_level_and_metrics_server_defaults_and_spellings() -> None:
    cfg = load()
    assert (cfg.audit_level, cfg.audit_enabled, cfg.metrics_server) == ("Metadata", True, True)
    # The CLI stores strings; a structured stack file gives booleans. Levels keep audit.k8s.io's spelling.
    cfg = load(auditLevel="requestresponse", metricsServer="false")
    assert (cfg.audit_level, cfg.metrics_server) == ("RequestResponse", False)
    assert load(auditLevel="None").audit_enabled  # level None still logs what the policy's own rules name
    off = load(auditLevel="OFF", metricsServer=False)
    assert (off.audit_level, off.audit_enabled, off.metrics_server) == ("off", False, False)
    assert load(metricsServer="True").metrics_server is True


@pytest.mark.parametrize(
    ("key", "value", "rule"),
    [
        ("auditLevel", "verbose", "one of off, None, Metadata, Request, RequestResponse"),
        ("metricsServer", "yes", "true or false"),
        ("metricsServer", "1", "true or false"),
    ],
)
def test_audit_level_and_metrics_server_refuse_bad_values(key: str, value: str, rule: str) -> None:
    with pytest.raises(ConfigErrors) as error:
        load(**{key: value})
    assert str(error.value) == f"kthw:{key} = {value!r} is invalid: {rule}"


DIGEST = "0123456789abcdef" * 4


def test_binary_digests_and_registry_mirrors_default_to_none() -> None:
    cfg = load()
    assert cfg.binary_digests == () and cfg.registry_mirrors == ()
    assert load(binaryDigests="", registryMirrors="{}") == cfg


def test_binary_digests_and_registry_mirrors_arrive_as_objects_or_json(monkeypatch: pytest.MonkeyPatch) -> None:
    """A structured stack value reaches the program as JSON through PULUMI_CONFIG, or as a dict."""
    as_dict = load(
        binaryDigests={"kubelet": DIGEST, "etcd": DIGEST}, registryMirrors={"docker.io": "http://10.0.0.5:5000/"}
    )
    assert as_dict.binary_digests == (("etcd", DIGEST), ("kubelet", DIGEST))
    assert as_dict.registry_mirrors == (("docker.io", "http://10.0.0.5:5000"),)
    pulumi.runtime.set_all_config({})
    monkeypatch.setenv(
        "PULUMI_CONFIG",
        json.dumps(
            {
                **GCP,
                "kthw:binaryDigests": json.dumps({"kubelet": DIGEST, "etcd": DIGEST}),
                "kthw:registryMirrors": json.dumps({"docker.io": "http://10.0.0.5:5000/"}),
            }
        ),
    )
    from_cli = config.from_stack()
    assert (from_cli.binary_digests, from_cli.registry_mirrors) == (as_dict.binary_digests, as_dict.registry_mirrors)


@pytest.mark.parametrize(
    ("values", "problems"),
    [
        (
            {"binaryDigests": {"kublet": DIGEST}},
            [
                f"kthw:binaryDigests = {{'kublet': '{DIGEST}'}} is invalid: 'kublet' is not an artifact the program "
                "downloads: did you mean 'kubelet'?"
            ],
        ),
        (
            {"binaryDigests": {"kubelet": DIGEST[:-1]}},
            [
                f"kthw:binaryDigests = {{'kubelet': '{DIGEST[:-1]}'}} is invalid: the SHA-256 of kubelet's download: "
                "64 lowercase hex digits, as `sha256sum FILE` prints them"
            ],
        ),
        # Every bad entry is its own problem: uppercase hex, a non-string, an unknown name with no near match.
        (
            {"binaryDigests": {"etcd": DIGEST.upper(), "runc": 5, "helm": DIGEST}},
            [
                f"kthw:binaryDigests = {{'etcd': '{DIGEST.upper()}'}} is invalid: the SHA-256 of etcd's download: "
                "64 lowercase hex digits, as `sha256sum FILE` prints them",
                "kthw:binaryDigests = {'runc': 5} is invalid: the SHA-256 of runc's download: "
                "64 lowercase hex digits, as `sha256sum FILE` prints them",
                f"kthw:binaryDigests = {{'helm': '{DIGEST}'}} is invalid: 'helm' is not an artifact the program "
                "downloads: one of etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kubelet, "
                "kube-proxy, containerd, runc, cni-plugins, crictl",
            ],
        ),
        (
            {"binaryDigests": '["kubelet"]'},
            ["""kthw:binaryDigests = ['kubelet'] is invalid: an object, e.g. {"kubelet": "<sha256sum of the file>"}"""],
        ),
        (
            {"registryMirrors": {"Docker.io": "http://10.0.0.5:5000", "quay.io": "ftp://10.0.0.5"}},
            [
                "kthw:registryMirrors = {'Docker.io': 'http://10.0.0.5:5000'} is invalid: 'Docker.io' is not a "
                "registry host: a lowercase DNS name or IPv4 address with an optional :port",
                "kthw:registryMirrors = {'quay.io': 'ftp://10.0.0.5'} is invalid: the mirror of quay.io: an http(s) "
                "URL, e.g. https://mirror.example.com:5000",
            ],
        ),
        (
            {"registryMirrors": {"registry.k8s.io": "http://mirror/with space"}},
            [
                "kthw:registryMirrors = {'registry.k8s.io': 'http://mirror/with space'} is invalid: the mirror of "
                "registry.k8s.io: an http(s) URL, e.g. https://mirror.example.com:5000"
            ],
        ),
        (
            {"registryMirrors": "{nope"},
            [
                "kthw:registryMirrors = '{nope' is invalid: an object, e.g. "
                '{"registry.k8s.io": "https://mirror.example.com:5000"}'
            ],
        ),
    ],
)
def test_bad_binary_digests_and_registry_mirrors(values: dict[str, object], problems: list[str]) -> None:
    with pytest.raises(ConfigErrors) as error:
        load(**values)
    assert error.value.problems == problems


def test_binary_digests_need_no_mirror() -> None:
    """A digest pins your own copy of an unpinned release even when it comes from upstream."""
    cfg = load(binaryDigests={"kubelet": DIGEST})
    assert cfg.binary_mirror is None and cfg.binary_digests == (("kubelet", DIGEST),)


def test_registry_hosts_with_ports_and_addresses() -> None:
    cfg = load(registryMirrors={"10.0.0.5:5000": "http://mirror:5001/kthw", "localhost:5000": "https://10.0.0.6"})
    assert cfg.registry_mirrors == (
        ("10.0.0.5:5000", "http://mirror:5001/kthw"),
        ("localhost:5000", "https://10.0.0.6"),
    )


IMAGE_DIGEST = "sha256:" + DIGEST


def test_metrics_server_version_is_a_component_version_pinned_by_digest() -> None:
    assert load().versions.metrics_server == "0.8.1" and load().image_digests == ()
    cfg = load(metricsServerVersion="v0.8.0")
    assert cfg.versions.metrics_server == "0.8.0" and cfg.image_digests == ()
    # The user's digest pins a version the program does not (a local build, a newer release).
    cfg = load(metricsServerVersion="0.9.1", imageDigests=json.dumps({"metrics-server": IMAGE_DIGEST}))
    assert cfg.versions.metrics_server == "0.9.1" and cfg.image_digests == (("metrics-server", IMAGE_DIGEST),)
    # Without metrics-server no image is pulled, so no digest is needed.
    assert load(metricsServer="false", metricsServerVersion="0.7.2").versions.metrics_server == "0.7.2"


@pytest.mark.parametrize(
    ("values", "problems"),
    [
        (
            {"metricsServerVersion": "0.7.2"},
            [
                "kthw:metricsServerVersion = '0.7.2' is invalid: a version whose image digest the program pins "
                "(0.8.0, 0.8.1), or vouch for registry.k8s.io/metrics-server/metrics-server:v0.7.2 with its digest "
                "in kthw:imageDigests.metrics-server (sha256:..., as your registry or mirror serves it)"
            ],
        ),
        (
            {"metricsServerVersion": "latest"},
            [
                "kthw:metricsServerVersion = 'latest' is invalid: a release version like 1.32.3 "
                "(a leading 'v' is allowed)"
            ],
        ),
        (
            {"imageDigests": {"metric-server": IMAGE_DIGEST, "coredns": IMAGE_DIGEST}},
            [
                f"kthw:imageDigests = {{'metric-server': '{IMAGE_DIGEST}'}} is invalid: 'metric-server' is not an "
                "image the program pins: did you mean 'metrics-server'?",
                f"kthw:imageDigests = {{'coredns': '{IMAGE_DIGEST}'}} is invalid: 'coredns' is not an image the "
                "program pins: one of metrics-server",
            ],
        ),
        # A bare hex digest (the registry always names the algorithm), and a digest with a version that has none.
        (
            {"imageDigests": {"metrics-server": DIGEST}, "metricsServerVersion": "0.7.2"},
            [
                f"kthw:imageDigests = {{'metrics-server': '{DIGEST}'}} is invalid: the digest of metrics-server's "
                "image: sha256: and 64 lowercase hex digits, as the registry reports it"
            ],
        ),
        (
            {"imageDigests": '["metrics-server"]'},
            [
                "kthw:imageDigests = ['metrics-server'] is invalid: an object, e.g. "
                '{"metrics-server": "sha256:<digest>"}'
            ],
        ),
    ],
)
def test_bad_metrics_server_versions_and_image_digests(values: dict[str, object], problems: list[str]) -> None:
    with pytest.raises(ConfigErrors) as error:
        load(**values)
    assert error.value.problems == problems
