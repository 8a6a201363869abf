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

from training.toy import ToySettings, train


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=120, help="PPO updates")
    parser.add_argument("--seed", type=int, default=0, help="seeds the model, the problems and the sampling")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (1 is fastest for the tiny model on shared cores)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    settings = dataclasses.replace(ToySettings(), steps=args.steps, seed=args.seed)

    def on_step(step: int, metrics: dict[str, float]) -> None:
        print(
            f"step={step:4d} reward={metrics['charts/reward_mean']:.3f} "
            f"policy_loss={metrics['losses/policy_loss']:+.4f} value_loss={metrics['losses/value_loss']:.4f} "
            f"entropy={metrics['losses/entropy']:.3f} approx_kl={metrics['charts/approx_kl']:.4f} "
            f"clipfrac={metrics['charts/clipfrac']:.3f} "
            f"explained_variance={metrics['charts/explained_variance']:+.3f}",
            flush=True,
        )

    run = train(settings, on_step)
    print(
        f"start_reward={run.start_reward:.3f} final_reward={run.final_reward:.3f} seconds={run.seconds:.1f}"
    )


if __name__ == "__main__":
    main()
