"""PPO end to end on the real training path, with a tiny chat model built offline: the reward rises.

Run from the repository root::

    python -m benchmarks.ppo_chat [--steps 40] [--seed 0] [--out DIR]

What runs is ``training.train.train`` itself (``--stage none``): episodes drawn by ``training.env``
(P(x, M) from ``pacore_agent.prompts.build_prompt``), rendered with the model's chat template, sampled
by `training.rollout.HFRollout` as multi-token responses (``<think>...</think>`` then a boxed answer),
rewarded with C (``final_conclusion``) and the library's grader (``grading.grade_message``), and
trained with `training.ppo.PPOTrainer`. The model is `pacore_agent.testing.tiny_model.build_tiny_model`,
taught the synthesizer's answer shape first (`training.tiny_synth.teach_synthesis_shape`: box the answer
of one reference chosen at random). The pool's problems all have the answer 7 with one to three right
messages of four, so what PPO can learn here is to box 7 more often than a random reference would: the
point is the path (template, multi-token responses, C, grader, PPO), not synthesis, which
``benchmarks/ppo_synthesis.py`` measures.

Ends with one line::

    start_reward=... final_reward=... steps=... response_tokens=... seconds=...

``start_reward`` and ``final_reward`` are the rollout rewards of the first and the last ``--window``
steps (16 responses each).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks import _args
from pacore_agent.evaluation.store import PoolEntry, PoolMessage
from pacore_agent.testing.tiny_model import build_tiny_model
from training.metrics import read_jsonl
from training.pool import write_pool_entries
from training.tiny_synth import teach_synthesis_shape
from training.train import TrainConfig, train


@dataclass(frozen=True)
class ChatRun:
    """What a run measured."""

    start_reward: float
    final_reward: float
    steps: int
    response_tokens: float
    seconds: float
    metrics: list[dict[str, object]]


def pool(count: int = 8) -> list[PoolEntry]:
    """``count`` problems whose answer is 7, each with four messages of which one to three are right."""
    return sevens([1 + k % 3 for k in range(count)])


def sevens(rights: Sequence[int]) -> list[PoolEntry]:
    """Problem ``k`` asks for k+(7-k) and has four messages, of which the first ``rights[k]`` are right."""
    entries = []
    for k, right in enumerate(rights):
        messages = []
        for i in range(4):
            answer = 7 if i < right else 8 + i
            messages.append(
                PoolMessage(
                    message=f"{k}+{7 - k}={answer}\n\n\\boxed{{{answer}}}",
                    correct=i < right,
                    score=float(i < right),
                )
            )
        entries.append(
            PoolEntry(problem_id=f"seven-{k}", problem=f"What is {k}+{7 - k}?", answer="7", messages=messages)
        )
    return entries


def run(*, steps: int = 40, seed: int = 0, window: int = 5, out: Path | None = None) -> ChatRun:
    """Build the model and the pool under ``out`` (a temporary folder when None), train, and measure."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pacore-ppo-chat-") as scratch:
        root = Path(out) if out is not None else Path(scratch)
        entries = pool()
        model = build_tiny_model(root / "tiny", seed=seed)
        teach_synthesis_shape(model, entries, lo=2, hi=4, steps=40, seed=seed)
        config = TrainConfig(
            model=str(model),
            out=str(root / "run"),
            pool=str(write_pool_entries(root / "pool.jsonl", entries)),
            stage="none",
            steps=steps,
            save_every=steps,
            seed=seed,
            problems_per_step=4,
            responses_per_problem=4,
            min_messages=2,
            max_messages=4,
            max_response_tokens=24,
            actor_lr=5e-4,
            critic_lr=1e-3,
            reward_workers=2,
            device="cpu",
            export_model=False,
            resume="no",
        )
        train(config)
        metrics = read_jsonl(root / "run" / "metrics.jsonl")
    rewards = [float(m["charts/reward_mean"]) for m in metrics]
    lengths = [float(m["charts/response_length"]) for m in metrics]
    return ChatRun(
        start_reward=sum(rewards[:window]) / window,
        final_reward=sum(rewards[-window:]) / window,
        steps=len(metrics),
        response_tokens=sum(lengths) / len(lengths),
        seconds=time.perf_counter() - started,
        metrics=metrics,
    )


def main(argv: list[str] | None = None) -> None:
    parser = _args.parser(__doc__)
    parser.add_argument("--steps", type=int, default=40, help="PPO steps")
    parser.add_argument("--seed", type=int, default=0, help="seeds the model, the draws and the sampling")
    parser.add_argument(
        "--window", type=int, default=5, help="steps averaged for the start and final rewards"
    )
    parser.add_argument(
        "--out", type=Path, help="keep the model, pool and run here (default: a temporary folder)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = run(steps=args.steps, seed=args.seed, window=args.window, out=args.out)
    print(
        f"start_reward={result.start_reward:.3f} final_reward={result.final_reward:.3f} steps={result.steps} "
        f"response_tokens={result.response_tokens:.1f} seconds={result.seconds:.1f}"
    )


if __name__ == "__main__":
    main()
