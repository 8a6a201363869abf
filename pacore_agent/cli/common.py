"""What every ``pacore`` command shares: the app, the consoles, one-line errors and the endpoint.

Usage and environment errors end a command with one line, ``error: <what to change>``, and exit code 2
(1 when the run itself failed); no user of the command line sees a traceback for them.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import typer
from rich.console import Console

from pacore_agent.backends.base import Backend
from pacore_agent.backends.transformers import DEFAULT_LOCAL_MODEL, TransformersBackend

__all__ = [
    "LOCAL_BATCH",
    "BackendKind",
    "api_key",
    "app",
    "at_least_one",
    "endpoint_configured",
    "err",
    "fail",
    "make_backend",
    "make_local_backend",
    "out",
    "positive",
    "report_console",
    "writing",
]

app = typer.Typer(
    name="pacore",
    help="PaCoRe: Parallel Coordinated Reasoning on any OpenAI-compatible endpoint.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

BackendKind = Literal["openai", "transformers", "sim"]
LOCAL_BATCH = 8
"""Trajectories per batched ``generate`` of the transformers backend (a round of 4 is one call)."""

_ENDPOINT_VARIABLES = ("PACORE_BASE_URL", "OPENAI_BASE_URL", "PACORE_API_KEY", "OPENAI_API_KEY")


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``error: message`` on one line of standard error; raise the returned exit."""
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def at_least_one(option: str, value: int | None) -> None:
    """Exit naming ``option`` when a count that must be positive is not (``None``: not given)."""
    if value is not None and value < 1:
        raise fail(f"{option} must be at least 1, got {value}")


def positive(option: str, value: float | None) -> None:
    """Exit naming ``option`` when a quantity that must be positive is not (``None``: not given)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise fail(f"{option} must be a positive number, got {value}")


@contextlib.contextmanager
def writing(option: str, path: Path) -> Iterator[None]:
    """An output file that cannot be written exits naming its option."""
    try:
        yield
    except OSError as error:
        raise fail(f"{option} {path}: cannot write it ({error.strerror or error})") from None


def api_key(api_key_env: str | None) -> str | None:
    """The API key from ``--api-key-env``'s variable, else the standard ones."""
    if api_key_env:
        value = os.environ.get(api_key_env)
        if not value:
            raise fail(f"--api-key-env names {api_key_env}, which is not set")
        return value
    return os.environ.get("PACORE_API_KEY") or os.environ.get("OPENAI_API_KEY")


def make_backend(base_url: str | None, model: str | None, api_key_env: str | None, **options: Any) -> Backend:
    """The backend the CLI options describe (an `OpenAIBackend`, from the options or the environment)."""
    from pacore_agent.backends.env import backend_from_env
    from pacore_agent.backends.openai_compat import OpenAIBackend

    if base_url:
        return OpenAIBackend(base_url, model, api_key=api_key(api_key_env), **options)
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


def report_console() -> Console:
    """The standard output console, wide enough for report tables when it is not a terminal."""
    return out if out.is_terminal else Console(width=max(out.width, 160))
