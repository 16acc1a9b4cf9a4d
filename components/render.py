"""Render the files under components/templates/: `{{ name }}` placeholders, nothing else.

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
def _read(name: str) -> str:
    return (TEMPLATES / name).read_text()


def placeholders(name: str) -> set[str]:
    """The placeholder names a template uses."""
    return set(_PLACEHOLDER.findall(_read(name)))


def render(name: str, **values: object) -> str:
    """Render templates/<name> with `values`; unknown or missing names raise KeyError."""
    wanted = placeholders(name)
    missing, unused = wanted - values.keys(), values.keys() - wanted
    if missing or unused:
        raise KeyError(f"template {name}: missing {sorted(missing)}, unused {sorted(unused)}")
    return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), _read(name))


# libyaml's emitter is ~10x faster than PyYAML's pure-Python one, which matters when a program
# renders a kubeconfig per node; both emit the same text for the plain data used here.
_YAML_DUMPER: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def to_yaml(data: Any) -> str:
    """A structured file (kubeconfig, component config) as YAML: safe types only, keys in given order."""
    return yaml.dump(data, Dumper=_YAML_DUMPER, sort_keys=False, default_flow_style=False)
