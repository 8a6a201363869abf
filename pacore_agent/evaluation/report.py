"""Reports of benchmark runs: a Table-1-style table (terminal and Markdown), CSV, and a scaling plot.

One row per (run directory, benchmark, method), from the records of `pacore_agent.evaluation.store.RunStore`:

- ``n``: graded samples; ``problems``: distinct problems among them.
- ``accuracy``: pass@1 averaged over samples, as in the paper: each problem's mean correctness over its
  samples, then the mean over problems (the plain mean over samples when every problem has as many).
- ``ci_low``, ``ci_high``: a 95% percentile interval from a PROBLEM-CLUSTERED BOOTSTRAP: the problems are
  resampled with replacement, each bringing all of its samples, and the accuracy recomputed
  (``resamples`` times, seeded, so reports repeat exactly). It measures the uncertainty over problems like
  these, which dominates once there are many samples per problem; an interval over samples would be far
  too narrow. The bounds are the order statistics ``floor(a (B - 1))`` and ``ceil((1 - a)(B - 1))`` of
  the B sorted resampled accuracies, a = 0.025. With a single problem there is nothing to resample: the
  interval is then Wilson's over the samples.
- ``score``: the same average of the graded score (the pass rate of code tests; equal to ``accuracy`` for
  math).
- ``ttc_k``: test-time compute per problem in thousands of tokens: completion tokens of every trajectory
  of every round of a sample (with pool evaluation the drawn first-round trajectories count), averaged
  as ``accuracy`` is.
- ``calls``, ``wall_s``: requests and seconds per sample, averaged the same way (wall time includes
  waiting for the run's shared concurrency limit).
- ``synth_all_wrong``: samples whose final round was given only wrong messages; ``emergent``: those that
  were answered right anyway (emergent correctness); ``emergent_rate``: their ratio. Empty for one-round
  methods and runs graded without ``grade_messages``.
- ``errors``: items that failed and are not in the store (a rerun of ``pacore bench`` retries them).
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from pacore_agent.evaluation.store import CONFIG_FILENAME, RunRecord, RunStore
from pacore_agent.exceptions import UsageError

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
    "score",
    "synth_all_wrong",
    "emergent",
    "emergent_rate",
    "errors",
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
    errors: int = 0
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
        return (_FAMILY_ORDER[spec.kind], spec.first_width, spec.trajectories, self.method)

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
            "score": round(self.score, 6),
            "synth_all_wrong": self.synth_all_wrong,
            "emergent": self.emergent,
            "emergent_rate": "" if rate is None else round(rate, 6),
            "errors": self.errors,
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
        failed: Keys of failed items not in the store, with their count per (benchmark, method).
    """

    name: str
    config: dict[str, Any]
    records: list[RunRecord]
    failed: dict[tuple[str, str], int] = field(default_factory=dict)


def _spec(method: str) -> Any:
    from pacore_agent.evaluation.bench.methods import MethodSpec

    try:
        return MethodSpec.parse(method)
    except UsageError:
        return None


def load_run(directory: str | os.PathLike[str]) -> RunData:
    """Read a run directory (safe while ``pacore bench`` is still writing it).

    Raises:
        UsageError: The directory holds no results.
    """
    from pacore_agent.evaluation.bench.runner import read_failures

    path = Path(directory)
    store = RunStore.open(path, readonly=True)
    if not store.path.is_file():
        raise UsageError(f"{path} holds no benchmark results ({store.path.name} is missing)")
    records = list(store.records())
    config_path = path / CONFIG_FILENAME
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    done = {r.key for r in records}
    failed_keys = {f.key for f in read_failures(path)} - done
    failed: dict[tuple[str, str], int] = {}
    for key in failed_keys:
        failed[(key.benchmark, key.method)] = failed.get((key.benchmark, key.method), 0) + 1
    return RunData(path.resolve().name, config, records, failed)


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


def _grading(record: RunRecord) -> dict[str, Any]:
    grading = record.info.get("grading") or record.result.info.get("grading") or {}
    return grading if isinstance(grading, dict) else {}


