"""What the data scripts share: the endpoint options and the coordinator they build."""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from pacore_agent.backends.base import SamplingParams
from pacore_agent.backends.env import backend_from_env
from pacore_agent.backends.openai_compat import OpenAIBackend
from pacore_agent.coordinator import Coordinator


def add_endpoint_options(parser: argparse.ArgumentParser) -> None:
    """``--base-url``, ``--model``, ``--max-tokens``, ``--concurrency``, ``--seed``."""
    group = parser.add_argument_group(
        "endpoint (an OpenAI-compatible server, e.g. SGLang serving the policy)"
    )
    group.add_argument(
        "--base-url",
        help="e.g. http://127.0.0.1:30000/v1 (default: $PACORE_BASE_URL; the key comes from $PACORE_API_KEY)",
    )
    group.add_argument(
        "--model", help="model name on the server (default: $PACORE_MODEL, else its only model)"
    )
    group.add_argument("--max-tokens", type=int, default=None, help="cap on generated tokens per trajectory")
    group.add_argument("--concurrency", type=int, default=64, help="requests in flight to the server")
    group.add_argument(
        "--seed", type=int, default=0, help="seed of reference orders, draws and request seeds"
    )


@asynccontextmanager
async def open_coordinator(args: argparse.Namespace) -> AsyncIterator[Coordinator]:
    """A coordinator on the endpoint the options name (temperature = top_p = 1.0, as the paper samples).

    The backend is closed on exit.
    """
    if args.base_url:
        api_key = os.environ.get("PACORE_API_KEY") or os.environ.get("OPENAI_API_KEY")
        backend = OpenAIBackend(args.base_url, args.model, api_key=api_key, max_concurrency=args.concurrency)
    else:
        backend = backend_from_env(max_concurrency=args.concurrency)
    sampling = SamplingParams(temperature=1.0, top_p=1.0, max_tokens=args.max_tokens, seed=args.seed)
    async with backend:
        yield Coordinator("low", backend, sampling=sampling, seed=args.seed)
