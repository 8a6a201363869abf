"""Synthesis behaviour per training step: hand-made episodes with known figures, and the reward-curve panel."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from pacore_agent.exceptions import UsageError
from training.data import TrainProblem
from training.diagnostics import step_diagnostics
from training.env import Episode, default_reward, score_response
from training.metrics import BEHAVIOUR_KEYS, plot_reward_curve

PROBLEM = TrainProblem(id="p", problem="What is 2+3?", answer="5")


def boxed(answer: str) -> str:
    return f"so \\boxed{{{answer}}}"


def episode(messages: list[str], index: int) -> Episode:
    return Episode(
        problem=PROBLEM,
        step=0,
        index=index,
        message_indices=tuple(range(len(messages))),
        references=tuple(boxed(a) for a in messages),
        message_correct=tuple(a == "5" for a in messages),
        prompt=[],
    )


# The four syntheses of tests/test_analyze.py, as training episodes: copies the plurality; right against
# all-wrong messages; cites "message 2" (and cross-checks); wrong and novel.
CASES = [
    (["5", "5", "7"], "<think>Most say five.</think>The answer is \\boxed{5}."),
    (["7", "7", "8"], "<think>Recomputing from scratch.</think>The answer is \\boxed{5}."),
    (["5", "7", "7"], "<think>However, in message 2 the sign is lost; I cross-check.</think>\\boxed{5}"),
    (["5", "5", "7"], "<think>Guessing.</think>The answer is \\boxed{9}."),
]


def step_of(cases: list[tuple[list[str], str]]) -> dict[str, float | None]:
    episodes = [episode(messages, i) for i, (messages, _) in enumerate(cases)]
    texts = [text for _, text in cases]
    results = [
        score_response(PROBLEM, text, e.message_correct, reward_fn=default_reward)
        for e, text in zip(episodes, texts, strict=True)
    ]
    return step_diagnostics(episodes, texts, results)


def test_step_figures_of_hand_made_episodes() -> None:
    metrics = step_of(CASES)
    assert metrics == {
        "synthesis/syntheses": 4.0,
        "synthesis/emergent": 1.0,  # 1 of the 1 all-wrong episode
        "synthesis/shortcut": 0.25,
        "synthesis/plurality_right": 0.5,
        "synthesis/novel_right": 0.25,
        "synthesis/novel_wrong": 0.25,
        "synthesis/recovery": 1.0,  # 2 of 2
        "synthesis/damage": 0.5,  # 1 of 2
        "synthesis/markers": 0.25,
        "synthesis/marker_mean": 0.5,
        "synthesis/message_use": 3 / 12,
    }
    # No episode with all messages wrong: emergent correctness is undefined, not 0.
    assert step_of(CASES[:1])["synthesis/emergent"] is None


def test_lengths_must_match() -> None:
    with pytest.raises(UsageError, match="one response and one result per episode"):
        step_diagnostics([episode(["5"], 0)], [], [])


def _png_size(path: Path) -> tuple[int, int]:
    width, height = struct.unpack(">II", path.read_bytes()[16:24])
    return width, height


def test_reward_curve_gets_a_behaviour_panel(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    rows = [
        {"step": s, "charts/reward_mean": 0.1 * s, **dict.fromkeys(BEHAVIOUR_KEYS, 0.2 * s)} for s in range(4)
    ]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert _png_size(plot_reward_curve(metrics, tmp_path / "two.png")) == (640, 700)
    plain = tmp_path / "plain.jsonl"
    plain.write_text("".join(json.dumps({"step": s, "charts/reward_mean": 0.5}) + "\n" for s in range(3)))
    assert _png_size(plot_reward_curve(plain, tmp_path / "one.png")) == (640, 400)
