"""An in-process Hugging Face model: the embedded default backend, for small models and offline machines.

`TransformersBackend` loads a causal LM with ``transformers`` (a hub name, downloaded on first use like
any transformers program, or a local folder) and answers a request's ``n`` completions with ONE batched
``generate`` call on ``n`` copies of the prompt. The call runs in a worker thread, so the event loop stays
free; a lock lets one ``generate`` run at a time. The prompt is the model's chat template with
``add_generation_prompt``, so token counts are real: ``prompt_tokens`` is the templated prompt,
``completion_tokens`` the generated ids up to and including end-of-sequence, ``reasoning_tokens`` the
ids up to and including the last ``</think>``.

Sampling follows OpenAI-compatible servers (vLLM, SGLang): the request's settings win, settings it leaves
unset come from the model's ``generation_config.json`` (Qwen3's ``top_k=20``, for instance; send
``extra_body={"top_k": 0}`` for plain sampling). ``torch``, ``transformers`` and ``tokenizers`` are
imported on first use (the ``local`` extra: ``pip install 'pacore[local]'``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import anyio

from pacore_agent.backends.base import Backend, Completion, DeltaCallback, GenerationRequest, SamplingParams
from pacore_agent.exceptions import (
    BackendError,
    ConfigurationError,
    ContextLengthError,
    RequestRejectedError,
    UsageError,
)
from pacore_agent.prompts import message_text
from pacore_agent.results import Usage

__all__ = [
    "DEFAULT_LOCAL_CONCURRENCY",
    "DEFAULT_LOCAL_MODEL",
    "DEFAULT_MAX_NEW_TOKENS",
    "TransformersBackend",
    "decode_completion",
]

DEFAULT_LOCAL_MODEL = "Qwen/Qwen3-0.6B"
"""The embedded default: a small open reasoning model (0.6B parameters, about 1.5 GB in bfloat16) that
runs on a laptop CPU. Downloaded from the Hugging Face Hub on first use."""

DEFAULT_MAX_NEW_TOKENS = 4096
"""Cap on generated tokens when a request sets no ``max_tokens`` (the context window also caps it)."""

DEFAULT_LOCAL_CONCURRENCY = 2
"""Requests admitted at once: one generating, one ready (generation itself runs one at a time)."""

THINK_START = "<think>"
THINK_END = "</think>"


def _shortest_prefix(length: int, holds: Callable[[int], bool]) -> int:
    """The smallest ``k`` in ``1..length`` with ``holds(k)``, for a property that stays true once true."""
    low, high = 1, length
    while low < high:
        middle = (low + high) // 2
        if holds(middle):
            high = middle
        else:
            low = middle + 1
    return high


def _first_stop(text: str, stop: Sequence[str]) -> int | None:
    found = [index for s in stop if s and (index := text.find(s)) >= 0]
    return min(found) if found else None


def decode_completion(
    ids: Sequence[int],
    decode: Callable[[Sequence[int]], str],
    *,
    eos_ids: Collection[int],
    think_end_id: int | None = None,
    stop: Sequence[str] = (),
    split_reasoning: bool = False,
    prompt_tokens: int = 0,
    model: str | None = None,
    keep_tokens: bool = False,
    logprobs: Sequence[float] | None = None,
) -> Completion:
    """Turn one row of generated ids into a `Completion`, as an OpenAI-compatible server would.

    The row ends at its first end-of-sequence id (counted, as servers count it) or at the first stop
    string (left out of the text, as the OpenAI API does); ids after that are padding.

    Args:
        ids: The generated ids of one sequence, prompt excluded, padding included.
        decode: Ids to text, special tokens skipped.
        eos_ids: End-of-sequence ids.
        think_end_id: The id of ``</think>`` when it is a single token (found by decoding otherwise).
        stop: Stop strings.
        split_reasoning: Return the text before the last ``</think>`` (opening ``<think>`` dropped) as
            ``reasoning`` and the rest as ``content``. Without a ``</think>`` nothing is split, so the
            conclusion C of the trajectory is the same either way.
        prompt_tokens: Prompt tokens to report in this completion's usage.
        model: The model name to report.
        keep_tokens: Fill ``token_ids`` (and ``logprobs`` when given).
        logprobs: Log-probability of each id of ``ids``.

    Returns:
        The completion with its text, finish reason and token usage.
    """
    ids = list(ids)
    eos = set(eos_ids)
    end = next((i + 1 for i, token in enumerate(ids) if token in eos), None)
    length = len(ids) if end is None else end
    finish = "length" if end is None else "stop"
    text = decode(ids[:length])
    cut = _first_stop(text, stop) if stop else None
    if cut is not None:
        length = _shortest_prefix(length, lambda k: _first_stop(decode(ids[:k]), stop) is not None)
        text, finish = text[:cut], "stop"
    reasoning_tokens = 0
    if THINK_END in text:
        if think_end_id is not None and think_end_id in ids[:length]:
            reasoning_tokens = length - ids[:length][::-1].index(think_end_id)
        else:
            count = text.count(THINK_END)
            reasoning_tokens = _shortest_prefix(length, lambda k: decode(ids[:k]).count(THINK_END) >= count)
    content, reasoning = text, None
    if split_reasoning and THINK_END in text:
        head, _, content = text.rpartition(THINK_END)
        reasoning = head.removeprefix(THINK_START)
    return Completion(
        content=content,
        reasoning=reasoning,
        finish_reason=finish,
        usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=length, reasoning_tokens=reasoning_tokens),
        model=model,
        token_ids=ids[:length] if keep_tokens else None,
        logprobs=list(logprobs[:length]) if keep_tokens and logprobs is not None else None,
    )


class _Cancelled:
    """A stopping criterion that ends ``generate`` at the next token once its request was cancelled."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.full(
            (input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device
        )


