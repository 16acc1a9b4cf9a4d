"""Render template files (components/templates/, a platform's templates/): `{{ name }}` placeholders, nothing else.

string.Template's `$name` would fight with the shell's own `$`, so templates use `{{ name }}`;
every placeholder must be given and every value given must be used, so a typo fails loudly.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import yaml

TEMPLATES = Path(__file__).parent / "templates"
_PLACEHOLDER = re.compile(r"\{\{\s*([a-z_][a-z0-9_]*)\s*\}\}")


@functools.cache
def _read(path: Path) -> str:
    return path.read_text()


def placeholders(name: str | Path) -> set[str]:
    """The placeholder names a template uses (a name under components/templates, or a path)."""
    return set(_PLACEHOLDER.findall(_read(TEMPLATES / name)))


def render(name: str | Path, **values: object) -> str:
    """Render templates/<name> (or the template at an absolute path) with `values`.

    Unknown or missing names raise KeyError.
    """
    wanted = placeholders(name)
    missing, unused = wanted - values.keys(), values.keys() - wanted
    if missing or unused:
        raise KeyError(f"template {name}: missing {sorted(missing)}, unused {sorted(unused)}")
    return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), _read(TEMPLATES / name))


# libyaml's emitter is ~10x faster than PyYAML's pure-Python one, which matters when a program
# renders a kubeconfig per node; both emit the same text for the plain data used here.
_YAML_DUMPER: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def to_yaml(data: Any) -> str:
    """A structured file (kubeconfig, component config) as YAML: safe types only, keys in given order."""
    return yaml.dump(data, Dumper=_YAML_DUMPER, sort_keys=False, default_flow_style=False)
