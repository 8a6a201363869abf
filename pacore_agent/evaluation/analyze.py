"""Synthesis diagnostics: does a model use its messages, or does it only vote, or ignore them?

Every SYNTHESIS trajectory (one of a round after the first) is compared with the messages it was given:
the previous round's messages, in reference order, with their grades. For the blind counterfactual
(``pacore-blind``, `pacore_agent.prompts.blind_prompt`) it is compared with the messages it WOULD have
been given and never saw, so its figures are the chance levels of the same measures: a PaCoRe figure
means something only as far as it differs from the blind one.

Per synthesis (`classify`):

- ``all_wrong`` / ``emergent``: every message was wrong / ... and the synthesis is right anyway
  (`pacore_agent.evaluation.answers.emergent_correctness`).
- ``plurality``: the answer self-consistency would pick among the messages (`answers.vote`: equivalent
  answers counted together, ties to the earliest); ``shortcut``: the synthesis answer is equivalent to it
  (the majority shortcut), to be read against ``plurality_right``, how often that plurality is right.
- ``novel``: the synthesis answer is equivalent to none of the messages' answers; split right / wrong.
- ``recovery``: the plurality was wrong and the synthesis is right; ``damage``: the reverse.
- ``markers``: matches of the cross-checking patterns (`MARKER_PATTERNS`: "message 3", "reference 2",
  "response 5", "other solutions", "cross-check", "the references", ...; case-insensitive regular
  expressions, replaceable) in the trajectory's text, reasoning included.
- ``message use``: the messages whose final answer, as written, appears in the trajectory's text
  (a message agreeing with the synthesis is mentioned by the synthesis' own answer).

Aggregates (`SynthesisDiagnostics`) carry each value with the counts it comes from (`Rate`). The
denominators: ``emergent`` over all-wrong syntheses; ``shortcut`` and ``plurality_right`` over syntheses
whose messages had an answer; ``recovery`` over wrong pluralities, ``damage`` over right ones;
``novel_*`` and ``markers`` over all syntheses; ``message_use`` over messages with an answer.

Where the text comes from: a run keeps the full text of the final trajectory only (``pacore bench
--keep-trajectories`` keeps every one); the trajectories of intermediate synthesis rounds (``[32, 4]``'s
4) are then read from their compacted message, where cross-checking words are rarer. ``full_text``
counts the syntheses read from their full text.

`blind_gaps` pairs ``pacore:S`` with ``pacore-blind:S`` of the same run and benchmark: the accuracy gap
at equal compute, per problem, with the problem-clustered bootstrap interval of the report
(`pacore_agent.evaluation.report.bootstrap_interval`).
"""

from __future__ import annotations

import csv
import functools
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from rich.table import Table

from pacore_agent.compactors import final_conclusion
from pacore_agent.evaluation.answers import (
    AnswerClass,
    emergent_correctness,
    extract_answer,
    math_equal,
    normalize_answer,
    vote,
)
from pacore_agent.evaluation.report import (
    DEFAULT_RESAMPLES,
    MethodReport,
    RunData,
    _macro,
    bootstrap_interval,
    load_run,
    plot_scaling,
    sample_groups,
    summarize_records,
)
from pacore_agent.evaluation.store import RunRecord
from pacore_agent.exceptions import UsageError

__all__ = [
    "MARKER_PATTERNS",
    "BlindGap",
    "Mean",
    "MethodDiagnostics",
    "Rate",
    "Synthesis",
    "SynthesisDiagnostics",
    "SynthesisFlags",
    "analyze",
    "analyze_records",
    "blind_gaps",
    "classify",
    "count_markers",
    "marker_regex",
    "mentions",
    "plot_ttc",
    "plurality",
    "render_gaps",
    "render_table",
    "syntheses_of",
    "to_markdown",
    "write_csv",
]

MARKER_PATTERNS: tuple[str, ...] = (
    r"\b(?:message|reference|ref\.?|response|solution|attempt|candidate)s?\s*#?\s*\d+\b",
    r"\bother\s+(?:solutions?|responses?|references?|messages?|attempts?|answers?)\b",
    r"\bcross[- ]?check",
    r"\b(?:the|these|those|all|both|several|multiple)\s+(?:references|messages|responses)\b",
)
"""Cross-checking markers (case-insensitive regular expressions): a numbered message, reference, response,
solution, attempt or candidate ("message 3", "Reference 12", "Ref. 4", "response #5"); "other solutions"
and the like; "cross-check" in any form; "the references", "these messages", "both responses"."""