class _LogprobRecorder:
    """A logits processor, last in line, that keeps the log-probability of each sampled token.

    It sees the final sampling distribution of step t and, at step t+1, the token drawn from it, so it
    holds one (B, V) tensor at a time instead of every step's scores.
    """

    def __init__(self) -> None:
        self.previous: Any = None
        self.steps: list[Any] = []

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        if self.previous is not None:
            self.steps.append(self.previous.gather(-1, input_ids[:, -1:]).squeeze(-1))  # (B,)
        self.previous = torch.log_softmax(scores.float(), dim=-1)  # (B, V)
        return scores

    def finish(self, sequences: Any) -> list[list[float]]:
        import torch

        if self.previous is not None:
            self.steps.append(self.previous.gather(-1, sequences[:, -1:]).squeeze(-1))
            self.previous = None
        if not self.steps:
            return [[] for _ in range(sequences.shape[0])]
        rows: list[list[float]] = torch.stack(self.steps, dim=1).tolist()  # (B, T)
        return rows


@contextmanager
def _seeded(seed: int | None, device: Any) -> Iterator[None]:
    """Seed torch's generators for one call without disturbing the caller's random state."""
    if seed is None:
        yield
        return
    import torch

    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _transformers() -> Any:
    """The ``transformers`` module, imported on first use (typed loosely: its stubs are partial)."""
    import transformers

    return transformers


