"""Strategies and grading over real HTTP on the simulated endpoint."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from pacore_agent import (
    Coordinator,
    OpenAIBackend,
    SimConfig,
    SimServer,
    SolveResult,
    UsageError,
    backend_from_env,
)
from pacore_agent.backends.base import Backend, Completion, DeltaCallback, GenerationRequest
from pacore_agent.backends.sim import Faults
from pacore_agent.compactors import final_conclusion
from pacore_agent.evaluation.answers import extract_answer, math_equal
from pacore_agent.evaluation.grading import grade_result
from pacore_agent.exceptions import RoundFailedError
from pacore_agent.retry import RetryPolicy
from pacore_agent.strategies import (
    BestOfN,
    PaCoRe,
    SelfConsistency,
    Single,
    Strategy,
    llm_judge,
    reference_scorer,
)

pytestmark = pytest.mark.anyio

PROBLEM = "Find the remainder when 7^100 is divided by 13."
ANSWER = "9"


@asynccontextmanager
async def served(**config: object) -> AsyncIterator[tuple[SimServer, OpenAIBackend]]:
    settings = SimConfig(answers={PROBLEM: ANSWER}, **config)  # type: ignore[arg-type]
    async with SimServer(settings) as server, OpenAIBackend(server.base_url) as backend:
        yield server, backend


async def test_every_strategy_is_a_strategy_with_full_usage() -> None:
    async with served(seed=1) as (server, backend):
        strategies: list[Strategy] = [
            Single(backend),
            SelfConsistency(4, backend),
            BestOfN(4, reference_scorer(ANSWER), backend),
            PaCoRe("low", backend),
        ]
        results = []
        for strategy in strategies:
            assert isinstance(strategy, Strategy)
            server.engine.reset_stats()
            result = await strategy.solve(PROBLEM)
            assert result.usage == server.engine.usage_served
            assert result.usage.completion_tokens > 0
            results.append(result)
    assert [r.method for r in results] == ["single", "sc@4", "bon@4", "pacore-low"]
    assert [len(r.trajectories) for r in results] == [1, 4, 4, 5]
    for result in results:
        assert SolveResult.model_validate_json(result.model_dump_json()) == result


async def test_self_consistency_picks_the_majority_class() -> None:
    async with served(seed=7, accuracy=0.5) as (_, backend):
        result = await SelfConsistency(15, backend).solve(PROBLEM)
    answers = [extract_answer(final_conclusion(t.text)) for t in result.trajectories]
    counts = Counter(answers)
    majority, top = counts.most_common(1)[0]
    votes = result.info["votes"]
    assert sum(v["count"] for v in votes) == 15
    assert max(v["count"] for v in votes) == top
    assert result.info["voted_answer"] == majority
    assert extract_answer(result.answer) == majority
    assert result.final is not None and result.final.index == answers.index(majority)


async def test_self_consistency_counts_equivalent_forms_together() -> None:
    # Distractors of a fraction answer are written "x + 1"; the right answer appears in two forms.
    answers = ["\\frac{1}{2}", "0.5", "\\frac{1}{2} + 1", "\\frac{1}{2} + 1", "\\frac{2}{4}"]
    from pacore_agent.evaluation.answers import vote

    result = vote(answers)
    assert result.winner is not None and result.winner.count == 3
    assert math_equal(result.answer or "", "1/2")


async def test_best_of_n_keeps_the_best_by_its_scorer() -> None:
    async with served(seed=3, accuracy=0.3) as (_, backend):
        result = await BestOfN(8, reference_scorer(ANSWER), backend).solve(PROBLEM)
        scores = result.info["scores"]
        assert set(scores.values()) <= {0.0, 1.0}
        if any(scores.values()):
            assert extract_answer(result.answer) == ANSWER
        # Any verifier works: prefer the longest reasoning.
        longest = await BestOfN(5, lambda messages, conclusion: float(len(conclusion)), backend).solve(
            PROBLEM
        )
        lengths = {t.index: len(final_conclusion(t.text)) for t in longest.trajectories}
        assert longest.final is not None and lengths[longest.final.index] == max(lengths.values())


class ScriptedJudge(Backend):
    """A judge that rates a solution by whether it contains a given answer (a unit's edge, not a model)."""

    name = "judge"

    def __init__(self, good: str) -> None:
        super().__init__()
        self.good = good
        self.prompts: list[str] = []

    async def generate(
        self, request: GenerationRequest, *, on_delta: DeltaCallback | None = None
    ) -> list[Completion]:
        prompt = str(request.messages[-1]["content"])
        self.prompts.append(prompt)
        solution = prompt.split("Solution:\n", 1)[1]
        return [Completion(content=f"<think>checking</think>Score: {10 if self.good in solution else 2}")]


async def test_llm_judge_scores_through_a_backend() -> None:
    judge = ScriptedJudge(good=f"\\boxed{{{ANSWER}}}")
    async with served(seed=3, accuracy=0.5) as (_, backend):
        result = await BestOfN(6, llm_judge(judge), backend).solve(PROBLEM)
    assert len(judge.prompts) == 6 and all(PROBLEM in p for p in judge.prompts)
    assert set(result.info["scores"].values()) <= {2.0, 10.0}
    if 10.0 in result.info["scores"].values():
        assert extract_answer(result.answer) == ANSWER


async def test_hosted_api_recipe_reads_keys_and_passes_extra_body(monkeypatch: pytest.MonkeyPatch) -> None:
    """The README recipe: any hosted OpenAI-compatible model as a baseline, its key from the environment."""
    async with SimServer(SimConfig(model="frontier-model"), api_key="sk-hosted-key") as server:
        monkeypatch.setenv("PACORE_BASE_URL", server.base_url)
        monkeypatch.setenv("PACORE_API_KEY", "sk-hosted-key")
        monkeypatch.setenv("PACORE_MODEL", "frontier-model")
        async with backend_from_env(extra_body={"reasoning_effort": "high"}) as hosted:
            single = await Single(hosted).solve(PROBLEM)
            voted = await SelfConsistency(3, hosted).solve(PROBLEM)
    assert [body["reasoning_effort"] for body in server.engine.requests] == ["high"] * 4
    assert {body["model"] for body in server.engine.requests} == {"frontier-model"}
    assert single.final is not None and single.final.model == "frontier-model"
    assert "sk-hosted-key" not in single.model_dump_json() + voted.model_dump_json()


async def test_sequential_refinement_is_a_schedule_of_ones() -> None:
    async with served(seed=2) as (server, backend):
        result = await Coordinator([1, 1, 1], backend).solve(PROBLEM)
    assert [len(r.trajectories) for r in result.rounds] == [1, 1, 1, 1]
    assert "Reference 1:" in server.engine.requests[1]["messages"][-1]["content"]


async def test_emergent_correctness_is_graded() -> None:
    # Every first-round answer is wrong; synthesis recovers the right one.
    async with served(seed=5, accuracy=0.0, synth_recover=1.0) as (_, backend):
        result = await Coordinator([4], backend).solve(PROBLEM)
    grading = await grade_result(result, answer=ANSWER)
    assert grading.correct and grading.predicted == ANSWER
    assert grading.rounds[0].correct == [False] * 4 and grading.rounds[0].accuracy == 0.0
    assert grading.emergent
    assert result.info["grading"]["emergent"] is True


async def test_no_emergence_when_a_message_was_right() -> None:
    async with served(seed=5, accuracy=1.0) as (_, backend):
        result = await Coordinator([4], backend).solve(PROBLEM)
    grading = await grade_result(result, answer=ANSWER)
    assert grading.correct and not grading.emergent


async def test_failed_samples_raise_with_the_partial_result() -> None:
    config = SimConfig(faults=Faults(rates={"bad_request": 1.0}))
    async with SimServer(config) as server, OpenAIBackend(server.base_url) as backend:
        with pytest.raises(RoundFailedError) as caught:
            await SelfConsistency(3, backend, retry=RetryPolicy(max_attempts=1)).solve(PROBLEM)
    assert [t.status for t in caught.value.partial.trajectories] == ["failed"] * 3


async def test_solve_many_for_strategies() -> None:
    async with served(seed=2) as (_, backend):
        results = await SelfConsistency(2, backend).solve_many([PROBLEM, f"{PROBLEM} Show work."])
    assert all(isinstance(r, SolveResult) and r.method == "sc@2" for r in results)


@pytest.mark.parametrize("k", [0, -1, 2.5])
async def test_bad_sample_counts(k: object) -> None:
    async with served() as (_, backend):
        with pytest.raises(UsageError):
            SelfConsistency(k, backend)  # type: ignore[arg-type]
        with pytest.raises(UsageError):
            BestOfN(k, reference_scorer(ANSWER), backend)  # type: ignore[arg-type]