# --------------------------------------------------------------------------------------------------
# One synthesis


@functools.lru_cache(maxsize=16)
def marker_regex(patterns: tuple[str, ...] = MARKER_PATTERNS) -> re.Pattern[str]:
    """The markers as one case-insensitive regular expression (matches never overlap).

    Raises:
        UsageError: A pattern is not a valid regular expression.
    """
    if not patterns:
        raise UsageError("give at least one cross-checking marker pattern (--markers)")
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise UsageError(f"--markers: {pattern!r} is not a regular expression ({exc})") from None
    return re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE)


def count_markers(text: str | None, patterns: Sequence[str] = MARKER_PATTERNS) -> int:
    """How many cross-checking markers a trajectory's text holds (see `MARKER_PATTERNS`)."""
    return len(marker_regex(tuple(patterns)).findall(text or ""))


def mentions(text: str | None, answer: str) -> bool:
    """Whether ``answer`` appears, as written, in ``text`` (not inside a longer number or word)."""
    needle = answer.strip()
    if not needle or not text:
        return False
    return re.search(rf"(?<![\w.]){re.escape(needle)}(?!\w|\.\d)", text) is not None


def _same(a: str, b: str) -> bool:
    return normalize_answer(a) == normalize_answer(b) or math_equal(a, b)


def plurality(answers: Sequence[str | None], correct: Sequence[bool]) -> tuple[str | None, bool]:
    """The self-consistency answer of some messages and whether it is right (``(None, False)``: no answer)."""
    winner = vote(answers).winner
    return _winner(winner, correct)


def _winner(winner: AnswerClass | None, correct: Sequence[bool]) -> tuple[str | None, bool]:
    if winner is None or winner.representative is None:
        return None, False
    return winner.representative, bool(correct[winner.members[0]])


@dataclass(frozen=True)
class Synthesis:
    """One synthesis trajectory and the messages it was given (the input of `classify`).

    Attributes:
        message_answers: Each message's final answer (``None`` when it has none), in reference order.
        message_correct: Whether each message is right.
        answer: The synthesis' final answer.
        correct: Whether the synthesis is right.
        text: The trajectory's text, reasoning included (or its compacted message, when that is all
            that was kept).
        full_text: Whether ``text`` is the whole trajectory.
    """

    message_answers: tuple[str | None, ...]
    message_correct: tuple[bool, ...]
    answer: str | None
    correct: bool
    text: str
    full_text: bool = True

    def __post_init__(self) -> None:
        if len(self.message_answers) != len(self.message_correct):
            raise UsageError("a synthesis needs one grade per message answer")


@dataclass(frozen=True)
class SynthesisFlags:
    """What `classify` found about one synthesis (see the module docstring)."""

    all_wrong: bool
    emergent: bool
    has_plurality: bool
    plurality_right: bool
    shortcut: bool
    novel: bool
    correct: bool
    markers: int
    answered_messages: int
    mentioned_messages: int
    full_text: bool = True


def classify(synthesis: Synthesis, *, markers: Sequence[str] = MARKER_PATTERNS) -> SynthesisFlags:
    """The diagnostics of one synthesis against its messages."""
    answers, correct = synthesis.message_answers, synthesis.message_correct
    votes = vote(answers)
    top, top_right = _winner(votes.winner, correct)
    answer = synthesis.answer.strip() if synthesis.answer and synthesis.answer.strip() else None
    # The answer's class among the messages' (compared with each class once, not with every message).
    same = None
    if answer is not None:
        same = next((c for c in votes.classes if c.representative and _same(answer, c.representative)), None)
    given = [a for a in answers if a is not None and a.strip()]
    mentioned = {a: mentions(synthesis.text, a) for a in set(given)}  # each distinct answer searched once
    return SynthesisFlags(
        all_wrong=bool(correct) and not any(correct),
        emergent=emergent_correctness(list(correct), synthesis.correct),
        has_plurality=top is not None,
        plurality_right=top_right,
        shortcut=same is not None and same == votes.winner,
        novel=answer is not None and same is None,
        correct=synthesis.correct,
        markers=count_markers(synthesis.text, markers),
        answered_messages=len(given),
        mentioned_messages=sum(mentioned[a] for a in given),
        full_text=synthesis.full_text,
    )


