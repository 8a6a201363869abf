"""SGLangRollout: samples from SGLang's native /generate, weights pushed after every PPO update.

SGLang needs CUDA, so the server is `pacore_agent.testing.fake_sglang`: in-process (on its own event-loop
thread, since the engine's methods block) for the HTTP side, and once as a real subprocess launched
through `SGLangBackend.launch` for the process side (a server that dies, no orphan processes).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from aiohttp import web
from anyio.from_thread import start_blocking_portal
from safetensors.torch import load_file
from transformers import Qwen3Config

from benchmarks.gpu_ppo_check import TINY, build_model
from pacore_agent.backends.sglang import SGLangBackend, SGLangServerError
from pacore_agent.evaluation.store import PoolMessage
from pacore_agent.exceptions import BackendError, ContextLengthError, RequestRejectedError, UsageError
from pacore_agent.testing.fake_sglang import EOS_TOKEN_ID, FakeSGLangServer
from tests.helpers import one_problem_run
from tests.processes import FAKE_COMMAND, FAKE_ENV, group_members, running
from training.ppo import PPOConfig, PPOTrainer
from training.rollout import HFRollout
from training.sglang_rollout import SGLangRollout, WeightSyncError
from training.toy import EOS, PAD, make_policy, sample_problems

pytestmark = [
    pytest.mark.skipif(not Path("/proc").is_dir(), reason="process-group checks read /proc"),
    pytest.mark.usefixtures("one_torch_thread"),
]


@contextmanager
def _fake_server(**kwargs: Any) -> Iterator[FakeSGLangServer]:
    """An in-process fake SGLang server on its own event-loop thread."""
    with start_blocking_portal() as portal:
        server = FakeSGLangServer("fake/model", **kwargs)
        portal.call(server.start)
        try:
            yield server
        finally:
            portal.call(server.stop)


@contextmanager
def _serve_app(app: web.Application) -> Iterator[str]:
    """Serve an aiohttp app on a loopback port from its own event-loop thread; yields its base URL."""
    with start_blocking_portal() as portal:
        runner = web.AppRunner(app)
        portal.call(runner.setup)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        portal.call(site.start)
        try:
            yield f"http://127.0.0.1:{runner.addresses[0][1]}"
        finally:
            portal.call(runner.cleanup)


@pytest.fixture
def fake() -> Iterator[FakeSGLangServer]:
    with _fake_server(vocab_size=1000, context_length=64) as server:
        yield server


def _post(url: str, body: Any) -> Any:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


# -- generation -----------------------------------------------------------------------------------


def test_generate_parses_token_ids_and_logprobs_into_prompt_major_samples(fake: FakeSGLangServer) -> None:
    threads_before = threading.active_count()
    prompts = [[5, 6, 7], [8, 9]]
    with SGLangRollout(SGLangBackend.attach(fake.base_url)) as engine:
        samples = engine.generate(prompts, n=3, max_new_tokens=4)
        assert threading.active_count() == threads_before + 1  # the engine's event-loop thread

    assert [s.prompt_ids for s in samples] == [prompts[0]] * 3 + [prompts[1]] * 3
    for sample in samples:
        assert 0 < len(sample.response_ids) == len(sample.logprobs) <= 4
        assert all(lp <= 0.0 for lp in sample.logprobs)
        if sample.finish_reason == "stop":
            assert sample.response_ids[-1] == EOS_TOKEN_ID  # the stop token is kept
        else:
            assert sample.finish_reason == "length" and len(sample.response_ids) == 4
    assert {s.finish_reason for s in samples} == {"stop", "length"}
    assert threading.active_count() == threads_before  # close() ended the thread

    # One request per prompt with its n copies; max_new_tokens always set (SGLang's default is 128).
    bodies = sorted(fake.generate_bodies, key=lambda body: len(body["input_ids"][0]), reverse=True)
    assert [body["input_ids"] for body in bodies] == [[p] * 3 for p in prompts]
    for body in bodies:
        assert body["return_logprob"] is True
        assert body["sampling_params"] == {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 4}

    # The samples are SGLang's answers token for token, logprob for logprob, in the same order.
    for index, prompt in enumerate(prompts):
        raw = _post(
            f"{fake.base_url}/generate",
            {
                "input_ids": [prompt] * 3,
                "sampling_params": {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 4},
                "return_logprob": True,
            },
        )
        for item, sample in zip(raw, samples[index * 3 : index * 3 + 3], strict=True):
            assert sample.response_ids == item["output_ids"]
            assert sample.logprobs == [entry[0] for entry in item["meta_info"]["output_token_logprobs"]]
            assert sample.finish_reason == item["meta_info"]["finish_reason"]["type"]


def test_stop_token_ids_end_responses_as_stops() -> None:
    with (
        _fake_server(vocab_size=8) as fake,
        SGLangRollout(SGLangBackend.attach(fake.base_url), stop_token_ids=[5], top_p=0.9) as engine,
    ):
        samples = engine.generate([[3, 4], [6, 7, 3]], n=8, max_new_tokens=6)
    assert fake.generate_bodies[0]["sampling_params"]["stop_token_ids"] == [5]
    assert fake.generate_bodies[0]["sampling_params"]["top_p"] == 0.9
    ended_by = {s.response_ids[-1] for s in samples if s.finish_reason == "stop"}
    assert 5 in ended_by and ended_by <= {5, EOS_TOKEN_ID}
    for sample in samples:
        assert not {5, EOS_TOKEN_ID} & set(sample.response_ids[:-1])  # nothing after a stop token
        if sample.finish_reason == "length":
            assert len(sample.response_ids) == 6


def test_refused_and_aborted_requests_raise_pacore_errors(fake: FakeSGLangServer) -> None:
    with SGLangRollout(SGLangBackend.attach(fake.base_url)) as engine:
        with pytest.raises(ContextLengthError, match="maximum context length of 64"):
            engine.generate([[3, 4], list(range(3, 13))], n=2, max_new_tokens=60)
        assert len(engine.generate([[3, 4]], n=1, max_new_tokens=4)) == 1  # still usable

    async def aborted(request: web.Request) -> web.Response:
        meta = {
            "prompt_tokens": 2,
            "completion_tokens": 1,
            "finish_reason": {"type": "abort", "message": "Abort before prefill (fake)", "status_code": 503},
            "output_token_logprobs": [[-0.5, 7, None]],
        }
        return web.json_response([{"text": "x", "output_ids": [7], "meta_info": meta}] * 2)

    async def healthy(request: web.Request) -> web.Response:
        return web.Response()

    app = web.Application()
    app.router.add_post("/generate", aborted)
    app.router.add_get("/health_generate", healthy)
    with _serve_app(app) as url, SGLangRollout(SGLangBackend.attach(url)) as engine:
        with pytest.raises(BackendError, match="finish_reason 'abort': Abort before prefill") as abort:
            engine.generate([[3, 4]], n=2, max_new_tokens=4)
        assert url in str(abort.value)


# -- weights ----------------------------------------------------------------------------------------


def test_weights_are_pushed_to_the_server_after_every_ppo_update(tmp_path: Path) -> None:
    problems = sample_problems(4, __import__("random").Random(0))
    prompts = [p.prompt_ids for p in problems]
    actor = make_policy(0)
    trainer = PPOTrainer(actor, config=PPOConfig(actor_lr=1e-3, critic_lr=1e-3, tis_cap=2.0))
    weights_dir = tmp_path / "weights"

    with (
        _fake_server(vocab_size=16) as fake,  # the toy vocabulary: every token id is one the policy knows
        SGLangRollout(SGLangBackend.attach(fake.base_url), weights_dir=weights_dir) as engine,
    ):
        pushed = []
        for step in range(2):
            samples = engine.generate(prompts, n=2, max_new_tokens=3)
            rewards = [float(s.response_ids[0] < 8) for s in samples]
            metrics = trainer.step(samples, rewards)
            assert metrics["charts/rollout_logprob_diff"] > 0.0  # the fake's logprobs are made up
            assert 0.0 < metrics["charts/tis_weight_mean"] <= 2.0
            engine.sync_weights(trainer.actor)

            version = str(step + 1)
            path = weights_dir / f"weights-{step + 1:06d}"
            assert engine.weight_version == version
            assert fake.weight_updates[-1] == {"model_path": str(path), "weight_version": version}
            assert fake.flush_count == step + 1
            assert (path / "config.json").is_file()
            saved = load_file(path / "model.safetensors")
            for name, tensor in trainer.actor.state_dict().items():
                assert torch.equal(saved[name], tensor), name  # the weights after this update
            pushed.append(path)

        assert len(fake.weight_updates) == 2
        assert not pushed[0].exists() and pushed[1].exists()  # keep_weights=1: the server loaded the old
        # Later samples come from the new weights, and say so.
        assert engine.generate(prompts[:1], n=1, max_new_tokens=2)
        assert fake.generate_bodies and fake.weight_version == "2"
    assert pushed[1].exists()  # a weights_dir of the caller's keeps the newest weights after close


def test_save_dtype_casts_the_weights_and_keeps_tied_ones_tied(tmp_path: Path) -> None:
    model = build_model(TINY, torch.device("cpu"), seed=0)  # tied, like Qwen3-0.6B
    with (
        _fake_server() as fake,
        SGLangRollout(
            SGLangBackend.attach(fake.base_url), weights_dir=tmp_path, save_dtype=torch.bfloat16
        ) as engine,
    ):
        engine.sync_weights(model)
    saved = load_file(tmp_path / "weights-000001" / "model.safetensors")
    assert {t.dtype for t in saved.values()} == {torch.bfloat16}
    assert "lm_head.weight" not in saved  # tied to the embeddings, as save_pretrained writes it
    assert torch.equal(saved["model.embed_tokens.weight"], model.model.embed_tokens.weight.bfloat16())
    assert next(model.parameters()).dtype == torch.float32  # the trainer's model is left as it was


def test_a_refused_weight_update_is_reported_and_blocks_sampling_until_a_push_succeeds() -> None:
    model = make_policy(1)
    with _fake_server(vocab_size=16) as fake:
        engine = SGLangRollout(SGLangBackend.attach(fake.base_url))
        with engine:
            engine.sync_weights(model)
            weights_dir = engine.weights_dir
            assert weights_dir is not None and weights_dir.is_dir()

            fake.fail_weight_updates = True
            with pytest.raises(WeightSyncError) as refused:
                engine.sync_weights(model)
            error = refused.value
            assert "could not be loaded (fake failure)" in str(error)  # the server's own message
            assert f"weight version 2 ({weights_dir / 'weights-000002'})" in str(error)
            assert fake.base_url in str(error)
            assert (error.version, error.server) == ("2", fake.base_url)
            assert isinstance(error.__cause__, RequestRejectedError)
            assert engine.weight_version == "1"

            with pytest.raises(WeightSyncError, match="call sync_weights again") as stale:
                engine.generate([[3, 4]], n=1, max_new_tokens=2)
            assert "could not be loaded" in str(stale.value)

            fake.fail_weight_updates = False
            engine.sync_weights(model)
            assert engine.weight_version == "3"
            assert len(engine.generate([[3, 4]], n=2, max_new_tokens=2)) == 2

            # Weights changed behind the engine's back: the samples say so, and are refused.
            _post(
                f"{fake.base_url}/update_weights_from_disk", {"model_path": "/x", "weight_version": "other"}
            )
            with pytest.raises(WeightSyncError, match="weight version 'other', but the last push was '3'"):
                engine.generate([[3, 4]], n=1, max_new_tokens=2)
        assert not weights_dir.exists()  # the engine's own temporary folder is removed on close
        with pytest.raises(UsageError, match="is closed"):
            engine.generate([[3, 4]], n=1, max_new_tokens=2)
        engine.close()  # idempotent


def test_a_launched_server_serves_takes_weights_and_its_death_is_reported(tmp_path: Path) -> None:
    """The fake as a real subprocess: launch, sample, push weights, SIGKILL it, then clean errors and
    no process left behind."""
    backend = SGLangBackend.launch(
        "fake/model",
        command=FAKE_COMMAND,
        env=FAKE_ENV,
        extra_args=["--leak-child"],
        log_path=tmp_path / "server.log",
        startup_timeout=60.0,
        shutdown_timeout=10.0,
    )
    with SGLangRollout(backend, weights_dir=tmp_path / "weights") as engine:
        pid = backend.server.pid
        assert pid is not None
        samples = engine.generate([[3, 4, 5]], n=2, max_new_tokens=4)
        assert len(samples) == 2 and all(len(s.response_ids) == len(s.logprobs) > 0 for s in samples)
        engine.sync_weights(make_policy(0))
        state = _get(f"{backend.base_url}/_fake/state")
        path = tmp_path / "weights" / "weights-000001"
        assert state["weight_updates"] == [{"model_path": str(path), "weight_version": "1"}]
        assert state["flush_count"] == 1
        [child] = state["child_pids"]

        os.kill(pid, signal.SIGKILL)  # the server we launched dies mid-run
        with pytest.raises(SGLangServerError) as died:
            engine.generate([[3, 4, 5]], n=2, max_new_tokens=4)
        assert f"exited with status {-signal.SIGKILL} during POST /generate" in str(died.value)
        assert "fired up and ready to roll" in died.value.log_tail

        with pytest.raises(WeightSyncError) as push_failed:
            engine.sync_weights(make_policy(0))
        assert f"exited with status {-signal.SIGKILL}" in str(push_failed.value)
        assert "fired up and ready to roll" in push_failed.value.log_tail
        assert isinstance(push_failed.value.__cause__, SGLangServerError)
        assert running(child)  # the dead server's worker lives on until the engine closes

    assert not running(child)
    assert group_members(pid) == []


# -- usage ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"temperature": 0.0},
        {"top_p": 0.0},
        {"keep_weights": 0},
        {"stop_token_ids": [-1]},
        {"sampling_extra": {"max_new_tokens": 5}},
        {"sampling_extra": {"n": 2}},
    ],
)
def test_inconsistent_settings_are_usage_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(UsageError):
        SGLangRollout(SGLangBackend.attach("http://127.0.0.1:1"), **kwargs)


def test_bad_calls_are_usage_errors_before_any_request() -> None:
    with pytest.raises(UsageError, match="needs an SGLangBackend"):
        SGLangRollout("http://127.0.0.1:1")  # type: ignore[arg-type]
    engine = SGLangRollout(SGLangBackend.attach("http://127.0.0.1:1"))  # nothing listens there
    with pytest.raises(UsageError, match="must be positive"):
        engine.generate([[3]], n=0, max_new_tokens=4)
    with pytest.raises(UsageError, match="must be positive"):
        engine.generate([[3]], n=1, max_new_tokens=0)
    with pytest.raises(UsageError, match="at least one token"):
        engine.generate([[3], []], n=1, max_new_tokens=4)
    assert engine.generate([], n=1, max_new_tokens=4) == []
    with pytest.raises(UsageError, match="save_pretrained"):
        engine.sync_weights(torch.nn.Linear(2, 2))
    engine.close()


@pytest.mark.anyio
async def test_blocking_calls_from_an_event_loop_are_refused(anyio_backend: str) -> None:
    engine = SGLangRollout(SGLangBackend.attach("http://127.0.0.1:1"))
    with pytest.raises(UsageError, match=r"anyio\.to_thread\.run_sync"):
        engine.generate([[3]], n=1, max_new_tokens=4)
    engine.close()


def test_every_engine_is_a_context_manager() -> None:
    policy = make_policy(0)
    with HFRollout(policy, pad_token_id=PAD, eos_token_id=EOS) as engine:
        assert len(engine.generate([[13, 1, 12]], n=2, max_new_tokens=1)) == 2
    engine.close()  # a no-op for an in-process engine


# -- the training driver on an attached server: weights known from step 0 ---------------------------

_TINY_VOCAB = 322
"""The vocabulary of ``build_tiny_model``'s defaults (its BPE tokens, special tokens and thinking tags)."""


