"""A self-contained HTML page of benchmark runs: the summary, then every round, message and synthesis.

``pacore report DIR... --html FILE`` writes one file that needs no network: the data is embedded as compact
JSON, the script and style are inlined, the scaling plot is an inline PNG. The page renders on demand: the
problem list first, a problem's samples when it is opened, a sample's rounds (one card per trajectory)
when that is opened, and a trajectory's full text when asked for. Its state lives in the URL fragment
(``#run=...&bench=...&problem=...&method=...&sample=...&filter=wrong&only=METHOD&text=R.I``), so a link
points at a problem or a sample.

Every string (problem, message, full text, error) is stored once in a table and referred to by number.
Limits keep a large run (30 problems x 64 samples x ``pacore:high``, about 70k trajectories) a page that
opens without freezing the tab:

- a message is cut to `MESSAGE_LIMIT` characters (its head and tail: the tail holds the answer), and all messages together share `MESSAGE_BUDGET`
  characters (the per-message cap shrinks evenly when they would not fit);
- a full text is cut at `TEXT_LIMIT` characters, and full texts are kept until `TEXT_BUDGET` characters
  are used, final trajectories first; the page says how many were cut or left out;
- a problem statement is cut at `PROBLEM_LIMIT` characters.

Records are read with `pacore_agent.evaluation.report.load_run`, so the page holds exactly what
``pacore report`` summarizes (unparsable lines are left out, and the page says how many).
"""

from __future__ import annotations

import base64
import json
import os
import re
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from pacore_agent.compactors import final_conclusion
from pacore_agent.evaluation.answers import extract_answer
from pacore_agent.evaluation.report import (
    MethodReport,
    RunData,
    load_run,
    plot_scaling,
    summarize_records,
)
from pacore_agent.evaluation.store import RunStore
from pacore_agent.exceptions import UsageError
from pacore_agent.results import SolveResult, Trajectory

__all__ = [
    "MESSAGE_BUDGET",
    "MESSAGE_LIMIT",
    "PROBLEM_LIMIT",
    "TEXT_BUDGET",
    "TEXT_LIMIT",
    "page_data",
    "render_html",
    "write_html",
]

MESSAGE_LIMIT = 4_000
"""Characters of one compacted message shown on its card."""
MESSAGE_BUDGET = 24_000_000
"""Characters of all messages together."""
TEXT_LIMIT = 20_000
"""Characters of one trajectory's full text (reasoning and conclusion)."""
TEXT_BUDGET = 16_000_000
"""Characters of all full texts together (final trajectories first)."""
PROBLEM_LIMIT = 8_000
"""Characters of a problem statement."""

_PLACEHOLDER = "__PACORE_DATA__"
_TEMPLATE = "viewer.html"

# Sample outcome codes and flag bits, mirrored in the template's script.
_RIGHT, _WRONG, _UNGRADED, _FAILED = 1, 0, -1, -2
_EMERGENT, _ALL_WRONG, _FAILURE = 1, 2, 4
_STATUS = {"ok": 0, "failed": 1, "cancelled": 2}
_TEXT_ABSENT, _TEXT_LEFT_OUT = -1, -2


def _cut(text: str, limit: int) -> tuple[str, bool]:
    """The text, or its head and tail when longer than ``limit`` (the tail holds the boxed answer)."""
    if len(text) <= limit:
        return text, False
    head = limit // 2
    tail = limit - head
    return (
        f"{text[:head]}\n[... {len(text) - limit:,} of {len(text):,} characters cut ...]\n{text[-tail:]}",
        True,
    )


def _cap(lengths: Sequence[int], limit: int, budget: int) -> int:
    """The largest per-item cap <= ``limit`` under which the capped lengths add up to at most ``budget``."""
    if sum(min(n, limit) for n in lengths) <= budget:
        return limit
    low, high = 0, limit
    while low < high:
        middle = (low + high + 1) // 2
        if sum(min(n, middle) for n in lengths) <= budget:
            low = middle
        else:
            high = middle - 1
    return low


