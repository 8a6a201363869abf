"""What ``pacore solve`` shows: the live panel of ``--stream`` and the final table of rounds."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table

from pacore_agent.cli.common import err, out
from pacore_agent.results import AttemptRestarted, Done, SolveResult, TokenDelta, TrajectoryFinished

if TYPE_CHECKING:
    from pacore_agent.coordinator import Coordinator

__all__ = ["print_result", "solve_live"]

_TAIL = 300
"""Characters of the streamed tokens the live panel shows."""


def print_result(result: SolveResult) -> None:
    """The rounds table, the token totals and the answer, on standard output."""
    table = Table(title=f"{result.method}: rounds", title_justify="left")
    for column in ("round", "width", "ok", "failed", "cancelled", "messages", "completion tokens", "wall s"):
        table.add_column(column, justify="right")
    for round_ in result.rounds:
        statuses = [t.status for t in round_.trajectories]
        table.add_row(
            str(round_.index),
            str(round_.width),
            str(statuses.count("ok")),
            str(statuses.count("failed")),
            str(statuses.count("cancelled")),
            str(len(round_.messages)),
            f"{round_.usage.completion_tokens:,}",
            f"{round_.wall_s:.2f}",
        )
    out.print(table)
    usage = result.usage
    out.print(
        f"tokens: prompt {usage.prompt_tokens:,} (cached {usage.cached_tokens:,}), completion "
        f"{usage.completion_tokens:,} (reasoning {usage.reasoning_tokens:,}); calls {result.calls}; "
        f"effective TTC {result.ttc_tokens:,} tokens; wall {result.wall_s:.2f} s",
        highlight=False,
    )
    out.rule("answer")
    out.print((result.answer or "").strip(), markup=False, highlight=False)


async def solve_live(coordinator: Coordinator, problem: str) -> SolveResult:
    """Solve while a live panel shows every round's progress and the final round's tokens."""
    from rich.live import Live
    from rich.panel import Panel

    widths = coordinator.rounds
    done: dict[int, dict[str, int]] = {}
    tokens: dict[int, int] = {}
    tail = ""

    def render() -> Table:
        table = Table(title=f"{coordinator.method} (live)", title_justify="left")
        for column in ("round", "width", "ok", "failed", "cancelled", "completion tokens"):
            table.add_column(column, justify="right")
        for index, width in enumerate(widths):
            counts = done.get(index, {})
            table.add_row(
                str(index),
                str(width),
                str(counts.get("ok", 0)),
                str(counts.get("failed", 0)),
                str(counts.get("cancelled", 0)),
                f"{tokens.get(index, 0):,}",
            )
        if tail:
            table.caption = tail.replace("\n", " ")
        return table

    result: SolveResult | None = None
    with Live(render(), console=err, refresh_per_second=8, transient=False) as live:
        async with coordinator.stream(problem) as events:
            async for event in events:
                if isinstance(event, TrajectoryFinished):
                    trajectory = event.trajectory
                    counts = done.setdefault(trajectory.round, {})
                    counts[trajectory.status] = counts.get(trajectory.status, 0) + 1
                    tokens[trajectory.round] = (
                        tokens.get(trajectory.round, 0) + trajectory.usage.completion_tokens
                    )
                elif isinstance(event, TokenDelta):
                    tail = (tail + event.text)[-_TAIL:]  # only the end is shown
                elif isinstance(event, AttemptRestarted):
                    tail = ""  # the retry streams its trajectory again from the start
                elif isinstance(event, Done):
                    result = event.result
                live.update(render())
    if result is None:  # pragma: no cover - stream always ends with Done or raises
        raise RuntimeError("the solve ended without a result")
    err.print(Panel.fit("done", style="green"))
    return result
