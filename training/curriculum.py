"""The two-stage curriculum: which problems are worth training on.

- Stage 1 (`stage1_filter`, pure): keep a problem when its pool's mean message accuracy is strictly
  between 0 and a threshold: 9/24 for math, 15/24 for code (`Stage1Config`). Too easy a pool lets the
  policy copy the majority; a pool with no right message leaves nothing to learn from yet.
- Stage 2 (`stage2_filter`): evaluate the synthesis accuracy of a policy (in the paper, a stage-1
  checkpoint; here any backend) on the stage-1 problems: several synthesis samples per problem, each on
  its own message set drawn exactly as the environment draws it (|M| ~ U(lo, hi), `training.env`), each
  run as one `Coordinator.run_round(references=M)` and scored with the environment's reward. Keep the
  problems whose accuracy is strictly between 0 and 1.

Both produce a `FilterResult`: the kept entries plus one `Decision` per problem, which `write_filtered`
writes as the filtered set (JSONL of pool entries, the same self-contained format the environment and
the verl dataset read) and a JSON summary (kept/dropped counts per reason and per domain).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import anyio

from pacore_agent.coordinator import Coordinator
from pacore_agent.evaluation.datasets import Domain
from pacore_agent.evaluation.store import PoolEntry
from pacore_agent.exceptions import PacoreRuntimeError, UsageError
from training.env import EnvConfig, Episode, SynthesisEnv
from training.pool import load_pool_entries, pool_accuracy, write_pool_entries

__all__ = [
    "CODE_THRESHOLD",
    "MATH_THRESHOLD",
    "Decision",
    "FilterResult",
    "Stage1Config",
    "Stage2Config",
    "stage1_filter",
    "stage1_set",
    "stage2_episodes",
    "stage2_filter",
    "stage2_result",
    "stage2_set",
    "write_filtered",
]

MATH_THRESHOLD = 9 / 24
"""Stage 1 keeps math problems whose mean message accuracy is below this (and above 0)."""

CODE_THRESHOLD = 15 / 24
"""Stage 1 keeps code problems whose mean message accuracy is below this (and above 0)."""

Reason = Literal[
    "kept",
    "no_messages",
    "all_messages_wrong",
    "too_easy",
    "never_solved",
    "always_solved",
    "failed",
]
"""Why a problem was kept or dropped."""


@dataclass(frozen=True)
class Stage1Config:
    """Stage-1 thresholds on the mean message accuracy of a pool (strict upper bounds).

    Attributes:
        math_threshold: Upper bound for math problems (default 9/24).
        code_threshold: Upper bound for code problems (default 15/24).
    """

    math_threshold: float = MATH_THRESHOLD
    code_threshold: float = CODE_THRESHOLD

    def __post_init__(self) -> None:
        for name in ("math_threshold", "code_threshold"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise UsageError(f"{name} must be within (0, 1], got {value!r}")

    def threshold(self, domain: Domain) -> float:
        """The threshold of a domain."""
        return self.code_threshold if domain == "code" else self.math_threshold


@dataclass(frozen=True)
class Stage2Config:
    """Stage-2 evaluation settings.

    Attributes:
        samples: Synthesis samples per problem (each on its own message set).
        env: How message sets are drawn and scored (same as training: |M| ~ U(lo, hi)).
        step: The draw step of the evaluation (any fixed number; different from training's is fine).
        max_concurrent_problems: Problems evaluated at once.
    """

    samples: int = 8
    env: EnvConfig = field(default_factory=EnvConfig)
    step: int = 0
    max_concurrent_problems: int = 8

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise UsageError(f"samples must be at least 1, got {self.samples}")
        if self.max_concurrent_problems < 1:
            raise UsageError(
                f"max_concurrent_problems must be at least 1, got {self.max_concurrent_problems}"
            )


@dataclass(frozen=True)
class Decision:
    """The verdict on one problem.

    Attributes:
        problem_id: The problem.
        domain: Its domain.
        kept: Whether it stays.
        reason: Why (``"kept"`` when kept).
        accuracy: The accuracy the decision was made on (message accuracy in stage 1, synthesis accuracy
            in stage 2); None when there was none.
        detail: Extra data (stage 2: per-sample scores, failures).
    """

    problem_id: str
    domain: Domain
    kept: bool
    reason: Reason
    accuracy: float | None
    detail: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, entry: PoolEntry, reason: Reason, accuracy: float | None, detail: dict[str, Any]) -> Decision:
        """The decision on ``entry``: kept exactly when ``reason`` is ``"kept"``."""
        return cls(entry.problem_id, entry.domain, reason == "kept", reason, accuracy, detail)


@dataclass
class FilterResult:
    """What a curriculum stage kept and why.

    Attributes:
        stage: ``"stage1"`` or ``"stage2"``.
        kept: The kept entries, in input order (stage 2 adds ``metadata["stage2"]``).
        decisions: One per input problem, in input order.
        settings: The stage's settings, for the summary.
    """

    stage: str
    kept: list[PoolEntry]
    decisions: list[Decision]
    settings: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Counts kept/dropped overall, per reason and per domain (JSON-ready)."""
        per_domain: dict[str, dict[str, Any]] = {}
        reasons: dict[str, int] = {}
        for decision in self.decisions:
            reasons[decision.reason] = reasons.get(decision.reason, 0) + 1
            domain = per_domain.setdefault(
                decision.domain, {"total": 0, "kept": 0, "dropped": 0, "reasons": {}}
            )
            domain["total"] += 1
            domain["kept" if decision.kept else "dropped"] += 1
            domain["reasons"][decision.reason] = domain["reasons"].get(decision.reason, 0) + 1
        kept = sum(1 for d in self.decisions if d.kept)
        return {
            "stage": self.stage,
            "total": len(self.decisions),
            "kept": kept,
            "dropped": len(self.decisions) - kept,
            "reasons": dict(sorted(reasons.items())),
            "domains": dict(sorted(per_domain.items())),
            "settings": self.settings,
        }


def write_filtered(
    result: FilterResult,
    output: str | os.PathLike[str],
    summary: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Write the kept entries (JSONL) and the summary (JSON, with every decision).

    Args:
        result: A stage's result.
        output: The filtered set (one `PoolEntry` per line; `training.pool.load_pool_entries` reads it).
        summary: Where the summary goes; default: ``output`` with ``.summary.json`` as suffix.

    Returns:
        The summary written.
    """
    output = Path(output)
    write_pool_entries(output, result.kept)
    target = Path(summary) if summary is not None else output.with_suffix(".summary.json")
    data = result.summary()
    data["decisions"] = [
        {
            "problem_id": d.problem_id,
            "domain": d.domain,
            "kept": d.kept,
            "reason": d.reason,
            "accuracy": d.accuracy,
            **d.detail,
        }
        for d in result.decisions
    ]
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return data


# --------------------------------------------------------------------------------------------------
# Stage 1


def stage1_filter(entries: Iterable[PoolEntry], config: Stage1Config | None = None) -> FilterResult:
    """Keep the problems whose mean message accuracy is in (0, threshold of their domain).

    Args:
        entries: The message pools (`training.pool`).
        config: Thresholds.

    Returns:
        Kept entries and one decision per problem (reasons ``no_messages``, ``all_messages_wrong``,
        ``too_easy``).
    """
    config = config or Stage1Config()
    kept: list[PoolEntry] = []
    decisions: list[Decision] = []
    for entry in entries:
        accuracy = pool_accuracy(entry)
        reason: Reason
        if accuracy is None:
            reason = "no_messages"
        elif accuracy <= 0.0:
            reason = "all_messages_wrong"
        elif accuracy >= config.threshold(entry.domain):
            reason = "too_easy"
        else:
            reason = "kept"
        decisions.append(Decision.of(entry, reason, accuracy, {"messages": len(entry.messages)}))
        if reason == "kept":
            kept.append(entry)
    settings = {"math_threshold": config.math_threshold, "code_threshold": config.code_threshold}
    return FilterResult(stage="stage1", kept=kept, decisions=decisions, settings=settings)


# --------------------------------------------------------------------------------------------------
# Stage 2


def stage2_episodes(env: SynthesisEnv, position: int, config: Stage2Config) -> list[Episode]:
    """The ``config.samples`` episodes stage 2 draws for the problem at ``position`` of ``env``.

    Each has its own message set, drawn as in training and seeded by the env seed, ``config.step`` and
    index ``position * samples + sample``, whoever evaluates them (a served policy through
    `stage2_filter`, or the trainer's own rollout engine in ``python -m training.train``).
    """
    return [
        env.episode(position, step=config.step, index=position * config.samples + sample)
        for sample in range(config.samples)
    ]


async def _evaluate(
    env: SynthesisEnv, position: int, coordinator: Coordinator, config: Stage2Config
) -> tuple[list[float], list[str]]:
    """Synthesis scores of one problem (one per sample that finished) and the failures."""
    scores: list[float] = []
    failures: list[str] = []
    for episode in stage2_episodes(env, position, config):
        try:
            outcome = await coordinator.run_round(episode.problem.messages, 1, references=episode.references)
        except PacoreRuntimeError as error:
            failures.append(f"{type(error).__name__}: {error}")
            continue
        finished = [t for t in outcome.trajectories if t.ok]
        if not finished:
            errors = [t.error.message for t in outcome.trajectories if t.error is not None]
            failures.append(errors[0] if errors else "no trajectory finished")
            continue
        result = await env.areward(episode, finished[0].text)
        scores.append(result.score)
    return scores, failures


async def stage2_filter(
    entries: Iterable[PoolEntry],
    coordinator: Coordinator,
    config: Stage2Config | None = None,
) -> FilterResult:
    """Keep the problems whose synthesis accuracy under a policy is strictly between 0 and 1.

    Each problem gets ``config.samples`` synthesis trajectories, each on its own message set drawn as in
    training (seeded by the env seed, ``config.step`` and index ``position * samples + sample``), generated with
    ``coordinator.run_round(problem, 1, references=M)`` (its backend is the policy) and scored with the
    environment's reward (binary for math, pass rate for code). The accuracy is the mean score; a sample
    whose trajectory failed is left out (and counted); a problem with no finished sample is dropped as
    ``failed``.

    Args:
        entries: Stage-1 entries.
        coordinator: Runs the synthesis rounds (backend = the policy being evaluated).
        config: Samples per problem, the environment's draw settings, concurrency.

    Returns:
        Kept entries (with ``metadata["stage2"]`` = accuracy and scores) and one decision per problem
        (reasons ``never_solved``, ``always_solved``, ``failed``).

    Raises:
        EnvDataError: An entry cannot make episodes (too few messages, no answer or tests).
        RewardError: Scoring raised.
    """
    config = config or Stage2Config()
    entries = list(entries)
    env = SynthesisEnv(entries, config.env)
    outcomes: dict[int, tuple[list[float], list[str]]] = {}
    limiter = anyio.CapacityLimiter(config.max_concurrent_problems)

    async def one(position: int) -> None:
        async with limiter:
            outcomes[position] = await _evaluate(env, position, coordinator, config)

    async with anyio.create_task_group() as group:
        for position in range(len(entries)):
            group.start_soon(one, position)

    return stage2_result(entries, outcomes, config, model=coordinator.backend.name)


def stage2_result(
    entries: Sequence[PoolEntry],
    outcomes: Mapping[int, tuple[list[float], list[str]]],
    config: Stage2Config,
    *,
    model: str,
) -> FilterResult:
    """Stage 2's decisions from the synthesis scores of each problem (the rule, whoever sampled).

    Args:
        entries: The stage-1 entries, in order.
        outcomes: Per position of ``entries``: the scores of the samples that finished and the failures.
        config: The evaluation's settings (recorded in the summary).
        model: The policy evaluated (recorded in the kept entries and the summary).

    Returns:
        Kept entries (with ``metadata["stage2"]``) and one decision per problem.
    """
    kept: list[PoolEntry] = []
    decisions: list[Decision] = []
    for position, entry in enumerate(entries):
        scores, failures = outcomes[position]
        accuracy = sum(scores) / len(scores) if scores else None
        reason: Reason
        if accuracy is None:
            reason = "failed"
        elif accuracy <= 0.0:
            reason = "never_solved"
        elif accuracy >= 1.0:
            reason = "always_solved"
        else:
            reason = "kept"
        detail: dict[str, Any] = {"scores": scores, "samples": config.samples}
        if failures:
            detail["failures"] = failures
        decisions.append(Decision.of(entry, reason, accuracy, detail))
        if reason == "kept":
            stage2 = {"accuracy": accuracy, "scores": scores, "model": model}
            kept.append(entry.model_copy(update={"metadata": {**entry.metadata, "stage2": stage2}}))
    settings: Mapping[str, Any] = {
        "samples": config.samples,
        "lo": config.env.lo,
        "hi": config.env.hi,
        "seed": config.env.seed,
        "step": config.step,
        "model": model,
    }
    return FilterResult(stage="stage2", kept=kept, decisions=decisions, settings=dict(settings))


# --------------------------------------------------------------------------------------------------
# The stages as the training driver runs them: filtered, written, logged


def _counts(summary: Mapping[str, Any]) -> str:
    """``3 of 6 problems kept (dropped: too_easy 2, all_messages_wrong 1)``."""
    dropped = ", ".join(
        f"{reason} {count}" for reason, count in summary["reasons"].items() if reason != "kept"
    )
    return f"{summary['kept']} of {summary['total']} problems kept" + (
        f" (dropped: {dropped})" if dropped else ""
    )


def stage1_set(entries: Sequence[PoolEntry], config: Stage1Config, output: Path) -> list[PoolEntry]:
    """Stage 1 on a pool, written to ``output`` (with its summary) and logged; kept entries by id.

    Raises:
        UsageError: Stage 1 keeps no problem.
    """
    result = stage1_filter(entries, config)
    summary = write_filtered(result, output)
    print(
        f"stage 1: {_counts(summary)}; thresholds: 0 < mean message accuracy < {config.math_threshold:.4g} "
        f"(math), < {config.code_threshold:.4g} (code) -> {output}",
        flush=True,
    )
    if not result.kept:
        raise UsageError(
            f"stage 1 kept none of the {len(result.decisions)} problems ({summary['reasons']}): change "
            "--math-threshold/--code-threshold, build a larger or harder pool, or train on the pool as given "
            "with --stage none"
        )
    return sorted(result.kept, key=lambda e: e.problem_id)


def stage2_set(
    stage1: Sequence[PoolEntry], output: Path, samples: int, evaluate: Callable[[], FilterResult]
) -> list[PoolEntry]:
    """Stage 2's set, written to ``output`` (with its summary) and logged; kept entries by id.

    It is read back when an earlier start of the run wrote it (the policy that made it was the one at the
    stage boundary, which a later start no longer holds); else ``evaluate()`` makes it.
    """
    summary_path = output.with_suffix(".summary.json")
    if summary_path.is_file():  # written last: the set beside it is complete
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        kept = load_pool_entries(output)
        source = f"read from {output}"
    else:
        print(
            f"stage 2: synthesis accuracy of the stage-1 policy on {len(stage1)} problems x {samples} samples",
            flush=True,
        )
        result = evaluate()
        summary = write_filtered(result, output)
        kept = result.kept
        source = f"-> {output}"
    print(f"stage 2: {_counts(summary)}; threshold: 0 < synthesis accuracy < 1 {source}", flush=True)
    return sorted(kept, key=lambda e: e.problem_id)


# --------------------------------------------------------------------------------------------------
# Stage 1 as a command (stage 2 as a command, on a served policy: ``python -m training.verl.stage2_filter``)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.curriculum stage1 --pool POOL --output SET``: the stage-1 filter alone.

    Prints the summary's counts; the set (pool entries JSONL) and its ``.summary.json`` are written.
    """
    import argparse

    parser = argparse.ArgumentParser(prog="python -m training.curriculum", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    stage1 = commands.add_parser(
        "stage1", help="keep the problems whose mean message accuracy is in (0, threshold)"
    )
    stage1.add_argument("--pool", required=True, help="a pool directory or a JSONL of pool entries")
    stage1.add_argument("--output", required=True, help="the stage-1 set to write (pool entries JSONL)")
    stage1.add_argument("--math-threshold", type=float, default=MATH_THRESHOLD, help="(default: 9/24)")
    stage1.add_argument("--code-threshold", type=float, default=CODE_THRESHOLD, help="(default: 15/24)")
    args = parser.parse_args(argv)
    try:
        config = Stage1Config(math_threshold=args.math_threshold, code_threshold=args.code_threshold)
        summary = write_filtered(stage1_filter(load_pool_entries(args.pool), config), args.output)
    except (UsageError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        json.dumps(
            {k: summary[k] for k in ("stage", "total", "kept", "dropped", "reasons", "settings")}, indent=2
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
