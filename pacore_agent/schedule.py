"""The PaCoRe schedule: how many parallel trajectories each round runs.

A schedule is the paper's K vector. A final round of ONE trajectory always follows it, as in the
official pipeline: ``[4]`` runs 4 then 1, ``[32, 4]`` runs 32, 4, then 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pacore_agent.exceptions import UsageError

__all__ = ["DEFAULT_MAX_WIDTH", "PRESETS", "Schedule", "ScheduleLike"]

PRESETS: dict[str, tuple[int, ...]] = {"low": (4,), "medium": (16,), "high": (32, 4)}
"""The paper's compute levels."""

DEFAULT_MAX_WIDTH = 512
"""Safety cap on the trajectories of one round (the paper's pool size); raise it explicitly if needed."""


@dataclass(frozen=True, slots=True)
class Schedule:
    """A validated schedule.

    Attributes:
        widths: The user's K vector, e.g. ``(32, 4)``.
        name: The preset name when built from one, else ``None``.
    """

    widths: tuple[int, ...]
    name: str | None = None

    @property
    def rounds(self) -> tuple[int, ...]:
        """The widths actually run: the K vector plus the final round of one, e.g. ``(32, 4, 1)``."""
        return (*self.widths, 1)

    def __str__(self) -> str:
        return self.name or "[" + ",".join(map(str, self.widths)) + "]"

    @classmethod
    def parse(cls, value: Schedule | str | Sequence[int], *, max_width: int = DEFAULT_MAX_WIDTH) -> Schedule:
        """Build a schedule from a preset name, a string like ``"32,4"`` / ``"[32, 4]"``, or a list.

        Args:
            value: ``"low"``, ``"medium"``, ``"high"``, ``"32,4"``, ``[32, 4]`` or a `Schedule`.
            max_width: Largest width allowed in one round.

        Raises:
            UsageError: Unknown preset, empty schedule, a width that is not a positive integer, or a
                width above ``max_width``.
        """
        if isinstance(value, Schedule):
            widths, name = value.widths, value.name
        elif isinstance(value, str):
            text = value.strip().lower()
            if text in PRESETS:
                widths, name = PRESETS[text], text
            else:
                widths, name = _parse_widths(text), None
        else:
            if value is None or isinstance(value, bool | int | float) or not hasattr(value, "__iter__"):
                raise UsageError(
                    f"schedule must be a list of widths like [32, 4] or a preset (low/medium/high), got {value!r}"
                )
            widths, name = tuple(value), None
        if not widths:
            raise UsageError(
                "schedule is empty: give at least one width, e.g. [4], or a preset (low/medium/high)"
            )
        for width in widths:
            if isinstance(width, bool) or not isinstance(width, int) or width <= 0:
                raise UsageError(
                    f"every schedule width must be a positive integer, got {width!r} in {list(widths)}"
                )
            if width > max_width:
                raise UsageError(
                    f"schedule width {width} exceeds the safety cap of {max_width} trajectories per round; "
                    f"pass max_width={width} (or more) to allow it"
                )
        return cls(widths=tuple(widths), name=name)


ScheduleLike = Schedule | str | Sequence[int]
"""Anything `Schedule.parse` accepts."""


def _parse_widths(text: str) -> tuple[int, ...]:
    inner = text.strip("[]() ")
    if not inner:
        return ()
    try:
        return tuple(int(part) for part in inner.replace(" ", ",").split(",") if part)
    except ValueError:
        raise UsageError(
            f"unknown schedule {text!r}: use a preset ({', '.join(PRESETS)}) or widths like '32,4'"
        ) from None
