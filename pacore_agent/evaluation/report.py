"""Reports of benchmark runs: a Table-1-style table (terminal and Markdown), CSV, and a scaling plot.

One row per (run directory, benchmark, method), from the records of `pacore_agent.evaluation.store.RunStore`
and the run's ``failures.jsonl``:

- ``n``: every (problem, sample) asked for: the stored records plus the items that failed and are not in
  the store. ``problems``: distinct problems among them.
- ``accuracy``: pass@1 averaged over samples, as in the paper: each problem's mean correctness over its
  samples, then the mean over problems (the plain mean over samples when every problem has as many). A
  FAILED sample (an endpoint error, ...) and an UNGRADED one (the grader timed out or erred) count as
  wrong, as the paper's pass@1 and the official pipeline count an empty answer: a method that fails more
  often cannot look better for it.
- ``ci_low``, ``ci_high``: a 95% percentile interval of that accuracy (failures and ungraded samples at 0)
  from a PROBLEM-CLUSTERED BOOTSTRAP: the problems are resampled with replacement, each bringing all of
  its samples, and the accuracy recomputed (``resamples`` times, seeded, so reports repeat exactly). It
  measures the uncertainty over problems like these, which dominates once there are many samples per
  problem; an interval over samples would be far too narrow. The bounds are the order statistics
  ``floor(a (B - 1))`` and ``ceil((1 - a)(B - 1))`` of the B sorted resampled accuracies, a = 0.025.
  With a single problem there is nothing to resample: the interval is then Wilson's over the samples.
- ``failed``: samples that failed and are not in the store (a rerun of ``pacore bench`` retries them).
- ``ungraded``: stored samples whose grader timed out or erred (``info["grading"]["status"]``).
- ``completed_accuracy``: the same average over COMPLETED samples only (stored and graded), failed and
  ungraded ones left out; empty when there are none. Shown beside ``accuracy``, never instead of it.
- ``score``: the same average as ``accuracy`` of the graded score (the pass rate of code tests; equal to
  ``accuracy`` for math), failed and ungraded samples at 0.
- ``ttc_k``: test-time compute per problem in thousands of tokens: completion tokens of every trajectory
  of every round of a sample (with pool evaluation the drawn first-round trajectories count), averaged
  as ``accuracy`` is, over the samples with a trace (stored ones, and failed ones that kept a partial one).
- ``calls``, ``wall_s``: requests and seconds per sample, averaged the same way (wall time includes
  waiting for the run's shared concurrency limit).
- ``synth_all_wrong``: samples whose final round was given only wrong messages; ``emergent``: those that
  were answered right anyway (emergent correctness); ``emergent_rate``: their ratio. Empty for one-round
  methods and runs graded without ``grade_messages``.
- ``truncated``: stored samples whose final answer hit the length limit (``finish_reason == "length"``);
  by default they earn 0 (see `pacore_agent.evaluation.grading.grade_message`).
- ``bypassed``: samples in which a round left no message, so the next round got the problem alone (the
  paper's Appendix B rule for an empty message set).
"""

from __future__ import annotations

import csv
import math
import os
import random
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from pacore_agent.evaluation.store import (
    CONFIG_FILENAME,
    FailedItem,
    RunRecord,
    RunStore,
    read_config,
    read_failures,
)
from pacore_agent.exceptions import UsageError
from pacore_agent.results import SolveResult

__all__ = [
    "CSV_COLUMNS",
    "MethodReport",
    "RunData",
    "bootstrap_interval",
    "label_offsets",
    "load_run",
    "plot_scaling",
    "render_table",
    "summarize",
    "summarize_records",
    "to_markdown",
    "wilson_interval",
    "write_csv",
]

CSV_COLUMNS = (
    "benchmark",
    "method",
    "n",
    "accuracy",
    "ci_low",
    "ci_high",
    "ttc_k",
    "calls",
    "wall_s",
    "problems",
    "failed",
    "ungraded",
    "completed_accuracy",
    "score",
    "synth_all_wrong",
    "emergent",
    "emergent_rate",
    "truncated",
    "bypassed",
    "protocol",
    "model",
    "run",
)
"""The CSV columns, in order."""

