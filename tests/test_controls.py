"""Coordinator controls over real HTTP: quorum, deadlines, hedging, budgets, events, mixed models, adaptive stop."""

from __future__ import annotations

import pytest

from pacore_agent import Coordinator, Faults, Latency, OpenAIBackend, RetryPolicy, SimConfig, SimServer
from pacore_agent.backends.base import SamplingParams
from pacore_agent.budget import ANY_MODEL, Budget, BudgetTracker, Price
from pacore_agent.exceptions import BudgetExceeded, UsageError
from pacore_agent.results import SolveResult, Usage
from tests.helpers import FakeSleep, served_sim, wait_until

pytestmark = pytest.mark.anyio

PROBLEM = "Compute the number of ordered pairs (a, b) of positive integers with a + b = 30."
# Heavy tail: most requests answer within milliseconds, a quarter never answer (stragglers).
STRAGGLERS = Latency(median=0.001, sigma=1.0, stall_probability=0.25)


def heavy_tailed(seed: int, **options: object) -> SimConfig:
    """First-round requests with stragglers; synthesis requests answer at once (seeds chosen so that
    the quorum of 6 of 8 is reachable: seed 6 stalls 2 of the first 8 requests, seed 2 stalls 3)."""
    return SimConfig(seed=seed, latency=STRAGGLERS, synthesis_latency=Latency(), **options)  # type: ignore[arg-type]


def all_answered_or_cut(server: SimServer) -> bool:
    """Every request that reached the server was answered or cancelled there: none is left running."""
    engine = server.engine
    return engine.in_flight == 0 and engine.served + engine.disconnects == len(engine.requests)


def _statuses(result: SolveResult, round_index: int) -> list[str]:
    return [t.status for t in result.rounds[round_index].trajectories]


async def test_quorum_starts_the_next_round_and_cancels_stragglers() -> None:
    async with served_sim(heavy_tailed(seed=6)) as (server, backend):
        result = await Coordinator([8], backend, min_success=0.75).solve(PROBLEM)
        first = result.rounds[0]
        stragglers = _statuses(result, 0).count("cancelled")
        assert first.stop_reason == "quorum"
        assert stragglers >= 1  # the scenario really has stragglers
        assert _statuses(result, 0).count("ok") == 6
        assert len(first.messages) == 6
        # Every straggler's request was cancelled at the server, not left running.
        await wait_until(lambda: server.engine.disconnects >= stragglers)
    assert result.answer is not None


async def test_round_deadline_cuts_a_stalled_round() -> None:
    async with served_sim(heavy_tailed(seed=2)) as (server, backend):
        result = await Coordinator([8], backend, round_timeout=1.0).solve(PROBLEM)
        first = result.rounds[0]
        assert first.stop_reason == "deadline"
        cancelled = _statuses(result, 0).count("cancelled")
        assert cancelled >= 1 and _statuses(result, 0).count("ok") == 8 - cancelled
        await wait_until(lambda: all_answered_or_cut(server))
    assert result.answer is not None


async def test_hedging_keeps_the_first_k_and_cancels_the_rest() -> None:
    async with served_sim(heavy_tailed(seed=2)) as (server, backend):
        result = await Coordinator([4], backend, hedge=3).solve(PROBLEM)
        first = result.rounds[0]
        assert len(first.trajectories) == 7
        assert len(first.messages) == 4 and len(first.order) == 4
        assert all(first.trajectories[i].ok for i in first.order)
        cancelled = _statuses(result, 0).count("cancelled")
        assert cancelled >= 1
        await wait_until(lambda: all_answered_or_cut(server))


async def test_cancelled_trajectories_keep_partial_output() -> None:
    # Stragglers stream their first chunks, then stall.
    async with served_sim(heavy_tailed(seed=6, think_words=64), stream=True) as (_, backend):
        result = await Coordinator([8], backend, min_success=0.75).solve(PROBLEM)
    cancelled = [t for t in result.rounds[0].trajectories if t.status == "cancelled"]
    assert cancelled and all(t.message is None for t in cancelled)
    assert all(t.content and t.content.startswith("<think>") for t in cancelled)
    assert all(t.usage.completion_tokens > 0 for t in cancelled)
    assert all(t.index not in result.rounds[0].order for t in cancelled)


