"""The in-process Hugging Face backend on a tiny model built offline, and `pacore solve --backend`."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from typer.testing import CliRunner

from pacore_agent import (
    DEFAULT_LOCAL_MODEL,
    ConfigurationError,
    Coordinator,
    GenerationRequest,
    RecordingBackend,
    ReplayBackend,
    SamplingParams,
    SolveResult,
    TransformersBackend,
    final_conclusion,
)
from pacore_agent.backends.transformers import decode_completion
from pacore_agent.cli import app, endpoint_configured
from pacore_agent.exceptions import ContextLengthError, RequestRejectedError
from pacore_agent.prompts import build_prompt
from pacore_agent.testing.tiny_model import build_tiny_model
from tests.helpers import wait_until

torch = pytest.importorskip("torch")  # the `local` extra: torch, transformers, tokenizers
pytest.importorskip("transformers")

PROBLEM = "What is 2+3?"
MESSAGES = [{"role": "user", "content": PROBLEM}]


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    # A tiny model gains nothing from threads, and on a shared busy machine OpenMP's spinning makes each
    # step an order of magnitude slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"), seed=0)


class GenerateSpy:
    """Wraps ``model.generate`` of a loaded backend: counts calls, batch sizes and overlap, keeps outputs."""

    def __init__(self, backend: TransformersBackend, *, delay: float = 0.0) -> None:
        self.model = backend.model
        self.original = self.model.generate
        self.delay = delay
        self.calls: list[tuple[int, torch.Tensor]] = []  # (batch, prompt + generated ids)
        self.active = self.max_active = 0
        self.observe: Callable[[], int] | None = None
        self.observed: list[tuple[int, int]] = []  # observe() at the start and end of each call
        self.ended_at: float | None = None
        self._lock = threading.Lock()
        self.model.generate = self

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        before = self.observe() if self.observe else 0
        try:
            time.sleep(self.delay)
            output: torch.Tensor = self.original(*args, **kwargs)
        finally:
            with self._lock:
                self.active -= 1
            self.ended_at = time.perf_counter()
        self.observed.append((before, self.observe() if self.observe else 0))
        self.calls.append((kwargs["input_ids"].shape[0], output))
        return output


@pytest.fixture
def loaded(tiny: Path) -> Iterator[Callable[..., Any]]:
    """Loaded backends on the tiny model, closed after the test."""
    backends: list[TransformersBackend] = []

    async def make(**options: Any) -> TransformersBackend:
        backend = TransformersBackend(tiny, **options)
        await backend.load()
        backends.append(backend)
        return backend

    yield make
    for backend in backends:
        anyio.run(backend.aclose)


def _prompt_length(backend: TransformersBackend, messages: list[dict[str, Any]]) -> int:
    encoded = backend.tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, enable_thinking=True
    )
    return len(encoded["input_ids"])


def _expected_length(ids: list[int], eos: int) -> int:
    return ids.index(eos) + 1 if eos in ids else len(ids)


# -- the tiny model -------------------------------------------------------------------------------------


def test_tiny_model_is_small_and_loads_like_a_hub_model(tiny: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    size = sum(f.stat().st_size for f in tiny.iterdir())
    assert size < 2_000_000
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    model = AutoModelForCausalLM.from_pretrained(tiny)
    assert model.config.model_type == "qwen3"
    thinking = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    plain = tokenizer.apply_chat_template(
        MESSAGES, add_generation_prompt=True, tokenize=False, enable_thinking=False
    )
    assert thinking == f"<|im_start|>user\n{PROBLEM}<|im_end|>\n<|im_start|>assistant\n"
    assert plain == thinking + "<think>\n\n</think>\n\n"
    assert len(tokenizer.encode("</think>", add_special_tokens=False)) == 1


def test_tiny_model_is_reproducible(tiny: Path, tmp_path: Path) -> None:
    again = build_tiny_model(tmp_path / "again", seed=0)
    assert (again / "model.safetensors").read_bytes() == (tiny / "model.safetensors").read_bytes()
    assert (again / "tokenizer.json").read_text() == (tiny / "tokenizer.json").read_text()


# -- the backend under the Coordinator ------------------------------------------------------------------


@pytest.mark.anyio
async def test_solve_reports_real_token_counts(loaded: Callable[..., Any]) -> None:
    backend = await loaded()
    spy = GenerateSpy(backend)
    sampling = SamplingParams(max_tokens=48, seed=5)
    result = await Coordinator([2], backend, sampling=sampling).solve(PROBLEM)

    assert isinstance(result, SolveResult)
    assert [len(r.trajectories) for r in result.rounds] == [2, 1]
    assert all(t.ok and t.model == str(backend.source) for t in result.trajectories)
    assert result.final is not None and result.answer == final_conclusion(result.final.content or "")
    # Prompt tokens: the chat-templated prompt of each round, counted once per request.
    first, final = result.rounds
    synthesis = build_prompt(result.problem, first.messages)
    assert [t.usage.prompt_tokens for t in first.trajectories] == [_prompt_length(backend, MESSAGES)] * 2
    assert final.trajectories[0].usage.prompt_tokens == _prompt_length(backend, synthesis)
    # Completion tokens: the generated ids up to and including end-of-sequence, one generate per request.
    assert [batch for batch, _ in spy.calls] == [1, 1, 1]
    eos = backend.tokenizer.convert_tokens_to_ids("<|im_end|>")
    think = backend.tokenizer.convert_tokens_to_ids("</think>")
    expected: dict[str, tuple[int, int, str]] = {}  # text -> (completion tokens, reasoning tokens, finish)
    for messages, (_, output) in zip([MESSAGES, MESSAGES, synthesis], spy.calls, strict=True):
        ids = output[0, _prompt_length(backend, messages) :].tolist()
        kept = ids[: _expected_length(ids, eos)]
        reasoning = len(kept) - kept[::-1].index(think) if think in kept else 0
        finish = "stop" if kept[-1] == eos else "length"
        expected[backend.tokenizer.decode(kept, skip_special_tokens=True)] = (len(kept), reasoning, finish)
    for trajectory in result.trajectories:
        usage = trajectory.usage
        assert trajectory.content in expected
        assert (usage.completion_tokens, usage.reasoning_tokens, trajectory.finish_reason) == expected[
            trajectory.content
        ]
        assert 0 < usage.completion_tokens <= 48


@pytest.mark.anyio
async def test_n_completions_come_from_one_generate_call(loaded: Callable[..., Any]) -> None:
    backend = await loaded(return_logprobs=True)
    spy = GenerateSpy(backend)
    request = GenerationRequest(MESSAGES, n=3, sampling=SamplingParams(max_tokens=24, seed=1))
    completions = await backend.generate(request)
    assert len(completions) == 3
    assert [batch for batch, _ in spy.calls] == [3]
    prompt_length = len(backend.prompt_ids(request))
    assert prompt_length == _prompt_length(backend, MESSAGES)
    assert [c.usage.prompt_tokens for c in completions] == [prompt_length, 0, 0]
    eos = backend.tokenizer.eos_token_id
    output = spy.calls[0][1]
    for row, completion in zip(output[:, prompt_length:].tolist(), completions, strict=True):
        length = _expected_length(row, eos)
        assert completion.token_ids == row[:length]
        assert completion.usage.completion_tokens == length == len(completion.logprobs or [])
        assert completion.finish_reason == ("stop" if row[length - 1] == eos else "length")
        assert completion.content == backend.tokenizer.decode(row[:length], skip_special_tokens=True)
    # A Coordinator asking n per request batches a round the same way.
    spy.calls.clear()
    await Coordinator([3], backend, n_per_request=3, sampling=SamplingParams(max_tokens=16)).solve(PROBLEM)
    assert [batch for batch, _ in spy.calls] == [3, 1]


@pytest.mark.anyio
async def test_generate_does_not_block_the_event_loop(loaded: Callable[..., Any]) -> None:
    backend = await loaded()
    spy = GenerateSpy(backend, delay=0.5)
    ticks = 0
    spy.observe = lambda: ticks

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.sleep(0.01)

    async with anyio.create_task_group() as group:
        group.start_soon(tick)
        await backend.generate(GenerationRequest(MESSAGES, n=2, sampling=SamplingParams(max_tokens=16)))
        group.cancel_scope.cancel()
    before, after = spy.observed[0]
    assert after - before >= 10  # the loop kept ticking (every 10 ms) while generate ran (>= 500 ms)


@pytest.mark.anyio
async def test_one_generate_at_a_time(loaded: Callable[..., Any]) -> None:
    backend = await loaded(max_concurrency=4)
    spy = GenerateSpy(backend, delay=0.05)
    results: list[int] = []

    async def one(seed: int) -> None:
        request = GenerationRequest(MESSAGES, n=2, sampling=SamplingParams(max_tokens=8, seed=seed))
        results.append(len(await backend.generate(request)))

    async with anyio.create_task_group() as group:
        for seed in range(4):
            group.start_soon(one, seed)
    assert results == [2, 2, 2, 2]
    assert len(spy.calls) == 4 and spy.max_active == 1


@pytest.mark.anyio
async def test_seed_makes_generation_reproducible(loaded: Callable[..., Any]) -> None:
    backend = await loaded(return_logprobs=True)

    async def sample(seed: int) -> list[tuple[str | None, list[int] | None, list[float] | None]]:
        request = GenerationRequest(MESSAGES, n=3, sampling=SamplingParams(max_tokens=24, seed=seed))
        return [(c.content, c.token_ids, c.logprobs) for c in await backend.generate(request)]

    state = torch.random.get_rng_state()
    first, again, other = await sample(7), await sample(7), await sample(8)
    assert first == again
    assert first != other
    assert len({content for content, _, _ in first}) > 1  # the n rows are distinct samples
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random state is untouched


@pytest.mark.anyio
async def test_cancelling_stops_generation_at_the_next_token(loaded: Callable[..., Any]) -> None:
    backend = await loaded()
    spy = GenerateSpy(backend)
    long = SamplingParams(max_tokens=1500, extra_body={"min_tokens": 1500})
    with anyio.move_on_after(0.3) as scope:
        await backend.generate(GenerationRequest(MESSAGES, sampling=long))
    cancelled_at = time.perf_counter()
    assert scope.cancelled_caught
    await wait_until(lambda: len(spy.calls) == 1)
    assert spy.ended_at is not None and spy.ended_at - cancelled_at < 2.0
    assert spy.calls[0][1].shape[1] < _prompt_length(backend, MESSAGES) + 1500
    # The backend serves the next request normally.
    completions = await backend.generate(GenerationRequest(MESSAGES, sampling=SamplingParams(max_tokens=8)))
    assert len(completions) == 1 and len(spy.calls) == 2


@pytest.mark.anyio
@pytest.mark.parametrize("temperature", [1.0, 0.5, 0.0])
async def test_logprobs_are_those_of_the_sampling_distribution(
    loaded: Callable[..., Any], temperature: float
) -> None:
    backend = await loaded(return_logprobs=True)
    request = GenerationRequest(
        MESSAGES, n=2, sampling=SamplingParams(temperature=temperature, max_tokens=20, seed=3)
    )
    completions = await backend.generate(request)
    prompt = backend.prompt_ids(request)
    for completion in completions:
        assert completion.token_ids and completion.logprobs
        ids = torch.tensor([prompt + completion.token_ids])
        with torch.inference_mode():
            logits = backend.model(ids).logits[0, len(prompt) - 1 : -1].float()  # (T, V)
        if temperature > 0:
            logits = logits / temperature
        expected = torch.log_softmax(logits, dim=-1).gather(-1, ids[0, len(prompt) :, None]).squeeze(-1)
        assert torch.allclose(expected, torch.tensor(completion.logprobs), atol=1e-4)
        if temperature == 0.0:
            assert completion.token_ids == logits.argmax(-1).tolist()


@pytest.mark.anyio
async def test_stop_strings_end_the_text_before_them(loaded: Callable[..., Any]) -> None:
    backend = await loaded(return_logprobs=True)
    request = GenerationRequest(MESSAGES, n=4, sampling=SamplingParams(max_tokens=32, seed=2, stop=("=",)))
    completions = await backend.generate(request)
    stopped = 0
    for completion in completions:
        assert completion.content is not None and "=" not in completion.content
        assert completion.token_ids is not None
        assert completion.usage.completion_tokens == len(completion.token_ids)
        text = backend.tokenizer.decode(completion.token_ids, skip_special_tokens=True)
        if "=" in text:
            stopped += 1
            assert completion.finish_reason == "stop"
            assert text.startswith(completion.content + "=")
            shorter = backend.tokenizer.decode(completion.token_ids[:-1], skip_special_tokens=True)
            assert "=" not in shorter  # the counted tokens end with the one completing the stop string
    assert stopped > 0


@pytest.mark.anyio
async def test_split_reasoning_keeps_the_conclusion(loaded: Callable[..., Any]) -> None:
    plain = await loaded()
    split = await loaded(split_reasoning=True)
    request = GenerationRequest(MESSAGES, n=4, sampling=SamplingParams(max_tokens=32, seed=11))
    whole, parts = await plain.generate(request), await split.generate(request)
    assert any("</think>" in (c.content or "") for c in whole)
    for raw, part in zip(whole, parts, strict=True):
        assert part.usage == raw.usage
        text = raw.content or ""
        if "</think>" in text:
            assert part.reasoning is not None and "</think>" not in (part.content or "")
            assert text == ("<think>" if text.startswith("<think>") else "") + part.reasoning + "</think>" + (
                part.content or ""
            )
        else:
            assert part.reasoning is None and part.content == text
        assert final_conclusion(text) == (part.content if part.reasoning is not None else text)


@pytest.mark.anyio
async def test_chat_template_kwargs_and_enable_thinking(loaded: Callable[..., Any]) -> None:
    thinking = await loaded()
    quiet = await loaded(enable_thinking=False)
    empty_thought = "<think>\n\n</think>\n\n"

    def prompt(backend: TransformersBackend, **extra: Any) -> str:
        ids = backend.prompt_ids(GenerationRequest(MESSAGES, sampling=SamplingParams(extra_body=extra)))
        text: str = backend.tokenizer.decode(ids)
        return text

    assert not prompt(thinking).endswith(empty_thought)
    assert prompt(quiet).endswith(empty_thought)
    assert prompt(thinking, chat_template_kwargs={"enable_thinking": False}).endswith(empty_thought)
    assert not prompt(quiet, chat_template_kwargs={"enable_thinking": True}).endswith(empty_thought)
    parts = [
        {"role": "user", "content": [{"type": "text", "text": "What is"}, {"type": "text", "text": "2+3?"}]}
    ]
    assert thinking.prompt_ids(GenerationRequest(parts)) == thinking.prompt_ids(
        GenerationRequest([{"role": "user", "content": "What is\n2+3?"}])
    )


@pytest.mark.anyio
async def test_prompt_longer_than_the_context_is_a_context_length_error(loaded: Callable[..., Any]) -> None:
    backend = await loaded()
    long = [{"role": "user", "content": "What is 2+3? " * 1500}]
    with pytest.raises(ContextLengthError) as caught:
        await backend.generate(GenerationRequest(long))
    assert caught.value.max_context == 2048
    assert caught.value.prompt_tokens is not None and caught.value.prompt_tokens >= 2048
    # max_tokens beyond the window is clamped to the room left.
    per_question = len(
        backend.prompt_ids(GenerationRequest([{"role": "user", "content": "What is 2+3? " * 11}]))
    )
    per_question -= len(
        backend.prompt_ids(GenerationRequest([{"role": "user", "content": "What is 2+3? " * 10}]))
    )
    near = [{"role": "user", "content": "What is 2+3? " * ((2048 - 100) // per_question)}]
    request = GenerationRequest(
        near, sampling=SamplingParams(max_tokens=5000, extra_body={"min_tokens": 5000})
    )
    room = 2048 - len(backend.prompt_ids(request))
    assert 0 < room <= 100 + per_question
    (completion,) = await backend.generate(request)
    assert completion.usage.completion_tokens == room and completion.finish_reason == "length"


@pytest.mark.anyio
async def test_loading_errors_are_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="offline"):
        await TransformersBackend("pacore-tests/no-such-model").generate(GenerationRequest(MESSAGES))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigurationError, match="cannot load"):
        await TransformersBackend(tmp_path / "empty").load()


@pytest.mark.anyio
async def test_other_model_names_are_rejected(loaded: Callable[..., Any]) -> None:
    backend = await loaded()
    with pytest.raises(RequestRejectedError, match="serves"):
        await backend.generate(GenerationRequest(MESSAGES, model="gpt-5"))


@pytest.mark.anyio
async def test_a_model_in_memory_and_a_recorded_replay(loaded: Callable[..., Any], tmp_path: Path) -> None:
    source = await loaded()
    backend = TransformersBackend.from_loaded(
        source.model, source.tokenizer, name="policy", return_logprobs=True
    )
    request = GenerationRequest(MESSAGES, n=2, sampling=SamplingParams(max_tokens=16, seed=4))
    async with RecordingBackend(backend, tmp_path / "local.jsonl") as recorder:
        live = await recorder.generate(request)
    assert backend.loaded  # closing does not drop a model the backend did not load
    assert all(c.model == "policy" and c.logprobs for c in live)
    assert await ReplayBackend(tmp_path / "local.jsonl").generate(request) == live  # logprobs bit for bit


def test_defaults() -> None:
    backend = TransformersBackend()
    assert backend.name == DEFAULT_LOCAL_MODEL == "Qwen/Qwen3-0.6B"
    assert 1 <= backend.max_concurrency <= 4
    assert not backend.loaded  # lazily: nothing is downloaded until the first request
    assert "Qwen/Qwen3-0.6B" in repr(backend)


# -- decoding, on a character "tokenizer" ---------------------------------------------------------------

EOS, PAD, THINK = 0, 1, 2
_SPECIAL_TEXT = {THINK: "</think>"}


def _ids(text: str) -> list[int]:
    return [ord(c) for c in text]


def _decode(ids: Any) -> str:
    return "".join(_SPECIAL_TEXT.get(i, "" if i in (EOS, PAD) else chr(i)) for i in ids)


@pytest.mark.parametrize("think_end_id", [None, THINK])
def test_decode_completion_counts_like_a_server(think_end_id: int | None) -> None:
    def tagged(text: str) -> list[int]:
        if think_end_id is None:
            return _ids(text)
        head, _, tail = text.partition("</think>")
        return _ids(head) + ([THINK] if _ else []) + (tagged(tail) if _ else [])

    ids = [*tagged("<think>ab</think>x</think>cd"), EOS, PAD, PAD]
    completion = decode_completion(ids, _decode, eos_ids={EOS}, think_end_id=think_end_id, prompt_tokens=9)
    body = len(tagged("<think>ab</think>x</think>cd"))
    assert completion.content == "<think>ab</think>x</think>cd"
    assert completion.finish_reason == "stop"
    assert completion.usage.prompt_tokens == 9
    assert completion.usage.completion_tokens == body + 1  # end-of-sequence counted, padding not
    assert completion.usage.reasoning_tokens == body - 2  # up to and including the LAST </think>
    assert completion.token_ids is None and completion.logprobs is None


def test_decode_completion_length_stop_and_split() -> None:
    cut = decode_completion(_ids("<think>abc"), _decode, eos_ids={EOS})
    assert (cut.finish_reason, cut.usage.completion_tokens, cut.usage.reasoning_tokens) == ("length", 10, 0)
    assert (
        decode_completion(_ids("<think>abc"), _decode, eos_ids={EOS}, split_reasoning=True).reasoning is None
    )

    stopped = decode_completion(
        [*_ids("x=1</think>y"), EOS],
        _decode,
        eos_ids={EOS},
        stop=["=", "y"],
        keep_tokens=True,
        logprobs=[-0.5] * 13,
    )
    assert (stopped.content, stopped.finish_reason, stopped.usage.completion_tokens) == ("x", "stop", 2)
    assert stopped.token_ids == _ids("x=") and stopped.logprobs == [-0.5, -0.5]
    assert stopped.usage.reasoning_tokens == 0

    split = decode_completion(
        [*_ids("<think>a</think>b</think>\n\nc"), EOS], _decode, eos_ids={EOS}, split_reasoning=True
    )
    assert (split.reasoning, split.content) == ("a</think>b", "\n\nc")
    assert split.usage.reasoning_tokens == len("<think>a</think>b</think>")


# -- the command line -----------------------------------------------------------------------------------


def _solve(*args: str) -> Any:
    return CliRunner().invoke(app, ["solve", *args])


def test_cli_solves_offline_with_the_transformers_backend(tiny: Path) -> None:
    result = _solve(
        "--backend", "transformers", "--model", str(tiny), "--max-tokens", "32", "--json", PROBLEM
    )
    assert result.exit_code == 0, result.output
    solved = SolveResult.model_validate_json(result.stdout)
    assert solved.schedule == [4, 1]
    assert [len(r.trajectories) for r in solved.rounds] == [4, 1]
    assert {t.call for t in solved.rounds[0].trajectories} == {0}  # the round was one batched generate
    assert solved.usage.prompt_tokens > 0 and solved.usage.completion_tokens > 0
    assert solved.final is not None and solved.final.model == str(tiny)
    assert "loading" in result.stderr


def test_cli_defaults_to_transformers_without_an_endpoint(
    tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not endpoint_configured(None, None)
    result = _solve("--model", str(tiny), "--schedule", "2", "--max-tokens", "16", "--json", PROBLEM)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["final"]["model"] == str(tiny)
    assert endpoint_configured("http://127.0.0.1:1/v1", None)
    monkeypatch.setenv("PACORE_BASE_URL", "http://127.0.0.1:1/v1")
    assert endpoint_configured(None, None)


def test_cli_sim_backend_is_labelled_simulated() -> None:
    result = _solve("--backend", "sim", "--schedule", "3", "--json", PROBLEM)
    assert result.exit_code == 0, result.output
    solved = SolveResult.model_validate_json(result.stdout)
    assert solved.final is not None and solved.final.model == "pacore-sim"
    assert "SIMULATED" in result.stderr
    assert "simulated reasoning" in (solved.final.content or "")


def test_cli_reports_a_model_that_cannot_load() -> None:
    result = _solve("--backend", "transformers", "--model", "pacore-tests/no-such-model", PROBLEM)
    assert result.exit_code == 2
    assert "cannot load the model 'pacore-tests/no-such-model'" in result.stderr


def test_cli_help_mentions_the_default_model_download() -> None:
    result = CliRunner().invoke(app, ["solve", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert DEFAULT_LOCAL_MODEL in result.stdout and "downloaded" in result.stdout
