"""Options shared by several commands, declared once.

The generation options (``--temperature``, ``--top-p``, ``--max-tokens``, ``--extra-body``) are the same
for ``solve``, ``bench`` and ``serve`` and become one `SamplingParams` through `sampling`. ``none`` leaves
a field out of every request, so the endpoint's own default applies (hosted reasoning models such as
GPT-5 refuse ``top_p`` and any temperature but 1).

The budget options (``--budget-calls``, ``--budget-tokens``, ``--budget-seconds``, ``--budget-cost``,
``--price``, ``--on-budget``) limit each solve of ``solve`` and ``bench`` alike and become one `Budget`
through `with_budget_options`.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from pacore_agent.backends.base import SamplingParams
from pacore_agent.budget import ANY_MODEL, Budget, Price
from pacore_agent.cli.common import at_least_one, fail, positive
from pacore_agent.exceptions import UsageError

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
    "with_budget_options",
]

R = TypeVar("R")

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


def _budget_option(name: str, kind: Any, default: Any, *aliases: str, help: str) -> inspect.Parameter:
    """One budget option: a keyword parameter of a command, in the help's "Budget per solve" panel."""
    option = typer.Option(*aliases, rich_help_panel="Budget per solve", help=help)
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[kind, option], default=default
    )


# ``bench`` named its budgets --max-calls, --max-solve-tokens and --max-wall-s; those still work.
_BUDGET_OPTIONS = [
    _budget_option(
        "budget_calls", int | None, None, "--budget-calls", "--max-calls", help="At most this many requests."
    ),
    _budget_option(
        "budget_tokens",
        int | None,
        None,
        "--budget-tokens",
        "--max-solve-tokens",
        help="At most this many prompt plus completion tokens.",
    ),
    _budget_option(
        "budget_seconds",
        float | None,
        None,
        "--budget-seconds",
        "--max-wall-s",
        help="At most this many seconds.",
    ),
    _budget_option("budget_cost", float | None, None, help="At most this cost (needs --price)."),
    _budget_option(
        "price",
        str | None,
        None,
        help="Price of the model per million tokens as INPUT,OUTPUT (e.g. 0.2,0.8), for --budget-cost.",
    ),
    _budget_option(
        "on_budget",
        str,
        "raise",
        help="When a budget runs out: raise (the solve stops: `solve` exits 1 and keeps the partial trace, "
        "`bench` grades what finished as it stands) or synthesize (the final round runs now on what finished).",
    ),
]


def _budget(
    budget_calls: int | None,
    budget_tokens: int | None,
    budget_seconds: float | None,
    budget_cost: float | None,
    price: str | None,
    on_budget: str,
) -> Budget | None:
    at_least_one("--budget-calls", budget_calls)
    at_least_one("--budget-tokens", budget_tokens)
    positive("--budget-seconds", budget_seconds)
    positive("--budget-cost", budget_cost)
    if on_budget not in ("raise", "synthesize"):
        raise fail(f"--on-budget must be raise or synthesize, got {on_budget!r}")
    if budget_cost is not None and price is None:
        raise fail("--budget-cost needs --price INPUT,OUTPUT (per million tokens), e.g. --price 0.2,0.8")
    prices = {}
    if price is not None:
        try:
            input_price, output_price = (float(part) for part in price.split(","))
            prices[ANY_MODEL] = Price(input=input_price, output=output_price)
        except (ValueError, UsageError):
            raise fail(
                f"--price must be INPUT,OUTPUT per million tokens, e.g. 0.2,0.8; got {price!r}"
            ) from None
    limits = {
        "max_calls": budget_calls,
        "max_tokens": budget_tokens,
        "max_wall_s": budget_seconds,
        "max_cost": budget_cost,
    }
    if all(limit is None for limit in limits.values()):
        return None
    return Budget(**limits, prices=prices, on_exceeded=on_budget)  # type: ignore[arg-type]  # checked above


def with_budget_options(command: Callable[..., R]) -> Callable[..., R]:
    """Give a command the budget options, declared here once.

    The command takes a ``budget: Budget | None`` parameter (default ``None``); on the command line it is
    the ``--budget-*``, ``--price`` and ``--on-budget`` options, checked before the command runs (a bad
    value exits naming its option). ``--price`` prices whatever model the endpoint serves.
    """
    signature = inspect.signature(command, eval_str=True)
    kept = [parameter for name, parameter in signature.parameters.items() if name != "budget"]

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> R:
        given = {parameter.name: kwargs.pop(parameter.name) for parameter in _BUDGET_OPTIONS}
        return command(*args, budget=_budget(**given), **kwargs)

    run.__signature__ = signature.replace(parameters=[*kept, *_BUDGET_OPTIONS])  # type: ignore[attr-defined]
    return run


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