# --------------------------------------------------------------------------------------------------
# Aggregates


@dataclass(frozen=True)
class Rate:
    """A share with the counts it comes from."""

    count: int
    total: int

    @property
    def value(self) -> float | None:
        """``count / total``, ``None`` when there is nothing to count."""
        return self.count / self.total if self.total else None

    def __str__(self) -> str:
        return "-" if not self.total else f"{self.count}/{self.total} ({100 * self.count / self.total:.0f}%)"


@dataclass(frozen=True)
class Mean:
    """A mean with the number of values it comes from."""

    total: float
    n: int

    @property
    def value(self) -> float | None:
        """``total / n``, ``None`` when there are no values."""
        return self.total / self.n if self.n else None

    def __str__(self) -> str:
        return "-" if not self.n else f"{self.total / self.n:.2f} (n={self.n})"


@dataclass(frozen=True)
class SynthesisDiagnostics:
    """The diagnostics of many syntheses; each figure keeps its counts (denominators: module docstring)."""

    syntheses: int
    full_text: int
    emergent: Rate
    shortcut: Rate
    plurality_right: Rate
    novel_right: Rate
    novel_wrong: Rate
    recovery: Rate
    damage: Rate
    markers: Rate
    marker_mean: Mean
    message_use: Rate

    @classmethod
    def of(cls, flags: Iterable[SynthesisFlags]) -> SynthesisDiagnostics:
        """Aggregate per-synthesis flags."""
        items = list(flags)
        voted = [f for f in items if f.has_plurality]
        wrong = [f for f in voted if not f.plurality_right]
        right = [f for f in voted if f.plurality_right]
        n = len(items)
        return cls(
            syntheses=n,
            full_text=sum(f.full_text for f in items),
            emergent=Rate(sum(f.emergent for f in items), sum(f.all_wrong for f in items)),
            shortcut=Rate(sum(f.shortcut for f in voted), len(voted)),
            plurality_right=Rate(len(right), len(voted)),
            novel_right=Rate(sum(f.novel and f.correct for f in items), n),
            novel_wrong=Rate(sum(f.novel and not f.correct for f in items), n),
            recovery=Rate(sum(f.correct for f in wrong), len(wrong)),
            damage=Rate(sum(not f.correct for f in right), len(right)),
            markers=Rate(sum(f.markers > 0 for f in items), n),
            marker_mean=Mean(float(sum(f.markers for f in items)), n),
            message_use=Rate(
                sum(f.mentioned_messages for f in items), sum(f.answered_messages for f in items)
            ),
        )

    def metrics(self, prefix: str = "") -> dict[str, float | None]:
        """The figures as plain numbers (``None`` where nothing was counted), e.g. for a metrics log."""
        values: dict[str, float | None] = {f"{prefix}syntheses": float(self.syntheses)}
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, Rate | Mean):
                values[f"{prefix}{item.name}"] = value.value
        return values


# --------------------------------------------------------------------------------------------------
# Runs


def _answer(message: str | None) -> str | None:
    return extract_answer(final_conclusion(message or ""))


def syntheses_of(record: RunRecord) -> list[Synthesis]:
    """The synthesis trajectories of a graded record, each with the messages it was (or, blind, would be) given.

    Records without message grades (run with ``--no-grade-messages``), ungraded ones and one-round
    methods give none.
    """
    result = record.result
    graded = {int(r["index"]): list(r.get("correct") or []) for r in record.grading.get("rounds") or []}
    if len(result.rounds) < 2 or record.correct is None or not graded:
        return []
    out: list[Synthesis] = []
    for number in range(1, len(result.rounds)):
        given, flags = result.rounds[number - 1], graded.get(number - 1)
        if not given.messages or flags is None or len(flags) != len(given.messages):
            continue
        answers = tuple(_answer(m) for m in given.messages)
        round_ = result.rounds[number]
        if number == len(result.rounds) - 1:
            final = result.final
            if final is None:
                continue
            answer = record.predicted if record.predicted is not None else _answer(result.answer)
            out.append(Synthesis(answers, tuple(flags), answer, bool(record.correct), final.text, True))
            continue
        mine = graded.get(number)
        if mine is None or len(mine) != len(round_.order):
            continue
        by_index = {t.index: t for t in round_.trajectories}
        for position, index in enumerate(round_.order):
            trajectory = by_index[index]
            full = bool(trajectory.content or trajectory.reasoning)
            text = trajectory.text if full else trajectory.message or ""
            out.append(
                Synthesis(answers, tuple(flags), _answer(trajectory.message), mine[position], text, full)
            )
    return out


