"""The reference order: in which order a round's messages are shown to the next round.

- ``"seeded"`` (default): the contributing trajectories in launch order, shuffled with a random
  generator seeded by (coordinator seed, problem, round). Reproducible whatever the completion order.
- ``"official"``: the official PaCoRe pipeline's order: every trajectory of the round (failed ones as
  empty) sorted by content length, shuffled with ``random.Random(42)``, then the empty ones dropped.
- ``"launch"``: launch order, no shuffle.
- A callable ``(trajectories, rng) -> indices`` for anything else.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from typing import Literal

from pacore_agent.exceptions import UsageError
from pacore_agent.results import Trajectory

__all__ = ["OFFICIAL_SEED", "OrderPolicy", "contributes", "reference_order", "round_rng"]

OFFICIAL_SEED = 42
"""The fixed seed of the official pipeline's shuffle."""

OrderPolicy = (
    Literal["seeded", "official", "launch"] | Callable[[Sequence[Trajectory], random.Random], list[int]]
)


def contributes(trajectory: Trajectory) -> bool:
    """Whether a trajectory feeds the next round: it finished and has content (as the official pipeline)."""
    return trajectory.ok and bool(trajectory.content)


def round_rng(seed: int, problem_key: str, round_index: int) -> random.Random:
    """The random generator of one (problem, round), independent of timing and of other problems."""
    digest = hashlib.sha256(f"{seed}|{problem_key}|{round_index}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def reference_order(policy: OrderPolicy, trajectories: Sequence[Trajectory], rng: random.Random) -> list[int]:
    """Indices (into ``trajectories``) of the contributing trajectories, in reference order."""
    if policy == "seeded":
        order = [i for i, t in enumerate(trajectories) if contributes(t)]
        rng.shuffle(order)
        return order
    if policy == "launch":
        return [i for i, t in enumerate(trajectories) if contributes(t)]
    if policy == "official":
        everyone = sorted(range(len(trajectories)), key=lambda i: len(trajectories[i].content or ""))
        random.Random(OFFICIAL_SEED).shuffle(everyone)
        return [i for i in everyone if contributes(trajectories[i])]
    if callable(policy):
        order = list(policy(trajectories, rng))
        if sorted(set(order)) != sorted(order) or any(not contributes(trajectories[i]) for i in order):
            raise UsageError(
                "a custom order must list distinct indices of finished trajectories with content"
            )
        return order
    raise UsageError(f"unknown reference order {policy!r}: use 'seeded', 'official', 'launch' or a callable")