class _Strings:
    """Interned strings: each distinct text is stored once and referred to by its index."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self._index: dict[str, int] = {}

    def __call__(self, text: str | None) -> int:
        if text is None:
            return -1
        index = self._index.get(text)
        if index is None:
            index = self._index[text] = len(self.items)
            self.items.append(text)
        return index


@dataclass
class _Limits:
    message_cap: int
    messages_cut: int = 0
    texts_cut: int = 0
    texts_left_out: int = 0
    texts_kept: set[tuple[int, int, int]] = field(default_factory=set)


def _problem_text(result: SolveResult) -> str:
    return "\n\n".join(str(m.get("content", "")) for m in result.problem if m.get("role") == "user")


@dataclass
class _Sample:
    """One (problem, method, sample) of a run: a graded record, or a failed item's partial result."""

    benchmark: str
    problem_id: str
    method: str
    sample: int
    result: SolveResult | None
    outcome: int
    predicted: str | None = None
    score: float | None = None
    grading: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def _samples(data: RunData) -> list[_Sample]:
    samples = []
    for record in data.records:
        outcome = _UNGRADED if record.correct is None else (_RIGHT if record.correct else _WRONG)
        error = f"{record.error.type}: {record.error.message}" if record.error else None
        samples.append(
            _Sample(
                record.benchmark,
                record.problem_id,
                record.method,
                record.sample,
                record.result,
                outcome,
                record.predicted,
                record.score,
                record.grading,
                error,
            )
        )
    for item in data.failed:  # the latest failure of each item without a record (`load_run`)
        key, error = item.key, f"{item.error.type}: {item.error.message}"
        samples.append(
            _Sample(key.benchmark, key.problem_id, key.method, key.sample, item.partial, _FAILED, error=error)
        )
    return samples


def _flags(sample: _Sample) -> int:
    flags = _EMERGENT if sample.grading.get("emergent") else 0
    rounds = sample.grading.get("rounds") or []
    given = rounds[-1].get("correct") if rounds else None
    if given and not any(given):
        flags |= _ALL_WRONG
    trajectories = sample.result.trajectories if sample.result is not None else []
    if sample.error or any(t.status == "failed" for t in trajectories):
        flags |= _FAILURE
    return flags


def _trajectory(
    trajectory: Trajectory,
    correct: bool | None,
    key: tuple[int, int, int],
    strings: _Strings,
    limits: _Limits,
) -> list[Any]:
    message = answer = None
    if trajectory.message is not None:
        # The answer as the grader reads it, before any cut: cards and reference chips show it.
        answer = extract_answer(final_conclusion(trajectory.message))
        message, cut = _cut(trajectory.message, limits.message_cap)
        limits.messages_cut += cut
    if trajectory.content is None and trajectory.reasoning is None:
        text = _TEXT_ABSENT
    elif key in limits.texts_kept:
        full, cut = _cut(trajectory.text, TEXT_LIMIT)
        limits.texts_cut += cut
        text = strings(full)
    else:
        text = _TEXT_LEFT_OUT
    error = f"{trajectory.error.type}: {trajectory.error.message}" if trajectory.error else None
    status = trajectory.error.status_code if trajectory.error else None
    return [
        trajectory.index,
        _STATUS.get(trajectory.status, 1),
        None if correct is None else int(correct),
        trajectory.usage.completion_tokens,
        trajectory.usage.prompt_tokens,
        round(trajectory.latency_s, 2),
        strings(trajectory.finish_reason),
        trajectory.attempts,
        strings(error if status is None or f"HTTP {status}" in (error or "") else f"{error} (HTTP {status})"),
        strings(message),
        text,
        strings(None if answer is None else answer[:200]),
    ]


def _detail(sample: _Sample, number: int, strings: _Strings, limits: _Limits) -> dict[str, Any]:
    result = sample.result
    detail: dict[str, Any] = {"e": strings(sample.error)}
    if result is None:
        return {**detail, "r": [], "f": None}
    graded = {g.get("index"): g.get("correct") or [] for g in sample.grading.get("rounds") or []}
    final = result.final
    rounds = []
    for round_ in result.rounds:
        right: dict[int, bool] = {}
        for position, index in enumerate(round_.order):
            flags = graded.get(round_.index) or []
            if position < len(flags):
                right[index] = bool(flags[position])
        cards = []
        for trajectory in round_.trajectories:
            correct = right.get(trajectory.index)
            if final is not None and (trajectory.round, trajectory.index) == (final.round, final.index):
                correct = None if sample.outcome not in (_RIGHT, _WRONG) else sample.outcome == _RIGHT
            key = (number, round_.index, trajectory.index)
            cards.append(_trajectory(trajectory, correct, key, strings, limits))
        rounds.append(
            {
                "w": round_.width,
                "o": round_.order,
                "s": round_.stop_reason,
                "t": round(round_.wall_s, 2),
                "c": cards,
            }
        )
    answer, _ = _cut(result.answer or "", limits.message_cap)
    return {
        **detail,
        "r": rounds,
        "f": None if final is None else [final.round, final.index],
        "a": strings(answer if result.answer is not None else None),
        "k": result.ttc_tokens,
        "n": result.calls,
        "w": round(result.wall_s, 2),
        "o": result.order_policy,
    }


