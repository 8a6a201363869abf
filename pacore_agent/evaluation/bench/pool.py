"""Pool evaluation, the paper's protocol: first rounds drawn from a pool of pre-generated trajectories.

For each problem a pool of first-round trajectories is generated once (`build_pool`: `Coordinator.run_round`
in parts, each part appended to a `PoolStore` as it finishes, graded message by message; the training
message pool has the same format). A sample of a method then draws from the pool, seeded by the sample:

- ``pacore:[K1, ...]``: K1 pooled messages are the first round; the remaining rounds (synthesis and the
  final round) run through the `Coordinator` with those messages as references.
- ``sc@k``: k pooled messages, majority vote; ``single``: one; ``bon@n``: n, the best by the pooled grade.
  No new calls at all.

So one pool prices many configurations. Compute is recorded honestly: the drawn trajectories are the
first round of the result, with their tokens and latency, so ``ttc_tokens`` and ``calls`` count them as
if they had been run for this sample, and the wall time counts the slowest drawn trajectory as the first
round's duration (what the round would have taken with every trajectory in parallel).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pacore_agent.backends.base import Backend, SamplingParams
from pacore_agent.compactors import final_conclusion
from pacore_agent.coordinator import Coordinator
from pacore_agent.evaluation.answers import avote, emergent_correctness, extract_answer
from pacore_agent.evaluation.bench.methods import MethodSpec
from pacore_agent.evaluation.bench.seeds import derive_seed
from pacore_agent.evaluation.datasets import Problem
from pacore_agent.evaluation.grading import Grading, RoundGrading, score_text
from pacore_agent.evaluation.store import PoolEntry, PoolMessage, PoolStore
from pacore_agent.exceptions import RoundFailedError
from pacore_agent.prompts import normalize_problem
from pacore_agent.results import RoundResult, SolveResult, Trajectory

__all__ = [
    "Pool",
    "draw",
    "drawn_round",
    "grade_with_pool",
    "grading_of_choice",
    "load_pools",
    "part_widths",
    "pool_part",
    "solve_from_pool",
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
    messages: list[PoolMessage] = []
    for trajectory in round_.trajectories:
        message = trajectory.message or ""
        score = await _score(problem, final_conclusion(message))
        messages.append(
            PoolMessage(
                message=message,
                predicted=None if problem.domain == "code" else extract_answer(message),
                correct=score >= 1.0,
                score=score,
                usage=trajectory.usage,
                finish_reason=trajectory.finish_reason,
                trajectory=trajectory if keep_trajectories else None,
            )
        )
    entry = PoolEntry(
        problem_id=problem.id,
        part=part,
        problem=problem.problem,
        answer=problem.answer,
        domain=problem.domain,
        model=model,
        messages=messages,
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
    """The first round a sample gets from the pool: the drawn trajectories, in draw order.

    Trajectories carry their message as content unless the pool kept the full trajectory. Like a real
    round, trajectories without a message are left out of ``messages``.
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


