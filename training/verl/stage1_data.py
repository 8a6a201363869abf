"""The stage-1 training set as a script: problems -> message pool -> stage-1 filter.

::

    python -m training.verl.stage1_data --problems data/train.jsonl --pool-dir runs/pool \\
        --output data/stage1.jsonl --base-url http://127.0.0.1:30000/v1 --max-tokens 32768

``--problems`` is our JSONL or the PaCoRe-Train-8k layout (`training.data.load_training_problems`);
``--arithmetic N`` adds N synthetic large-integer arithmetic problems. The pool (24 first-round messages
per problem from the endpoint, or from a problem's cached responses) is built into ``--pool-dir``, which
a rerun resumes; the problems whose mean message accuracy is in (0, 9/24) (math) or (0, 15/24) (code) are
written to ``--output`` (pool entries, what stage1.sh trains on) with a summary beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

import anyio

from pacore_agent.evaluation.store import PoolStore
from training.curriculum import CODE_THRESHOLD, MATH_THRESHOLD, Stage1Config, stage1_filter, write_filtered
from training.data import TrainProblem, arithmetic_problems, load_training_problems
from training.pool import DEFAULT_POOL_SIZE, PoolConfig, build_pool
from training.verl._cli import add_endpoint_options, open_coordinator

__all__ = ["main", "parser", "run"]


def parser() -> argparse.ArgumentParser:
    """The command line."""
    cli = argparse.ArgumentParser(
        prog="python -m training.verl.stage1_data", description=__doc__.split("\n")[0]
    )
    cli.add_argument("--problems", action="append", default=[], help="problem file (repeatable)")
    cli.add_argument("--arithmetic", type=int, default=0, help="add this many synthetic arithmetic problems")
    cli.add_argument("--pool-dir", required=True, help="pool directory (created; a rerun resumes it)")
    cli.add_argument("--output", required=True, help="stage-1 set to write (pool entries JSONL)")
    cli.add_argument("--summary", help="summary JSON (default: OUTPUT with .summary.json)")
    cli.add_argument("--size", type=int, default=DEFAULT_POOL_SIZE, help="messages per problem")
    cli.add_argument("--no-cached", action="store_true", help="generate even when responses are cached")
    cli.add_argument("--max-concurrent-problems", type=int, default=8)
    cli.add_argument("--math-threshold", type=float, default=MATH_THRESHOLD)
    cli.add_argument("--code-threshold", type=float, default=CODE_THRESHOLD)
    add_endpoint_options(cli)
    return cli


def _problems(args: argparse.Namespace) -> list[TrainProblem]:
    problems: list[TrainProblem] = []
    for path in args.problems:
        problems.extend(load_training_problems(path))
    problems.extend(arithmetic_problems(args.arithmetic, seed=args.seed))
    return problems


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Build the pool, filter and write; returns the summary."""
    problems = _problems(args)
    config = PoolConfig(
        size=args.size, max_concurrent_problems=args.max_concurrent_problems, use_cached=not args.no_cached
    )
    needs_endpoint = any(args.no_cached or len(p.responses) < args.size for p in problems)
    store_config = {"size": args.size, "model": args.model, "max_tokens": args.max_tokens, "seed": args.seed}
    with PoolStore.open(args.pool_dir, config=store_config) as store:
        if needs_endpoint:
            async with open_coordinator(args) as coordinator:
                report = await build_pool(problems, coordinator, store, config=config)
        else:
            report = await build_pool(problems, None, store, config=config)
        wanted = {p.id for p in problems}
        pools = [
            entry
            for pid, entry in PoolStore.open(args.pool_dir, readonly=True).pools().items()
            if pid in wanted
        ]
    if report.failed:
        print(
            f"{len(report.failed)} problems failed (a rerun retries them): {sorted(report.failed)[:5]}",
            file=sys.stderr,
        )
    result = stage1_filter(
        pools, Stage1Config(math_threshold=args.math_threshold, code_threshold=args.code_threshold)
    )
    summary = write_filtered(result, args.output, args.summary)
    summary["pool"] = {"built": len(report.built), "skipped": len(report.skipped), "failed": report.failed}
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Run the script; prints the counts."""
    args = parser().parse_args(argv)
    if not args.problems and not args.arithmetic:
        parser().error("give --problems FILE and/or --arithmetic N")
    summary = anyio.run(run, args)
    print(json.dumps({k: summary[k] for k in ("total", "kept", "dropped", "reasons", "pool")}, indent=2))
    return 1 if summary["pool"]["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