def _offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) forbids downloads."""
    flags = (os.environ.get(name, "").strip().lower() for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(flag in ("1", "true", "yes", "on") for flag in flags)


def _resolve_dtype(dtype: Any, device: str) -> Any:
    import torch

    if dtype is None or dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if isinstance(dtype, str):
        resolved = getattr(torch, dtype, None)
        if not isinstance(resolved, torch.dtype):
            raise UsageError(f"unknown dtype {dtype!r}: use 'auto', 'float32', 'bfloat16' or 'float16'")
        return resolved
    return dtype


class TransformersBackend(Backend):
    """A Hugging Face causal LM run in this process.

    Example::

        async with TransformersBackend("Qwen/Qwen3-0.6B") as backend:
            result = await Coordinator([4], backend, n_per_request=4).solve("What is 2+3?")

    With ``n_per_request`` equal to a round's width, the round is one batched ``generate``.

    Args:
        model: A hub model id (downloaded on first use into the Hugging Face cache) or a local folder.
        device: ``"cuda"``, ``"cuda:1"``, ``"cpu"``, ``"mps"``...; default CUDA when available, else CPU.
        dtype: ``"auto"`` (default: bfloat16 on CUDA, float32 on CPU), ``"float32"``, ``"bfloat16"``,
            ``"float16"`` or a ``torch.dtype``.
        max_concurrency: Requests admitted at once; one ``generate`` runs at a time whatever this is.
        max_new_tokens: Cap on generated tokens when a request sets no ``max_tokens``.
        enable_thinking: Passed to chat templates that know it (Qwen3's); a request's
            ``extra_body["chat_template_kwargs"]`` overrides it.
        chat_template_kwargs: Extra variables for the chat template (request-level ones win).
        split_reasoning: Return the text before the last ``</think>`` in ``reasoning`` and the rest in
            ``content``, as a server's reasoning parser does. Default: everything in ``content``.
        return_logprobs: Fill `Completion.token_ids` and `Completion.logprobs`: the log-probability of
            each generated token under the distribution it was sampled from (after temperature,
            top-k, top-p and min-p; the model's own distribution when decoding greedily).
        trust_remote_code: Allow models whose code lives on the hub.
        name: Label for traces (default: ``model`` as given).
    """

    def __init__(
        self,
        model: str | os.PathLike[str] = DEFAULT_LOCAL_MODEL,
        *,
        device: str | None = None,
        dtype: Any = None,
        max_concurrency: int = DEFAULT_LOCAL_CONCURRENCY,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        enable_thinking: bool = True,
        chat_template_kwargs: Mapping[str, Any] | None = None,
        split_reasoning: bool = False,
        return_logprobs: bool = False,
        trust_remote_code: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__(max_concurrency=max_concurrency)
        if max_new_tokens <= 0:
            raise UsageError(f"max_new_tokens must be positive, got {max_new_tokens}")
        self.source = os.fspath(model)
        if not self.source:
            raise UsageError("model must be a hub model id such as Qwen/Qwen3-0.6B or a local folder")
        self.name = name or self.source
        self.device_name = device
        self.dtype = dtype
        self.max_new_tokens = max_new_tokens
        self.enable_thinking = enable_thinking
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.split_reasoning = split_reasoning
        self.return_logprobs = return_logprobs
        self.trust_remote_code = trust_remote_code
        self._model: Any = None
        self._tokenizer: Any = None
        self._owns_model = True
        self._lock: anyio.Lock | None = None
        # Held by the worker thread for the whole generate: a cancelled generate may still be finishing
        # its last token when the next one starts.
        self._thread_lock = threading.Lock()

    @classmethod
    def from_loaded(
        cls, model: Any, tokenizer: Any, *, name: str = "local", **options: Any
    ) -> TransformersBackend:
        """A backend around a model and tokenizer already in memory (a policy being trained, say).

        Args:
            model: A ``transformers`` causal LM, on the device it should run on, in eval mode.
            tokenizer: Its tokenizer, with a chat template.
            name: Label for traces.
            **options: As for the constructor (``split_reasoning``, ``return_logprobs``, ...).
        """
        backend = cls(name, name=name, **options)
        _check_chat_template(tokenizer, name)
        backend._model, backend._tokenizer, backend._owns_model = model, tokenizer, False
        return backend

    def __repr__(self) -> str:
        return (
            f"TransformersBackend(model={self.source!r}, device={self.device_name!r}, "
            f"max_concurrency={self.max_concurrency})"
        )

    # -- loading -----------------------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        """Whether the model and tokenizer are in memory."""
        return self._model is not None

    @property
    def model(self) -> Any:
        """The loaded ``transformers`` model.

        Raises:
            UsageError: Not loaded yet (``await backend.load()`` first).
        """
        if self._model is None:
            raise UsageError(f"{self.name} is not loaded yet: await backend.load() first")
        return self._model

    @property
    def tokenizer(self) -> Any:
        """The loaded tokenizer (see `model`)."""
        if self._tokenizer is None:
            raise UsageError(f"{self.name} is not loaded yet: await backend.load() first")
        return self._tokenizer

    async def load(self) -> None:
        """Load the model and tokenizer (downloading them on first use) unless already loaded.

        Generation loads on demand; call this to load up front (and to see loading errors early).

        Raises:
            ConfigurationError: ``torch``/``transformers`` are missing, or the model cannot be loaded.
        """
        if self._model is not None:
            return
        await anyio.to_thread.run_sync(self._load_sync, abandon_on_cancel=True)

    def _load_sync(self) -> None:
        with self._thread_lock:
            if self._model is not None:
                return
            try:
                import torch

                hf = _transformers()
            except ImportError as exc:
                raise ConfigurationError(
                    "the transformers backend needs torch and transformers: pip install 'pacore[local]'"
                ) from exc
            device = self.device_name or ("cuda" if torch.cuda.is_available() else "cpu")
            dtype = _resolve_dtype(self.dtype, device)
            # Read now, not when huggingface_hub was imported: offline set later still means offline.
            offline = _offline()
            options = {"trust_remote_code": self.trust_remote_code, "local_files_only": offline}
            try:
                tokenizer = hf.AutoTokenizer.from_pretrained(self.source, **options)
                model = hf.AutoModelForCausalLM.from_pretrained(self.source, dtype=dtype, **options)
            except (OSError, ValueError) as exc:
                hint = " (offline: only local folders and cached models load)" if offline else ""
                raise ConfigurationError(
                    f"cannot load the model {self.source!r} with transformers{hint}: {exc}\n"
                    "To use a served model instead, pass --base-url URL or set PACORE_BASE_URL."
                ) from exc
            _check_chat_template(tokenizer, self.source)
            model.to(device)
            model.eval()
            self._tokenizer, self._model = tokenizer, model

    async def aclose(self) -> None:
        """Drop the model this backend loaded (a later call loads it again)."""
        if self._owns_model:
            self._model = self._tokenizer = None

    # -- generation --------------------------------------------------------------------------------

    async def generate(
        self, request: GenerationRequest, *, on_delta: DeltaCallback | None = None
    ) -> list[Completion]:
        """Generate ``request.n`` completions in one batched ``generate`` (see `Backend.generate`).

        Completions arrive whole: ``on_delta`` is not called.

        Raises:
            ContextLengthError: The prompt alone fills the model's context window.
            RequestRejectedError: The request names another model, or the chat template rejects it.
            BackendError: ``generate`` failed (out of memory, ...); not retried.
            ConfigurationError: The model cannot be loaded.
        """
        if request.n < 1:
            raise UsageError(f"n must be at least 1, got {request.n}")
        if request.model is not None and request.model != self.name:
            raise RequestRejectedError(
                f"this backend serves {self.name!r} only; the request asked for {request.model!r}"
            )
        await self.load()
        if self._lock is None:
            self._lock = anyio.Lock()
        cancelled = threading.Event()
        async with self._lock:
            try:
                return await anyio.to_thread.run_sync(
                    partial(self._generate_sync, request, cancelled), abandon_on_cancel=True
                )
            except anyio.get_cancelled_exc_class():
                cancelled.set()  # the worker stops at its next token
                raise

    def prompt_ids(self, request: GenerationRequest) -> list[int]:
        """The token ids of the prompt a request sends: its messages through the chat template.

        Raises:
            UsageError: The model is not loaded yet.
            RequestRejectedError: The chat template rejects the conversation.
        """
        tokenizer = self.tokenizer
        kwargs: dict[str, Any] = {}
        if "enable_thinking" in str(tokenizer.chat_template):
            kwargs["enable_thinking"] = self.enable_thinking
        kwargs.update(self.chat_template_kwargs)
        kwargs.update(request.sampling.extra_body.get("chat_template_kwargs") or {})
        messages = [
            m if isinstance(m.get("content"), str) else {**m, "content": message_text(m)}
            for m in request.messages
        ]
        try:
            text = tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False, **kwargs
            )
        except Exception as exc:  # jinja2 errors, raise_exception() in templates
            raise RequestRejectedError(
                f"the chat template of {self.name} rejected the conversation: {type(exc).__name__}: {exc}"
            ) from exc
        ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids

    @property
    def context_window(self) -> int | None:
        """The model's context length in tokens, when its config says it."""
        config = self.model.config
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        window = getattr(text_config, "max_position_embeddings", None)
        return int(window) if window else None

    def _special_ids(self) -> tuple[list[int], int, int | None]:
        """(end-of-sequence ids, padding id, the ``</think>`` id when it is one token)."""
        tokenizer, defaults = self.tokenizer, self.model.generation_config
        eos = defaults.eos_token_id
        eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos_ids:
            eos_ids.append(tokenizer.eos_token_id)
        if not eos_ids:
            raise ConfigurationError(f"{self.name} defines no end-of-sequence token")
        pad = next((p for p in (defaults.pad_token_id, tokenizer.pad_token_id) if p is not None), eos_ids[0])
        think = tokenizer.encode(THINK_END, add_special_tokens=False)
        return eos_ids, int(pad), think[0] if len(think) == 1 else None

    def _generation_setup(self, sampling: SamplingParams, max_new: int, eos_ids: list[int], pad: int) -> Any:
        """The ``GenerationConfig`` and logits processors of a request (and the logprob recorder)."""
        hf = _transformers()
        defaults, extra = self.model.generation_config, sampling.extra_body

        def pick(requested: Any, default: Any, fallback: Any) -> Any:
            return requested if requested is not None else default if default is not None else fallback

        temperature = float(pick(sampling.temperature, defaults.temperature, 1.0))
        top_p = float(pick(sampling.top_p, defaults.top_p, 1.0))
        top_k = int(pick(extra.get("top_k"), defaults.top_k, 0))
        min_p = float(pick(extra.get("min_p"), defaults.min_p, 0.0))
        config = hf.GenerationConfig(
            max_new_tokens=max_new,
            do_sample=temperature > 0,
            eos_token_id=eos_ids,
            pad_token_id=pad,
            stop_strings=list(sampling.stop) if sampling.stop else None,
            min_new_tokens=min(int(extra["min_tokens"]), max_new) if extra.get("min_tokens") else None,
            repetition_penalty=pick(extra.get("repetition_penalty"), defaults.repetition_penalty, 1.0),
        )
        processors = hf.LogitsProcessorList()
        if temperature > 0:
            # The warpers are ours, so that the recorder after them sees the final distribution;
            # transformers' own are neutralised (it would fill unset ones from generation_config.json).
            config.temperature, config.top_k, config.top_p = 1.0, 0, 1.0
            if defaults.min_p is not None:
                config.min_p = 0.0
            if temperature != 1.0:
                processors.append(hf.TemperatureLogitsWarper(temperature))
            if top_k > 0:
                processors.append(hf.TopKLogitsWarper(top_k))
            if top_p < 1.0:
                processors.append(hf.TopPLogitsWarper(top_p))
            if min_p > 0.0:
                processors.append(hf.MinPLogitsWarper(min_p))
        recorder = _LogprobRecorder() if self.return_logprobs else None
        if recorder is not None:
            processors.append(recorder)
        return config, processors, recorder

    def _generate_sync(self, request: GenerationRequest, cancelled: threading.Event) -> list[Completion]:
        import torch

        hf = _transformers()
        with self._thread_lock:
            if cancelled.is_set():
                return []
            model, tokenizer = self.model, self.tokenizer
            prompt = self.prompt_ids(request)
            window = self.context_window
            if window is not None and len(prompt) >= window:
                raise ContextLengthError(
                    f"the prompt has {len(prompt)} tokens and {self.name}'s context window is {window} "
                    "tokens: shorten the conversation",
                    status_code=None,
                    max_context=window,
                    prompt_tokens=len(prompt),
                )
            max_new = request.sampling.max_tokens or self.max_new_tokens
            if window is not None:
                max_new = min(max_new, window - len(prompt))
            eos_ids, pad, think_end_id = self._special_ids()
            config, processors, recorder = self._generation_setup(request.sampling, max_new, eos_ids, pad)
            device = model.device
            input_ids = torch.tensor([prompt], dtype=torch.long, device=device).repeat(request.n, 1)  # (n, P)
            try:
                with torch.inference_mode(), _seeded(request.sampling.seed, device):
                    sequences = model.generate(
                        input_ids=input_ids,
                        attention_mask=torch.ones_like(input_ids),
                        generation_config=config,
                        logits_processor=processors,
                        stopping_criteria=hf.StoppingCriteriaList([_Cancelled(cancelled)]),
                        tokenizer=tokenizer if config.stop_strings else None,
                    )  # (n, P + T)
            except Exception as exc:
                error = BackendError(f"{self.name}: generate failed: {type(exc).__name__}: {exc}")
                error.retryable = False
                raise error from exc
            rows = sequences[:, len(prompt) :].tolist()  # (n, T)
            logprobs = recorder.finish(sequences) if recorder is not None else None

            def decode(ids: Sequence[int]) -> str:
                text: str = tokenizer.decode(
                    list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False
                )
                return text

            return [
                decode_completion(
                    row,
                    decode,
                    eos_ids=eos_ids,
                    think_end_id=think_end_id,
                    stop=request.sampling.stop or (),
                    split_reasoning=self.split_reasoning,
                    prompt_tokens=len(prompt) if i == 0 else 0,
                    model=self.name,
                    keep_tokens=self.return_logprobs,
                    logprobs=logprobs[i] if logprobs is not None else None,
                )
                for i, row in enumerate(rows)
            ]


def _check_chat_template(tokenizer: Any, name: str) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigurationError(
            f"{name} has no chat template: the transformers backend needs a chat model (an instruct or "
            "reasoning model whose tokenizer_config.json or chat_template.jinja defines one)"
        )
