"""What the tests that launch the fake SGLang server share: its command, and process checks (via /proc)."""

from __future__ import annotations

import sys
from pathlib import Path

from pacore_agent.backends.sglang.process import group_members

__all__ = ["FAKE_COMMAND", "FAKE_ENV", "REPO", "group_members", "running"]

REPO = Path(__file__).resolve().parents[1]
FAKE_COMMAND = [sys.executable, "-m", "pacore_agent.testing.fake_sglang"]
"""Launches `pacore_agent.testing.fake_sglang` in place of ``python -m sglang.launch_server``."""
FAKE_ENV = {"PYTHONPATH": str(REPO)}


def running(pid: int) -> bool:
    """Whether the process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 :].split()[0] != "Z"