def _attached_run(tmp_path: Path, fake: FakeSGLangServer) -> Any:
    """A one-step `training.train` config on the tiny chat model, sampling from the attached ``fake``.

    The fake's vocabulary is the tiny model's (`_TINY_VOCAB`), so its token ids decode.
    """
    messages = [PoolMessage(message=f"\\boxed{{{k}}}", correct=k == 3, score=float(k == 3)) for k in (3, 4)]
    config = one_problem_run(
        tmp_path,
        messages,
        steps=1,
        problems_per_step=1,
        responses_per_problem=2,
        min_messages=2,
        max_messages=2,
        max_response_tokens=4,
        rollout="sglang",
        sglang_url=fake.base_url,
        sglang_weights_dir=str(tmp_path / "weights"),
        export_model=False,
        device="cpu",
    )
    assert Qwen3Config.from_pretrained(config.model).vocab_size == _TINY_VOCAB
    return config


def test_an_attached_server_holding_other_weights_gets_the_actor_before_step_0(tmp_path: Path) -> None:
    from training.metrics import read_jsonl
    from training.train import train

    # the server was started on another model: step 0 must not sample from it
    with _fake_server(vocab_size=_TINY_VOCAB, context_length=4096) as fake:
        assert fake.state()["model_path"] == "fake/model" and fake.weight_version == "default"
        summary = train(_attached_run(tmp_path, fake))
        first, *_ = fake.weight_updates
        assert first["weight_version"] == "1" and first["model_path"].startswith(str(tmp_path / "weights"))
        # one push before step 0, one after it; the engine checked that both samples of step 0 (one
        # request: the problem's two responses share a message set) carried version 1
        assert [u["weight_version"] for u in fake.weight_updates] == ["1", "2"]
        assert fake.generate_requests == 1
    assert summary.steps_done == 1
    assert [m["step"] for m in read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [0]


def test_an_attached_server_that_refuses_the_weights_stops_the_run_before_any_rollout(tmp_path: Path) -> None:
    from training.train import train

    with _fake_server(vocab_size=_TINY_VOCAB, context_length=4096) as fake:
        fake.fail_weight_updates = True
        with pytest.raises(
            WeightSyncError, match=r"pushing weight version 1 .* failed: .*could not be loaded"
        ):
            train(_attached_run(tmp_path, fake))
        assert fake.generate_requests == 0  # nothing was sampled from the server's own weights
        assert len(fake.weight_updates) == 1
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
