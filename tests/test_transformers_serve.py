"""A real third-party OpenAI-compatible server: `transformers serve` on a tiny model built offline.

It ignores ``n``: the backend must notice and send separate requests. It is also an upstream of
`pacore serve`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from pacore_agent import Coordinator, OpenAIBackend, SamplingParams
from pacore_agent.serving.server import PacoreServer
from tests.helpers import closed_port

pytest.importorskip("torch")
pytest.importorskip("fastapi")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    from pacore_agent.testing.tiny_model import build_tiny_model

    model = str(build_tiny_model(tmp_path_factory.mktemp("tiny")))
    executable = shutil.which("transformers")
    if executable is None:
        pytest.skip("the `transformers` command is not installed (extra: serving)")
    port = closed_port()
    log = tmp_path_factory.mktemp("log") / "serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    with log.open("w") as sink:
        process = subprocess.Popen(
            [executable, "serve", model, "--port", str(port), "--device", "cpu", "--reasoning", "off"],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:
                    assert json.load(response)["status"] == "ok"
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"transformers serve did not start:\n{log.read_text()}") from None
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/v1", model
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


SAMPLING = SamplingParams(max_tokens=24, seed=1)


@pytest.mark.anyio
async def test_backend_notices_that_n_is_ignored(upstream: tuple[str, str]) -> None:
    base_url, model = upstream
    async with OpenAIBackend(base_url, model) as backend:
        result = await Coordinator([3], backend, n_per_request=3, sampling=SAMPLING).solve("What is 2+3?")
        assert backend.supports_n is False
    first = result.rounds[0]
    assert len(first.trajectories) == 3 and all(t.ok for t in first.trajectories)
    assert all(t.usage.completion_tokens > 0 and t.usage.prompt_tokens > 0 for t in first.trajectories)
    assert result.final is not None and result.final.model == model


@pytest.mark.anyio
async def test_pacore_serve_over_transformers_serve(upstream: tuple[str, str]) -> None:
    base_url, model = upstream
    async with (
        OpenAIBackend(base_url, model) as backend,
        PacoreServer(backend, sampling=SAMPLING) as server,
        openai.AsyncOpenAI(base_url=server.base_url, api_key="unused", max_retries=0) as client,
    ):
        reply = await client.chat.completions.create(
            model="pacore:[2]", messages=[{"role": "user", "content": "What is 2+3?"}]
        )
    assert reply.choices[0].message.content is not None
    assert reply.usage is not None and reply.usage.completion_tokens > 0


def test_tiny_model_folder_is_small(upstream: tuple[str, str]) -> None:
    size = sum(p.stat().st_size for p in Path(upstream[1]).rglob("*") if p.is_file())
    assert size < 5_000_000
