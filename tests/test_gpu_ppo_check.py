"""The prepared GPU check (benchmarks/gpu_ppo_check.py) runs end to end on a CPU with tiny sizes."""

from __future__ import annotations

import re

from tests.helpers import run_module


def test_gpu_ppo_check_runs_on_cpu_with_tiny_sizes() -> None:
    lines = run_module(
        "benchmarks.gpu_ppo_check", "--device", "cpu", "--tiny", "--steps", "2", "--threads", "1"
    )
    assert lines[0].startswith("device=cpu ")
    assert "gradient_checkpointing=True" in lines[1]
    assert [line.split()[1] for line in lines if line.startswith("step=")] == ["warmup", "timed", "timed"]
    summary = re.fullmatch(
        r"tokens_per_s=(\d+\.\d) peak_mem_gib=(\d+\.\d\d) steps=(\d+) device=(\w+)", lines[-1]
    )
    assert summary is not None, lines[-1]
    assert float(summary[1]) > 0 and float(summary[2]) > 0
    assert (summary[3], summary[4]) == ("2", "cpu")
    assert sum(line.startswith("tokens_per_s=") for line in lines) == 1
