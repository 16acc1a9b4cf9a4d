"""One parser per kind of value (whole number, boolean, object, choice, count, CIDR, GCE name, version).

Values arrive as strings (as `pulumi config set` stores them) or typed (as Pulumi.yaml defaults and
structured stack files give them); "" means unset. Each parser returns the value or raises ConfigError.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from typing import Any

from components.config.problems import ConfigError

# RFC 1035 labels as GCE accepts them for resource names, zones and machine types.
GCE_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
GCE_NAME_RULE = "a GCE name: lowercase letters, digits and '-', starting with a letter, at most 63"
_VERSION = re.compile(r"^\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?$")


def integer(cfg: Mapping[str, Any], key: str, default: int) -> int:
    raw = cfg.get(key, default)
    if raw is None or raw == "":
        return default
    if isinstance(raw, bool):
        raise ConfigError(key, raw, "a whole number")
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    if isinstance(raw, int):
        return raw
    try:
        return int(str(raw).strip())
    except ValueError:
        raise ConfigError(key, raw, "a whole number") from None


def boolean(cfg: Mapping[str, Any], key: str, default: bool) -> bool:
    raw = cfg.get(key, default)
    if raw is None or raw == "":
        return default
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text not in ("true", "false"):
        raise ConfigError(key, raw, "true or false")
    return text == "true"


def json_object(cfg: Mapping[str, Any], key: str, example: str) -> dict[str, Any]:
    """A string-keyed object: a mapping, or its JSON as the language host hands it over; unset is {}."""
    raw = cfg.get(key)
    if raw is None or raw == "":
        return {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            raise ConfigError(key, raw, f"an object, e.g. {example}") from None
    if not isinstance(raw, dict):
        raise ConfigError(key, raw, f"an object, e.g. {example}")
    return {str(k): v for k, v in raw.items()}


def choice(cfg: Mapping[str, Any], key: str, default: str, allowed: tuple[str, ...]) -> str:
    """One of `allowed`, matched case-insensitively and returned as `allowed` spells it."""
    raw = cfg.get(key) or default
    by_lower = {a.lower(): a for a in allowed}
    value = by_lower.get(str(raw).strip().lower())
    if value is None:
        raise ConfigError(key, raw, f"one of {', '.join(allowed)}")
    return value


def count(cfg: Mapping[str, Any], key: str, default: int, maximum: int | None, why: str) -> int:
    """A count of at least 1; at most `maximum` where that is known (None: it hangs on a value refused)."""
    n = integer(cfg, key, default)
    if maximum is None and n < 1:
        raise ConfigError(key, n, "at least 1")
    if maximum is not None and not 1 <= n <= maximum:
        raise ConfigError(key, n, f"between 1 and {maximum} ({why})")
    return n


def network(cfg: Mapping[str, Any], key: str, default: str) -> ipaddress.IPv4Network:
    """A private IPv4 range, written as a CIDR with no host bits set."""
    raw = cfg.get(key) or default
    if "/" not in str(raw):  # ip_network would read a bare address as a /32
        raise ConfigError(key, raw, "an IPv4 CIDR with a prefix length, like 10.240.0.0/24")
    try:
        net = ipaddress.ip_network(str(raw), strict=True)
    except ValueError:
        raise ConfigError(key, raw, "an IPv4 CIDR with no host bits set, like 10.240.0.0/24") from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise ConfigError(key, raw, "an IPv4 CIDR (GCE subnets and KTHW's routes are IPv4)")
    if not net.is_private:
        raise ConfigError(key, raw, "a private (RFC 1918) range")
    return net


def gce_name(cfg: Mapping[str, Any], key: str, default: str | None = None) -> str:
    """A GCE name (region, zone, machine type); with no default the key is required."""
    raw = cfg.get(key) or default
    if raw is None:
        raise ConfigError(key, None, f"required: set it with `pulumi config set {key} ...`")
    value = str(raw)
    if not GCE_NAME.match(value):
        raise ConfigError(key, value, GCE_NAME_RULE)
    return value


def version(cfg: Mapping[str, Any], key: str, default: str) -> str:
    """A release version without its leading "v"."""
    raw = str(cfg.get(key) or default)
    value = raw.removeprefix("v")
    if not _VERSION.match(value):
        raise ConfigError(key, raw, "a release version like 1.32.3 (a leading 'v' is allowed)")
    return value
