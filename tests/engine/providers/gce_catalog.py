"""What the local gcp plugin knows of GCE's catalogue: machine types per zone, disk types per family, images.

A sample shaped like GCE's, not a copy of it: real availability differs by zone and changes over
time. What matters to the tests is the shape of GCE's answers and refusals: a zone lists only the
machine types of the families it offers (machineTypes.list, which the provider's
`getMachineTypes` data source reads), a family takes only some disk types (N4 and C4 take
Hyperdisk only, C3 no pd-standard), and when an instance names no boot disk type GCE picks one
by family (pd-standard on the first and second generations, pd-balanced on C3/C3D/M3,
hyperdisk-balanced on the fourth).

Images: the provider's DiskImageDiffSuppress (resource_compute_disk.go) compares the image in
state, always a full link to an image (not a family), with whatever spelling the program gives;
`image_link` and `same_image` model that for the spellings it accepts.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

API = "https://www.googleapis.com/compute/v1/"

PD = frozenset({"pd-standard", "pd-balanced", "pd-ssd"})
HYPERDISK = frozenset({"hyperdisk-balanced", "hyperdisk-throughput", "hyperdisk-extreme"})
# family -> (architecture, the disk types it takes, the boot disk type GCE picks when none is given)
FAMILIES: dict[str, tuple[str, frozenset[str], str]] = {
    **{f: ("X86_64", PD, "pd-standard") for f in ("e2", "n1", "n2", "n2d", "t2d", "c2", "c2d", "m1", "m2")},
    "t2a": ("ARM64", PD, "pd-standard"),
    **{f: ("X86_64", (PD - {"pd-standard"}) | HYPERDISK, "pd-balanced") for f in ("c3", "c3d", "m3")},
    **{f: ("X86_64", HYPERDISK, "hyperdisk-balanced") for f in ("n4", "n4d", "c4", "c4d")},
    **{f: ("ARM64", HYPERDISK, "hyperdisk-balanced") for f in ("c4a", "n4a")},
}
# family -> shape -> (vCPUs, memory in MiB, shared-core); the usual predefined shapes of each family.
_GIB = 1024


def _series(cpus: tuple[int, ...], per_cpu_gib: float) -> dict[str, tuple[int, int, bool]]:
    return {str(c): (c, int(c * per_cpu_gib * _GIB), False) for c in cpus}


def _shapes(kinds: dict[str, tuple[tuple[int, ...], float]]) -> dict[str, tuple[int, int, bool]]:
    out: dict[str, tuple[int, int, bool]] = {}
    for kind, (cpus, ratio) in kinds.items():
        out.update({f"{kind}-{k}": v for k, v in _series(cpus, ratio).items()})
    return out


SHAPES: dict[str, dict[str, tuple[int, int, bool]]] = {
    "e2": {
        "micro": (2, 1 * _GIB, True),
        "small": (2, 2 * _GIB, True),
        "medium": (2, 4 * _GIB, True),
        **_shapes(
            {"standard": ((2, 4, 8, 16, 32), 4), "highmem": ((2, 4, 8, 16), 8), "highcpu": ((2, 4, 8, 16, 32), 1)}
        ),
    },
    "n1": _shapes(
        {
            "standard": ((1, 2, 4, 8, 16, 32, 64, 96), 3.75),
            "highmem": ((2, 4, 8, 16, 32, 64, 96), 6.5),
            "highcpu": ((2, 4, 8, 16, 32, 64, 96), 0.9),
        }
    ),
    "n2": _shapes(
        {
            "standard": ((2, 4, 8, 16, 32, 48, 64, 80, 96, 128), 4),
            "highmem": ((2, 4, 8, 16, 32, 48, 64, 80, 96, 128), 8),
            "highcpu": ((2, 4, 8, 16, 32, 48, 64, 80, 96), 1),
        }
    ),
    "n2d": _shapes({"standard": ((2, 4, 8, 16, 32, 48, 64, 80, 96, 128, 224), 4), "highcpu": ((2, 4, 8, 16, 32), 1)}),
    "t2d": _shapes({"standard": ((1, 2, 4, 8, 16, 32, 48, 60), 4)}),
    "t2a": _shapes({"standard": ((1, 2, 4, 8, 16, 32, 48), 4)}),
    "c2": _shapes({"standard": ((4, 8, 16, 30, 60), 4)}),
    "c2d": _shapes({"standard": ((2, 4, 8, 16, 32, 56, 112), 4), "highcpu": ((2, 4, 8, 16, 32, 56, 112), 2)}),
    "c3": _shapes({"standard": ((4, 8, 22, 44, 88, 176), 4), "highcpu": ((4, 8, 22, 44, 88, 176), 2)}),
    "c3d": _shapes({"standard": ((4, 8, 16, 30, 60, 90, 180, 360), 4), "highcpu": ((4, 8, 16, 30, 60), 2)}),
    "m1": _shapes({"megamem": ((96,), 14.9), "ultramem": ((40, 80, 160), 24)}),
    "m2": _shapes({"ultramem": ((208, 416), 28)}),
    "m3": _shapes({"megamem": ((64, 128), 15.25), "ultramem": ((32, 64, 128), 30.5)}),
    "n4": _shapes({"standard": ((2, 4, 8, 16, 32, 48, 64, 80), 4), "highcpu": ((2, 4, 8, 16, 32, 48, 64, 80), 2)}),
    "n4d": _shapes({"standard": ((2, 4, 8, 16, 32, 48, 64, 80, 96), 4)}),
    "c4": _shapes({"standard": ((2, 4, 8, 16, 32, 48, 96, 192), 3.75), "highcpu": ((2, 4, 8, 16, 32, 48), 2)}),
    "c4d": _shapes({"standard": ((2, 4, 8, 16, 32, 48, 64, 96, 192), 3.875)}),
    "c4a": _shapes({"standard": ((1, 2, 4, 8, 16, 32, 48, 64, 72), 4)}),
    "n4a": _shapes({"standard": ((1, 2, 4, 8, 16, 32, 48, 64), 4)}),
}

_EVERYWHERE = ("e2", "n1", "n2", "n2d", "t2d", "c3", "n4")
# zone -> the families it offers (a sample; GCE's own list is per zone and moves).
ZONES: dict[str, frozenset[str]] = {
    "us-west1-a": frozenset({*_EVERYWHERE, "t2a", "c2", "c2d", "c3d", "c4", "c4a"}),
    "us-west1-b": frozenset({*_EVERYWHERE, "t2a", "c2", "c3d", "c4", "c4a"}),
    "us-west1-c": frozenset({*_EVERYWHERE, "c2d", "c4"}),
    **{
        f"us-central1-{z}": frozenset(
            {*_EVERYWHERE, "t2a", "c2", "c2d", "c3d", "c4", "c4a", "c4d", "n4d", "n4a", "m1", "m2", "m3"}
        )
        for z in "abcf"
    },
    **{f"europe-west1-{z}": frozenset({*_EVERYWHERE, "c2", "c2d", "c3d", "c4"}) for z in "bcd"},
    **{
        f"europe-west4-{z}": frozenset({*_EVERYWHERE, "t2a", "c2", "c2d", "c3d", "c4", "c4a", "m1", "m3"})
        for z in "abc"
    },
    **{f"asia-east1-{z}": frozenset({*_EVERYWHERE, "c2"}) for z in "abc"},
}

# The provider's ImageMap (image.go): a short project name some image spellings may use.
IMAGE_PROJECTS = {
    "centos": "centos-cloud",
    "coreos": "coreos-cloud",
    "debian": "debian-cloud",
    "fedora-coreos": "fedora-coreos-cloud",
    "opensuse": "opensuse-cloud",
    "rhel": "rhel-cloud",
    "rocky-linux": "rocky-linux-cloud",
    "sles": "suse-cloud",
    "ubuntu": "ubuntu-os-cloud",
    "windows": "windows-cloud",
    "windows-sql": "windows-sql-cloud",
}
# The image every family resolves to here: the family's name with this version suffix, as GCE's
# public images are named (debian-12 -> debian-12-bookworm-v2026...; the suffix is what matters).
IMAGE_VERSION = "v20260101"


_CUSTOM = re.compile(r"^(?:([a-z][a-z0-9]*)-)?custom-([0-9]+)-([0-9]+)(-ext)?$")
# Families with custom machine types (FAMILY-custom-VCPUS-MEMORY_MB; plain custom-... is N1's).
CUSTOM_FAMILIES = frozenset({"e2", "n1", "n2", "n2d"})


def family(machine_type: str) -> str:
    """A machine type's family: e2-standard-2 -> e2, custom-2-4096 -> n1, and from a link the last part's."""
    name = machine_type.rsplit("/", 1)[-1]
    custom = _CUSTOM.match(name)
    if custom:
        return custom.group(1) or "n1"
    return name.split("-", 1)[0]


def machine_types(project: str, zone: str) -> Iterator[dict[str, object]]:
    """The zone's machine types as machineTypes.list gives them (the data source's fields, camelCase)."""
    for fam in sorted(ZONES.get(zone, ())):
        architecture = FAMILIES[fam][0]
        for shape, (cpus, memory, shared) in SHAPES[fam].items():
            name = f"{fam}-{shape}"
            yield {
                "name": name,
                "guestCpus": cpus,
                "memoryMb": memory,
                "isSharedCpus": shared,
                "description": f"{cpus} vCPUs, {memory / _GIB:g} GB RAM",
                "architecture": architecture,
                "maximumPersistentDisks": 16 if shared else 128,
                "maximumPersistentDisksSizeGb": 3072 if shared else 263168,
                "deprecateds": [],
                "accelerators": [],
                "bundledLocalSsds": [],
                "selfLink": f"{API}projects/{project}/zones/{zone}/machineTypes/{name}",
            }


def machine_type_problem(machine_type: str, zone: str) -> str | None:
    """GCE's refusal of a machine type in a zone, or None."""
    name = machine_type.rsplit("/", 1)[-1]
    fam = family(name)
    shape = name[len(fam) + 1 :]
    # A custom type exists wherever its family does (GCE's vCPU and memory limits are not modelled).
    offered = fam in CUSTOM_FAMILIES if _CUSTOM.match(name) else shape in SHAPES.get(fam, {})
    if fam not in ZONES.get(zone, ()) or not offered:
        return (
            f"Invalid value for field 'resource.machineType': 'zones/{zone}/machineTypes/{name}'. "
            f"Machine type with name '{name}' does not exist in zone '{zone}'."
        )
    return None


