"""PPO on the synthesis toy (training/toy_synthesis.py), where the majority of the messages is wrong.

Run from the repository root::

    python -m benchmarks.ppo_synthesis [--steps N] [--seed 0] [--threads 1]

Prints the baselines on the evaluation set (majority vote, copying a random message, the oracle), one line
per PPO step, and ends with exactly one summary line::

    start_reward=... final_reward=... majority_baseline=... all_wrong_reward=... seconds=...

Rewards are means over fixed evaluation sets of 512 episodes, one answer each sampled at temperature 1:
``final_reward`` on episodes of the training mix, ``all_wrong_reward`` on held-out episodes where every
message is wrong (emergent correctness; a voter or a copier scores 0 there). Training follows the paper:
one actor and one critic step per batch, strictly on-policy, no KL and no entropy terms.
"""

from __future__ import annotations

import dataclasses
import functools

from benchmarks.ppo_toy import parse_args, print_step
from training.toy_synthesis import Settings, train


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv, __doc__, steps=Settings().steps, seeded="episodes")
    settings = dataclasses.replace(Settings(), steps=args.steps, seed=args.seed)
    run = train(settings, functools.partial(print_step, explained_variance=False))
    print(
        f"baselines on the evaluation set: majority={run.baselines['majority']:.3f} "
        f"random_copy={run.baselines['random_copy']:.3f} oracle={run.baselines['oracle']:.3f}; "
        f"all-wrong episodes: start={run.start_all_wrong:.3f}"
    )
    print(
        f"start_reward={run.start_reward:.3f} final_reward={run.final_reward:.3f} "
        f"majority_baseline={run.baselines['majority']:.3f} all_wrong_reward={run.all_wrong_reward:.3f} "
        f"seconds={run.seconds:.1f}"
    )


if __name__ == "__main__":
    main()
