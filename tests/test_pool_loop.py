"""Pool evaluation through the one solve loop (issue 12, item 3): budget, compactor, order and events apply."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from pacore_agent import Coordinator, OpenAIBackend, SimConfig, SimServer
from pacore_agent.budget import Budget
from pacore_agent.compactors import boxed_only
from pacore_agent.evaluation.bench import BenchSettings, parse_methods, run_bench
from pacore_agent.evaluation.bench.pool import draw, drawn_round, load_pools
from pacore_agent.evaluation.datasets import Problem
from pacore_agent.evaluation.store import PoolStore, RunStore
from pacore_agent.prompts import build_prompt, normalize_problem
from pacore_agent.results import RoundFinished, RoundStarted, TrajectoryFinished
from pacore_agent.strategies import SelfConsistency

PROBLEMS = [
    Problem(id="q1", problem="What is 6*7?", answer="42"),
    Problem(id="q2", problem="What is 9*9?", answer="81"),
]


def sim() -> SimConfig:
    return SimConfig(seed=5, answers={p.problem: p.answer for p in PROBLEMS}, think_words=6)


@pytest.mark.anyio
async def test_a_pool_run_applies_budget_compactor_and_order(tmp_path: Path) -> None:
    # pacore:[4,2] draws 4 pooled trajectories as round 0 (4 calls charged), so a 5-call budget lets one
    # call of round 1 start; "synthesize" then runs the final round on what there is.
    settings = BenchSettings(
        "mine",
        parse_methods(["pacore:[4,2]", "sc@4"]),
        samples=2,
        pool_size=8,
        budget=Budget(max_calls=5, on_exceeded="synthesize"),
        compactor=boxed_only,
        order="official",
    )
    async with SimServer(sim()) as server, OpenAIBackend(server.base_url) as backend:
        summary = await run_bench(settings, PROBLEMS, backend, tmp_path)
        requests = list(server.engine.requests)
    assert summary.complete and not summary.failed
    pools = load_pools(PoolStore.open(tmp_path / "pool", readonly=True))
    records = list(RunStore.open(tmp_path, readonly=True).records())
    pacore = [r for r in records if r.method == "pacore:[4,2]"]
    assert len(pacore) == 4
    orders: list[list[int]] = []
    for record in pacore:
        result, pool = record.result, pools[record.problem_id]
        first, second, final = result.rounds
        drawn = result.info["pool"]["drawn"]
        assert drawn == draw(pool, 4, seed=0, sample=record.sample)
        # Budget: the drawn calls were charged; round 1 was cut after one call and the final round ran.
        assert (first.stop_reason, second.stop_reason) == ("complete", "budget")
        assert len(second.trajectories) == 1 and result.info["budget_exceeded"] == "calls"
        assert result.info["budget_used"]["calls"] == 5 and len(final.trajectories) == 1
        assert record.error is None and record.correct is not None  # synthesized, graded
        # Compactor: round 0's messages are boxed_only of the pooled conclusions, not the pooled text.
        pooled = [pool.messages[i].message for i in drawn]
        assert all(m.startswith("\\boxed{") and m not in pooled for m in first.messages)
        assert sorted(first.messages) == sorted(boxed_only(m) for m in pooled)
        # Order: the official pipeline's (content length, then Random(42)), not the draw order.
        # (A drawn trajectory's content is its pooled message; the record keeps no text, so read the pool.)
        expected = sorted(range(4), key=lambda i: len(pooled[i]))
        random.Random(42).shuffle(expected)
        assert first.order == expected
        orders.append(first.order)
        # ...and round 1 was shown exactly those messages in that order: P(x, M) with this M.
        problem = next(p for p in PROBLEMS if p.id == record.problem_id)
        prompt = build_prompt(normalize_problem(problem.problem), first.messages, None)
        assert any(r["messages"] == prompt for r in requests)
    assert any(order != [0, 1, 2, 3] for order in orders)  # not the draw order, which the pool used to keep
    # The baseline chose among the same kind of draw with SelfConsistency's own vote, made no call.
    for record in (r for r in records if r.method == "sc@4"):
        assert record.result.info["protocol"] == "pool" and "votes" in record.result.info
        assert len(record.result.rounds) == 1 and record.result.calls == 4


@pytest.mark.anyio
async def test_a_drawn_round_streams_events_like_a_run_one(tmp_path: Path) -> None:
    settings = BenchSettings("mine", parse_methods(["single"]), samples=1, pool_size=4)
    async with SimServer(sim()) as server, OpenAIBackend(server.base_url) as backend:
        await run_bench(settings, PROBLEMS[:1], backend, tmp_path)
        pool = load_pools(PoolStore.open(tmp_path / "pool", readonly=True))["q1"]
        first = drawn_round(pool, draw(pool, 4, seed=0, sample=0))
        served = server.engine.served
        events = [e async for e in Coordinator([4], backend).stream(PROBLEMS[0].problem, first_round=first)]
        assert server.engine.served == served + 1  # only the final round ran
        chosen = await SelfConsistency(4, backend).solve(PROBLEMS[0].problem, first_round=first)
        assert server.engine.served == served + 1 and chosen.info["voted_answer"] is not None
    kinds = [type(e).__name__ for e in events]
    assert kinds[:6] == ["RoundStarted", *["TrajectoryFinished"] * 4, "RoundFinished"]
    assert isinstance(events[0], RoundStarted) and events[0].round == 0
    assert all(isinstance(e, TrajectoryFinished) and e.trajectory.round == 0 for e in events[1:5])
    finished = events[5]
    assert isinstance(finished, RoundFinished) and len(finished.result.messages) == 4
