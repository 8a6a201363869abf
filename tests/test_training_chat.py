"""The real training path end to end on a tiny chat model (benchmarks/ppo_chat.py): the reward rises."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.ppo_chat import run

STEPS = 20
WINDOW = 5
RISE = 0.15
"""The mean rollout reward of the last WINDOW steps beats the first WINDOW's by this much (seed 0: about
0.35 -> 0.6 in 20 steps, 0.78 in 30; ``python -m benchmarks.ppo_chat`` runs 40)."""


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_ppo_on_the_chat_model_raises_the_reward(tmp_path: Path) -> None:
    result = run(steps=STEPS, seed=0, window=WINDOW, out=tmp_path)
    rewards = [m["charts/reward_mean"] for m in result.metrics]
    assert result.steps == STEPS
    # multi-token responses in the synthesizer's shape, scored through C and the grader
    assert result.response_tokens > 8
    assert all(m["charts/truncated_frac"] < 0.5 for m in result.metrics), rewards
    assert result.final_reward >= result.start_reward + RISE, rewards
