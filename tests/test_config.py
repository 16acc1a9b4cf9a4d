"""Config validation: every class of bad input fails before any resource, naming key, value and rule."""

from __future__ import annotations

import re

import pulumi
import pytest

from components import config
from components.config import ConfigError
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
        adminSourceRanges='["198.51.100.0/24", "2001:db8::/32"]',
        kubernetesVersion="v1.35.2",
    )
    assert cfg.workers[4].internal_ip == "192.168.10.24"
    assert cfg.workers[4].pod_cidr == "172.16.4.0/24"
    assert cfg.kubernetes_service_ip == "10.96.0.1"
    assert cfg.cluster_dns_ip == "10.96.0.10"
    assert cfg.admin_source_ranges == ("198.51.100.0/24", "2001:db8::/32")
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
    # prefixes that cannot hold the nodes
    ({"nodeCidr": "10.240.0.0/28"}, "kthw:nodeCidr = '10.240.0.0/28' is invalid: a range with room for workers"),
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
        "kthw:clusterCidr = '10.240.0.0/16' is invalid: a range that does not overlap nodeCidr",
    ),
    (
        {"serviceCidr": "10.200.5.0/24"},
        "kthw:serviceCidr = '10.200.5.0/24' is invalid: a range that does not overlap clusterCidr",
    ),
    # counts
    ({"controllerCount": "0"}, "kthw:controllerCount = 0 is invalid: between 1 and 10"),
    ({"controllerCount": "11"}, "kthw:controllerCount = 11 is invalid: between 1 and 10"),
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
]


@pytest.mark.parametrize(
    ("values", "message"), BAD, ids=[next(iter(v)) + "=" + str(next(iter(v.values()))) for v, _ in BAD]
)
def test_bad_config_names_key_value_and_rule(values: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(**values)
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
    with pytest.raises(ConfigError) as caught:
        config.load({}, {**GCP, **gcp})
    assert str(caught.value).startswith(message), str(caught.value)


def test_bad_config_stops_the_program_before_any_resource() -> None:
    # A RunError: the language host shows it as its one line, where a ConfigError would come with a traceback.
    with pytest.raises(pulumi.RunError, match=re.escape("kthw:nodeCidr = '10.240.0.0/33' is invalid")) as caught:
        run_program({"nodeCidr": "10.240.0.0/33"})
    assert caught.value.registered == []  # type: ignore[attr-defined]


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
    with pytest.raises(ConfigError) as error:
        load(**{key: value})
    assert str(error.value) == f"kthw:{key} = {value!r} is invalid: {rule}"