def _plan_texts(samples: Sequence[_Sample]) -> set[tuple[int, int, int]]:
    """Which full texts fit in `TEXT_BUDGET`: final trajectories first, then the rest in page order."""
    finals: list[tuple[tuple[int, int, int], int]] = []
    others: list[tuple[tuple[int, int, int], int]] = []
    for number, sample in enumerate(samples):
        if sample.result is None:
            continue
        final = sample.result.final
        for round_ in sample.result.rounds:
            for t in round_.trajectories:
                if t.content is None and t.reasoning is None:
                    continue
                size = min(len(t.reasoning or "") + len(t.content or "") + 15, TEXT_LIMIT)
                is_final = final is not None and (t.round, t.index) == (final.round, final.index)
                (finals if is_final else others).append(((number, round_.index, t.index), size))
    kept, used = set(), 0
    for key, size in finals + others:
        if used + size <= TEXT_BUDGET:
            kept.add(key)
            used += size
    return kept


def _plot(reports: Sequence[MethodReport]) -> str | None:
    """The scaling plot as an inline PNG, or ``None`` without matplotlib."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return None
    graded = [r for r in reports if r.n]
    if not graded:
        return None
    with tempfile.TemporaryDirectory(prefix="pacore-plot-") as tmp:
        png = plot_scaling(graded, Path(tmp) / "scaling.png").read_bytes()
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _unparsable_lines(directory: Path, records: int) -> int:
    store = RunStore.open(directory, readonly=True)
    with store.path.open("rb") as handle:
        lines = sum(1 for line in handle if line.strip())
    return max(0, lines - records)


def page_data(
    directories: Sequence[str | os.PathLike[str]],
    *,
    reports: Sequence[MethodReport] | None = None,
    plot: bool = True,
) -> dict[str, Any]:
    """The page's data: the summary and every sample of the runs, compacted (see the module docstring).

    Args:
        directories: Run directories of ``pacore bench``.
        reports: Their summaries, when already computed (default: computed here).
        plot: Embed the scaling plot (needs matplotlib; left out without it).

    Raises:
        UsageError: A directory holds no results, or none holds a record or a failed item.
    """
    strings = _Strings()
    runs = [(Path(d), load_run(d)) for d in directories]
    warnings = []
    all_samples: list[tuple[str, _Sample]] = []
    for directory, data in runs:
        bad = _unparsable_lines(directory, len(data.records))
        if bad:
            warnings.append(
                f"{data.name}: {bad} line(s) of results.jsonl are not valid records and are left out, "
                "as `pacore report` leaves them out (a torn last line is normal while a run is writing)"
            )
        all_samples += [(data.name, s) for s in _samples(data)]
    if not all_samples:
        names = ", ".join(str(d) for d, _ in runs)
        raise UsageError(f"no records in {names}: nothing to show (run `pacore bench` first)")
    if reports is None:
        reports = [
            r
            for _, data in runs
            for r in summarize_records(data.records, run=data.name, config=data.config, failed=data.failed)
        ]

    messages = [
        len(t.message)
        for _, s in all_samples
        if s.result is not None
        for t in s.result.trajectories
        if t.message is not None
    ]
    limits = _Limits(message_cap=_cap(messages, MESSAGE_LIMIT, MESSAGE_BUDGET))
    limits.texts_kept = _plan_texts([s for _, s in all_samples])

    method_order = {(r.run, r.benchmark, r.method): n for n, r in enumerate(reports)}
    groups: dict[tuple[str, str], dict[str, dict[str, list[list[Any]]]]] = {}
    texts: dict[tuple[str, str, str], str] = {}  # problem statements by (run, benchmark, problem id)
    details: list[dict[str, Any]] = []
    for number, (run, sample) in enumerate(all_samples):
        problems = groups.setdefault((run, sample.benchmark), {})
        where = (run, sample.benchmark, sample.problem_id)
        if sample.result is not None and where not in texts:
            texts[where] = _cut(_problem_text(sample.result), PROBLEM_LIMIT)[0]
        predicted = strings(sample.predicted)
        row = [sample.method, sample.sample, sample.outcome, _flags(sample), predicted, len(details)]
        problems.setdefault(sample.problem_id, {}).setdefault(sample.method, []).append(row)
        details.append(_detail(sample, number, strings, limits))
    out_groups = []
    for (run, benchmark), problems in groups.items():
        methods = sorted(
            {m for by_method in problems.values() for m in by_method},
            key=lambda m: (method_order.get((run, benchmark, m), len(method_order)), m),
        )
        index = {m: n for n, m in enumerate(methods)}
        rows = []
        for problem_id in sorted(problems, key=_natural):
            samples = [
                [index[m], *row[1:]]
                for m in methods
                for row in sorted(problems[problem_id].get(m, []), key=lambda r: r[1])
            ]
            statement = texts.get((run, benchmark, problem_id))
            rows.append({"id": problem_id, "q": strings(statement), "s": samples})
        out_groups.append({"run": run, "bench": benchmark, "methods": methods, "problems": rows})
    out_groups.sort(key=lambda g: (g["run"], g["bench"]))

    trajectories = sum(len(s.result.trajectories) for _, s in all_samples if s.result is not None)
    return {
        "version": 1,
        "title": _title(reports, runs),
        "generated": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "summary": [r.row() for r in reports],
        "plot": _plot(reports) if plot else None,
        "warnings": warnings,
        "limits": {
            "message": limits.message_cap,
            "message_budget": MESSAGE_BUDGET,
            "text": TEXT_LIMIT,
            "text_budget": TEXT_BUDGET,
            "problem": PROBLEM_LIMIT,
            "messages_cut": limits.messages_cut,
            "texts_cut": limits.texts_cut,
            "texts_left_out": sum(
                1 for d in details for r in d["r"] for c in r["c"] if c[10] == _TEXT_LEFT_OUT
            ),
        },
        "counts": {"samples": len(all_samples), "trajectories": trajectories},
        "strings": strings.items,
        "groups": out_groups,
        "details": details,
    }


def _natural(text: str) -> list[Any]:
    """Sort key putting ``p2`` before ``p10``."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text)]


