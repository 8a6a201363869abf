"""Usage never silently reads 0: a server that sends none gets its tokens counted, marked as estimated."""

from __future__ import annotations

from typing import Any

import pytest

from pacore_agent import Coordinator, OpenAIBackend, SimConfig, SimServer
from pacore_agent.backends.base import GenerationRequest
from pacore_agent.results import Usage

pytestmark = pytest.mark.anyio

PROBLEM = "What is the sum of the first ten odd numbers?"
REQUEST = GenerationRequest(messages=[{"role": "user", "content": PROBLEM}], n=3)


def words(text: str) -> int:
    # The simulated model's own token count: one word, one token.
    return len(text.split())


async def _usages(send_usage: bool, stream: bool, **backend: Any) -> list[Usage]:
    config = SimConfig(seed=5, split_reasoning=True, send_usage=send_usage)
    async with SimServer(config) as server:
        async with OpenAIBackend(server.base_url, "pacore-sim", stream=stream, **backend) as client:
            return [c.usage for c in await client.generate(REQUEST)]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_missing_usage_is_counted_with_the_tokenizer_and_marked(stream: bool) -> None:
    reported = await _usages(send_usage=True, stream=stream)
    counted = await _usages(send_usage=False, stream=stream, token_counter=words)
    assert not any(u.estimated for u in reported) and all(u.estimated for u in counted)
    # With the model's own tokenizer the counts are the ones the server would have sent (which it
    # gives per request: the per-choice parts of `reported` are shares of it).
    total_reported, total_counted = Usage.sum(reported), Usage.sum(counted)
    for name in ("prompt_tokens", "completion_tokens", "reasoning_tokens"):
        assert getattr(total_counted, name) == getattr(total_reported, name), name
    assert counted[0].prompt_tokens == words(PROBLEM) and counted[1].prompt_tokens == 0


async def test_the_default_tokenizer_counts_offline() -> None:
    counted = await _usages(send_usage=False, stream=True)
    assert all(u.estimated and u.completion_tokens > u.reasoning_tokens > 0 for u in counted)
    assert counted[0].prompt_tokens > 0


async def test_a_solve_on_such_a_server_reports_estimated_tokens() -> None:
    async with SimServer(SimConfig(seed=2, send_usage=False)) as server:
        async with OpenAIBackend(server.base_url, "pacore-sim", token_counter=words) as backend:
            result = await Coordinator([3], backend=backend).solve(PROBLEM)
    trajectories = [t for r in result.rounds for t in r.trajectories]
    assert all(t.usage.estimated and t.usage.completion_tokens > 0 for t in trajectories)
    assert result.ttc_tokens > 0


def test_the_flag_is_kept_by_sums_and_splits_and_stored_only_when_set() -> None:
    measured, counted = (
        Usage(prompt_tokens=4, completion_tokens=6),
        Usage(completion_tokens=2, estimated=True),
    )
    assert (measured + counted).estimated and not (measured + measured).estimated
    assert all(part.estimated for part in counted.split([1, 1]))
    assert "estimated" not in measured.model_dump() and counted.model_dump()["estimated"] is True
    assert Usage.model_validate(counted.model_dump()) == counted
