"""PPO on the toy synthesis task (training/toy.py): the reward curve per step, then the wall time.

Run from the repository root::

    python -m benchmarks.ppo_toy [--steps 120] [--seed 0] [--threads 1]

Prints one line per PPO step and ends with exactly one summary line::

    start_reward=0.047 final_reward=0.836 seconds=73.7

Rewards are the mean over a fixed evaluation set of 512 problems, one answer each sampled at
temperature 1, before and after training; the per-step ``reward`` is the rollout batch's mean.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from benchmarks import _args
from training.toy import ToySettings, train


def parse_args(argv: list[str] | None, doc: str | None, *, steps: int, seeded: str) -> argparse.Namespace:
    """The command line of a toy PPO benchmark (``--steps``, ``--seed``, ``--threads``), threads applied.

    Args:
        argv: The arguments (None: the process's).
        doc: The benchmark's module docstring, shown by ``--help``.
        steps: The default of ``--steps``.
        seeded: What the seed seeds besides the model and the sampling ("problems", "episodes").
    """
    parser = _args.parser(doc)
    parser.add_argument("--steps", type=int, default=steps, help="PPO updates")
    parser.add_argument("--seed", type=int, default=0, help=f"seeds the model, the {seeded} and the sampling")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (1 is fastest for the tiny model on shared cores)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    return args


def print_step(step: int, metrics: dict[str, float], *, explained_variance: bool = True) -> None:
    """One line of a toy benchmark's reward curve: the rollout reward, losses and PPO diagnostics."""
    line = (
        f"step={step:4d} reward={metrics['charts/reward_mean']:.3f} "
        f"policy_loss={metrics['losses/policy_loss']:+.4f} value_loss={metrics['losses/value_loss']:.4f} "
        f"entropy={metrics['losses/entropy']:.3f} approx_kl={metrics['charts/approx_kl']:.4f} "
        f"clipfrac={metrics['charts/clipfrac']:.3f}"
    )
    if explained_variance:
        line += f" explained_variance={metrics['charts/explained_variance']:+.3f}"
    print(line, flush=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv, __doc__, steps=120, seeded="problems")
    run = train(dataclasses.replace(ToySettings(), steps=args.steps, seed=args.seed), print_step)
    print(
        f"start_reward={run.start_reward:.3f} final_reward={run.final_reward:.3f} seconds={run.seconds:.1f}"
    )


if __name__ == "__main__":
    main()
