"""The ``pacore`` command line.

- ``pacore solve PROBLEM``: solve one problem with PaCoRe and print the answer, rounds and tokens, on an
  OpenAI-compatible endpoint, an in-process Hugging Face model, or the simulated model (``--backend``).
- ``pacore models``: what an endpoint serves.
- ``pacore sim-server``: the SIMULATED reasoning endpoint, for demos and tests.
- ``pacore serve``: an OpenAI-compatible server answering with PaCoRe over an upstream endpoint.
- ``pacore bench BENCHMARK``: run methods on a benchmark, graded and stored as they finish (resumable).
- ``pacore report DIR``: the table, CSV, scaling plot and HTML page of benchmark runs.
- ``pacore analyze DIR``: synthesis diagnostics (shortcuts, cross-checking, ...) and the blind gap.

One module per command family (`solve`, `serve`, `bench`, `report`), the options they share declared once in
`options`, the live display in `live`, and the app, consoles and one-line errors in `common`.
"""

from __future__ import annotations

from pacore_agent.cli import bench, report, serve, solve  # noqa: F401  (each module registers its commands)
from pacore_agent.cli.common import app, endpoint_configured, fail, make_backend, make_local_backend
from pacore_agent.exceptions import UsageError

__all__ = ["app", "endpoint_configured", "main", "make_backend", "make_local_backend"]


def main() -> None:
    """Entry point of the ``pacore`` console script."""
    from pacore_agent.runtime import tune_gc

    tune_gc()  # an application with thousands of requests in flight: see pacore_agent.runtime
    try:
        app()
    except (UsageError, OSError) as error:
        # Last resort: every command names the option for the errors it foresees; a usage or
        # environment error it did not foresee is still one line, never a traceback.
        raise SystemExit(fail(str(error)).exit_code) from None