async def solve_from_pool(
    spec: MethodSpec,
    problem: Problem,
    pool: Pool,
    backend: Backend,
    *,
    sample: int,
    seed: int,
    options: Mapping[str, Any],
) -> tuple[SolveResult, list[float]]:
    """One sample of a method with its first round drawn from the pool.

    Args:
        spec: The method.
        problem: The problem.
        pool: The problem's pool (at least ``spec.first_width`` messages).
        backend: Where the remaining rounds of PaCoRe run.
        sample: The sample index (seeds the draw).
        seed: The run's base seed.
        options: `Coordinator` options of this sample (``sampling``, ``seed``, ``order``).

    Returns:
        The result (its first round is the drawn one) and the pooled scores of the first round's messages,
        in reference order.

    Raises:
        RoundFailedError: Every trajectory of a round failed (``partial`` holds the rounds so far).
    """
    messages = normalize_problem(problem.problem)
    indices = draw(pool, spec.first_width, seed=seed, sample=sample)
    first = drawn_round(pool, indices)
    scores = [pool.messages[indices[i]].score or 0.0 for i in first.order]
    coordinator = Coordinator(spec.schedule or [spec.k], backend, template=spec.template, **options)
    method = coordinator.method if spec.kind == "pacore" else spec.label
    result = SolveResult(
        method=method,
        problem=messages,
        rounds=[first],
        schedule=list(spec.schedule.rounds) if spec.schedule is not None else [spec.k],
        order_policy=coordinator.order if isinstance(coordinator.order, str) else "custom",
        seed=coordinator.seed,
        started_at=time.time(),
        info={"protocol": "pool", "pool": {"size": len(pool), "drawn": indices}},
    )
    start = time.perf_counter()
    if spec.kind != "pacore":
        chosen = await _choose(spec, pool, indices, first, result)
        result.final = chosen
        result.answer = final_conclusion(chosen.text)
        result.wall_s = first.wall_s
        return result, scores
    assert spec.schedule is not None
    widths = spec.schedule.rounds
    references = first.messages
    for round_index in range(1, len(widths)):
        if not references:
            result.wall_s = first.wall_s + time.perf_counter() - start
            raise RoundFailedError(
                f"no trajectory of round {round_index - 1} left a message to synthesize", partial=result
            )
        outcome = await coordinator.run_round(
            messages, widths[round_index], references=references, round_index=round_index
        )
        result.rounds.append(outcome)
        references = outcome.messages
    result.wall_s = first.wall_s + time.perf_counter() - start
    finished = [t for t in result.rounds[-1].trajectories if t.ok]
    if not finished:
        raise RoundFailedError("every trajectory of the final round failed", partial=result)
    result.final = finished[0]
    result.answer = final_conclusion(finished[0].text)
    return result, scores


async def _choose(
    spec: MethodSpec, pool: Pool, indices: list[int], first: RoundResult, result: SolveResult
) -> Trajectory:
    """The one-round methods on drawn messages, exactly as `Single`, `SelfConsistency` and `BestOfN` choose."""
    trajectories = first.trajectories
    if spec.kind == "single":
        return trajectories[0]
    if spec.kind == "sc":
        votes = await avote([extract_answer(final_conclusion(t.text)) for t in trajectories])
        assert votes.winner is not None
        result.info["votes"] = [
            {"answer": c.representative, "count": c.count, "trajectories": list(c.members)}
            for c in votes.classes
        ]
        result.info["voted_answer"] = votes.answer
        return trajectories[votes.winner.members[0]]
    scores = [pool.messages[i].score or 0.0 for i in indices]
    result.info["scores"] = {str(t.index): s for t, s in zip(trajectories, scores, strict=True)}
    best = max(range(len(trajectories)), key=lambda i: (scores[i], -i))
    return trajectories[best]


def grading_of_choice(problem: Problem, pool: Pool, result: SolveResult) -> Grading:
    """The grading of a one-round method's pooled answer: the chosen message's pooled grade."""
    assert result.final is not None
    drawn: list[int] = result.info["pool"]["drawn"]
    pooled = pool.messages[drawn[result.final.index]]
    score = pooled.score or 0.0
    return Grading(
        predicted=None if problem.domain == "code" else extract_answer(result.answer),
        score=score,
        correct=score >= 1.0,
    )


async def grade_with_pool(
    problem: Problem, result: SolveResult, first_scores: list[float], *, messages: bool
) -> Grading:
    """`pacore_agent.evaluation.grading.grade_result` for a pool-evaluated PaCoRe result, reusing the pooled grades."""
    score = await _score(problem, result.answer)
    grading = Grading(
        predicted=None if problem.domain == "code" else extract_answer(result.answer),
        score=score,
        correct=score >= 1.0,
    )
    if messages:
        for round_ in result.rounds[:-1]:
            scores = (
                first_scores
                if round_.index == 0
                else [await _score(problem, final_conclusion(m)) for m in round_.messages]
            )
            grading.rounds.append(RoundGrading(index=round_.index, correct=[s >= 1.0 for s in scores]))
        if grading.rounds:
            grading.emergent = emergent_correctness(grading.rounds[-1].correct, grading.correct)
    return grading


async def _score(problem: Problem, text: str | None) -> float:
    if problem.domain == "code":
        return await score_text(text, answer=None, tests=[t.model_dump() for t in problem.tests])
    return await score_text(text, answer=problem.answer, tests=None)