def disk_problem(machine_type: str, disk_type: str) -> str | None:
    """GCE's refusal of a disk type on a machine type, or None."""
    name = machine_type.rsplit("/", 1)[-1]
    known = FAMILIES.get(family(name))
    if known is not None and disk_type.rsplit("/", 1)[-1] not in known[1]:
        return f"Invalid resource usage: 'Machine type {name} does not support disk type {disk_type}.'"
    return None


def default_boot_disk_type(machine_type: str) -> str:
    known = FAMILIES.get(family(machine_type))
    return known[2] if known else "pd-standard"


_PROJECT = r"[-a-z0-9.:]+"
_NAME = r"[-_a-zA-Z0-9]+"
_FORMS = [
    ("project-family", re.compile(rf"projects/({_PROJECT})/global/images/family/({_NAME})$")),
    ("project-image", re.compile(rf"projects/({_PROJECT})/global/images/({_NAME})$")),
    ("family", re.compile(rf"^global/images/family/({_NAME})$")),
    ("image", re.compile(rf"^global/images/({_NAME})$")),
    ("family", re.compile(rf"^family/({_NAME})$")),
    ("project-either", re.compile(rf"^({_PROJECT})/({_NAME})$")),
    ("either", re.compile(rf"^({_NAME})$")),
]
_LINK = re.compile(rf"^https://www\.googleapis\.com/compute/[a-z0-9]+/projects/({_PROJECT})/global/images/({_NAME})$")


