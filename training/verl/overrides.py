"""The Hydra overrides of the launch scripts, and a check of their keys against verl's config.

`script_overrides` reads a launch script (``ppo.sh``, which ``stage1.sh`` and ``stage2.sh`` source) the way bash would split its
``python3 -m verl.trainer.main_ppo ...`` command and returns the ``key=value`` overrides. `check_keys`
compares them with `VERL_CONFIG_KEYS`, the key paths of verl's PPO trainer config vendored in
``verl_config_keys.txt`` (its header names the verl release and file they come from): a plain key must
exist there; a key added with ``+`` must not (Hydra refuses ``+`` for an existing key) and must live under
``data.pacore`` (the only block this adapter adds). Standard library only, so the check runs anywhere;
with verl installed, the tests also compose the overrides against verl's own config.
"""

from __future__ import annotations

import functools
import os
import shlex
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

__all__ = [
    "ADDED_PREFIX",
    "ENTRY_POINT",
    "Override",
    "check_keys",
    "script_overrides",
    "verl_config_keys",
]

ENTRY_POINT = "verl.trainer.main_ppo"
"""The module the scripts run (``python3 -m verl.trainer.main_ppo``)."""

ADDED_PREFIX = "data.pacore."
"""Where the adapter's own settings live (added to verl's config with ``+``)."""


@dataclass(frozen=True)
class Override:
    """One Hydra override of a launch script.

    Attributes:
        key: The dotted key path, without Hydra's prefix.
        value: The value as bash passes it (variables not expanded).
        prefix: ``""`` (set an existing key), ``"+"`` (add a key) or ``"++"`` (add or set).
    """

    key: str
    value: str
    prefix: str = ""

    @property
    def text(self) -> str:
        """The override as Hydra receives it."""
        return f"{self.prefix}{self.key}={self.value}"


@functools.cache
def verl_config_keys() -> frozenset[str]:
    """The vendored key paths of verl's PPO trainer config (``verl_config_keys.txt``)."""
    text = resources.files("training.verl").joinpath("verl_config_keys.txt").read_text(encoding="utf-8")
    return frozenset(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))


def _command_words(text: str) -> list[str]:
    """The words of the script's ``python3 -m verl.trainer.main_ppo`` command, as bash splits them."""
    joined = text.replace("\\\n", " ")
    for line in joined.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            continue
        words = shlex.split(stripped, comments=True)
        if ENTRY_POINT in words and "-m" in words:
            return words[words.index(ENTRY_POINT) + 1 :]
    raise ValueError(f"no 'python3 -m {ENTRY_POINT}' command found")


def script_overrides(script: str | os.PathLike[str]) -> list[Override]:
    """The ``key=value`` overrides a launch script passes to verl (``"$@"`` and the like skipped).

    Args:
        script: The script's path.

    Raises:
        ValueError: The script runs no ``verl.trainer.main_ppo`` command.
    """
    overrides = []
    for word in _command_words(Path(script).read_text(encoding="utf-8")):
        if "=" not in word or word.startswith("$"):
            continue
        key, value = word.split("=", 1)
        prefix = "++" if key.startswith("++") else "+" if key.startswith("+") else ""
        overrides.append(Override(key=key[len(prefix) :], value=value, prefix=prefix))
    return overrides


def check_keys(overrides: list[Override], known: frozenset[str] | None = None) -> list[str]:
    """Problems with the overrides' keys (empty when every key is right).

    Args:
        overrides: The overrides to check.
        known: Key paths of verl's config (default: the vendored list).

    Returns:
        One message per bad key: unknown to verl, added with ``+`` although verl has it, added outside
        ``data.pacore``, or set twice.
    """
    known = verl_config_keys() if known is None else known
    problems = []
    seen: set[str] = set()
    for override in overrides:
        key = override.key
        if key in seen:
            problems.append(f"{key}: set twice")
        seen.add(key)
        if override.prefix == "+":
            if key in known:
                problems.append(f"+{key}: verl already has this key; drop the '+'")
            elif not key.startswith(ADDED_PREFIX):
                problems.append(f"+{key}: the adapter only adds keys under {ADDED_PREFIX}")
        elif key not in known:
            problems.append(f"{key}: not a key of verl's PPO trainer config")
    return problems
