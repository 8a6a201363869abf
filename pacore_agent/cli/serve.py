"""``pacore serve``: PaCoRe as an OpenAI-compatible server; ``pacore sim-server``: the simulated model."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated

import anyio
import typer

from pacore_agent.cli import options
from pacore_agent.cli.common import api_key, app, at_least_one, err, fail, out
from pacore_agent.exceptions import PacoreError

__all__ = ["serve", "sim_server"]


def serve_until_stopped(run: Callable[[], Awaitable[None]], host: str, port: int) -> None:
    """Run a server until Ctrl-C or SIGTERM; a port that cannot be bound exits naming ``--port``."""
    if not 0 <= port <= 65535:
        raise fail(f"--port must be within 0-65535 (0 picks a free one), got {port}")
    try:
        with contextlib.suppress(KeyboardInterrupt):
            anyio.run(run)
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise fail(
                f"--port {port}: {host}:{port} is already in use; choose another port, or 0 for a free one"
            ) from None
        if error.errno in (errno.EADDRNOTAVAIL, errno.EACCES):
            raise fail(f"--host {host} / --port {port}: cannot listen there ({error.strerror})") from None
        raise


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
    model: Annotated[str | None, typer.Option(help="The model id it serves (default: pacore-sim).")] = None,
    hosted_reasoning: Annotated[
        bool,
        typer.Option(
            help="Answer as hosted reasoning models (GPT-5, o-series) do: refuse top_p and max_tokens, and "
            "any temperature but 1, with OpenAI's 400 bodies."
        ),
    ] = False,
    capacity: Annotated[
        int | None, typer.Option(help="As an SGLang worker: at most this many sequences decode at once.")
    ] = None,
    prefix_cache: Annotated[
        bool, typer.Option(help="As an SGLang worker: report cached_tokens for prompt prefixes seen.")
    ] = False,
    worker_name: Annotated[str, typer.Option(help="The name GET /_sim/stats reports.")] = "",
) -> None:
    """Serve the SIMULATED reasoning model (a test double, not a language model) over HTTP."""
    from pacore_agent.backends.sim import SIM_MODEL, Latency, SimConfig
    from pacore_agent.backends.sim_server import SimServer, banner

    answer_key: dict[str, str] = {}
    if answers is not None:
        try:
            lines = answers.read_text(encoding="utf-8").splitlines()
        except OSError as error:
            raise fail(f"--answers {answers}: cannot read it ({error.strerror or error})") from None
        except ValueError as error:  # not UTF-8
            raise fail(f"--answers {answers}: not UTF-8 text ({error})") from None
        for number, line in enumerate(lines, start=1):
            if line.strip():
                try:
                    item = json.loads(line)
                    answer_key[str(item["problem"]).strip()] = str(item["answer"])
                except (ValueError, KeyError, TypeError) as error:
                    raise fail(
                        f"--answers {answers}, line {number}: not a JSON object with problem and answer "
                        f"fields ({type(error).__name__}: {error})"
                    ) from None
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
            hosted_reasoning=hosted_reasoning,
            model=model or SIM_MODEL,
        )
        # As one SGLang worker behind the router (see pacore_agent.backends.sim_worker).
        worker = {"capacity": capacity, "prefix_cache": prefix_cache, "worker_name": worker_name}
        server = SimServer(config, host=host, port=port, api_key=api_key, **worker)  # type: ignore[arg-type]
    except PacoreError as error:
        raise fail(str(error)) from None

    async def run() -> None:
        async with server:
            out.print(banner(server), highlight=False)
            sys.stdout.flush()
            await anyio.sleep_forever()

    serve_until_stopped(run, host, port)


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
    temperature: options.Temperature = options.PAPER,
    top_p: options.TopP = options.PAPER,
    max_tokens: options.MaxTokens = None,
    extra_body: options.ExtraBody = None,
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

    at_least_one("--max-concurrency", max_concurrency)
    generation = options.sampling(temperature, top_p, max_tokens, extra_body)
    token: str | None = None
    if api_key_env:
        token = os.environ.get(api_key_env)
        if not token:
            raise fail(f"--api-key-env names {api_key_env}, which is not set or empty")
    try:
        backend = OpenAIBackend(
            upstream_base_url,
            upstream_model,
            api_key=api_key(upstream_api_key_env),
            max_concurrency=max_concurrency,
        )
        server = PacoreServer(
            backend,
            host=host,
            port=port,
            api_key=token,
            max_request_bytes=max_request_bytes,
            max_trajectories=max_trajectories,
            sampling=generation,
        )
    except PacoreError as error:
        raise fail(str(error)) from None
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

    serve_until_stopped(run, host, port)


async def _until_stopped() -> None:
    """Return on SIGTERM or SIGINT (where signals can be received), else sleep forever."""
    import signal

    if sys.platform == "win32":
        await anyio.sleep_forever()
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            return