@dataclass(frozen=True)
class MethodDiagnostics:
    """The diagnostics of one (run, benchmark, method).

    Attributes:
        run: The run directory's name.
        benchmark: The benchmark.
        method: The method label (``pacore:[16]``, ``pacore-blind:[16]``, ...).
        blind: Whether it is the blind counterfactual (its figures are chance levels).
        records: Graded records of the method.
        analysed: Records that gave syntheses (the others lack message grades).
        diagnostics: The figures.
    """

    run: str
    benchmark: str
    method: str
    blind: bool
    records: int
    analysed: int
    diagnostics: SynthesisDiagnostics


def analyze_records(
    records: Iterable[RunRecord], *, run: str = "", markers: Sequence[str] = MARKER_PATTERNS
) -> list[MethodDiagnostics]:
    """`MethodDiagnostics` per (benchmark, multi-round method) of some records, sorted by benchmark and method."""
    marker_regex(tuple(markers))  # a bad pattern fails before any work
    groups: dict[tuple[str, str], list[RunRecord]] = {}
    for record in records:
        if record.correct is not None and len(record.result.rounds) > 1:
            groups.setdefault((record.benchmark, record.method), []).append(record)
    out = []
    for (benchmark, method), members in sorted(groups.items()):
        flags: list[SynthesisFlags] = []
        analysed = 0
        for record in members:
            found = syntheses_of(record)
            analysed += bool(found)
            flags += [classify(s, markers=markers) for s in found]
        out.append(
            MethodDiagnostics(
                run=run,
                benchmark=benchmark,
                method=method,
                blind=method.startswith("pacore-blind"),
                records=len(members),
                analysed=analysed,
                diagnostics=SynthesisDiagnostics.of(flags),
            )
        )
    return out


def analyze(
    directories: Sequence[str | os.PathLike[str]], *, markers: Sequence[str] = MARKER_PATTERNS
) -> list[MethodDiagnostics]:
    """`analyze_records` over one or more run directories of ``pacore bench``."""
    out: list[MethodDiagnostics] = []
    for directory in directories:
        data = load_run(directory)
        out += analyze_records(data.records, run=data.name, markers=markers)
    return out


# --------------------------------------------------------------------------------------------------
# PaCoRe against its blind counterfactual


@dataclass(frozen=True)
class BlindGap:
    """PaCoRe minus its blind counterfactual, same schedule, same run and benchmark, on their common problems.

    Attributes:
        run: The run.
        benchmark: The benchmark.
        pacore: The PaCoRe method label; ``blind``: the blind one's.
        problems: Problems both were asked; ``samples``: PaCoRe's and blind's samples on them.
        pacore_accuracy: PaCoRe's accuracy there, as the report counts it (every sample asked for, a
            failed or ungraded one as wrong; mean over problems of each problem's mean);
            ``blind_accuracy``: the blind method's; ``gap``: the difference.
        ci_low: The 95% problem-clustered bootstrap interval of the gap, ``ci_low`` to ``ci_high``
            (``None`` with fewer than two problems).
        pacore_ttc_k: PaCoRe's thousands of completion tokens per sample; ``blind_ttc_k``: blind's.
    """

    run: str
    benchmark: str
    pacore: str
    blind: str
    problems: int
    samples: tuple[int, int]
    pacore_accuracy: float
    blind_accuracy: float
    gap: float
    ci_low: float | None
    ci_high: float | None
    pacore_ttc_k: float
    blind_ttc_k: float


def _mean_of_means(per_problem: dict[str, list[float]], problems: Sequence[str]) -> float:
    # the report's accuracy, on those of these problems that have figures
    return _macro({p: per_problem[p] for p in problems if p in per_problem})


