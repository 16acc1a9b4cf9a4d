"""How config problems are told: a ConfigError per refused value, every one of them at once in ConfigErrors."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ParamSpec, TypeVar

import pulumi

from components.config.stack import NAMESPACE

T = TypeVar("T")
P = ParamSpec("P")


class ConfigError(ValueError):
    """A stack config value the program refuses, with the key, the value and what is allowed."""

    def __init__(self, key: str, value: object, allowed: str) -> None:
        self.key = key if ":" in key else f"{NAMESPACE}:{key}"
        super().__init__(f"{self.key} = {value!r} is invalid: {allowed}")


class ConfigErrors(pulumi.RunError):
    """Every problem of a stack's config, one line each.

    A RunError, so the Python language host prints the message alone, with no traceback.
    """

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class Problems:
    """Collects what is wrong with the config, so the user sees every problem at once."""

    def __init__(self) -> None:
        self.found: list[str] = []

    def check(self, parse: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T | None:
        """parse(*args, **kwargs)'s value, or None after noting the ConfigError it raised."""
        try:
            return parse(*args, **kwargs)
        except ConfigError as error:
            self.found.append(str(error))
            return None

    def refuse(self, key: str, value: object, allowed: str) -> None:
        """Note a problem that a check across keys found (no parser raised it)."""
        self.found.append(str(ConfigError(key, value, allowed)))
