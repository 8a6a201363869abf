"""The ``pacore`` command line.

- ``pacore solve PROBLEM``: solve one problem with PaCoRe and print the answer, rounds and tokens, on an
  OpenAI-compatible endpoint, an in-process Hugging Face model, or the simulated model (``--backend``).
- ``pacore models``: what an endpoint serves.
- ``pacore sim-server``: the SIMULATED reasoning endpoint, for demos and tests.
- ``pacore serve``: an OpenAI-compatible server answering with PaCoRe over an upstream endpoint.
- ``pacore bench BENCHMARK``: run methods on a benchmark, graded and stored as they finish (resumable).
- ``pacore report DIR``: the table, CSV and scaling plot of benchmark runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import anyio
import typer
from rich.console import Console
from rich.table import Table

from pacore_agent.backends.base import DEFAULT_MAX_CONCURRENCY, Backend, SamplingParams
from pacore_agent.backends.transformers import DEFAULT_LOCAL_MODEL, TransformersBackend
from pacore_agent.budget import Budget, Price
from pacore_agent.exceptions import PacoreError, SolveError, UsageError
from pacore_agent.results import Done, SolveResult, TokenDelta, TrajectoryFinished
from pacore_agent.schedule import Schedule

if TYPE_CHECKING:
    from pacore_agent.coordinator import Coordinator

__all__ = ["app", "main"]

app = typer.Typer(
    name="pacore",
    help="PaCoRe: Parallel Coordinated Reasoning on any OpenAI-compatible endpoint.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

BaseUrl = Annotated[
    str | None,
    typer.Option(
        "--base-url",
        help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:30000/v1 (default: PACORE_BASE_URL / OPENAI_BASE_URL).",
    ),
]
ApiKeyEnv = Annotated[
    str | None,
    typer.Option(
        "--api-key-env",
        help="Name of the environment variable holding the API key (default: PACORE_API_KEY, then OPENAI_API_KEY).",
    ),
]


BackendKind = Literal["openai", "transformers", "sim"]
LOCAL_BATCH = 8
"""Trajectories per batched ``generate`` of the transformers backend (a round of 4 is one call)."""

_ENDPOINT_VARIABLES = ("PACORE_BASE_URL", "OPENAI_BASE_URL", "PACORE_API_KEY", "OPENAI_API_KEY")


def _fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def _api_key(api_key_env: str | None) -> str | None:
    if api_key_env:
        value = os.environ.get(api_key_env)
        if not value:
            raise _fail(f"--api-key-env names {api_key_env}, which is not set")
        return value
    return os.environ.get("PACORE_API_KEY") or os.environ.get("OPENAI_API_KEY")


def make_backend(base_url: str | None, model: str | None, api_key_env: str | None, **options: Any) -> Backend:
    """The backend the CLI options describe (an `OpenAIBackend`, from the options or the environment)."""
    from pacore_agent.backends.env import backend_from_env
    from pacore_agent.backends.openai_compat import OpenAIBackend

    if base_url:
        return OpenAIBackend(base_url, model, api_key=_api_key(api_key_env), **options)
    environ = dict(os.environ)
    if model:
        environ["PACORE_MODEL"] = model
    if api_key_env and os.environ.get(api_key_env):
        environ["PACORE_API_KEY"] = os.environ[api_key_env]
    return backend_from_env(environ, **options)


def endpoint_configured(base_url: str | None, api_key_env: str | None) -> bool:
    """Whether an OpenAI-compatible endpoint is configured: ``--base-url``, or one in the environment."""
    if base_url or (api_key_env and os.environ.get(api_key_env)):
        return True
    return any(os.environ.get(name) for name in _ENDPOINT_VARIABLES)


def _print_result(result: SolveResult) -> None:
    table = Table(title=f"{result.method}: rounds", title_justify="left")
    for column in ("round", "width", "ok", "failed", "cancelled", "messages", "completion tokens", "wall s"):
        table.add_column(column, justify="right")
    for round_ in result.rounds:
        statuses = [t.status for t in round_.trajectories]
        table.add_row(
            str(round_.index),
            str(round_.width),
            str(statuses.count("ok")),
            str(statuses.count("failed")),
            str(statuses.count("cancelled")),
            str(len(round_.messages)),
            f"{round_.usage.completion_tokens:,}",
            f"{round_.wall_s:.2f}",
        )
    out.print(table)
    usage = result.usage
    out.print(
        f"tokens: prompt {usage.prompt_tokens:,} (cached {usage.cached_tokens:,}), completion "
        f"{usage.completion_tokens:,} (reasoning {usage.reasoning_tokens:,}); calls {result.calls}; "
        f"effective TTC {result.ttc_tokens:,} tokens; wall {result.wall_s:.2f} s",
        highlight=False,
    )
    out.rule("answer")
    out.print((result.answer or "").strip(), markup=False, highlight=False)


@app.command()
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
    base_url: BaseUrl = None,
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
    api_key_env: ApiKeyEnv = None,
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
    max_tokens: Annotated[
        int | None,
        typer.Option(help="Cap on tokens per trajectory (default: the server's; 4096 with transformers)."),
    ] = None,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 1.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass.")] = 1.0,
    concurrency: Annotated[
        int | None,
        typer.Option(
            help=f"Requests in flight at once (default: {DEFAULT_MAX_CONCURRENCY}; 2 with transformers)."
        ),
    ] = None,
    order: Annotated[str, typer.Option(help="Reference order: seeded, official or launch.")] = "seeded",
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
    budget_calls: Annotated[int | None, typer.Option(help="Budget: at most this many requests.")] = None,
    budget_tokens: Annotated[
        int | None, typer.Option(help="Budget: at most this many tokens in total.")
    ] = None,
    budget_seconds: Annotated[float | None, typer.Option(help="Budget: at most this many seconds.")] = None,
    budget_cost: Annotated[
        float | None, typer.Option(help="Budget: at most this cost (needs --price).")
    ] = None,
    price: Annotated[
        str | None,
        typer.Option(
            help="Price of the model per million tokens as INPUT,OUTPUT (e.g. 0.2,0.8), for --budget-cost."
        ),
    ] = None,
    on_budget: Annotated[
        str,
        typer.Option(
            help="When a budget runs out: raise (exit 1, partial trace kept) or synthesize an answer."
        ),
    ] = "raise",
) -> None:
    """Solve one problem with PaCoRe and print the answer, the rounds and the token totals."""
    from pacore_agent.coordinator import Coordinator

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
        sampling = SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_tokens)
        budget = _budget(backend, budget_calls, budget_tokens, budget_seconds, budget_cost, price, on_budget)
        coordinator = Coordinator(
            schedule,
            backend,
            sampling=sampling,
            seed=seed,
            order=order,  # type: ignore[arg-type]
            n_per_request=n_per_request,
            min_success=_count_or_share(min_success),
            round_timeout=round_timeout,
            hedge=_count_or_share(hedge) or 0,
            budget=budget,
        )
    except PacoreError as error:
        raise _fail(str(error)) from None

    async def run() -> SolveResult:
        async with backend:
            if isinstance(backend, TransformersBackend) and not backend.loaded:
                err.print(f"loading {backend.source} with transformers...", highlight=False)
                await backend.load()
            if stream:
                return await _solve_live(coordinator, text)
            return await coordinator.solve(text)

    try:
        result = anyio.run(run)
    except SolveError as error:
        if trace is not None:
            trace.write_text(error.partial.model_dump_json(indent=2))
        raise _fail(f"{error} (partial trace: {trace})" if trace else str(error), code=1) from None
    except PacoreError as error:
        raise _fail(str(error)) from None
    if trace is not None:
        trace.write_text(result.model_dump_json(indent=2))
    if as_json:
        sys.stdout.write(result.model_dump_json() + "\n")
    else:
        _print_result(result)


def _count_or_share(value: float | None) -> int | float | None:
    """``0.75`` stays a share; ``24.0`` (typer parses floats) becomes the count ``24``."""
    if value is None or value < 1 or value != int(value):
        return value
    return int(value)


def _budget(
    backend: Backend,
    calls: int | None,
    tokens: int | None,
    seconds: float | None,
    cost: float | None,
    price: str | None,
    on_budget: str,
) -> Budget | None:
    if calls is None and tokens is None and seconds is None and cost is None:
        return None
    prices: dict[str, Price] = {}
    if price is not None:
        try:
            input_price, output_price = (float(part) for part in price.split(","))
        except ValueError:
            raise UsageError(
                f"--price must be INPUT,OUTPUT per million tokens, e.g. 0.2,0.8; got {price!r}"
            ) from None
        prices[getattr(backend, "model", None) or backend.name] = Price(
            input=input_price, output=output_price
        )
    return Budget(
        max_calls=calls,
        max_tokens=tokens,
        max_wall_s=seconds,
        max_cost=cost,
        prices=prices,
        on_exceeded=on_budget,  # type: ignore[arg-type]
    )


async def _solve_live(coordinator: Coordinator, problem: str) -> SolveResult:
    """Solve while a live panel shows every round's progress and the final round's tokens."""
    from rich.live import Live
    from rich.panel import Panel

    widths = coordinator.rounds
    done: dict[int, dict[str, int]] = {}
    tokens: dict[int, int] = {}
    tail = ""

    def render() -> Table:
        table = Table(title=f"{coordinator.method} (live)", title_justify="left")
        for column in ("round", "width", "ok", "failed", "cancelled", "completion tokens"):
            table.add_column(column, justify="right")
        for index, width in enumerate(widths):
            counts = done.get(index, {})
            table.add_row(
                str(index),
                str(width),
                str(counts.get("ok", 0)),
                str(counts.get("failed", 0)),
                str(counts.get("cancelled", 0)),
                f"{tokens.get(index, 0):,}",
            )
        if tail:
            table.caption = tail[-300:].replace("\n", " ")
        return table

    result: SolveResult | None = None
    with Live(render(), console=err, refresh_per_second=8, transient=False) as live:
        async for event in coordinator.stream(problem):
            if isinstance(event, TrajectoryFinished):
                trajectory = event.trajectory
                counts = done.setdefault(trajectory.round, {})
                counts[trajectory.status] = counts.get(trajectory.status, 0) + 1
                tokens[trajectory.round] = (
                    tokens.get(trajectory.round, 0) + trajectory.usage.completion_tokens
                )
            elif isinstance(event, TokenDelta):
                tail += event.text
            elif isinstance(event, Done):
                result = event.result
            live.update(render())
    if result is None:  # pragma: no cover - stream always ends with Done or raises
        raise RuntimeError("the solve ended without a result")
    err.print(Panel.fit("done", style="green"))
    return result


def make_local_backend(
    kind: Literal["transformers", "sim"], model: str | None, *, seed: int = 0, concurrency: int | None = None
) -> Backend:
    """The in-process backend of ``--backend transformers`` or ``--backend sim``."""
    options: dict[str, Any] = {} if concurrency is None else {"max_concurrency": concurrency}
    if kind == "sim":
        from pacore_agent.backends.sim import SIM_LABEL, SIM_MODEL, SimBackend, SimConfig

        err.print(f"backend: SIMULATED model {SIM_LABEL}", highlight=False)
        return SimBackend(SimConfig(model=model or SIM_MODEL, seed=seed), **options)
    return TransformersBackend(model or DEFAULT_LOCAL_MODEL, **options)


@app.command()
def models(base_url: BaseUrl = None, api_key_env: ApiKeyEnv = None) -> None:
    """List the models an OpenAI-compatible endpoint serves."""
    from pacore_agent.backends.openai_compat import OpenAIBackend

    try:
        backend = make_backend(base_url, "unused", api_key_env)
    except PacoreError as error:
        raise _fail(str(error)) from None
    assert isinstance(backend, OpenAIBackend)

    async def run() -> list[str]:
        async with backend:
            return await backend.list_models()

    try:
        names = anyio.run(run)
    except PacoreError as error:
        raise _fail(str(error)) from None
    for name in names:
        out.print(name, markup=False, highlight=False)


@app.command("sim-server")
def sim_server(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0 picks a free one).")] = 8000,
    seed: Annotated[int, typer.Option(help="Seed of every random choice.")] = 0,
    accuracy: Annotated[float, typer.Option(help="Probability that a first-round answer is right.")] = 0.4,
    synth_recover: Annotated[
        float,
        typer.Option(help="Probability that synthesis recovers the right answer regardless of references."),
    ] = 0.1,
    think_words: Annotated[
        int, typer.Option(help="Mean reasoning length in words (= simulated tokens).")
    ] = 48,
    latency_median: Annotated[float, typer.Option(help="Median seconds per request.")] = 0.0,
    latency_sigma: Annotated[
        float, typer.Option(help="Log-normal shape of the latency (1 = heavy tail).")
    ] = 0.0,
    answers: Annotated[
        Path | None,
        typer.Option(help="JSONL with problem/answer fields: the right answers of those problems."),
    ] = None,
    split_reasoning: Annotated[
        bool, typer.Option(help="Return reasoning in reasoning_content, as a reasoning parser does.")
    ] = False,
    honour_n: Annotated[
        bool, typer.Option(help="Return n choices per request (--no-honour-n mimics servers that ignore n).")
    ] = True,
    api_key: Annotated[
        str | None, typer.Option(help="Require this bearer token.", envvar="PACORE_SIM_API_KEY")
    ] = None,
) -> None:
    """Serve the SIMULATED reasoning model (a test double, not a language model) over HTTP."""
    from pacore_agent.backends.sim import Latency, SimConfig
    from pacore_agent.backends.sim_server import SimServer, banner

    answer_key: dict[str, str] = {}
    if answers is not None:
        for line in answers.read_text(encoding="utf-8").splitlines():
            if line.strip():
                item = json.loads(line)
                answer_key[str(item["problem"]).strip()] = str(item["answer"])
    try:
        config = SimConfig(
            seed=seed,
            accuracy=accuracy,
            synth_recover=synth_recover,
            think_words=think_words,
            latency=Latency(median=latency_median, sigma=latency_sigma),
            answers=answer_key,
            split_reasoning=split_reasoning,
            honour_n=honour_n,
            record_requests=False,
        )
    except PacoreError as error:
        raise _fail(str(error)) from None
    server = SimServer(config, host=host, port=port, api_key=api_key)

    async def run() -> None:
        async with server:
            out.print(banner(server), highlight=False)
            sys.stdout.flush()
            await anyio.sleep_forever()

    with contextlib.suppress(KeyboardInterrupt):
        anyio.run(run)


@app.command("serve")
def serve(
    upstream_base_url: Annotated[
        str,
        typer.Option(
            "--upstream-base-url",
            help="The OpenAI-compatible endpoint every trajectory goes to, e.g. http://127.0.0.1:30000/v1. "
            "Fixed here: requests cannot change it.",
        ),
    ],
    upstream_model: Annotated[
        str, typer.Option("--upstream-model", help="The upstream model id, e.g. PaCoRe-8B.")
    ],
    host: Annotated[
        str, typer.Option(help="Interface to bind; loopback by default (use 0.0.0.0 with --api-key-env).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0 picks a free one; the banner shows it).")] = 8000,
    api_key_env: Annotated[
        str | None,
        typer.Option(
            "--api-key-env",
            help="Require clients to send 'Authorization: Bearer <token>', the token read from this "
            "environment variable (default: no authentication; /health is always open).",
        ),
    ] = None,
    upstream_api_key_env: Annotated[
        str | None,
        typer.Option(
            "--upstream-api-key-env",
            help="Environment variable holding the upstream's API key (default: PACORE_API_KEY, then "
            "OPENAI_API_KEY; local servers need none).",
        ),
    ] = None,
    max_concurrency: Annotated[
        int,
        typer.Option(
            "--max-concurrency", help="Upstream requests in flight at once, shared by all client requests."
        ),
    ] = 64,
    max_request_bytes: Annotated[
        int, typer.Option("--max-request-bytes", help="Largest request body accepted (larger: 413).")
    ] = 1024 * 1024,
    max_trajectories: Annotated[
        int,
        typer.Option(
            "--max-trajectories",
            help="Largest number of trajectories one request may run, all rounds together.",
        ),
    ] = 512,
) -> None:
    """Serve PaCoRe as an OpenAI-compatible API (chat completions, streaming, /v1/models, /health).

    Model names pick the method: pacore-low = [4], pacore-medium = [16],
    pacore-high = [32,4], or pacore:[K1,K2,...]. Streams show each round's
    progress as reasoning_content, then the final round's tokens; answers
    carry the usage of all trajectories and a 'pacore' trace summary.
    """
    import logging

    from pacore_agent.backends.openai_compat import OpenAIBackend
    from pacore_agent.serving.server import PacoreServer

    token: str | None = None
    if api_key_env:
        token = os.environ.get(api_key_env)
        if not token:
            raise _fail(f"--api-key-env names {api_key_env}, which is not set or empty")
    try:
        backend = OpenAIBackend(
            upstream_base_url,
            upstream_model,
            api_key=_api_key(upstream_api_key_env),
            max_concurrency=max_concurrency,
        )
        server = PacoreServer(
            backend,
            host=host,
            port=port,
            api_key=token,
            max_request_bytes=max_request_bytes,
            max_trajectories=max_trajectories,
        )
    except PacoreError as error:
        raise _fail(str(error)) from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def run() -> None:
        async with backend, server:
            auth = f"bearer token from ${api_key_env}" if api_key_env else "off"
            out.print(
                f"pacore serve: OpenAI-compatible PaCoRe at {server.base_url} "
                f"(models: {', '.join(server.models)}, pacore:[K1,...]; auth: {auth}) "
                f"over {upstream_model} at {backend.base_url}",
                highlight=False,
                soft_wrap=True,
            )
            if token is None and host not in ("127.0.0.1", "localhost", "::1"):
                err.print(
                    f"[bold yellow]warning:[/] listening on {host} without authentication: "
                    "anyone who reaches it spends your upstream's compute (see --api-key-env)",
                    highlight=False,
                )
            sys.stdout.flush()
            await _until_stopped()

    with contextlib.suppress(KeyboardInterrupt):
        anyio.run(run)


async def _until_stopped() -> None:
    """Return on SIGTERM or SIGINT (where signals can be received), else sleep forever."""
    import signal

    if sys.platform == "win32":
        await anyio.sleep_forever()
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            return


@app.command("bench")
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
    base_url: BaseUrl = None,
    model: Annotated[
        str | None,
        typer.Option("--model", help="Model id (default: PACORE_MODEL, else the endpoint's only model)."),
    ] = None,
    api_key_env: ApiKeyEnv = None,
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
    max_tokens: Annotated[
        int | None, typer.Option(help="Cap on tokens per trajectory (default: the server's).")
    ] = None,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (paper: 1.0).")] = 1.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass (paper: 1.0).")] = 1.0,
    request_seeds: Annotated[
        bool,
        typer.Option(help="Send a per-request seed derived from --seed and the sample (repeatable runs)."),
    ] = True,
    order: Annotated[str, typer.Option(help="Reference order: seeded, official or launch.")] = "seeded",
    max_calls: Annotated[int | None, typer.Option(help="Budget: requests per solve.")] = None,
    max_solve_tokens: Annotated[
        int | None, typer.Option(help="Budget: prompt plus completion tokens per solve.")
    ] = None,
    max_wall_s: Annotated[float | None, typer.Option(help="Budget: seconds per solve.")] = None,
    on_budget: Annotated[
        str,
        typer.Option(
            help="When a budget runs out: raise (graded as it stands) or synthesize (final round now)."
        ),
    ] = "raise",
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
    from pacore_agent.budget import Budget
    from pacore_agent.evaluation.bench import (
        BenchProgress,
        BenchSettings,
        load_problems,
        parse_methods,
        run_bench,
    )

    try:
        specs = parse_methods(method)
        name, selected, fingerprint = load_problems(
            benchmark,
            data=data,
            limit=problems,
            ids=[i.strip() for i in ids.split(",") if i.strip()] if ids else None,
        )
        if on_budget not in ("raise", "synthesize"):
            raise _fail(f"--on-budget must be raise or synthesize, got {on_budget!r}")
        limits = {"max_calls": max_calls, "max_tokens": max_solve_tokens, "max_wall_s": max_wall_s}
        budget = (
            Budget(**limits, on_exceeded=on_budget)  # type: ignore[arg-type]
            if any(v is not None for v in limits.values())
            else None
        )
        settings = BenchSettings(
            benchmark=name,
            methods=specs,
            samples=samples,
            seed=seed,
            sampling=SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_tokens),
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
    except (PacoreError, FileNotFoundError) as error:
        raise _fail(str(error)) from None
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
        raise _fail(str(error)) from None
    err.print(
        f"{summary.recorded} item(s) run, {summary.skipped} already done, {len(summary.failed)} failed "
        f"of {summary.items}; {summary.wall_s:.1f} s",
        highlight=False,
    )
    if report:
        from pacore_agent.evaluation.report import render_table, summarize

        _report_console().print(render_table(summarize([out])))
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


def _report_console() -> Console:
    """The standard output console, wide enough for report tables when it is not a terminal."""
    return out if out.is_terminal else Console(width=max(out.width, 160))


@app.command("report")
def report(
    directories: Annotated[
        list[Path], typer.Argument(help="One or more run directories of `pacore bench`.", metavar="DIR")
    ],
    csv_path: Annotated[
        Path | None,
        typer.Option(
            "--csv",
            help="Write one row per (benchmark, method): benchmark, method, n, accuracy, ci_low, ci_high, "
            "ttc_k, calls, wall_s, ...",
        ),
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option("--plot", help="Write a PNG scaling plot: accuracy against tokens per problem (log x)."),
    ] = None,
    markdown: Annotated[
        Path | None, typer.Option("--markdown", help="Write the table as Markdown (- for standard output).")
    ] = None,
    resamples: Annotated[int, typer.Option(help="Bootstrap resamples of the 95% intervals.")] = 2000,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap.")] = 0,
) -> None:
    """Summarize benchmark runs: accuracy with 95% intervals, tokens per problem, calls, emergent correctness.

    Accuracy is pass@1 averaged over samples (the mean over problems of each problem's mean), counting
    failed and ungraded samples as wrong; the failed and ungraded counts and the accuracy over completed
    samples only stand beside it. The interval is a problem-clustered percentile bootstrap. TTC counts the completion tokens of every trajectory of a
    sample, all rounds (pool-drawn ones included).
    """
    from pacore_agent.evaluation.report import plot_scaling, render_table, summarize, to_markdown, write_csv

    try:
        reports = summarize(directories, resamples=resamples, seed=seed)
        if not reports:
            raise _fail(f"no graded records in {', '.join(map(str, directories))}")
        if markdown is not None and str(markdown) == "-":
            sys.stdout.write(to_markdown(reports))
        else:
            _report_console().print(render_table(reports))
            if markdown is not None:
                markdown.write_text(to_markdown(reports), encoding="utf-8")
        if csv_path is not None:
            write_csv(reports, csv_path)
            err.print(f"wrote {csv_path}", highlight=False)
        if plot is not None:
            plot_scaling(reports, plot)
            err.print(f"wrote {plot}", highlight=False)
    except PacoreError as error:
        raise _fail(str(error)) from None


def main() -> None:
    """Entry point of the ``pacore`` console script."""
    from pacore_agent.runtime import tune_gc

    tune_gc()  # an application with thousands of requests in flight: see pacore_agent.runtime
    app()
