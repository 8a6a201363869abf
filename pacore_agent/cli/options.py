"""Options shared by several commands, declared once.

The generation options (``--temperature``, ``--top-p``, ``--max-tokens``, ``--extra-body``) are the same
for ``solve``, ``bench`` and ``serve`` and become one `SamplingParams` through `sampling`. ``none`` leaves
a field out of every request, so the endpoint's own default applies (hosted reasoning models such as
GPT-5 refuse ``top_p`` and any temperature but 1).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer

from pacore_agent.backends.base import SamplingParams
from pacore_agent.cli.common import at_least_one, fail

__all__ = [
    "PAPER",
    "ApiKeyEnv",
    "BaseUrl",
    "BootstrapSeed",
    "ExtraBody",
    "MaxTokens",
    "Order",
    "RunDirectories",
    "Temperature",
    "TopP",
    "sampling",
]

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

PAPER = "1.0"
"""The paper's temperature and top_p, the default of both options."""

Temperature = Annotated[
    str,
    typer.Option(
        "--temperature",
        help="Sampling temperature (paper: 1.0), or none to leave it to the endpoint (hosted reasoning models).",
        metavar="FLOAT|none",
    ),
]
TopP = Annotated[
    str,
    typer.Option(
        "--top-p",
        help="Nucleus sampling mass (paper: 1.0), or none to leave it out (GPT-5 and the o-series refuse it).",
        metavar="FLOAT|none",
    ),
]
MaxTokens = Annotated[
    int | None,
    typer.Option(
        "--max-tokens",
        help="Cap on tokens per trajectory (default: the endpoint's; sent as max_completion_tokens where "
        "the endpoint wants it).",
        metavar="N",
    ),
]
ExtraBody = Annotated[
    str | None,
    typer.Option(
        "--extra-body",
        help='JSON object added to every request, e.g. \'{"reasoning_effort": "high"}\' or '
        '\'{"chat_template_kwargs": {"enable_thinking": true}}\'.',
        metavar="JSON",
    ),
]

Order = Annotated[str, typer.Option(help="Reference order: seeded, official or launch.")]
RunDirectories = Annotated[
    list[Path], typer.Argument(help="One or more run directories of `pacore bench`.", metavar="DIR")
]
BootstrapSeed = Annotated[int, typer.Option(help="Seed of the bootstrap.")]


def _number(option: str, text: str) -> float | None:
    if text.strip().lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        raise fail(f"{option} must be a number or none, got {text!r}") from None
    if not math.isfinite(value):
        raise fail(f"{option} must be a finite number or none, got {text!r}")
    return value


def sampling(
    temperature: str, top_p: str, max_tokens: int | None, extra_body: str | None, **fields: Any
) -> SamplingParams:
    """The `SamplingParams` of the generation options; a bad value exits naming its option."""
    body: dict[str, Any] = {}
    if extra_body is not None:
        try:
            body = json.loads(extra_body)
        except json.JSONDecodeError as error:
            message = f"--extra-body is not valid JSON ({error.msg} at character {error.pos}): {extra_body!r}"
            raise fail(message) from None
        if not isinstance(body, dict):
            raise fail(
                f'--extra-body must be a JSON object such as \'{{"reasoning_effort": "high"}}\', got {extra_body!r}'
            )
    at_least_one("--max-tokens", max_tokens)
    temperature_value = _number("--temperature", temperature)
    top_p_value = _number("--top-p", top_p)
    if temperature_value is not None and not 0 <= temperature_value <= 2:
        raise fail(f"--temperature must be within [0, 2] or none, got {temperature}")
    if top_p_value is not None and not 0 < top_p_value <= 1:
        raise fail(f"--top-p must be within (0, 1] or none, got {top_p}")
    return SamplingParams(
        temperature=temperature_value, top_p=top_p_value, max_tokens=max_tokens, extra_body=body, **fields
    )
