"""Pool evaluation, the paper's protocol: first rounds drawn from a pool of pre-generated trajectories.

For each problem a pool of first-round trajectories is generated once (`pool_part`: `Coordinator.run_round`
in parts, each part appended to a `PoolStore` as it finishes, graded message by message with the one
message grader; the training message pool has the same format). A sample of a method then draws from the
pool, seeded by the sample (`draw`, `drawn_round`), and the drawn round enters the one solve loop as its
first round (``strategy.solve(problem, first_round=...)``, see `Coordinator.adopt_round`):

- ``pacore:[K1, ...]``: the K1 drawn trajectories are round 0, compacted with the run's compactor, their
  calls and tokens charged to the budget, their references ordered by ``--order``; the remaining rounds
  run as in a fresh solve (adaptive stop, events and the empty-round bypass included).
- ``sc@k``, ``single``, ``bon@n``: `SelfConsistency`, `Single` and `BestOfN` choose among the k drawn
  trajectories exactly as they do among fresh ones. No new calls at all.

So one pool prices many configurations. Compute is recorded honestly: the drawn trajectories are the
first round of the result, with their tokens and latency, so ``ttc_tokens`` and ``calls`` count them as
if they had been run for this sample, and the wall time counts the slowest drawn trajectory as the first
round's duration (what the round would have taken with every trajectory in parallel). A drawn trajectory
that the pool kept only as its message has that message as its content: the ``official`` order, which
sorts by content length, then sorts by message length.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from pacore_agent.backends.base import Backend, SamplingParams
from pacore_agent.coordinator import Coordinator
from pacore_agent.evaluation.bench.seeds import derive_seed
from pacore_agent.evaluation.datasets import Problem
from pacore_agent.evaluation.grading import (
    DEFAULT_TRUNCATION,
    MessageGrade,
    Truncation,
    grade_pool_message,
)
from pacore_agent.evaluation.store import PoolEntry, PoolMessage, PoolStore
from pacore_agent.results import RoundResult, Trajectory

__all__ = [
    "Pool",
    "draw",
    "drawn_round",
    "load_pools",
    "part_widths",
    "pool_part",
    "pooled_grades",
]


@dataclass(frozen=True)
class Pool:
    """One problem's whole pool, parts joined in order.

    Attributes:
        problem_id: The problem.
        messages: The pooled messages, graded.
        latencies: Seconds each pooled trajectory took (0 when not recorded).
        model: The model that generated them.
    """

    problem_id: str
    messages: tuple[PoolMessage, ...]
    latencies: tuple[float, ...]
    model: str | None

    def __len__(self) -> int:
        return len(self.messages)


def load_pools(store: PoolStore) -> dict[str, Pool]:
    """Every problem's pool in a store, its parts joined in part order."""
    parts: dict[str, list[PoolEntry]] = {}
    for entry in store.entries():
        parts.setdefault(entry.problem_id, []).append(entry)
    pools: dict[str, Pool] = {}
    for problem_id, entries in parts.items():
        entries.sort(key=lambda e: e.part)
        messages = [m for e in entries for m in e.messages]
        latencies: list[float] = []
        for entry in entries:
            recorded = entry.metadata.get("latency_s")
            ok = isinstance(recorded, list) and len(recorded) == len(entry.messages)
            latencies += [float(x) for x in recorded] if ok else [0.0] * len(entry.messages)  # type: ignore[union-attr]
        pools[problem_id] = Pool(problem_id, tuple(messages), tuple(latencies), entries[0].model)
    return pools


def part_widths(size: int, chunk: int) -> list[int]:
    """The widths of a pool's parts: ``chunk`` each, the last one what remains."""
    count = math.ceil(size / chunk)
    return [min(chunk, size - i * chunk) for i in range(count)]


async def pool_part(
    problem: Problem,
    part: int,
    width: int,
    backend: Backend,
    *,
    sampling: SamplingParams,
    seed: int,
    model: str | None,
    keep_trajectories: bool = False,
    truncation: Truncation = DEFAULT_TRUNCATION,
) -> tuple[PoolEntry | None, RoundResult]:
    """Generate and grade one part of a problem's pool (one `Coordinator.run_round`).

    Returns:
        The entry to store, or ``None`` when a trajectory failed (the part is then retried by a later run,
        so that a pool never silently loses the trajectories an endpoint failed on), and the round.
    """
    coordinator = Coordinator([width], backend, sampling=sampling, seed=seed, max_width=max(width, 512))
    round_ = await coordinator.run_round(problem.problem, width)
    if any(not t.ok for t in round_.trajectories):
        return None, round_
    messages = [
        await grade_pool_message(
            t.message or "",
            problem,
            finish_reason=t.finish_reason,
            usage=t.usage,
            trajectory=t if keep_trajectories else None,
            truncation=truncation,
        )
        for t in round_.trajectories
    ]
    entry = PoolEntry.of(
        problem,
        messages,
        model=model,
        part=part,
        metadata={
            "latency_s": [round(t.latency_s, 4) for t in round_.trajectories],
            "wall_s": round(round_.wall_s, 4),
            "seed": seed,
        },
    )
    return entry, round_


def draw(pool: Pool, k: int, *, seed: int, sample: int) -> list[int]:
    """Indices of ``k`` distinct pooled messages for one sample (seeded by problem, sample and ``seed``)."""
    rng = random.Random(derive_seed(seed, "draw", pool.problem_id, sample))
    return rng.sample(range(len(pool)), k)


def drawn_round(pool: Pool, indices: Sequence[int]) -> RoundResult:
    """The first round a sample gets from the pool: the drawn trajectories, indexed in draw order.

    Trajectories carry their message as content unless the pool kept the full trajectory (keep them, with
    ``keep_trajectories``, for a compactor that needs the reasoning, such as `full`). ``order`` and
    ``messages`` are in draw order; the solve loop compacts and orders them again as it would a round it
    ran (`pacore_agent.coordinator.Coordinator.adopt_round`).
    """
    trajectories: list[Trajectory] = []
    for position, index in enumerate(indices):
        pooled = pool.messages[index]
        kept = pooled.trajectory
        trajectories.append(
            Trajectory(
                round=0,
                index=position,
                content=kept.content if kept is not None else pooled.message,
                reasoning=kept.reasoning if kept is not None else None,
                message=pooled.message or None,
                finish_reason=pooled.finish_reason,
                usage=pooled.usage,
                latency_s=pool.latencies[index],
                call=position,
                model=pool.model,
            )
        )
    order = [t.index for t in trajectories if t.message is not None]
    return RoundResult(
        index=0,
        width=len(indices),
        trajectories=trajectories,
        order=order,
        messages=[trajectories[i].message or "" for i in order],
        wall_s=max((t.latency_s for t in trajectories), default=0.0),
    )


def pooled_grades(pool: Pool, indices: Sequence[int]) -> dict[tuple[str, str | None], MessageGrade]:
    """The grades the pool already holds for drawn messages, keyed as `grade_result`'s ``known``.

    Grading reuses them instead of grading the same text again (a code message runs its tests once, when
    the pool is built). A message that C compacts differently than the pool did is graded afresh.
    """
    known: dict[tuple[str, str | None], MessageGrade] = {}
    for index in indices:
        pooled = pool.messages[index]
        graded = pooled.correct is not None
        known[(pooled.message, pooled.finish_reason)] = MessageGrade(
            score=pooled.score or 0.0,
            correct=pooled.correct,
            predicted=pooled.predicted,
            status="graded" if graded else "error",
            error=None if graded else "not graded when the pool was built",
            truncated=pooled.finish_reason == "length",
        )
    return known