def blind_gaps(
    runs: Sequence[RunData], *, resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> list[BlindGap]:
    """Every (``pacore:S``, ``pacore-blind:S``) pair within a run and benchmark (see `BlindGap`)."""
    gaps = []
    for data in runs:
        groups = sample_groups(data.records, data.failed)
        for (benchmark, blind), blind_group in sorted(groups.items()):
            if not blind.startswith("pacore-blind:"):
                continue
            method = "pacore:" + blind.removeprefix("pacore-blind:")
            pacore_group = groups.get((benchmark, method))
            if pacore_group is None:
                continue
            # Accuracy as the report counts it: every sample asked for, a failed or ungraded one as wrong.
            right = [pacore_group.correct, blind_group.correct]
            ttc = [pacore_group.ttc, blind_group.ttc]
            common = sorted(set(right[0]) & set(right[1]))
            if not common:
                continue
            diffs = [[_mean_of_means(right[0], [p]) - _mean_of_means(right[1], [p])] for p in common]
            low, high = (
                bootstrap_interval(diffs, resamples=resamples, seed=seed) if len(common) > 1 else (None, None)
            )
            accuracy = [_mean_of_means(r, common) for r in right]
            gaps.append(
                BlindGap(
                    run=data.name,
                    benchmark=benchmark,
                    pacore=method,
                    blind=blind,
                    problems=len(common),
                    samples=(sum(len(right[0][p]) for p in common), sum(len(right[1][p]) for p in common)),
                    pacore_accuracy=accuracy[0],
                    blind_accuracy=accuracy[1],
                    gap=accuracy[0] - accuracy[1],
                    ci_low=low,
                    ci_high=high,
                    pacore_ttc_k=_mean_of_means(ttc[0], common),
                    blind_ttc_k=_mean_of_means(ttc[1], common),
                )
            )
    return gaps


def plot_ttc(
    runs: Sequence[RunData],
    path: str | os.PathLike[str],
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> Path:
    """Accuracy against TTC of PaCoRe, its blind counterfactual and ``sc@k``, on the problems all of them share.

    The records are restricted, per run and benchmark, to the problems every such method was graded on,
    then drawn by `pacore_agent.evaluation.report.plot_scaling` (one line per family, 95% intervals).

    Raises:
        UsageError: No run holds PaCoRe, blind or ``sc@k`` records.
    """
    reports: list[MethodReport] = []
    for data in runs:
        chosen = [
            r
            for r in data.records
            if r.correct is not None and r.method.startswith(("pacore:", "pacore-blind:", "sc@"))
        ]
        by_group: dict[tuple[str, str], set[str]] = {}
        for record in chosen:
            by_group.setdefault((record.benchmark, record.method), set()).add(record.problem_id)
        shared: dict[str, set[str]] = {}
        for (benchmark, _), problems in by_group.items():
            shared[benchmark] = shared[benchmark] & problems if benchmark in shared else set(problems)
        kept = [r for r in chosen if r.problem_id in shared[r.benchmark]]
        reports += summarize_records(kept, run=data.name, config=data.config, resamples=resamples, seed=seed)
    if not reports:
        raise UsageError("nothing to plot: no pacore, pacore-blind or sc@k records in these runs")
    return plot_scaling(reports, path)


# --------------------------------------------------------------------------------------------------
# Rendering

_COLUMNS: tuple[tuple[str, str], ...] = (
    ("emergent", "emergent (right | all msgs wrong)"),
    ("shortcut", "majority shortcut"),
    ("plurality_right", "plurality right"),
    ("novel_right", "novel right"),
    ("novel_wrong", "novel wrong"),
    ("recovery", "recovery (plurality wrong)"),
    ("damage", "damage (plurality right)"),
    ("markers", "cross-check markers"),
    ("marker_mean", "markers per synthesis"),
    ("message_use", "message use"),
)

_NOTE = (
    "Each cell: count/total (share). Syntheses: trajectories of rounds after the first, against the messages "
    "they were given; for pacore-blind, the messages they would have been given (chance levels). Majority "
    "shortcut: the synthesis answer is the plurality (self-consistency) answer of its messages. Novel: in "
    "no message. Markers: trajectories citing other messages (patterns: --markers). Message use: messages "
    "whose answer the synthesis text mentions."
)


def _row(item: MethodDiagnostics, *, with_run: bool) -> list[str]:
    d = item.diagnostics
    return [
        *([item.run] if with_run else []),
        item.benchmark,
        item.method,
        f"{d.syntheses} ({item.analysed}/{item.records} records)",
        *(str(getattr(d, name)) for name, _ in _COLUMNS),
    ]


def _headers(with_run: bool) -> list[str]:
    return [*(["run"] if with_run else []), "benchmark", "method", "syntheses", *(h for _, h in _COLUMNS)]


def render_table(items: Sequence[MethodDiagnostics]) -> Table:
    """The diagnostics as a rich table: one row per measure, one column per (run, benchmark, method)."""
    with_run = len({i.run for i in items}) > 1
    table = Table(
        title="PaCoRe synthesis diagnostics", caption=_NOTE, title_justify="left", caption_justify="left"
    )
    table.add_column("measure", justify="left")
    for item in items:
        table.add_column(f"{item.run}\n" * with_run + f"{item.benchmark}\n{item.method}", justify="right")
    rows = [_row(item, with_run=with_run)[1 + with_run :] for item in items]
    for number, header in enumerate(_headers(with_run)[1 + with_run :]):
        if header != "method":
            table.add_row(header, *(row[number] for row in rows))
    return table


def _gap_cells(gap: BlindGap) -> list[str]:
    interval = (
        "n/a (one problem)"
        if gap.ci_low is None or gap.ci_high is None
        else f"[{100 * gap.ci_low:+.1f}, {100 * gap.ci_high:+.1f}]"
    )
    return [
        gap.benchmark,
        f"{gap.pacore} - {gap.blind}",
        str(gap.problems),
        f"{100 * gap.pacore_accuracy:.1f} ({gap.samples[0]})",
        f"{100 * gap.blind_accuracy:.1f} ({gap.samples[1]})",
        f"{100 * gap.gap:+.1f} {interval}",
        f"{gap.pacore_ttc_k:.2f} / {gap.blind_ttc_k:.2f}",
    ]


_GAP_HEADERS = (
    "benchmark|pair|problems|PaCoRe % (samples)|blind % (samples)|gap pts [95% CI]|TTC k (PaCoRe / blind)"
)


def render_gaps(gaps: Sequence[BlindGap]) -> Table:
    """The PaCoRe-minus-blind gaps as a rich table."""
    title = "PaCoRe minus its blind counterfactual (same schedule, messages withheld), equal compute"
    caption = "gap: accuracy points; 95% CI: problem-clustered bootstrap of the per-problem gap."
    table = Table(title=title, caption=caption, title_justify="left", caption_justify="left")
    for header in _GAP_HEADERS.split("|"):
        table.add_column(header, justify="left" if header in ("benchmark", "pair") else "right")
    for gap in gaps:
        table.add_row(*_gap_cells(gap))
    return table


def to_markdown(items: Sequence[MethodDiagnostics], gaps: Sequence[BlindGap] = ()) -> str:
    """The diagnostics (and the blind gaps) as Markdown tables with their definitions."""
    with_run = len({i.run for i in items}) > 1
    headers = _headers(with_run)
    lines = ["**PaCoRe synthesis diagnostics**", "", "| " + " | ".join(headers) + " |"]
    lines.append(
        "|" + "|".join("---" if h in ("run", "benchmark", "method") else "---:" for h in headers) + "|"
    )
    lines += ["| " + " | ".join(_row(item, with_run=with_run)) + " |" for item in items]
    lines += ["", _NOTE, ""]
    if gaps:
        lines += ["**PaCoRe minus blind at equal compute**", "", f"| {_GAP_HEADERS.replace('|', ' | ')} |"]
        lines.append("|---|---|" + "---:|" * 5)
        lines += ["| " + " | ".join(_gap_cells(g)) + " |" for g in gaps]
        lines.append("")
    return "\n".join(lines)


def write_csv(items: Sequence[MethodDiagnostics], path: str | os.PathLike[str]) -> Path:
    """One row per (run, benchmark, method): every figure as ``NAME``, ``NAME_count`` and ``NAME_total``."""
    names = [name for name, _ in _COLUMNS]
    columns = ["run", "benchmark", "method", "blind", "records", "analysed", "syntheses", "full_text"]
    for name in names:
        columns += [name, f"{name}_count", f"{name}_total"]
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for item in items:
            d = item.diagnostics
            head = (item.run, item.benchmark, item.method, item.blind, item.records, item.analysed)
            row: dict[str, Any] = dict(zip(columns, (*head, d.syntheses, d.full_text), strict=False))
            for name in names:
                value = getattr(d, name)
                count, total = (
                    (value.count, value.total) if isinstance(value, Rate) else (value.total, value.n)
                )
                row[name] = "" if value.value is None else round(value.value, 6)
                row[f"{name}_count"], row[f"{name}_total"] = count, total
            writer.writerow(row)
    return target