async def test_call_budget_stops_within_one_call_and_keeps_finished_work() -> None:
    async with served_sim(SimConfig(seed=3)) as (server, backend):
        with pytest.raises(BudgetExceeded) as caught:
            await Coordinator([8, 4], backend, budget=Budget(max_calls=10)).solve(PROBLEM)
    partial = caught.value.partial
    assert caught.value.budget == "calls"
    assert partial.calls == 10 == len(server.engine.requests)
    assert _statuses(partial, 0) == ["ok"] * 8
    assert _statuses(partial, 1) == ["ok"] * 2
    assert partial.usage == server.engine.usage_served  # nothing finished is lost


async def test_token_budget_stops_within_one_call() -> None:
    async with served_sim(SimConfig(seed=3)) as (_, backend):
        limit = 1500
        with pytest.raises(BudgetExceeded) as caught:
            await Coordinator([32, 4], backend, budget=Budget(max_tokens=limit), n_per_request=1).solve(
                PROBLEM
            )
    partial = caught.value.partial
    finished = [t for t in partial.trajectories if t.ok]
    largest = max(t.usage.total_tokens for t in finished)
    assert caught.value.budget == "tokens"
    assert limit <= Usage.sum([t.usage for t in finished]).total_tokens <= limit + largest
    assert partial.rounds[0].stop_reason == "budget"


async def test_cost_budget_uses_the_price_table() -> None:
    prices = {"pacore-sim": Price(input=1.0, output=4.0)}
    async with served_sim(SimConfig(seed=3), model="pacore-sim") as (_, backend):
        with pytest.raises(BudgetExceeded) as caught:
            await Coordinator([16, 4], backend, budget=Budget(max_cost=0.002, prices=prices)).solve(PROBLEM)
    partial = caught.value.partial
    cost = sum(prices["pacore-sim"].cost(t.usage) for t in partial.trajectories if t.ok)
    assert caught.value.budget == "cost"
    assert cost >= 0.002
    assert partial.info["budget_used"]["cost"] == pytest.approx(
        sum(prices["pacore-sim"].cost(t.usage) for t in partial.trajectories if t.ok), rel=1e-6
    )


async def test_one_price_for_any_model_needs_no_model_name() -> None:
    named = {"pacore-sim": Price(input=1.0, output=4.0)}
    async with served_sim(SimConfig(seed=3)) as (_, backend):  # no model given: the endpoint's only one
        with pytest.raises(UsageError, match="model set explicitly"):
            Coordinator([16, 4], backend, budget=Budget(max_cost=0.002, prices=named))
        budget = Budget(max_cost=0.002, prices={ANY_MODEL: named["pacore-sim"]})
        with pytest.raises(BudgetExceeded) as caught:
            await Coordinator([16, 4], backend, budget=budget).solve(PROBLEM)
    partial = caught.value.partial
    assert caught.value.budget == "cost"
    assert partial.info["budget_used"]["cost"] == pytest.approx(
        sum(named["pacore-sim"].cost(t.usage) for t in partial.trajectories if t.ok), rel=1e-6
    )
    # a model the table names keeps its own price
    prices = {ANY_MODEL: Price(1.0, 1.0), "big": Price(10.0, 10.0)}
    mixed = BudgetTracker(Budget(max_cost=1.0, prices=prices), clock=lambda: 0.0)
    mixed.charge(Usage(prompt_tokens=1000, completion_tokens=0), "small")
    mixed.charge(Usage(prompt_tokens=1000, completion_tokens=0), "big")
    assert mixed.cost == pytest.approx(0.001 + 0.01)


async def test_wall_time_budget_cuts_a_stalled_run() -> None:
    async with served_sim(SimConfig(seed=1, latency=Latency(stall_probability=1.0))) as (server, backend):
        with pytest.raises(BudgetExceeded) as caught:
            await Coordinator([4], backend, budget=Budget(max_wall_s=0.5)).solve(PROBLEM)
        assert caught.value.budget == "wall_time"
        assert _statuses(caught.value.partial, 0) == ["cancelled"] * 4
        # Every request that reached the server was cancelled there (on a loaded machine some may not
        # have arrived before the budget ran out).
        assert server.engine.requests
        await wait_until(lambda: server.engine.disconnects == len(server.engine.requests))


