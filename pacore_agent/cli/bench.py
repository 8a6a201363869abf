"""``pacore bench``: methods on a benchmark, graded and stored as they finish (``pacore report`` reads them)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import anyio
import typer

from pacore_agent.budget import Budget
from pacore_agent.cli import options
from pacore_agent.cli.common import app, at_least_one, err, fail, make_backend, report_console
from pacore_agent.exceptions import PacoreError

__all__ = ["bench"]


@app.command("bench")
@options.with_budget_options
def bench(
    benchmark: Annotated[
        str,
        typer.Argument(
            help="A named benchmark: aime2025, hmmt2025, imo_answerbench, imo_answerbench_v1, livecodebench; "
            "or, with --data, the name to record for your own JSONL file."
        ),
    ],
    method: Annotated[
        list[str],
        typer.Option(
            "--method",
            "-m",
            help="A method; repeat for several: pacore:low, pacore:medium, pacore:high, pacore:[32,4], "
            "single, sc@16 (self-consistency: majority vote), bon@8 (best-of-n scored by the REFERENCE "
            "grader: an oracle upper bound, not a deployable method).",
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="Run directory: results.jsonl, config.json, failures.jsonl; a rerun resumes."
        ),
    ],
    samples: Annotated[
        int,
        typer.Option(
            "--samples", "-n", help="Samples per (problem, method); pass@1 is averaged over them (paper: 64)."
        ),
    ] = 1,
    data: Annotated[
        Path | None, typer.Option("--data", help="JSONL file with id, problem, answer (and tests for code).")
    ] = None,
    base_url: options.BaseUrl = None,
    model: Annotated[
        str | None,
        typer.Option("--model", help="Model id (default: PACORE_MODEL, else the endpoint's only model)."),
    ] = None,
    api_key_env: options.ApiKeyEnv = None,
    concurrency: Annotated[int, typer.Option(help="Requests in flight at once against the endpoint.")] = 64,
    max_in_flight: Annotated[
        int | None, typer.Option(help="Solves in flight at once (default: --concurrency).")
    ] = None,
    problems: Annotated[
        int | None, typer.Option("--problems", help="Run only the first LIMIT problems.", metavar="LIMIT")
    ] = None,
    ids: Annotated[
        str | None, typer.Option("--ids", help="Run only these problem ids (comma-separated).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Base seed; each sample derives its own.")] = 0,
    temperature: options.Temperature = options.PAPER,
    top_p: options.TopP = options.PAPER,
    max_tokens: options.MaxTokens = None,
    extra_body: options.ExtraBody = None,
    request_seeds: Annotated[
        bool,
        typer.Option(help="Send a per-request seed derived from --seed and the sample (repeatable runs)."),
    ] = True,
    order: options.Order = "seeded",
    budget: Budget | None = None,
    pool_size: Annotated[
        int | None,
        typer.Option(
            help="Pool evaluation (the paper's protocol; paper: 512): generate this many first-round "
            "trajectories per problem once, then draw each sample's first round from the pool (PaCoRe runs "
            "the remaining rounds; sc/bon/single only resample). Drawn trajectories count toward TTC."
        ),
    ] = None,
    pool_dir: Annotated[
        Path | None, typer.Option(help="Where the pool lives (default: OUT/pool); share it between runs.")
    ] = None,
    pool_chunk: Annotated[int, typer.Option(help="Pool trajectories per stored part.")] = 64,
    grade_messages: Annotated[
        bool, typer.Option(help="Grade every round's messages too (emergent correctness needs it).")
    ] = True,
    keep_trajectories: Annotated[
        bool,
        typer.Option(help="Store every trajectory's full text (default: the final one's, and messages)."),
    ] = False,
    truncation: Annotated[
        str,
        typer.Option(
            help="An answer cut off by the length limit: zero (earns 0; a box written mid-reasoning does not "
            "count) or grade (graded as written). Either way the report counts them as truncated."
        ),
    ] = "zero",
    report: Annotated[bool, typer.Option(help="Print the report table at the end.")] = True,
) -> None:
    """Run a benchmark: every (problem, method, sample) once, graded, stored as it finishes; reruns resume.

    Math answers are graded with math-verify (emergent correctness recorded); code by its tests in the
    sandbox (pass rate). Summarize with `pacore report OUT`.
    """
    from pacore_agent.evaluation.bench import (
        BenchProgress,
        BenchSettings,
        load_problems,
        parse_methods,
        run_bench,
    )

    at_least_one("--concurrency", concurrency)
    at_least_one("--max-in-flight", max_in_flight)
    at_least_one("--samples", samples)
    if out.exists() and not out.is_dir():
        raise fail(f"--out {out} is a file: give a directory (a new one, or a run directory to resume)")
    generation = options.sampling(temperature, top_p, max_tokens, extra_body)
    try:
        specs = parse_methods(method)
        name, selected, fingerprint = load_problems(
            benchmark,
            data=data,
            limit=problems,
            ids=[i.strip() for i in ids.split(",") if i.strip()] if ids else None,
        )
        settings = BenchSettings(
            name,
            specs,
            samples,
            seed=seed,
            sampling=generation,
            request_seeds=request_seeds,
            budget=budget,
            order=order,
            max_in_flight=max_in_flight or concurrency,
            pool_size=pool_size,
            pool_chunk=pool_chunk,
            grade_messages=grade_messages,
            keep_trajectories=keep_trajectories,
            truncation=truncation,  # type: ignore[arg-type]  # checked by BenchSettings
        )
        backend = make_backend(base_url, model, api_key_env, max_concurrency=concurrency)
    except (PacoreError, OSError) as error:
        raise fail(str(error)) from None
    err.print(
        f"pacore bench: {name}, {len(selected)} problems x {len(specs)} method(s) "
        f"({', '.join(s.label for s in specs)}) x {samples} sample(s) -> {out}",
        highlight=False,
    )

    async def run() -> Any:
        async with backend:
            with BenchProgress(err) as progress:
                return await run_bench(
                    settings,
                    selected,
                    backend,
                    out,
                    fingerprint=fingerprint,
                    pool_dir=pool_dir,
                    progress=progress,
                )

    try:
        summary = anyio.run(run)
    except KeyboardInterrupt:
        err.print("interrupted: finished items are stored; rerun the same command to resume", highlight=False)
        raise typer.Exit(130) from None
    except PacoreError as error:
        raise fail(str(error)) from None
    except OSError as error:  # the run directory cannot be created or written
        raise fail(f"--out {out}: {error.strerror or error}") from None
    err.print(
        f"{summary.recorded} item(s) run, {summary.skipped} already done, {len(summary.failed)} failed "
        f"of {summary.items}; {summary.wall_s:.1f} s",
        highlight=False,
    )
    if report:
        from pacore_agent.evaluation.report import render_table, summarize

        report_console().print(render_table(summarize([out])))
    for failure in summary.failed[:5]:
        err.print(
            f"failed: {failure.problem_id} {failure.method} sample {failure.sample}: {failure.error.message}",
            highlight=False,
            markup=False,
        )
    for line in summary.pool_errors[:5]:
        err.print(f"pool part failed: {line}", highlight=False, markup=False)
    if summary.failed or summary.pool_errors:
        err.print("[bold yellow]some items failed:[/] rerun the same command to retry them", highlight=False)
        raise typer.Exit(1)
