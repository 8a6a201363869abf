"""Stage 2 of the curriculum as a script: keep the stage-1 problems a policy solves sometimes, not always.

Serve the stage-1 checkpoint with an OpenAI-compatible server (merge verl's FSDP checkpoint to Hugging
Face format first, see README.md), then::

    python -m training.verl.stage2_filter --input data/stage1.jsonl --output data/stage2.jsonl \\
        --base-url http://127.0.0.1:30000/v1 --samples 8 --max-tokens 32768

Each problem gets ``--samples`` synthesis trajectories, each on its own |M| ~ U(lo, hi) message set
(`training.curriculum.stage2_filter`); problems whose accuracy is strictly between 0 and 1 are written to
``--output`` (pool entries, what stage2.sh trains on) with a summary beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

import anyio

from training.curriculum import Stage2Config, stage2_filter, write_filtered
from training.env import DEFAULT_HI, DEFAULT_LO, EnvConfig
from training.pool import load_pool_entries
from training.verl._cli import add_endpoint_options, open_coordinator

__all__ = ["main", "parser", "run"]


def parser() -> argparse.ArgumentParser:
    """The command line."""
    cli = argparse.ArgumentParser(
        prog="python -m training.verl.stage2_filter", description=__doc__.split("\n")[0]
    )
    cli.add_argument("--input", required=True, help="stage-1 set (pool entries JSONL) or a pool directory")
    cli.add_argument("--output", required=True, help="stage-2 set to write (pool entries JSONL)")
    cli.add_argument("--summary", help="summary JSON (default: OUTPUT with .summary.json)")
    cli.add_argument("--samples", type=int, default=8, help="synthesis samples per problem")
    cli.add_argument("--lo", type=int, default=DEFAULT_LO, help="fewest messages per sample")
    cli.add_argument("--hi", type=int, default=DEFAULT_HI, help="most messages per sample")
    cli.add_argument("--max-concurrent-problems", type=int, default=8)
    add_endpoint_options(cli)
    return cli


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate, filter and write; returns the summary."""
    entries = load_pool_entries(args.input)
    config = Stage2Config(
        samples=args.samples,
        env=EnvConfig(lo=args.lo, hi=args.hi, seed=args.seed),
        max_concurrent_problems=args.max_concurrent_problems,
    )
    async with open_coordinator(args) as coordinator:
        result = await stage2_filter(entries, coordinator, config)
    return write_filtered(result, args.output, args.summary)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the script; prints the counts."""
    args = parser().parse_args(argv)
    summary = anyio.run(run, args)
    counts = {k: summary[k] for k in ("total", "kept", "dropped", "reasons")}
    print(json.dumps(counts, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