async def test_synthesize_mode_answers_from_what_exists() -> None:
    async with served_sim(SimConfig(seed=3)) as (server, backend):
        budget = Budget(max_calls=10, on_exceeded="synthesize")
        result = await Coordinator([8, 4], backend, budget=budget).solve(PROBLEM)
    assert result.answer is not None
    assert [len(r.trajectories) for r in result.rounds] == [8, 2, 1]
    assert result.info["budget_exceeded"] == "calls"
    assert len(server.engine.requests) == 11  # the final synthesis is the one call past the limit
    final_prompt = server.engine.requests[-1]["messages"][-1]["content"]
    assert "Reference 2:" in final_prompt and "Reference 3:" not in final_prompt


async def test_batch_budget_is_shared_by_every_problem() -> None:
    async with served_sim(SimConfig(seed=3)) as (server, backend):
        coordinator = Coordinator([4], backend)
        results = await coordinator.solve_many(
            [f"{PROBLEM} ({i})" for i in range(6)], budget=Budget(max_calls=12), max_in_flight=1
        )
    solved = [r for r in results if isinstance(r, SolveResult)]
    stopped = [r for r in results if isinstance(r, BudgetExceeded)]
    assert len(solved) == 2 and len(stopped) == 4
    assert len(server.engine.requests) == 12


async def test_events_include_cancelled_trajectories_and_add_up() -> None:
    async with served_sim(heavy_tailed(seed=6)) as (_, backend):
        events = [e async for e in Coordinator([8], backend, min_success=0.75).stream(PROBLEM)]
    done = events[-1].result  # type: ignore[union-attr]
    finished = [e.trajectory for e in events if e.kind == "trajectory_finished"]
    assert sorted((t.round, t.index) for t in finished) == sorted(
        (t.round, t.index) for t in done.trajectories
    )
    assert Usage.sum([t.usage for t in finished]) == done.usage
    assert [e.kind for e in events].index("round_finished") > max(
        i for i, e in enumerate(events) if e.kind == "trajectory_finished" and e.trajectory.round == 0
    )


async def test_mixed_models_per_round_are_recorded() -> None:
    async with (
        SimServer(SimConfig(model="explorer-small", seed=1)) as small,
        SimServer(SimConfig(model="synthesizer-large", seed=2)) as large,
        OpenAIBackend(small.base_url) as explorer,
        OpenAIBackend(large.base_url) as synthesizer,
    ):
        sampling = [SamplingParams(temperature=1.0), SamplingParams(temperature=0.6)]
        result = await Coordinator([4], [explorer, synthesizer], sampling=sampling).solve(PROBLEM)
    assert {t.model for t in result.rounds[0].trajectories} == {"explorer-small"}
    assert result.final is not None and result.final.model == "synthesizer-large"
    assert [b["temperature"] for b in small.engine.requests] == [1.0] * 4
    assert [b["temperature"] for b in large.engine.requests] == [0.6]


async def test_adaptive_stop_skips_rounds_when_answers_agree() -> None:
    async with served_sim(SimConfig(seed=4, accuracy=1.0)) as (server, backend):
        result = await Coordinator([8, 4], backend, adaptive_stop=0.9).solve(PROBLEM)
    assert len(result.rounds) == 1 and len(server.engine.requests) == 8
    assert result.info["adaptive_stop"]["stopped"] is True
    assert result.answer is not None and result.final is not None