def _title(reports: Sequence[MethodReport], runs: Sequence[tuple[Path, RunData]]) -> str:
    models = sorted({str(data.config.get("model") or "?") for _, data in runs})
    title = f"PaCoRe runs: {', '.join(data.name for _, data in runs)} (model {', '.join(models)})"
    if any(r.simulated for r in reports):
        title += " - SIMULATED endpoint: a test double, not a language model"
    return title


def render_html(data: dict[str, Any]) -> str:
    """The page for `page_data`'s data: the template with the data embedded as JSON."""
    template = resources.files("pacore_agent").joinpath("templates", _TEMPLATE).read_text(encoding="utf-8")
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    # Inside <script> the data must not close the element or open a comment: escape every <, > and &.
    payload = payload.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    # Texts may name URLs (an endpoint in an error message): ``\/`` keeps them text, never a link, so a
    # scan of the file for ``://`` finds nothing.
    payload = payload.replace("://", ":\\/\\/")
    head, tail = template.split(_PLACEHOLDER)
    return head + payload + tail


def write_html(
    directories: Sequence[str | os.PathLike[str]],
    path: str | os.PathLike[str],
    *,
    reports: Sequence[MethodReport] | None = None,
    plot: bool = True,
) -> Path:
    """Write the self-contained page of one or more run directories (see the module docstring).

    Args:
        directories: Run directories of ``pacore bench``.
        path: The HTML file to write.
        reports: Their summaries, when already computed.
        plot: Embed the scaling plot (needs matplotlib).

    Raises:
        UsageError: A directory holds no results, none holds a record, or ``path`` cannot be written.
    """
    page = render_html(page_data(directories, reports=reports, plot=plot))
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise UsageError(
            f"cannot write the page to {target} ({exc.strerror}): pass another --html FILE"
        ) from exc
    return target