DEFAULT_RESAMPLES = 2000
CONFIDENCE = 0.95
SIM_MODEL = "pacore-sim"  # the simulated endpoint's model id (pacore_agent.backends.sim.SIM_MODEL)

_FAMILY_ORDER = {"single": 0, "sc": 1, "bon": 2, "pacore": 3, "pacore-blind": 4}


@dataclass(frozen=True)
class MethodReport:
    """The summary of one (run, benchmark, method); see the module docstring for each figure."""

    run: str
    benchmark: str
    method: str
    n: int
    problems: int
    accuracy: float
    ci_low: float
    ci_high: float
    score: float
    ttc_k: float
    calls: float
    wall_s: float
    synth_all_wrong: int = 0
    emergent: int = 0
    failed: int = 0
    ungraded: int = 0
    completed_accuracy: float | None = None
    truncated: int = 0
    bypassed: int = 0
    protocol: str = "fresh"
    model: str | None = None

    @property
    def emergent_rate(self) -> float | None:
        """``emergent / synth_all_wrong``, or ``None`` when no final round was given only wrong messages."""
        return self.emergent / self.synth_all_wrong if self.synth_all_wrong else None

    @property
    def simulated(self) -> bool:
        """Whether the numbers come from the simulated endpoint (a test double, not a model)."""
        return self.model == SIM_MODEL

    @property
    def family(self) -> str:
        """``pacore``, ``pacore-blind``, ``sc``, ``bon``, ``single`` (or the method itself when none of those)."""
        spec = _spec(self.method)
        if spec is None:
            return self.method
        return "pacore-blind" if spec.blind else str(spec.kind)

    @property
    def compute_order(self) -> tuple[int, int, int, str]:
        """Sort key: family, then compute (first-round width, then trajectories)."""
        spec = _spec(self.method)
        if spec is None:
            return (len(_FAMILY_ORDER), 0, 0, self.method)
        return (_FAMILY_ORDER[self.family], spec.first_width, spec.trajectories, self.method)

    def row(self) -> dict[str, Any]:
        """The CSV row."""
        rate = self.emergent_rate
        return {
            "benchmark": self.benchmark,
            "method": self.method,
            "n": self.n,
            "accuracy": round(self.accuracy, 6),
            "ci_low": round(self.ci_low, 6),
            "ci_high": round(self.ci_high, 6),
            "ttc_k": round(self.ttc_k, 4),
            "calls": round(self.calls, 4),
            "wall_s": round(self.wall_s, 4),
            "problems": self.problems,
            "failed": self.failed,
            "ungraded": self.ungraded,
            "completed_accuracy": ""
            if self.completed_accuracy is None
            else round(self.completed_accuracy, 6),
            "score": round(self.score, 6),
            "synth_all_wrong": self.synth_all_wrong,
            "emergent": self.emergent,
            "emergent_rate": "" if rate is None else round(rate, 6),
            "truncated": self.truncated,
            "bypassed": self.bypassed,
            "protocol": self.protocol,
            "model": self.model or "",
            "run": self.run,
        }


@dataclass
class RunData:
    """What a run directory holds.

    Attributes:
        name: The directory's name (the ``run`` column).
        config: Its ``config.json`` (empty when missing).
        records: Every record of its store.
        failed: The failed items not in the store (the last failure of each).
    """

    name: str
    config: dict[str, Any]
    records: list[RunRecord]
    failed: list[FailedItem] = field(default_factory=list)


def _spec(method: str) -> Any:
    from pacore_agent.evaluation.bench.methods import MethodSpec

    try:
        return MethodSpec.parse(method)
    except UsageError:
        return None


