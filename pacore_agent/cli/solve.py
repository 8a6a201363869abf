"""``pacore solve``: one problem, its answer, rounds and tokens; ``pacore models``: what an endpoint serves."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Annotated

import anyio
import typer

from pacore_agent.backends.base import DEFAULT_MAX_CONCURRENCY
from pacore_agent.backends.transformers import DEFAULT_LOCAL_MODEL, TransformersBackend
from pacore_agent.budget import Budget
from pacore_agent.cli import options
from pacore_agent.cli.common import (
    LOCAL_BATCH,
    BackendKind,
    app,
    at_least_one,
    endpoint_configured,
    err,
    fail,
    make_backend,
    make_local_backend,
    out,
    positive,
    writing,
)
from pacore_agent.cli.live import print_result, solve_live
from pacore_agent.exceptions import PacoreError, SolveError
from pacore_agent.results import SolveResult
from pacore_agent.schedule import Schedule

__all__ = ["models", "solve"]


@app.command()
@options.with_budget_options
def solve(
    problem: Annotated[str, typer.Argument(help="The problem text, or - to read it from stdin.")],
    backend_kind: Annotated[
        BackendKind | None,
        typer.Option(
            "--backend",
            help=(
                "openai: an OpenAI-compatible endpoint (the default when one is configured with --base-url "
                "or PACORE_BASE_URL / OPENAI_BASE_URL / an API key variable). transformers: a Hugging Face "
                f"model in this process (the default otherwise: --model, else {DEFAULT_LOCAL_MODEL}, about "
                "1.5 GB downloaded from the Hugging Face Hub on first use). sim: the SIMULATED reasoning "
                "model, a test double."
            ),
        ),
    ] = None,
    base_url: options.BaseUrl = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help=(
                "openai: the model id (default: PACORE_MODEL, else the endpoint's only model). transformers: "
                f"a hub model id or a local folder (default: {DEFAULT_LOCAL_MODEL})."
            ),
        ),
    ] = None,
    api_key_env: options.ApiKeyEnv = None,
    schedule: Annotated[
        str,
        typer.Option(
            "--schedule", "-s", help="Widths like 32,4 or a preset: low=[4], medium=[16], high=[32,4]."
        ),
    ] = "low",
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the whole SolveResult as JSON on stdout.")
    ] = False,
    trace: Annotated[
        Path | None,
        typer.Option("--trace", help="Write the SolveResult (or the partial one) as JSON to this file."),
    ] = None,
    seed: Annotated[
        int, typer.Option(help="Seed of the reference order (and of request seeds with --sampling-seed).")
    ] = 0,
    temperature: options.Temperature = options.PAPER,
    top_p: options.TopP = options.PAPER,
    max_tokens: options.MaxTokens = None,
    extra_body: options.ExtraBody = None,
    concurrency: Annotated[
        int | None,
        typer.Option(
            help=f"Requests in flight at once (default: {DEFAULT_MAX_CONCURRENCY}; 2 with transformers)."
        ),
    ] = None,
    order: options.Order = "seeded",
    stream: Annotated[
        bool, typer.Option("--stream", help="Show rounds, trajectories and the final round's tokens live.")
    ] = False,
    min_success: Annotated[
        float | None,
        typer.Option(
            help="Start the next round once this share (0.75) or count (24) of a round has finished."
        ),
    ] = None,
    round_timeout: Annotated[
        float | None, typer.Option(help="Seconds after which a round goes on with what finished.")
    ] = None,
    hedge: Annotated[
        float,
        typer.Option(help="Extra trajectories per round, a share (0.25) or a count; the first K are kept."),
    ] = 0,
    budget: Budget | None = None,
) -> None:
    """Solve one problem with PaCoRe and print the answer, the rounds and the token totals."""
    from pacore_agent.coordinator import Coordinator

    at_least_one("--concurrency", concurrency)
    positive("--round-timeout", round_timeout)
    generation = options.sampling(temperature, top_p, max_tokens, extra_body)
    text = sys.stdin.read() if problem == "-" else problem
    if backend_kind is None:
        backend_kind = "openai" if endpoint_configured(base_url, api_key_env) else "transformers"
    n_per_request = 1
    try:
        if backend_kind == "openai":
            backend = make_backend(
                base_url, model, api_key_env, max_concurrency=concurrency or DEFAULT_MAX_CONCURRENCY
            )
        else:
            backend = make_local_backend(backend_kind, model, seed=seed, concurrency=concurrency)
            # One batched generate per round (up to LOCAL_BATCH trajectories) rather than one per trajectory.
            n_per_request = min(max(Schedule.parse(schedule).widths), LOCAL_BATCH)
        coordinator = Coordinator(
            schedule,
            backend,
            sampling=generation,
            seed=seed,
            order=order,  # type: ignore[arg-type]
            n_per_request=n_per_request,
            min_success=_count_or_share("--min-success", min_success),
            round_timeout=round_timeout,
            hedge=_count_or_share("--hedge", hedge) or 0,
            budget=budget,
        )
    except PacoreError as error:
        raise fail(str(error)) from None

    async def run() -> SolveResult:
        async with backend:
            if isinstance(backend, TransformersBackend) and not backend.loaded:
                err.print(f"loading {backend.source} with transformers...", highlight=False)
                await backend.load()
            if stream:
                return await solve_live(coordinator, text)
            return await coordinator.solve(text)

    try:
        result = anyio.run(run)
    except SolveError as error:
        if trace is not None:
            with writing("--trace", trace):
                trace.write_text(error.partial.model_dump_json(indent=2))
        raise fail(f"{error} (partial trace: {trace})" if trace else str(error), code=1) from None
    except PacoreError as error:
        raise fail(str(error)) from None
    if trace is not None:
        with writing("--trace", trace):
            trace.write_text(result.model_dump_json(indent=2))
    if as_json:
        sys.stdout.write(result.model_dump_json() + "\n")
    else:
        print_result(result)


def _count_or_share(option: str, value: float | None) -> int | float | None:
    """``0.75`` stays a share; ``24.0`` (typer parses floats) becomes the count ``24``."""
    if value is not None and not math.isfinite(value):
        raise fail(f"{option} must be a share in (0, 1] or a whole count, got {value}")
    if value is None or value < 1:
        return value
    if value != int(value):
        raise fail(
            f"{option} {value:g} is neither a share in (0, 1] nor a whole count: use e.g. 0.5 or {int(value) + 1}"
        )
    return int(value)


@app.command()
def models(base_url: options.BaseUrl = None, api_key_env: options.ApiKeyEnv = None) -> None:
    """List the models an OpenAI-compatible endpoint serves."""
    from pacore_agent.backends.openai_compat import OpenAIBackend

    try:
        backend = make_backend(base_url, "unused", api_key_env)
    except PacoreError as error:
        raise fail(str(error)) from None
    assert isinstance(backend, OpenAIBackend)

    async def run() -> list[str]:
        async with backend:
            return await backend.list_models()

    try:
        names = anyio.run(run)
    except PacoreError as error:
        raise fail(str(error)) from None
    for name in names:
        out.print(name, markup=False, highlight=False)
