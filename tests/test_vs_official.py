"""`benchmarks.vs_official`: it refuses to run without the paper's code, and pacore's side of it works.

The paper's loop itself is not run here: that needs its repository, and a stand-in would prove nothing.
"""

from __future__ import annotations

import json
import random
import urllib.request
from pathlib import Path

import anyio
import pytest

from benchmarks import vs_official
from benchmarks._sim_serve import counted_server
from pacore_agent import UsageError
from pacore_agent.backends.sim import Latency, SimConfig


def test_a_path_without_the_papers_code_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "pacore").mkdir()  # a folder of the right name is not the paper's code
    assert vs_official.main(["--official", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not available" in err and "base_exp.py" in err and "--official" in err


def test_without_official_and_no_clone_it_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # git refuses https outright under this setting: the clone fails at once, offline.
    monkeypatch.setenv("GIT_ALLOW_PROTOCOL", "file")
    assert vs_official.main([]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(
        "the paper's code is not available: could not clone https://github.com/stepfun-ai/PaCoRe"
    )
    assert "\n" not in err


def test_bad_settings_name_the_option(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        vs_official.main(["--official", str(tmp_path), "--settings", "zero,slow"])


@pytest.mark.anyio
async def test_pacore_side_solves_every_problem_and_the_server_counts_its_peak() -> None:
    server = counted_server(SimConfig(think_words=4, record_requests=False), port=0)
    async with server:
        figures = await vs_official._run_pacore(server.base_url, 3, [4, 2], concurrency=64)

        def stats() -> dict[str, int]:
            with urllib.request.urlopen(f"{server.root_url}/_sim/stats", timeout=10) as answer:
                return json.loads(answer.read())  # type: ignore[no-any-return]

        peak = (await anyio.to_thread.run_sync(stats))["max_in_flight"]
    assert figures["solved"] == 3 and figures["seconds"] > 0
    assert 2 <= peak <= 64 and server.engine.served == 3 * (4 + 2 + 1)


def test_uniform_latency_stays_in_its_range() -> None:
    latency = Latency(uniform=(0.1, 0.9))
    rng = random.Random(0)
    draws = [latency.sample(rng) for _ in range(200)]
    assert all(d is not None and 0.1 <= d <= 0.9 for d in draws)
    assert max(d for d in draws if d is not None) - min(d for d in draws if d is not None) > 0.5
    with pytest.raises(UsageError, match="uniform"):
        Latency(uniform=(0.9, 0.1))