def load_run(directory: str | os.PathLike[str]) -> RunData:
    """Read a run directory (safe while ``pacore bench`` is still writing it).

    Raises:
        UsageError: The directory holds no results, or its ``config.json`` is not a JSON object.
    """
    path = Path(directory)
    store = RunStore.open(path, readonly=True)
    if not store.path.is_file():
        raise UsageError(f"{path} holds no benchmark results ({store.path.name} is missing)")
    records = list(store.records())
    config = read_config(path / CONFIG_FILENAME)
    done = {r.key for r in records}
    failed = {f.key: f for f in read_failures(path) if f.key not in done}  # a later failure replaces one
    return RunData(path.resolve().name, config, records, list(failed.values()))


def wilson_interval(successes: float, n: int, *, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson's score interval of a proportion (``(0, 1)`` when ``n`` is 0)."""
    if n == 0:
        return (0.0, 1.0)
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def bootstrap_interval(
    per_problem: Sequence[Sequence[float]],
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> tuple[float, float]:
    """The problem-clustered bootstrap interval of a mean of per-problem means (see the module docstring).

    Args:
        per_problem: For each problem, its samples' values (0/1 for correctness).
        resamples: Bootstrap resamples B.
        seed: Seed of the resampling.
        confidence: Coverage of the interval.
    """
    means = [sum(values) / len(values) for values in per_problem if values]
    if not means:
        return (0.0, 0.0)
    if len(means) == 1:
        values = [v for vs in per_problem for v in vs]
        return wilson_interval(sum(values), len(values), confidence=confidence)
    rng = random.Random(seed)
    count = len(means)
    stats = sorted(sum(rng.choices(means, k=count)) / count for _ in range(resamples))
    alpha = (1 - confidence) / 2
    low = stats[math.floor(alpha * (resamples - 1))]
    high = stats[math.ceil((1 - alpha) * (resamples - 1))]
    return (low, high)


def _macro(per_problem: dict[str, list[float]]) -> float:
    means = [sum(v) / len(v) for v in per_problem.values() if v]
    return sum(means) / len(means) if means else 0.0


@dataclass
class SampleGroup:
    """Per-problem values of one (benchmark, method), gathered sample by sample (see `sample_groups`)."""

    correct: dict[str, list[float]] = field(default_factory=dict)  # every sample asked for; 0 unless right
    completed: dict[str, list[float]] = field(default_factory=dict)  # stored and graded samples only
    score: dict[str, list[float]] = field(default_factory=dict)
    ttc: dict[str, list[float]] = field(default_factory=dict)  # samples with a trace
    calls: dict[str, list[float]] = field(default_factory=dict)
    wall: dict[str, list[float]] = field(default_factory=dict)
    failed: int = 0
    ungraded: int = 0
    all_wrong: int = 0
    emergent: int = 0
    truncated: int = 0
    bypassed: int = 0

    def add_trace(self, problem_id: str, result: SolveResult) -> None:
        self.ttc.setdefault(problem_id, []).append(result.ttc_tokens / 1000)
        self.calls.setdefault(problem_id, []).append(float(result.calls))
        self.wall.setdefault(problem_id, []).append(result.wall_s)
        self.bypassed += bool(result.info.get("bypassed_rounds"))

    def add_record(self, record: RunRecord) -> None:
        pid, grading = record.problem_id, record.grading
        graded = record.correct is not None and grading.get("status", "graded") == "graded"
        self.correct.setdefault(pid, []).append(1.0 if graded and record.correct else 0.0)
        score = record.score if record.score is not None else float(bool(record.correct))
        self.score.setdefault(pid, []).append(score if graded else 0.0)
        if graded:
            self.completed.setdefault(pid, []).append(1.0 if record.correct else 0.0)
        else:
            self.ungraded += 1
        self.add_trace(pid, record.result)
        self.truncated += bool(grading.get("truncated"))
        rounds = grading.get("rounds") or []
        given = rounds[-1].get("correct") if rounds else None
        if given and all(flag is False for flag in given):  # every message graded, and wrong
            self.all_wrong += 1
            self.emergent += graded and bool(record.correct)

    def add_failure(self, failure: FailedItem) -> None:
        self.failed += 1
        self.correct.setdefault(failure.problem_id, []).append(0.0)
        self.score.setdefault(failure.problem_id, []).append(0.0)
        if failure.partial is not None:
            self.add_trace(failure.problem_id, failure.partial)


def sample_groups(
    records: Iterable[RunRecord], failed: Iterable[FailedItem] = ()
) -> dict[tuple[str, str], SampleGroup]:
    """Every sample asked for, per (benchmark, method): the one definition of accuracy's samples.

    A failed item and an ungraded record count as a wrong sample in ``correct``; ``completed`` holds
    the stored, graded samples only. The report, its intervals and `pacore analyze`'s blind gap read these.
    """
    groups: dict[tuple[str, str], SampleGroup] = {}
    for record in records:
        groups.setdefault((record.benchmark, record.method), SampleGroup()).add_record(record)
    for failure in failed:
        groups.setdefault((failure.benchmark, failure.method), SampleGroup()).add_failure(failure)
    return groups


def summarize_records(
    records: Iterable[RunRecord],
    *,
    run: str = "",
    config: dict[str, Any] | None = None,
    failed: Iterable[FailedItem] = (),
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> list[MethodReport]:
    """Summaries per (benchmark, method) of a run's records and failures, in family and compute order.

    Args:
        records: Run records; ungraded ones (``correct is None`` or a grading status other than
            ``graded``) count as wrong in ``accuracy`` and are left out of ``completed_accuracy``.
        run: The run's name (the ``run`` column).
        config: The run's ``config.json`` (model and protocol columns).
        failed: Failed items not in the store: each counts as a wrong sample.
        resamples: Bootstrap resamples.
        seed: Bootstrap seed.
    """
    config = config or {}
    groups = sample_groups(records, failed)
    reports = []
    for (benchmark, method), group in groups.items():
        low, high = bootstrap_interval(list(group.correct.values()), resamples=resamples, seed=seed)
        reports.append(
            MethodReport(
                run=run,
                benchmark=benchmark,
                method=method,
                n=sum(len(v) for v in group.correct.values()),
                problems=len(group.correct),
                accuracy=_macro(group.correct),
                ci_low=low,
                ci_high=high,
                score=_macro(group.score),
                ttc_k=_macro(group.ttc),
                calls=_macro(group.calls),
                wall_s=_macro(group.wall),
                synth_all_wrong=group.all_wrong,
                emergent=group.emergent,
                failed=group.failed,
                ungraded=group.ungraded,
                completed_accuracy=_macro(group.completed) if group.completed else None,
                truncated=group.truncated,
                bypassed=group.bypassed,
                protocol=str(config.get("protocol", "fresh")),
                model=config.get("model"),
            )
        )
    return sorted(reports, key=lambda r: (r.run, r.benchmark, r.compute_order))


def summarize(
    directories: Sequence[str | os.PathLike[str]], *, resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> list[MethodReport]:
    """`summarize_records` over one or more run directories."""
    reports: list[MethodReport] = []
    for directory in directories:
        data = load_run(directory)
        reports += summarize_records(
            data.records,
            run=data.name,
            config=data.config,
            failed=data.failed,
            resamples=resamples,
            seed=seed,
        )
    return reports


# --------------------------------------------------------------------------------------------------
# Rendering


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def _emergent_text(report: MethodReport) -> str:
    rate = report.emergent_rate
    if rate is None:
        return "-"
    return f"{report.emergent}/{report.synth_all_wrong} ({100 * rate:.0f}%)"


def _cells(report: MethodReport, *, with_run: bool) -> list[str]:
    cells = [report.run] if with_run else []
    completed = report.completed_accuracy
    return [
        *cells,
        report.benchmark,
        report.method,
        str(report.n),
        f"{_pct(report.accuracy)} [{_pct(report.ci_low)}, {_pct(report.ci_high)}]",
        str(report.failed),
        str(report.ungraded),
        "-" if completed is None else _pct(completed),
        f"{report.ttc_k:,.1f}" if report.ttc_k >= 10 else f"{report.ttc_k:.2f}",
        f"{report.calls:.1f}",
        f"{report.wall_s:.2f}",
        _emergent_text(report),
        str(report.truncated),
        str(report.bypassed),
    ]


_HEADERS = [
    "benchmark",
    "method",
    "n",
    "accuracy % [95% CI]",
    "failed",
    "ungraded",
    "completed-only acc %",
    "TTC (k tokens)",
    "calls",
    "wall s",
    "emergent",
    "truncated",
    "bypassed",
]


def _title(reports: Sequence[MethodReport]) -> str:
    models = sorted({r.model or "?" for r in reports})
    protocols = sorted({r.protocol for r in reports})
    title = f"PaCoRe benchmark report: model {', '.join(models)}; protocol {', '.join(protocols)}"
    if any(r.simulated for r in reports):
        title += " (SIMULATED endpoint: a test double, not a language model)"
    return title


_NOTE = (
    "n: every sample asked for. accuracy: pass@1 averaged over samples (mean over problems of each "
    "problem's mean), failed and ungraded samples counted as wrong; 95% CI: problem-clustered percentile "
    "bootstrap of that accuracy. completed-only acc: the same over completed, graded samples only (failed "
    "and ungraded left out). TTC: completion tokens per sample, all rounds. emergent: right answers among "
    "samples whose final round got only wrong messages. truncated: final answers cut by the length limit "
    "(graded 0 unless run with --truncation grade). bypassed: samples where a round left no message and the next got the problem alone."
)


def render_table(reports: Sequence[MethodReport]) -> Table:
    """The report as a rich table."""
    with_run = len({r.run for r in reports}) > 1
    table = Table(title=_title(reports), caption=_NOTE, title_justify="left", caption_justify="left")
    for header in (["run"] if with_run else []) + _HEADERS:
        table.add_column(header, justify="left" if header in ("run", "benchmark", "method") else "right")
    for report in reports:
        table.add_row(*_cells(report, with_run=with_run))
    return table


def to_markdown(reports: Sequence[MethodReport]) -> str:
    """The report as a Markdown table, with its title and definitions."""
    with_run = len({r.run for r in reports}) > 1
    headers = (["run"] if with_run else []) + _HEADERS
    lines = [f"**{_title(reports)}**", "", "| " + " | ".join(headers) + " |"]
    lines.append(
        "|" + "|".join("---" if h in ("run", "benchmark", "method") else "---:" for h in headers) + "|"
    )
    for report in reports:
        lines.append("| " + " | ".join(_cells(report, with_run=with_run)) + " |")
    lines += ["", _NOTE, ""]
    return "\n".join(lines)


def write_csv(reports: Sequence[MethodReport], path: str | os.PathLike[str]) -> Path:
    """Write one CSV row per (run, benchmark, method) with `CSV_COLUMNS`."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(CSV_COLUMNS))
        writer.writeheader()
        for report in reports:
            writer.writerow(report.row())
    return target


_RUN_STYLES = ("-", "--", ":", "-.")

_FAMILY_STYLE = {
    "pacore": ("PaCoRe", "tab:red", "o"),
    "pacore-blind": ("PaCoRe blind (messages withheld)", "tab:orange", "v"),
    "sc": ("self-consistency", "tab:blue", "s"),
    "bon": ("best-of-n (oracle)", "tab:gray", "^"),
    "single": ("single", "black", "D"),
}


def label_offsets(points: Sequence[tuple[float, float]], x_span: float, y_span: float) -> list[int]:
    """Vertical offsets (in points) for point labels so that labels of nearby points do not overlap.

    Each label sits 5 points above its point, raised by 10 points for every earlier label within 8% of
    the x span and 4% of the y span of it (x in the axis' own units: pass log10 for a log axis).
    """
    offsets: list[int] = []
    for number, (x, y) in enumerate(points):
        crowd = sum(
            1
            for other_x, other_y in points[:number]
            if abs(other_x - x) < 0.08 * x_span and abs(other_y - y) < 0.04 * y_span
        )
        offsets.append(5 + 10 * crowd)
    return offsets


def plot_scaling(reports: Sequence[MethodReport], path: str | os.PathLike[str]) -> Path:
    """Accuracy against tokens per problem (log x), one panel per benchmark, one line per method family.

    PaCoRe schedules are joined in compute order, ``sc@k`` by k, ``bon@n`` by n; ``single`` is a point.
    Error bars are the 95% intervals. Needs matplotlib (the ``bench`` extra).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise UsageError("plots need matplotlib: pip install 'pacore[bench]'") from exc
    if not reports:
        raise UsageError("nothing to plot: the report is empty")
    benchmarks = sorted({r.benchmark for r in reports})
    runs = sorted({r.run for r in reports})
    figure, axes = plt.subplots(1, len(benchmarks), figsize=(8.5 * len(benchmarks), 5.2), squeeze=False)
    for axis, benchmark in zip(axes[0], benchmarks, strict=True):
        labels: list[tuple[float, float, str, str | None]] = []  # placed after every line, see below
        for number, run in enumerate(runs):
            dashes = _RUN_STYLES[number % len(_RUN_STYLES)]
            rows = [r for r in reports if r.benchmark == benchmark and r.run == run and r.n]
            families: dict[str, list[MethodReport]] = {}
            for row in rows:
                families.setdefault(row.family, []).append(row)
            for family, members in sorted(families.items(), key=lambda kv: _FAMILY_ORDER.get(kv[0], 9)):
                members.sort(key=lambda r: r.compute_order)
                name, colour, marker = _FAMILY_STYLE.get(family, (family, None, "x"))
                label = name if len(runs) == 1 else f"{name} ({run})"
                xs = [max(r.ttc_k, 1e-3) for r in members]
                ys = [100 * r.accuracy for r in members]
                errors = [
                    [100 * (r.accuracy - r.ci_low) for r in members],
                    [100 * (r.ci_high - r.accuracy) for r in members],
                ]
                axis.errorbar(
                    xs,
                    ys,
                    yerr=errors,
                    label=label,
                    color=colour,
                    marker=marker,
                    linestyle=dashes if len(members) > 1 else "none",
                    markerfacecolor=colour if number == 0 else "white",
                    capsize=3,
                    markersize=6,
                )
                labels += [(x, y, row.method, colour) for x, y, row in zip(xs, ys, members, strict=True)]
        # Methods at the same compute and accuracy would print their names on top of each other.
        spread = [math.log10(x) for x, _, _, _ in labels]
        offsets = label_offsets(
            [(lx, y) for lx, (_, y, _, _) in zip(spread, labels, strict=True)],
            x_span=max(max(spread) - min(spread), 1.0) if spread else 1.0,  # at least a decade
            y_span=100.0,
        )
        for (x, y, method, colour), offset in zip(labels, offsets, strict=True):
            axis.annotate(
                method, (x, y), textcoords="offset points", xytext=(5, offset), fontsize=8, color=colour
            )
        axis.set_xscale("log")
        axis.set_xlabel("test-time compute per problem (thousands of completion tokens, log scale)")
        axis.set_ylabel("accuracy (%, pass@1 averaged over samples)")
        simulated = any(r.simulated for r in reports if r.benchmark == benchmark)
        axis.set_title(f"{benchmark}: accuracy vs compute" + (" (SIMULATED endpoint)" if simulated else ""))
        axis.grid(True, which="both", alpha=0.3)
        shown = [max(r.ttc_k, 1e-3) for r in reports if r.benchmark == benchmark and r.n] or [1.0]
        low, high = min(shown) / 1.5, max(shown) * 2.5  # room on the right for the last labels
        axis.set_xlim(low, high)
        axis.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}"))
        # Label a few minor ticks (2, 3, 5 x 10^k) when the axis spans too little for decades to show.
        digits = "235" if math.log10(high / low) <= 2 else ""
        axis.xaxis.set_minor_formatter(
            matplotlib.ticker.FuncFormatter(
                lambda x, _, digits=digits: f"{x:g}" if f"{x:.0e}"[0] in digits else ""
            )
        )
        axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, borderaxespad=0.0)
    figure.tight_layout()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, dpi=120)
    plt.close(figure)
    return target
