"""What a training run writes as it goes: JSONL logs (one line per step) and the reward curve.

`StepLog` is an append-only JSONL file keyed by ``step``: every line is flushed and fsynced as it is
written, so a run killed at any moment keeps every step it logged. On resume the driver calls
`StepLog.truncate` to drop the steps after its checkpoint (they are run again), so each step appears
exactly once in the finished log.

`plot_reward_curve` draws ``charts/reward_mean`` per step from a metrics log into a PNG with
matplotlib's Agg canvas (no display, no pyplot global state), and below it the synthesis behaviour of
`training.diagnostics` (cross-check markers, emergent correctness, majority shortcut) when logged.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["BEHAVIOUR_KEYS", "StepLog", "jsonable", "plot_reward_curve", "read_jsonl"]

BEHAVIOUR_KEYS = ("synthesis/markers", "synthesis/emergent", "synthesis/shortcut")
"""The metrics of `training.diagnostics` drawn in the reward curve's second panel."""


def jsonable(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by None (strict JSON has no NaN), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a JSONL file ([] when it does not exist); a torn last line is ignored."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):  # a write cut short by a crash
                break
            raise
    return records


class StepLog:
    """An append-only JSONL log with one record per training step (each record has a ``step`` key).

    Args:
        path: The file; created (with its folder) on the first append.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def append(self, record: Mapping[str, Any]) -> None:
        """Write one record as a line, flushed and fsynced before returning."""
        line = json.dumps(jsonable(record), allow_nan=False, sort_keys=False) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    def records(self) -> list[dict[str, Any]]:
        """Every record, in the order written."""
        return read_jsonl(self.path)

    def truncate(self, before_step: int) -> int:
        """Keep only the records of steps before ``before_step`` (atomically); return how many were dropped."""
        if not self.path.exists():
            return 0
        records = self.records()
        kept = [r for r in records if int(r["step"]) < before_step]
        partial = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with partial.open("w", encoding="utf-8") as handle:
            for record in kept:
                handle.write(json.dumps(record, allow_nan=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        partial.replace(self.path)
        return len(records) - len(kept)


def plot_reward_curve(
    metrics_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    key: str = "charts/reward_mean",
    title: str = "PaCoRe PPO: training reward",
) -> Path:
    """Plot ``key`` per step from a metrics JSONL into a PNG (written atomically).

    Args:
        metrics_path: The run's ``metrics.jsonl``.
        output: The PNG to write.
        key: The metric to plot.
        title: The figure's title.

    Returns:
        The PNG's path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    records = read_jsonl(metrics_path)
    points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
    behaviours = {k: [(r["step"], r[k]) for r in records if r.get(k) is not None] for k in BEHAVIOUR_KEYS}
    behaviours = {k: series for k, series in behaviours.items() if series}
    figure = Figure(figsize=(6.4, 7.0 if behaviours else 4.0), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(2 if behaviours else 1, 1, 1)
    if points:
        steps, values = zip(*points, strict=True)
        axes.plot(steps, values, marker="o" if len(points) < 50 else None, linewidth=1.5)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("step")
    axes.set_ylabel(key)
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    if behaviours:
        lower = figure.add_subplot(2, 1, 2, sharex=axes)
        for name, series in behaviours.items():
            steps, values = zip(*series, strict=True)
            lower.plot(steps, values, marker="o" if len(series) < 50 else None, label=name)
        lower.set_ylim(-0.03, 1.03)
        lower.set_xlabel("step")
        lower.set_ylabel("share of episodes")
        lower.set_title("synthesis behaviour (training.diagnostics)")
        lower.legend(fontsize=8)
        lower.grid(True, alpha=0.3)
    figure.tight_layout()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.stem}.{os.getpid()}.tmp.png")
    figure.savefig(partial, format="png")
    partial.replace(output)
    return output
