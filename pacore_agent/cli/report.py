"""``pacore report``: the table, CSV, plot and HTML page of benchmark runs; ``pacore analyze``: their diagnostics."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from pacore_agent.cli import options
from pacore_agent.cli.common import app, err, fail, report_console, writing
from pacore_agent.exceptions import PacoreError

__all__ = ["analyze", "report"]


@app.command("report")
def report(
    directories: options.RunDirectories,
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
    seed: options.BootstrapSeed = 0,
    html: Annotated[
        Path | None,
        typer.Option(
            "--html", help="Write a self-contained HTML page of every round, message and synthesis."
        ),
    ] = None,
) -> None:
    """Summarize benchmark runs: accuracy with 95% intervals, tokens per problem, calls, emergent correctness.

    Accuracy is pass@1 averaged over samples (the mean over problems of each problem's mean), counting
    failed and ungraded samples as wrong; the failed and ungraded counts and the accuracy over completed
    samples only stand beside it. The interval is a problem-clustered percentile bootstrap. TTC counts the
    completion tokens of every trajectory of a sample, all rounds (pool-drawn ones included).
    """
    from pacore_agent.evaluation.report import plot_scaling, render_table, summarize, to_markdown, write_csv

    try:
        for directory in directories:
            _check_store(directory)
        reports = summarize(directories, resamples=resamples, seed=seed)
        if not reports:
            raise fail(f"no graded records in {', '.join(map(str, directories))}")
        if markdown is not None and str(markdown) == "-":
            sys.stdout.write(to_markdown(reports))
        else:
            report_console().print(render_table(reports))
            _print_blind_gaps(directories, resamples, seed)
            if markdown is not None:
                with writing("--markdown", markdown):
                    markdown.write_text(to_markdown(reports), encoding="utf-8")
        if csv_path is not None:
            with writing("--csv", csv_path):
                write_csv(reports, csv_path)
            err.print(f"wrote {csv_path}", highlight=False)
        if plot is not None:
            with writing("--plot", plot):
                plot_scaling(reports, plot)
            err.print(f"wrote {plot}", highlight=False)
        if html is not None:
            from pacore_agent.evaluation.viewer import write_html

            with writing("--html", html):
                written = write_html(directories, html, reports=reports)
            err.print(f"wrote {written}", highlight=False)
    except PacoreError as error:
        raise fail(str(error)) from None


def _check_store(directory: Path) -> None:
    """Refuse a run whose results have a corrupt line before the last, as ``bench`` does.

    A torn last line is skipped (a run still being written); anything earlier is damage that would
    silently shrink n.
    """
    from pacore_agent.evaluation.store import RunStore

    for _ in RunStore.open(directory, readonly=True).records(strict=True):
        pass


def _print_blind_gaps(directories: list[Path], resamples: int, seed: int) -> None:
    """The PaCoRe-minus-blind table, when a run holds both (see `pacore analyze`)."""
    from pacore_agent.evaluation.analyze import blind_gaps, render_gaps
    from pacore_agent.evaluation.report import load_run

    gaps = blind_gaps([load_run(d) for d in directories], resamples=resamples, seed=seed)
    if gaps:
        report_console().print(render_gaps(gaps))


@app.command("analyze")
def analyze(
    directories: options.RunDirectories,
    md: Annotated[Path | None, typer.Option("--md", help="Write the tables as Markdown.")] = None,
    csv_path: Annotated[
        Path | None, typer.Option("--csv", help="Write one row per (benchmark, method), counts included.")
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option("--plot", help="Write a PNG: accuracy against TTC of PaCoRe, pacore-blind and sc@k."),
    ] = None,
    markers: Annotated[
        list[str] | None,
        typer.Option(
            "--markers",
            help="A cross-checking marker (case-insensitive regular expression); repeat for several. "
            "Replaces the default list (message 3, reference 2, response 5, other solutions, cross-check, ...).",
        ),
    ] = None,
    resamples: Annotated[int, typer.Option(help="Bootstrap resamples of the gap's 95% interval.")] = 2000,
    seed: options.BootstrapSeed = 0,
) -> None:
    """Synthesis diagnostics of PaCoRe runs, and the gap between PaCoRe and its blind counterfactual.

    Per benchmark and multi-round method, over every synthesis trajectory: emergent correctness, majority
    shortcut against how often the plurality is right, novel answers (right / wrong), recovery and damage,
    cross-checking markers and message use, each with its counts.
    """
    from pacore_agent.evaluation import analyze as diagnostics
    from pacore_agent.evaluation.report import load_run

    try:
        patterns = tuple(markers) if markers else diagnostics.MARKER_PATTERNS
        runs = [load_run(d) for d in directories]
        items = [
            i for r in runs for i in diagnostics.analyze_records(r.records, run=r.name, markers=patterns)
        ]
        gaps = diagnostics.blind_gaps(runs, resamples=resamples, seed=seed)
        if not items and not gaps:
            raise fail(f"no graded multi-round records in {', '.join(map(str, directories))}")
        report_console().print(diagnostics.render_table(items))
        if gaps:
            report_console().print(diagnostics.render_gaps(gaps))
        if md is not None:
            with writing("--md", md):
                md.write_text(diagnostics.to_markdown(items, gaps), encoding="utf-8")
            err.print(f"wrote {md}", highlight=False)
        if csv_path is not None:
            with writing("--csv", csv_path):
                written = diagnostics.write_csv(items, csv_path)
            err.print(f"wrote {written}", highlight=False)
        if plot is not None:
            with writing("--plot", plot):
                written = diagnostics.plot_ttc(runs, plot, resamples=resamples, seed=seed)
            err.print(f"wrote {written}", highlight=False)
    except PacoreError as error:
        raise fail(str(error)) from None