async def test_adaptive_stop_goes_on_when_answers_disagree() -> None:
    async with served_sim(SimConfig(seed=4, accuracy=0.3)) as (_, backend):
        result = await Coordinator([8], backend, adaptive_stop=0.9).solve(PROBLEM)
    assert len(result.rounds) == 2
    assert result.info["adaptive_stop"]["stopped"] is False
    assert result.info["adaptive_stop"]["agreement"] < 0.9


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"min_success": 9}, "above the widest round"),
        ({"min_success": 0}, "positive"),
        ({"min_success": -0.5}, "positive"),
        ({"round_timeout": -1.0}, "round_timeout"),
        ({"round_timeout": 0}, "round_timeout"),
        ({"round_timeout": "600"}, "round_timeout must be a positive number of seconds, got '600'"),
        ({"round_timeout": float("nan")}, "round_timeout must be a positive number"),
        ({"hedge": -1}, "hedge"),
        ({"adaptive_stop": 1.5}, "adaptive_stop"),
        ({"min_success": 1.5}, r"min_success=1.5 is neither a fraction in \(0, 1\] nor a whole count"),
        ({"hedge": 1.5}, r"hedge=1.5 is neither a fraction in \(0, 1\] nor a whole count"),
        ({"hedge": float("nan")}, "hedge must be a count or a fraction >= 0, got nan"),
        ({"min_success": "3"}, "min_success must be a positive count"),
    ],
)
async def test_bad_controls(options: dict[str, object], message: str) -> None:
    async with served_sim(SimConfig()) as (_, backend):
        with pytest.raises(UsageError, match=message):
            Coordinator([8], backend, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("budget", "message"),
    [
        ({"max_calls": -1}, "max_calls must be positive"),
        ({"max_tokens": 0}, "max_tokens must be positive"),
        ({"max_wall_s": -2.0}, "max_wall_s must be positive"),
        ({"max_cost": 1.0}, "needs prices"),
        ({"on_exceeded": "ignore"}, "on_exceeded"),
        ({"max_calls": "10"}, r"budget max_calls must be positive \(a whole number\), got '10'"),
        ({"max_tokens": float("nan")}, r"budget max_tokens must be positive \(a whole number\), got nan"),
        ({"max_cost": float("inf"), "prices": {"m": Price(1, 1)}}, "max_cost must be positive"),
    ],
)
def test_bad_budgets(budget: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        Budget(**budget)  # type: ignore[arg-type]


@pytest.mark.parametrize("prices", [(float("nan"), 1.0), (1.0, float("inf")), (-1.0, 1.0)])
def test_prices_must_be_finite_and_not_negative(prices: tuple[float, float]) -> None:
    with pytest.raises(UsageError, match="prices must be finite and not negative"):
        Price(*prices)


async def test_a_schedule_of_none_names_the_argument() -> None:
    async with served_sim(SimConfig()) as (_, backend):
        with pytest.raises(UsageError, match=r"schedule must be a list of widths like \[32, 4\].*got None"):
            Coordinator(None, backend)  # type: ignore[arg-type]


async def test_price_table_must_cover_the_model_in_use() -> None:
    async with served_sim(SimConfig(), model="pacore-sim") as (_, backend):
        budget = Budget(max_cost=1.0, prices={"other-model": Price(input=1, output=1)})
        with pytest.raises(UsageError, match="no entry for model 'pacore-sim'"):
            Coordinator([4], backend, budget=budget)
        with pytest.raises(UsageError, match="one Backend or a list of 2"):
            Coordinator([4], [backend, backend, backend])


async def test_synthesize_mode_charges_the_final_round() -> None:
    async with served_sim(SimConfig(seed=3)) as (server, backend):
        budget = Budget(max_calls=10, on_exceeded="synthesize")
        result = await Coordinator([8, 4], backend, budget=budget).solve(PROBLEM)
    used = result.info["budget_used"]
    assert used["calls"] == result.calls == len(server.engine.requests) == 11
    assert used["tokens"] == result.usage.total_tokens == server.engine.usage_served.total_tokens


async def test_a_retry_is_checked_against_the_budget_before_it_starts() -> None:
    config = SimConfig(seed=3, faults=Faults(script=["server_error"]))
    sleep = FakeSleep()
    async with served_sim(config) as (server, backend):
        coordinator = Coordinator([2], backend, budget=Budget(max_calls=2), retry=RetryPolicy(sleep=sleep))
        with pytest.raises(BudgetExceeded) as caught:
            await coordinator.solve(PROBLEM)
    partial = caught.value.partial
    assert len(server.engine.requests) == 2 == partial.calls  # no third request for the retry
    assert sleep.calls == []  # nor a back-off waited for it
    failed = [t for t in partial.trajectories if t.status == "failed"]
    assert len(failed) == 1 and failed[0].error is not None and failed[0].error.status_code == 500
