"""Live progress of a benchmark run: rich bars on a terminal, nothing otherwise."""

from __future__ import annotations

from types import TracebackType
from typing import Self

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["BenchProgress"]


class BenchProgress:
    """Progress bars of a run: pool parts, items, problems, trajectories, plus tokens and errors.

    Disabled (every method a no-op) when the console is not a terminal, so logs and pipes stay clean.
    Use as a context manager; the runner calls the ``*_done`` methods as work finishes.

    Args:
        console: Where to draw (default: standard error).
        enabled: Force on or off (default: on exactly when ``console`` is a terminal).
    """

    def __init__(self, console: Console | None = None, *, enabled: bool | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.enabled = self.console.is_terminal if enabled is None else enabled
        self.tokens = 0
        self.errors = 0
        self._progress = Progress(
            TextColumn("{task.description:<13}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[note]}"),
            console=self.console,
            disable=not self.enabled,
        )
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> Self:
        self._progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.stop()

    def _status_text(self) -> str:
        return f"tokens {self.tokens:,}  errors {self.errors}"

    def _refresh_status(self) -> None:
        # The counters ride on the first bar (pool parts or items).
        if self._tasks:
            self._progress.update(next(iter(self._tasks.values())), note=self._status_text())

    def start(self, name: str, total: int, *, completed: int = 0) -> None:
        """Add (or reset) a bar."""
        if name in self._tasks:
            self._progress.update(self._tasks[name], total=total, completed=completed)
        else:
            note = "" if self._tasks else self._status_text()
            self._tasks[name] = self._progress.add_task(name, total=total, completed=completed, note=note)

    def advance(self, name: str, amount: int = 1) -> None:
        """Advance a bar (ignored when there is no such bar)."""
        if name in self._tasks and amount:
            self._progress.advance(self._tasks[name], amount)

    def add_tokens(self, tokens: int) -> None:
        """Count generated tokens."""
        self.tokens += tokens
        self._refresh_status()

    def error(self) -> None:
        """Count a failed item."""
        self.errors += 1
        self._refresh_status()
