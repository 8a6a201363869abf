"""The `summarize(backend)` compactor over real HTTP: its own sampling, its reply as the message, its usage."""

from __future__ import annotations

import pytest

from pacore_agent import Coordinator, OpenAIBackend, SimConfig, SimServer, UsageError
from pacore_agent.backends.base import SamplingParams
from pacore_agent.budget import Budget
from pacore_agent.compactors import SUMMARY_PROMPT, final_conclusion, summarize

PROBLEM = "What is 6*7?"


@pytest.mark.anyio
async def test_summaries_are_the_messages_and_their_tokens_count_in_the_solve() -> None:
    solver_config = SimConfig(seed=3, answers={PROBLEM: "42"}, think_words=12)
    # A summarizer that always "answers": its reply to a prompt is predictable from the prompt's text.
    summarizer_config = SimConfig(seed=4, think_words=3, model="summarizer", accuracy=1.0)
    own = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=200)
    seeded = SamplingParams(seed=7)  # the same trajectories in both solves
    async with (
        SimServer(solver_config) as solver_server,
        SimServer(summarizer_config) as summary_server,
        OpenAIBackend(solver_server.base_url) as solver,
        OpenAIBackend(summary_server.base_url, model="summarizer") as summarizer,
    ):
        plain = await Coordinator([3], solver, seed=1, sampling=seeded).solve(PROBLEM)
        summary_server.engine.requests.clear()
        compactor = summarize(summarizer, sampling=own)
        result = await Coordinator([3], solver, seed=1, sampling=seeded, compactor=compactor).solve(PROBLEM)
        requests = list(summary_server.engine.requests)
        engine = summary_server.engine

    first = result.rounds[0]
    # One summary request per finished trajectory of every round (3, then the final one), each with the
    # compactor's own sampling settings and the trajectory's conclusion in it.
    assert len(requests) == 4
    conclusions = {final_conclusion(t.text) for r in result.rounds for t in r.trajectories}
    for request in requests:
        assert request["temperature"] == 0.0
        assert request.get("max_tokens", request.get("max_completion_tokens")) == 200
        assert any(c in request["messages"][0]["content"] for c in conclusions)
    # The messages are the summarizer's conclusions (C of its replies), not the solver's.
    by_index = {t.index: t for t in first.trajectories}
    for index, message in zip(first.order, first.messages, strict=True):
        prompt = SUMMARY_PROMPT.format(conclusion=final_conclusion(by_index[index].text))
        assert message.strip() == f"The answer is $\\boxed{{{engine.correct_answer(prompt)}}}$."
    # The same trajectories (same seed) now also carry their summary's tokens.
    for summarized, raw in zip(first.trajectories, plain.rounds[0].trajectories, strict=True):
        assert summarized.content == raw.content
        assert summarized.usage.completion_tokens > raw.usage.completion_tokens
        assert summarized.usage.prompt_tokens > raw.usage.prompt_tokens
    assert result.ttc_tokens > plain.ttc_tokens and result.usage.total_tokens > plain.usage.total_tokens
    assert result.calls == plain.calls  # summary requests are not the solve's calls
    assert compactor.__name__.startswith("summarize(")  # how a bench config records it


@pytest.mark.anyio
async def test_summary_tokens_count_against_the_budget() -> None:
    config = SimConfig(seed=3, answers={PROBLEM: "42"}, think_words=12)
    async with SimServer(config) as server, OpenAIBackend(server.base_url) as backend:
        plain = await Coordinator([2], backend, seed=1).solve(PROBLEM)
        limit = plain.usage.total_tokens + 1  # enough without summaries, not with them
        budget = Budget(max_tokens=limit)
        assert (await Coordinator([2], backend, seed=1, budget=budget).solve(PROBLEM)).answer
        with pytest.raises(Exception, match="tokens budget"):
            await Coordinator([2], backend, seed=1, budget=budget, compactor=summarize(backend)).solve(
                PROBLEM
            )


def test_a_prompt_without_the_conclusion_field_is_refused() -> None:
    from pacore_agent import SimBackend

    with pytest.raises(UsageError, match=r"\{conclusion\}"):
        summarize(SimBackend(SimConfig()), prompt="Summarize this.")
