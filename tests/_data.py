"""Where the benchmark data lives: $PACORE_DATA_DIR, else the nearest `shared/data` above this file.

The data files are never copied into the repository; tests that need them skip when they are absent.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import pytest


@functools.cache
def data_dir() -> Path | None:
    if env := os.environ.get("PACORE_DATA_DIR"):
        return Path(env)
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return None


@functools.cache
def _load(name: str) -> tuple[dict[str, Any], ...]:
    directory = data_dir()
    path = directory / name if directory else None
    if path is None or not path.is_file():
        return ()
    with path.open(encoding="utf-8") as handle:
        return tuple(json.loads(line) for line in handle if line.strip())


def load_jsonl(name: str) -> list[dict[str, Any]]:
    """The rows of a data file; skips the calling test when the file is not there."""
    rows = _load(name)
    if not rows:
        pytest.skip(f"benchmark data {name} not found (set PACORE_DATA_DIR)")
    return list(rows)


def answers_by_id() -> dict[str, str]:
    """Every math answer of the data files, by problem id."""
    answers: dict[str, str] = {}
    for name in ("aime2025.jsonl", "hmmt2025_feb.jsonl", "imo_answerbench.jsonl"):
        answers.update({row["id"]: row["answer"] for row in load_jsonl(name)})
    return answers