def _parse(spelling: str) -> tuple[str, str | None, str]:
    """(form, project or None, family or image name) of one of the spellings the provider accepts."""
    for form, pattern in _FORMS:
        match = pattern.search(spelling)
        if match:
            groups = match.groups()
            return (form, groups[0], groups[1]) if len(groups) == 2 else (form, None, groups[0])
    raise ValueError(f"Could not find image or family {spelling}")


def _project_of(name: str, own: str) -> str:
    """Where a bare name is found: the public project its prefix names (ImageMap), else the VM's own."""
    for prefix, project in sorted(IMAGE_PROJECTS.items(), key=lambda kv: -len(kv[0])):
        if name.startswith(prefix):
            return project
    return own


def image_link(spelling: str, own_project: str) -> str:
    """The image the boot disk is made from, as state keeps it: a full link to a versioned image."""
    form, project, name = _parse(spelling)
    project = IMAGE_PROJECTS.get(project or "", project) or _project_of(name, own_project)
    is_image = form in ("project-image", "image") or name.endswith(IMAGE_VERSION)
    image = name if is_image else f"{name}-{IMAGE_VERSION}"
    return f"{API}projects/{project}/global/images/{image}"


def _family_matches(image: str, family_name: str) -> bool:
    """The provider's diskImageFamilyEquals, its general rule: the image's name contains the family's,
    and an -amd64 or -arm64 family names only images of that architecture (the special cases for
    Ubuntu, Fedora, SUSE, COS and Windows names are left out)."""
    if "-arm64" not in image and family_name.removesuffix("-amd64") in image:
        return ("-amd64" in image) == family_name.endswith("-amd64")
    if family_name.removesuffix("-arm64") in image:
        return ("-arm64" in image) == family_name.endswith("-arm64")
    return False


def same_image(old_link: str, spelling: str) -> bool:
    """DiskImageDiffSuppress: does `spelling` name the image the disk was made from (so nothing changes)?"""
    match = _LINK.match(old_link)
    if match is None:
        return False
    old_project, old_image = match.groups()
    try:
        form, project, name = _parse(spelling)
    except ValueError:
        return False
    if project is not None and IMAGE_PROJECTS.get(project, project) != old_project:
        return False
    if form in ("project-image", "image"):
        return name == old_image
    if form in ("project-family", "family"):
        return _family_matches(old_image, name)
    return name == old_image or _family_matches(old_image, name)
