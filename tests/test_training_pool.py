"""Message pool, stage-1 and stage-2 filters end to end on the simulated server over real HTTP."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from pacore_agent import (
    Coordinator,
    Faults,
    Latency,
    OpenAIBackend,
    RetryPolicy,
    SamplingParams,
    SimConfig,
    SimServer,
)
from pacore_agent.compactors import final_conclusion
from pacore_agent.evaluation.store import PoolEntry, PoolMessage, PoolStore
from pacore_agent.exceptions import UsageError
from training.curriculum import (
    Stage1Config,
    Stage2Config,
    stage1_filter,
    stage2_filter,
    write_filtered,
)
from training.data import TrainProblem, arithmetic_problems
from training.env import EnvConfig
from training.pool import (
    PoolConfig,
    build_pool,
    entry_problem,
    load_pool_entries,
    pool_accuracy,
    pool_summary,
    write_pool_entries,
)

pytestmark = pytest.mark.anyio

PROBLEMS = arithmetic_problems(20, seed=11)
ANSWERS = {p.problem: p.answer for p in PROBLEMS}
SEEDED = SamplingParams(seed=7)  # per-request seeds: the sim's answers do not depend on arrival order


@asynccontextmanager
async def coordinator_for(
    config: SimConfig, **options: object
) -> AsyncIterator[tuple[SimServer, Coordinator]]:
    async with SimServer(config) as server:
        async with OpenAIBackend(server.base_url) as backend:
            yield server, Coordinator("low", backend, sampling=SEEDED, **options)  # type: ignore[arg-type]


async def _build_mixed_pool(directory: Path) -> None:
    """Pools of 24 for the 20 problems from three simulated models of different accuracy."""
    groups = {
        "low": (PROBLEMS[:10], SimConfig(seed=1, answers=ANSWERS, accuracy=0.2)),
        "high": (PROBLEMS[10:15], SimConfig(seed=2, answers=ANSWERS, accuracy=0.9)),
        # Answers unknown to this model: it answers a number of its own, never the big-integer truth.
        "blind": (PROBLEMS[15:], SimConfig(seed=3, accuracy=0.9)),
    }
    with PoolStore.open(directory, config={"size": 24}) as store:
        for problems, sim in groups.values():
            async with coordinator_for(sim) as (server, coordinator):
                report = await build_pool(
                    problems, coordinator, store, config=PoolConfig(max_concurrent_problems=4)
                )
            assert sorted(report.built) == sorted(p.id for p in problems) and not report.failed
            assert len(server.engine.requests) == 24 * len(problems)  # one first round of 24 per problem
            assert report.usage.completion_tokens > 0


async def test_pool_stage1_stage2_end_to_end(tmp_path: Path) -> None:
    await _build_mixed_pool(tmp_path / "pool")
    with PoolStore.open(tmp_path / "pool", readonly=True) as store:
        pools = store.pools()
    assert sorted(pools) == sorted(p.id for p in PROBLEMS)

    # Every entry: the problem, 24 graded messages that are C(trajectory), usage, self-contained.
    for problem in PROBLEMS:
        entry = pools[problem.id]
        assert entry.problem == problem.problem and entry.answer == problem.answer and entry.domain == "math"
        assert len(entry.messages) == 24 and entry.metadata["source"] == "generated"
        assert entry.metadata["launched"] == 24 and entry.metadata["failed"] == 0
        assert entry.model == "pacore-sim"
        for message in entry.messages:
            assert "</think>" not in message.message and "\\boxed{" in message.message
            assert message.correct == (message.predicted == problem.answer)
            assert message.score == (1.0 if message.correct else 0.0)
            assert message.usage.completion_tokens > 0 and message.finish_reason == "stop"
        assert entry_problem(entry).answer == problem.answer
    accuracy = {pid: pool_accuracy(entry) for pid, entry in pools.items()}
    assert all(accuracy[p.id] == 0.0 for p in PROBLEMS[15:])
    assert all(accuracy[p.id] >= 0.75 for p in PROBLEMS[10:15])
    assert 0.1 < sum(accuracy[p.id] or 0.0 for p in PROBLEMS[:10]) / 10 < 0.3
    assert pool_summary(pools.values())["math"]["problems"] == 20

    # Stage 1: 0 < message accuracy < 9/24.
    stage1 = stage1_filter(pools[p.id] for p in PROBLEMS)
    reasons = {d.problem_id: d.reason for d in stage1.decisions}
    assert {reasons[p.id] for p in PROBLEMS[15:]} == {"all_messages_wrong"}
    assert {reasons[p.id] for p in PROBLEMS[10:15]} == {"too_easy"}
    for decision in stage1.decisions:
        assert decision.kept == (0 < (decision.accuracy or 0) < 9 / 24)
    kept_ids = [e.problem_id for e in stage1.kept]
    assert kept_ids and set(kept_ids) <= {p.id for p in PROBLEMS[:10]}
    summary = write_filtered(stage1, tmp_path / "stage1.jsonl", tmp_path / "stage1.json")
    assert summary["kept"] == len(kept_ids) and summary["kept"] + summary["dropped"] == 20
    assert summary["reasons"]["all_messages_wrong"] == 5 and summary["reasons"]["too_easy"] >= 5
    assert summary["domains"]["math"]["kept"] == len(kept_ids)
    on_disk = json.loads((tmp_path / "stage1.json").read_text())
    assert on_disk["stage"] == "stage1" and len(on_disk["decisions"]) == 20
    stage1_entries = load_pool_entries(tmp_path / "stage1.jsonl")
    assert [e.problem_id for e in stage1_entries] == kept_ids

    # Stage 2: synthesis accuracy of a policy (another simulated model) strictly between 0 and 1.
    policy = SimConfig(seed=4, answers=ANSWERS, synth_recover=0.15)
    async with coordinator_for(policy) as (server, coordinator):
        stage2 = await stage2_filter(stage1_entries, coordinator, Stage2Config(samples=6))
    bodies = server.engine.requests
    assert len(bodies) == 6 * len(stage1_entries)  # one synthesis trajectory per sample
    for body in bodies:
        prompt = body["messages"][-1]["content"]
        assert prompt.startswith("You are given a problem and a list of reference responses.")
        assert 16 <= len(re.findall(r"\nReference \d+:\n", prompt)) <= 24
    for decision in stage2.decisions:
        scores = decision.detail["scores"]
        assert len(scores) == 6 and decision.accuracy == sum(scores) / 6
        expected = (
            "kept"
            if 0 < decision.accuracy < 1
            else ("never_solved" if decision.accuracy == 0 else "always_solved")
        )
        assert decision.reason == expected
    assert stage2.kept and len(stage2.kept) < len(stage1_entries)  # this seed keeps some and drops some
    assert all(0 < e.metadata["stage2"]["accuracy"] < 1 for e in stage2.kept)
    summary2 = write_filtered(stage2, tmp_path / "stage2.jsonl")
    assert (tmp_path / "stage2.summary.json").is_file()
    assert summary2["settings"]["samples"] == 6 and summary2["settings"]["lo"] == 16
    assert [e.problem_id for e in load_pool_entries(tmp_path / "stage2.jsonl")] == [
        e.problem_id for e in stage2.kept
    ]


async def test_stage2_is_deterministic_for_a_seeded_policy(tmp_path: Path) -> None:
    entries = [_entry(f"p{i}", correct=[j % 4 == 0 for j in range(24)]) for i in range(3)]
    runs = []
    for _ in range(2):
        policy = SimConfig(seed=9, answers={e.problem: e.answer for e in entries}, synth_recover=0.3)
        async with coordinator_for(policy) as (_, coordinator):
            result = await stage2_filter(entries, coordinator, Stage2Config(samples=4, env=EnvConfig(seed=3)))
        runs.append([(d.problem_id, d.detail["scores"]) for d in result.decisions])
    assert runs[0] == runs[1]


async def test_pool_resumes_after_a_kill_and_bounds_concurrency(tmp_path: Path) -> None:
    problems = PROBLEMS[:8]
    sim = SimConfig(seed=5, answers=ANSWERS, accuracy=0.5, latency=Latency(median=0.02))
    config = PoolConfig(size=4, max_concurrent_problems=2)
    with PoolStore.open(tmp_path / "pool") as store:
        async with coordinator_for(sim) as (server, coordinator):
            with anyio.CancelScope() as scope:  # the "kill": stop the run as soon as 3 entries are stored

                def stored(entry: PoolEntry) -> None:
                    if len(store) >= 3:
                        scope.cancel()

                await build_pool(problems, coordinator, store, config=config, on_entry=stored)
            first_run = len(server.engine.requests)
        done = set(e.problem_id for e in store.entries())
    assert 3 <= len(done) < 8
    assert server.engine.max_in_flight <= 2 * 4  # two problems of four trajectories at most
    with PoolStore.open(tmp_path / "pool") as store:
        async with coordinator_for(sim) as (server, coordinator):
            report = await build_pool(problems, coordinator, store, config=config)
        assert sorted(report.skipped) == sorted(done)
        assert sorted(report.built) == sorted({p.id for p in problems} - done)
        assert len(server.engine.requests) == 4 * len(report.built)  # nothing already stored is redone
        assert len(store) == 8
    assert first_run >= 4 * len(done)


async def test_pool_concurrency_across_problems_is_bounded(tmp_path: Path) -> None:
    sim = SimConfig(seed=6, answers=ANSWERS, latency=Latency(median=0.05))
    with PoolStore.open(tmp_path / "pool") as store:
        async with coordinator_for(sim) as (server, coordinator):
            await build_pool(
                PROBLEMS[:6], coordinator, store, config=PoolConfig(size=4, max_concurrent_problems=2)
            )
    assert 4 < server.engine.max_in_flight <= 8


async def test_failed_problems_are_reported_not_stored(tmp_path: Path) -> None:
    sim = SimConfig(seed=8, answers=ANSWERS, faults=Faults(script=["bad_request"] * 4))
    with PoolStore.open(tmp_path / "pool") as store:
        async with coordinator_for(sim, retry=RetryPolicy(max_attempts=1)) as (_, coordinator):
            report = await build_pool(
                PROBLEMS[:2], coordinator, store, config=PoolConfig(size=4, max_concurrent_problems=1)
            )
        assert (
            list(report.failed) == [PROBLEMS[0].id]
            and "no trajectory finished (4 failed)" in report.failed[PROBLEMS[0].id]
        )
        assert report.built == [PROBLEMS[1].id] and len(store) == 1


async def test_cached_responses_make_a_pool_without_generating(tmp_path: Path) -> None:
    problem = TrainProblem(
        id="cached",
        problem="Compute 6*7.",
        answer="42",
        responses=[f"<think>try {i}</think>\\boxed{{{42 if i % 3 == 0 else 100 + i}}}" for i in range(24)],
    )
    with PoolStore.open(tmp_path / "pool") as store:
        report = await build_pool([problem], None, store)
        (entry,) = store.entries()
    assert report.built == ["cached"] and entry.metadata["source"] == "cached" and entry.model is None
    assert [m.message for m in entry.messages] == [final_conclusion(r) for r in problem.responses]
    assert pool_accuracy(entry) == 8 / 24


async def test_code_pool_grades_with_the_pass_rate(tmp_path: Path) -> None:
    tests = [{"input": "1 2\n", "output": "3\n"}, {"input": "2 2\n", "output": "4\n"}]
    right = "```python\nprint(sum(map(int, input().split())))\n```"
    half = "```python\na, b = map(int, input().split())\nprint(a + b if a == 1 else 0)\n```"
    problem = TrainProblem(
        id="sum",
        problem="Read two ints, print their sum.",
        domain="code",
        tests=tests,
        responses=[right, half, "no code"],
    )
    with PoolStore.open(tmp_path / "pool") as store:
        await build_pool([problem], None, store, config=PoolConfig(size=3))
        (entry,) = store.entries()
    assert [m.score for m in entry.messages] == [1.0, 0.5, 0.0]
    assert [m.correct for m in entry.messages] == [True, False, False]
    assert entry.metadata["tests"] == [
        {"input": t["input"], "output": t["output"], "testtype": "stdin"} for t in tests
    ]
    assert pool_accuracy(entry) == 0.5
    assert entry_problem(entry).tests[0].input == "1 2\n"


async def test_pool_input_errors(tmp_path: Path) -> None:
    with PoolStore.open(tmp_path / "pool") as store:
        with pytest.raises(UsageError, match="'m' has no answer"):
            await build_pool([TrainProblem(id="m", problem="q")], None, store)
        with pytest.raises(UsageError, match="'c' has no tests"):
            await build_pool([TrainProblem(id="c", problem="q", domain="code")], None, store)
        with pytest.raises(UsageError, match="appears twice"):
            await build_pool([PROBLEMS[0], PROBLEMS[0]], None, store)
        with pytest.raises(UsageError, match="a coordinator is needed"):
            await build_pool([PROBLEMS[0]], None, store)
    with pytest.raises(UsageError, match="pool size"):
        PoolConfig(size=0)


def test_pool_entries_file_round_trip_and_errors(tmp_path: Path) -> None:
    entries = [_entry("a", correct=[True, False]), _entry("b", correct=[False])]
    path = write_pool_entries(tmp_path / "set.jsonl", entries)
    assert load_pool_entries(path) == entries
    path.write_text(path.read_text() + "{not json}\n")
    with pytest.raises(UsageError, match=r"set\.jsonl:3: not a valid pool entry"):
        load_pool_entries(path)
    write_pool_entries(path, [entries[0], entries[0]])
    with pytest.raises(UsageError, match=r"set\.jsonl:2: duplicate problem id 'a'"):
        load_pool_entries(path)


def test_stage1_thresholds_per_domain_and_reasons() -> None:
    def code(pid: str, scores: Sequence[float]) -> PoolEntry:
        messages = [PoolMessage(message="m", score=s, correct=s == 1.0) for s in scores]
        return PoolEntry(
            problem_id=pid, problem="p", domain="code", messages=messages, metadata={"tests": []}
        )

    entries = [
        _entry("math-8", correct=[i < 8 for i in range(24)]),  # 8/24 < 9/24: kept
        _entry("math-9", correct=[i < 9 for i in range(24)]),  # 9/24: too easy
        code("code-14", [1.0] * 14 + [0.0] * 10),  # 14/24 < 15/24: kept
        code("code-15", [1.0] * 15 + [0.0] * 9),  # too easy
        code("code-partial", [0.5] * 24),  # mean pass rate 0.5: kept
        code("code-zero", [0.0] * 24),
        PoolEntry(problem_id="empty", problem="p"),
    ]
    result = stage1_filter(entries)
    assert [(d.problem_id, d.reason) for d in result.decisions] == [
        ("math-8", "kept"),
        ("math-9", "too_easy"),
        ("code-14", "kept"),
        ("code-15", "too_easy"),
        ("code-partial", "kept"),
        ("code-zero", "all_messages_wrong"),
        ("empty", "no_messages"),
    ]
    summary = result.summary()
    assert summary["domains"]["code"] == {
        "total": 4,
        "kept": 2,
        "dropped": 2,
        "reasons": {"kept": 2, "too_easy": 1, "all_messages_wrong": 1},
    }
    assert summary["reasons"] == {"all_messages_wrong": 1, "kept": 3, "no_messages": 1, "too_easy": 2}
    looser = stage1_filter(entries, Stage1Config(math_threshold=0.5))
    assert [d.problem_id for d in looser.decisions if d.kept][:2] == ["math-8", "math-9"]
    with pytest.raises(UsageError, match="math_threshold"):
        Stage1Config(math_threshold=0)


def _entry(problem_id: str, *, correct: Sequence[bool]) -> PoolEntry:
    problem = f"Problem {problem_id}: compute it."
    messages = [
        PoolMessage(message=f"\\boxed{{{7 if ok else 100 + i}}}", correct=ok, score=1.0 if ok else 0.0)
        for i, ok in enumerate(correct)
    ]
    return PoolEntry(problem_id=problem_id, problem=problem, answer="7", messages=messages)


def test_stage1_filter_as_a_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from training.curriculum import main

    entries = [
        _entry("math-8", correct=[i < 8 for i in range(24)]),
        _entry("math-9", correct=[i < 9 for i in range(24)]),
    ]
    pool = write_pool_entries(tmp_path / "pool.jsonl", entries)
    assert main(["stage1", "--pool", str(pool), "--output", str(tmp_path / "stage1.jsonl")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["kept"] == 1 and printed["reasons"] == {"kept": 1, "too_easy": 1}
    assert [e.problem_id for e in load_pool_entries(tmp_path / "stage1.jsonl")] == ["math-8"]
    assert (tmp_path / "stage1.summary.json").is_file()
    assert (
        main(["stage1", "--pool", str(pool), "--output", str(tmp_path / "x.jsonl"), "--math-threshold", "0"])
        == 2
    )
    assert "math_threshold must be within (0, 1]" in capsys.readouterr().err
