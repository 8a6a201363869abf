"""Empty message sets (issue 12, item 5): a round that leaves no message hands the next the problem alone."""

from __future__ import annotations

import pytest

from pacore_agent import Coordinator, OpenAIBackend, RoundFailedError, SimConfig, SimServer
from pacore_agent.backends.base import SamplingParams
from pacore_agent.evaluation.report import summarize_records
from pacore_agent.evaluation.store import RunRecord

PROBLEM = "What is 6*7?"


@pytest.mark.anyio
async def test_a_round_of_empty_messages_continues_with_the_problem_alone() -> None:
    # The server splits reasoning out (a reasoning parser) and the first round's token limit cuts every
    # trajectory inside its reasoning: each finishes with empty content, so no message.
    config = SimConfig(seed=2, answers={PROBLEM: "42"}, accuracy=1.0, think_words=30, split_reasoning=True)
    sampling = [SamplingParams(max_tokens=5), SamplingParams()]
    async with SimServer(config) as server, OpenAIBackend(server.base_url) as backend:
        result = await Coordinator([4], backend, sampling=sampling).solve(PROBLEM)
        final_request = server.engine.requests[-1]
    first = result.rounds[0]
    assert all(t.ok and not t.content and t.finish_reason == "length" for t in first.trajectories)
    assert first.messages == []
    assert result.info["bypassed_rounds"] == [0]
    # Appendix B: the final round got the original conversation unchanged, and answered it.
    assert final_request["messages"] == [{"role": "user", "content": PROBLEM}]
    assert result.answer is not None and "42" in result.answer

    record = RunRecord(
        benchmark="b", problem_id="q", method="pacore:low", result=result, correct=True, score=1.0
    )
    (report,) = summarize_records([record])
    assert report.bypassed == 1


@pytest.mark.anyio
async def test_a_round_whose_every_call_failed_still_raises() -> None:
    from pacore_agent import Faults

    faults = Faults(script=("bad_request", "bad_request"))  # a 400 is not retried
    config = SimConfig(seed=2, answers={PROBLEM: "42"}, think_words=4, faults=faults)
    async with SimServer(config) as server, OpenAIBackend(server.base_url) as backend:
        with pytest.raises(RoundFailedError, match="every trajectory of round 0 failed") as caught:
            await Coordinator([2], backend).solve(PROBLEM)
    assert "bypassed_rounds" not in caught.value.partial.info