def _macro(per_problem: dict[str, list[float]]) -> float:
    means = [sum(v) / len(v) for v in per_problem.values() if v]
    return sum(means) / len(means) if means else 0.0


def summarize_records(
    records: Iterable[RunRecord],
    *,
    run: str = "",
    config: dict[str, Any] | None = None,
    failed: dict[tuple[str, str], int] | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> list[MethodReport]:
    """Summaries per (benchmark, method) of graded records, in family and compute order.

    Args:
        records: Run records (ungraded ones, ``correct is None``, are left out).
        run: The run's name (the ``run`` column).
        config: The run's ``config.json`` (model and protocol columns).
        failed: Failed items not in the store, per (benchmark, method).
        resamples: Bootstrap resamples.
        seed: Bootstrap seed.
    """
    config = config or {}
    groups: dict[tuple[str, str], list[RunRecord]] = {}
    for record in records:
        if record.correct is not None:
            groups.setdefault((record.benchmark, record.method), []).append(record)
    failed = dict(failed or {})
    for key in failed:
        groups.setdefault(key, [])
    reports = []
    for (benchmark, method), members in groups.items():
        correct: dict[str, list[float]] = {}
        score: dict[str, list[float]] = {}
        ttc: dict[str, list[float]] = {}
        calls: dict[str, list[float]] = {}
        wall: dict[str, list[float]] = {}
        all_wrong = emergent = 0
        for record in members:
            pid = record.problem_id
            correct.setdefault(pid, []).append(1.0 if record.correct else 0.0)
            score.setdefault(pid, []).append(
                record.score if record.score is not None else float(bool(record.correct))
            )
            ttc.setdefault(pid, []).append(record.result.ttc_tokens / 1000)
            calls.setdefault(pid, []).append(float(record.result.calls))
            wall.setdefault(pid, []).append(record.result.wall_s)
            rounds = _grading(record).get("rounds") or []
            given = rounds[-1].get("correct") if rounds else None
            if given and not any(given):
                all_wrong += 1
                emergent += bool(record.correct)
        low, high = bootstrap_interval(list(correct.values()), resamples=resamples, seed=seed)
        reports.append(
            MethodReport(
                run=run,
                benchmark=benchmark,
                method=method,
                n=len(members),
                problems=len(correct),
                accuracy=_macro(correct),
                ci_low=low,
                ci_high=high,
                score=_macro(score),
                ttc_k=_macro(ttc),
                calls=_macro(calls),
                wall_s=_macro(wall),
                synth_all_wrong=all_wrong,
                emergent=emergent,
                errors=failed.get((benchmark, method), 0),
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
    return [
        *cells,
        report.benchmark,
        report.method,
        str(report.n),
        f"{_pct(report.accuracy)} [{_pct(report.ci_low)}, {_pct(report.ci_high)}]",
        f"{report.ttc_k:,.1f}" if report.ttc_k >= 10 else f"{report.ttc_k:.2f}",
        f"{report.calls:.1f}",
        f"{report.wall_s:.2f}",
        _emergent_text(report),
        str(report.errors),
    ]


_HEADERS = [
    "benchmark",
    "method",
    "n",
    "accuracy % [95% CI]",
    "TTC (k tokens)",
    "calls",
    "wall s",
    "emergent",
    "errors",
]


def _title(reports: Sequence[MethodReport]) -> str:
    models = sorted({r.model or "?" for r in reports})
    protocols = sorted({r.protocol for r in reports})
    title = f"PaCoRe benchmark report: model {', '.join(models)}; protocol {', '.join(protocols)}"
    if any(r.simulated for r in reports):
        title += " (SIMULATED endpoint: a test double, not a language model)"
    return title


_NOTE = (
    "accuracy: pass@1 averaged over samples (mean over problems of each problem's mean); 95% CI: "
    "problem-clustered percentile bootstrap. TTC: completion tokens per sample, all rounds. emergent: "
    "right answers among samples whose final round got only wrong messages."
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
