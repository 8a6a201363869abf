"""A SIMULATED reasoning model: the test double of pacore, in-process and over HTTP.

It is not a language model. It answers ``<think>...</think>`` followed by a conclusion with
``\\boxed{...}``, right with a configurable probability. When the prompt is PaCoRe's synthesis prompt it
parses the references and synthesizes: it follows the references' answers, favouring the majority
(``synth_sharpness``), and now and then recovers the right answer on its own (``synth_recover``), so
the benefit of rounds is visible. Latency (heavy tails included), token counts and faults (429 with
Retry-After, 500/503, dropped connections, stalls, malformed bodies, context-length 400) are
configurable. Everything is seeded.

Faults reproduce what real endpoints send (`FAULT_KINDS`): a 429 whose ``Retry-After`` is seconds, an
HTTP-date or garbage; 500/503; a connection reset; a stall; a 200 that is not JSON or has no choices;
a stream cut mid-answer or carrying an SSE ``{"error": ...}`` chunk (vLLM/SGLang); context-length
400s in the wording of OpenAI, vLLM or SGLang (``SimConfig.error_style``). With
``SimConfig(hosted_reasoning=True)`` it answers as OpenAI's hosted reasoning models (GPT-5, o-series):
``top_p`` and ``max_tokens`` are refused with 400 ``unsupported_parameter``, a temperature other than 1
with ``unsupported_value``, and the reasoning itself is never returned, only counted.

`SimEngine` holds the model and its bookkeeping (every request body, highest concurrency seen,
disconnects); `SimBackend` serves it in-process and `pacore_agent.backends.sim_server.SimServer` over
real HTTP on loopback (``pacore sim-server``).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import anyio

from pacore_agent.backends.base import Backend, Completion, DeltaCallback, GenerationRequest
from pacore_agent.backends.errors import error_from_response
from pacore_agent.compactors import last_boxed
from pacore_agent.exceptions import EndpointConnectionError, MalformedResponseError, UsageError
from pacore_agent.results import Usage

__all__ = [
    "FAULT_KINDS",
    "SIM_MODEL",
    "Faults",
    "Latency",
    "SimBackend",
    "SimChoice",
    "SimConfig",
    "SimEngine",
    "SimFault",
    "SimReply",
]

SIM_MODEL = "pacore-sim"
"""The simulated model's id."""

SIM_LABEL = "(simulated reasoning, not a language model)"

FAULT_KINDS: tuple[str, ...] = (
    "bad_request",  # 400 invalid request
    "rate_limit",  # 429, Retry-After in seconds
    "rate_limit_date",  # 429, Retry-After as an HTTP-date
    "rate_limit_malformed",  # 429, Retry-After: soon
    "server_error",  # 500
    "unavailable",  # 503
    "drop",  # connection reset before any answer
    "stall",  # no answer until the client gives up
    "malformed",  # 200 whose body is not JSON
    "empty_choices",  # 200 with "choices": []
    "stream_drop",  # the answer cut mid-way (connection closed after some chunks)
    "stream_error",  # an SSE {"error": ...} chunk (500) after some chunks; a plain 500 when not streaming
    "stream_context_length",  # the same with a context-length 400 inside; a plain 400 when not streaming
    "context_length",  # 400 context length
)

ERROR_STYLES: tuple[str, ...] = ("openai", "vllm", "sglang")
"""Wire shapes of error bodies: OpenAI's ``{"error": {..., "code": "str"}}``, vLLM's
``{"error": {..., "code": 400}}``, SGLang's top-level ``{"object": "error", ..., "code": 400}``."""

_CUT_MID_ANSWER = ("stream_drop", "stream_error", "stream_context_length")
_RATE_LIMIT_MESSAGE = (
    "Rate limit reached for requests per min (RPM): Limit 500, Used 500, Requested 1. "
    "Please try again in 1s. (simulated)"
)

_SYNTHESIS_HEAD = "You are given a problem and a list of reference responses."
_SYNTHESIS = re.compile(r"Original Problem:\n(?P<problem>.*?)\n\nReference Responses:\n(?P<refs>.*)", re.S)
_REFERENCE_SPLIT = re.compile(r"(?:^|\n)Reference \d+:\n")
_FILLER = [
    "consider",
    "the",
    "structure",
    "carefully",
    "and",
    "test",
    "small",
    "cases",
    "before",
    "generalising",
    "the",
    "pattern",
    "then",
    "verify",
    "each",
    "step",
    "against",
    "the",
    "constraints",
    "and",
    "recompute",
    "the",
    "key",
    "quantity",
]


@dataclass(frozen=True)
class Latency:
    """How long the simulated model takes to answer.

    Attributes:
        median: Median seconds per request.
        sigma: Shape of a log-normal around ``median`` (0 = constant; 1 = heavy tail).
        stall_probability: Chance that a request never answers until the client gives up.
    """

    median: float = 0.0
    sigma: float = 0.0
    stall_probability: float = 0.0

    def __post_init__(self) -> None:
        if self.median < 0 or self.sigma < 0 or not 0 <= self.stall_probability <= 1:
            raise UsageError("latency median and sigma must be >= 0 and stall_probability within [0, 1]")

    def sample(self, rng: random.Random) -> float | None:
        """Seconds for one request, or ``None`` for a stall."""
        if self.stall_probability and rng.random() < self.stall_probability:
            return None
        if self.median == 0:
            return 0.0
        if self.sigma == 0:
            return self.median
        return self.median * math.exp(rng.gauss(0.0, self.sigma))


@dataclass(frozen=True)
class Faults:
    """Fault injection.

    Attributes:
        rates: Probability per request of each fault kind (see `FAULT_KINDS`).
        script: Faults of the first requests, in arrival order (``None`` = no fault): deterministic
            scenarios for tests, e.g. ``("rate_limit", "server_error")``.
        retry_after: Seconds a 429 asks to wait (``rate_limit``: as seconds; ``rate_limit_date``: as an
            HTTP-date that far ahead).
        stream_cut: Share of the answer's chunks sent before ``stream_drop`` / ``stream_error`` strikes.
    """

    rates: Mapping[str, float] = field(default_factory=dict)
    script: Sequence[str | None] = ()
    retry_after: float = 1.0
    stream_cut: float = 0.5

    def __post_init__(self) -> None:
        for kind in [*self.rates, *(k for k in self.script if k is not None)]:
            if kind not in FAULT_KINDS:
                raise UsageError(f"unknown fault {kind!r}: choose from {', '.join(FAULT_KINDS)}")
        if not 0 <= self.stream_cut <= 1:
            raise UsageError(f"stream_cut must be within [0, 1], got {self.stream_cut}")


@dataclass(frozen=True)
class SimConfig:
    """Settings of the simulated reasoning model.

    Attributes:
        model: Model id it reports.
        seed: Seed of every random choice.
        accuracy: Probability that a first-round answer is right.
        distractor_weights: Relative frequency of each wrong answer (a few recurring wrong answers,
            as real models have, so that voting can be fooled).
        synth_sharpness: How strongly synthesis follows the references' majority (answer picked with
            weight count ** sharpness; 1 = proportional).
        synth_recover: Probability that synthesis gives the right answer whatever the references say.
        think_words: Mean length of the reasoning, in words (= simulated tokens).
        split_reasoning: Return reasoning in ``reasoning_content`` (as SGLang/vLLM reasoning parsers
            do) instead of inside ``<think>`` in the content.
        honour_n: Return ``n`` choices; ``False`` mimics servers that ignore ``n``.
        context_window: Prompt plus ``max_tokens`` above this is rejected with a context-length error.
        answers: Right answers by problem text; other problems get an answer derived from their hash.
        latency: Latency model.
        synthesis_latency: Latency of requests carrying references (default: ``latency``).
        faults: Fault injection.
        record_requests: Keep every request body (tests assert on them; benchmarks turn it off).
        hosted_reasoning: Answer as OpenAI's hosted reasoning models: 400 ``unsupported_parameter`` for
            ``top_p`` and ``max_tokens`` (``max_completion_tokens`` is the token limit),
            ``unsupported_value`` for a temperature other than 1, 404 ``model_not_found`` for another
            model id, reasoning counted in usage but never returned.
        error_style: Wire shape of error bodies (see `ERROR_STYLES`); default ``"openai"`` when
            ``hosted_reasoning``, else ``"vllm"``.
        unsupported_params: Request fields refused with 400 ``unsupported_parameter`` (e.g.
            ``("max_completion_tokens",)`` for servers that only know ``max_tokens``).
    """

    model: str = SIM_MODEL
    seed: int = 0
    accuracy: float = 0.4
    distractor_weights: tuple[float, ...] = (0.5, 0.3, 0.2)
    synth_sharpness: float = 2.0
    synth_recover: float = 0.1
    think_words: int = 48
    split_reasoning: bool = False
    honour_n: bool = True
    context_window: int = 32768
    answers: Mapping[str, str] = field(default_factory=dict)
    latency: Latency = field(default_factory=Latency)
    synthesis_latency: Latency | None = None
    faults: Faults = field(default_factory=Faults)
    record_requests: bool = True
    hosted_reasoning: bool = False
    error_style: str | None = None
    unsupported_params: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.error_style is not None and self.error_style not in ERROR_STYLES:
            raise UsageError(
                f"unknown error_style {self.error_style!r}: choose from {', '.join(ERROR_STYLES)}"
            )
        if not 0 <= self.accuracy <= 1 or not 0 <= self.synth_recover <= 1:
            raise UsageError("accuracy and synth_recover must be probabilities within [0, 1]")
        if not self.distractor_weights or any(w < 0 for w in self.distractor_weights):
            raise UsageError("distractor_weights must be a non-empty list of non-negative weights")
        if self.think_words < 0:
            raise UsageError("think_words must not be negative")

    @property
    def wire_style(self) -> str:
        """The error body shape in effect (``error_style`` or its default)."""
        return self.error_style or ("openai" if self.hosted_reasoning else "vllm")


@dataclass(frozen=True)
class SimChoice:
    """One simulated completion."""

    content: str
    reasoning: str | None
    finish_reason: str
    completion_tokens: int
    reasoning_tokens: int


@dataclass(frozen=True)
class SimReply:
    """A simulated answer: the choices, usage and how long to take.

    Attributes:
        cut: When set, the answer fails part-way (``stream_drop``, ``stream_error``,
            ``stream_context_length``): the server sends `SimConfig.faults`' ``stream_cut`` of its chunks
            and then this fault.
    """

    choices: list[SimChoice]
    usage: Usage
    latency: float | None
    model: str
    cut: SimFault | None = None


@dataclass(frozen=True)
class SimFault:
    """A simulated failure.

    Attributes:
        kind: One of `FAULT_KINDS`, or ``"unsupported_parameter"`` / ``"unsupported_value"`` /
            ``"model_not_found"`` (hosted mode).
        status: HTTP status (0 when there is no answer at all).
        message: The error message, in the real servers' wording.
        retry_after: Seconds a 429 asks to wait (``None``: no usable ``Retry-After``).
        param: The offending request field, as OpenAI names it in ``error.param``.
        code: OpenAI's ``error.code`` (``"unsupported_parameter"``, ``"context_length_exceeded"``, ...).
    """

    kind: str
    status: int
    message: str
    retry_after: float | None = None
    param: str | None = None
    code: str | None = None


def _words(text: str) -> int:
    return len(text.split())


def _text_of(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def _hash(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()


def strip_answer(boxed: str | None) -> str | None:
    """``\\boxed{x}`` -> ``x``."""
    if boxed is None:
        return None
    start = boxed.find("{")
    return boxed[start + 1 : -1].strip() if start >= 0 else None


class SimEngine:
    """The simulated model plus its bookkeeping, shared by the in-process and HTTP front ends.

    Attributes:
        requests: Every request body received (when ``config.record_requests``).
        in_flight: Requests being served now.
        max_in_flight: The highest concurrency seen.
        served: Requests answered successfully.
        disconnects: Requests whose client went away before the answer.
        usage_served: The sum of the usage reported in every successful answer.
    """

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        self.requests: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.served = 0
        self.disconnects = 0
        self.usage_served = Usage()
        self._arrivals = 0
        self._seen: dict[str, int] = {}
        self._fault_rng = random.Random(_hash(self.config.seed, "faults"))

    # -- bookkeeping -------------------------------------------------------------------------------

    @contextmanager
    def track(self) -> Iterator[None]:
        """Count a request in flight for its whole life (used by the front ends)."""
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            yield
        finally:
            self.in_flight -= 1

    def record_served(self, reply: SimReply) -> None:
        """Count a delivered answer and its usage."""
        self.served += 1
        self.usage_served = self.usage_served + reply.usage

    def reset_stats(self) -> None:
        """Forget recorded requests and counters (not the model's seeded state)."""
        self.requests.clear()
        self.max_in_flight = self.in_flight
        self.served = self.disconnects = 0
        self.usage_served = Usage()

    # -- the model ---------------------------------------------------------------------------------

    def correct_answer(self, problem: str) -> str:
        """The right answer of a problem: from ``config.answers``, else derived from its text."""
        key = problem.strip()
        if key in self.config.answers:
            return self.config.answers[key]
        return str(int(_hash("answer", key)[:8], 16) % 1000)

    def distractors(self, correct: str) -> list[str]:
        """The recurring wrong answers of a problem."""
        count = len(self.config.distractor_weights)
        if re.fullmatch(r"-?\d+", correct):
            value = int(correct)
            offsets = [1 + int(_hash("d", correct, i)[:4], 16) % 97 for i in range(count)]
            seen: list[str] = []
            for offset in offsets:
                candidate = str(value + offset + len(seen))
                while candidate in seen or candidate == correct:
                    candidate = str(int(candidate) + 1)
                seen.append(candidate)
            return seen
        return [f"{correct} + {i + 1}" for i in range(count)]

    def respond(self, body: Mapping[str, Any]) -> SimReply | SimFault:
        """Decide the answer to one chat-completions request body (no waiting here)."""
        if self.config.record_requests:
            self.requests.append(dict(body))
        self._arrivals += 1
        fault = self._fault(self._arrivals - 1)
        if fault is not None and fault.kind not in ("stall", *_CUT_MID_ANSWER, "context_length"):
            return fault
        if (refused := self._refusal(body)) is not None:
            return refused
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return SimFault("bad_request", 400, "messages must be a non-empty list")
        n = int(body.get("n") or 1)
        if n < 1:
            return SimFault("bad_request", 400, "n must be at least 1")
        prompt_tokens = sum(_words(_text_of(m)) for m in messages)
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        window = self.config.context_window
        if fault is not None and fault.kind == "context_length":
            return self._context_fault(prompt_tokens, max_tokens or window)
        if prompt_tokens >= window or (max_tokens is not None and prompt_tokens + int(max_tokens) > window):
            return self._context_fault(prompt_tokens, int(max_tokens or 0))
        if fault is not None and fault.kind in _CUT_MID_ANSWER and not body.get("stream"):
            # Without a stream there is no "mid-answer": the error is the whole answer.
            if fault.kind == "stream_error":
                return SimFault("server_error", 500, "Internal server error (simulated)")
            if fault.kind == "stream_context_length":
                return self._context_fault(prompt_tokens, max_tokens or window)

        key = _hash(json.dumps(messages, sort_keys=True, ensure_ascii=False))
        seen = self._seen.get(key, 0)
        self._seen[key] = seen + n
        seed = body.get("seed")
        rngs = [
            random.Random(
                _hash(self.config.seed, key, "s", seed, j)
                if seed is not None
                else _hash(self.config.seed, key, seen + j)
            )
            for j in range(n if self.config.honour_n else 1)
        ]
        last_user = next((m for m in reversed(messages) if m.get("role") == "user"), messages[-1])
        prompt = _text_of(last_user)
        synthesis = prompt.startswith(_SYNTHESIS_HEAD) and self.config.synthesis_latency is not None
        latency_model = self.config.synthesis_latency if synthesis else self.config.latency
        # Latency first, from its own stream, so that content settings do not change who straggles.
        latency = latency_model.sample(random.Random(_hash(self.config.seed, key, "latency", seen)))  # type: ignore[union-attr]
        choices = [self._choice(prompt, rng, max_tokens) for rng in rngs]
        if fault is not None and fault.kind == "stall":
            latency = None
        usage = Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=sum(c.completion_tokens for c in choices),
            reasoning_tokens=sum(c.reasoning_tokens for c in choices),
            cached_tokens=prompt_tokens if seen else 0,
        )
        reply = SimReply(choices=choices, usage=usage, latency=latency, model=self.config.model)
        if fault is not None and fault.kind in _CUT_MID_ANSWER:
            # The server front end sends part of this answer, then fails (`SimReply.cut`).
            return replace(reply, cut=self._cut_fault(fault, prompt_tokens, max_tokens or window))
        return reply

    def _refusal(self, body: Mapping[str, Any]) -> SimFault | None:
        """OpenAI's answer to fields a model refuses (one field at a time, as it does)."""
        config = self.config
        model = body.get("model")
        if config.hosted_reasoning and model != config.model:
            return SimFault(
                "model_not_found",
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                code="model_not_found",
            )
        refused = (*config.unsupported_params, *(("top_p", "max_tokens") if config.hosted_reasoning else ()))
        for name in refused:
            if name in body:
                hint = " Use 'max_completion_tokens' instead." if name == "max_tokens" else ""
                return SimFault(
                    "unsupported_parameter",
                    400,
                    f"Unsupported parameter: '{name}' is not supported with this model.{hint}",
                    param=name,
                    code="unsupported_parameter",
                )
        if not config.hosted_reasoning:
            return None
        temperature = body.get("temperature")
        if temperature is not None and temperature != 1:
            return SimFault(
                "unsupported_value",
                400,
                f"Unsupported value: 'temperature' does not support {temperature} with this model. "
                "Only the default (1) value is supported.",
                param="temperature",
                code="unsupported_value",
            )
        return None

    def _cut_fault(self, fault: SimFault, prompt_tokens: int, max_tokens: int) -> SimFault:
        if fault.kind == "stream_context_length":
            return self._context_fault(prompt_tokens, max_tokens)
        if fault.kind == "stream_error":
            return replace(fault, status=500, message="Internal server error (simulated)")
        return fault

    def _context_fault(self, prompt_tokens: int, max_tokens: int) -> SimFault:
        # Each server's own wording, so clients parse it as they would parse the real one's.
        window = self.config.context_window
        style = self.config.wire_style
        if style == "openai":
            message = (
                f"This model's maximum context length is {window} tokens. However, you requested "
                f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, {max_tokens} in the "
                "completion). Please reduce the length of the messages or completion."
            )
            return SimFault("context_length", 400, message, param="messages", code="context_length_exceeded")
        if style == "vllm":
            if prompt_tokens >= window:
                message = (
                    f"This model's maximum context length is {window} tokens. However, your request has "
                    f"{prompt_tokens} input tokens. Please reduce the length of the input messages."
                )
            else:
                message = (
                    f"'max_tokens' or 'max_completion_tokens' is too large: {max_tokens}. This model's "
                    f"maximum context length is {window} tokens and your request has {prompt_tokens} input "
                    f"tokens ({max_tokens} > {window} - {prompt_tokens})."
                )
            return SimFault("context_length", 400, message)
        return SimFault(
            "context_length",
            400,
            f"Requested token count exceeds the model's maximum context length of {window} tokens. "
            f"You requested a total of {prompt_tokens + max_tokens} tokens: {prompt_tokens} tokens from "
            f"the input messages and {max_tokens} tokens for the completion. Please reduce the number of "
            "tokens in the input messages or the completion to fit within the limit.",
        )

    def _fault(self, arrival: int) -> SimFault | None:
        faults = self.config.faults
        kind: str | None = None
        if arrival < len(faults.script):
            kind = faults.script[arrival]
        elif faults.rates:
            draw = self._fault_rng.random()
            for name, rate in faults.rates.items():
                if draw < rate:
                    kind = name
                    break
                draw -= rate
        if kind is None:
            return None
        status, message = {
            "bad_request": (400, "Invalid request (simulated)"),
            "rate_limit": (429, _RATE_LIMIT_MESSAGE),
            "rate_limit_date": (429, _RATE_LIMIT_MESSAGE),
            "rate_limit_malformed": (429, _RATE_LIMIT_MESSAGE),
            "server_error": (500, "Internal server error (simulated)"),
            "unavailable": (503, "Service unavailable (simulated)"),
            "drop": (0, "connection reset (simulated)"),
            "stall": (0, "stalled (simulated)"),
            "malformed": (200, "malformed body (simulated)"),
            "empty_choices": (200, "no choices (simulated)"),
            "stream_drop": (0, "connection closed mid-answer (simulated)"),
            "stream_error": (500, ""),
            "stream_context_length": (400, ""),
            "context_length": (400, ""),
        }[kind]
        retry_after = faults.retry_after if kind in ("rate_limit", "rate_limit_date") else None
        code = "rate_limit_exceeded" if status == 429 else None
        return SimFault(kind, status, message, retry_after, code=code)

    def _answer(self, prompt: str, rng: random.Random) -> tuple[str, list[str]]:
        """(answer, reference answers seen) for the last user message's text."""
        config = self.config
        problem, references = prompt, []
        if prompt.startswith(_SYNTHESIS_HEAD):
            match = _SYNTHESIS.search(prompt)
            if match:
                problem = match.group("problem")
                parts = _REFERENCE_SPLIT.split("\n" + match.group("refs"))
                references = [a for a in (strip_answer(last_boxed(p)) for p in parts[1:]) if a]
        correct = self.correct_answer(problem)
        if references:
            if rng.random() < config.synth_recover:
                return correct, references
            counts: dict[str, int] = {}
            for answer in references:
                counts[answer] = counts.get(answer, 0) + 1
            options = list(counts)
            weights = [counts[a] ** config.synth_sharpness for a in options]
            return rng.choices(options, weights=weights)[0], references
        if rng.random() < config.accuracy:
            return correct, references
        return rng.choices(self.distractors(correct), weights=config.distractor_weights)[0], references

    def _choice(self, prompt: str, rng: random.Random, max_tokens: Any) -> SimChoice:
        answer, references = self._answer(prompt, rng)
        words = (
            max(1, round(self.config.think_words * math.exp(rng.gauss(0.0, 0.3))))
            if self.config.think_words
            else 0
        )
        thought = [SIM_LABEL]
        if references:
            thought.append(
                f"Reference 1 says {references[0]}; cross-checking the {len(references)} references."
            )
        thought += [_FILLER[(i + rng.randrange(len(_FILLER))) % len(_FILLER)] for i in range(words)]
        reasoning = " ".join(thought)
        conclusion = f"The answer is $\\boxed{{{answer}}}$."
        reasoning_tokens, conclusion_tokens = _words(reasoning), _words(conclusion)
        finish = "stop"
        if max_tokens is not None and reasoning_tokens + conclusion_tokens > int(max_tokens):
            # Truncated mid-thought, as a real model stopped by max_tokens.
            reasoning = " ".join(reasoning.split()[: int(max_tokens)])
            reasoning_tokens, conclusion_tokens, conclusion, finish = _words(reasoning), 0, "", "length"
        if self.config.hosted_reasoning:
            # Hosted reasoning models count their reasoning in usage but never return it.
            content, reasoning_out = conclusion, None
        elif self.config.split_reasoning:
            content, reasoning_out = conclusion, reasoning
        else:
            closing = "\n</think>\n\n" if finish == "stop" else ""
            content, reasoning_out = f"<think>\n{reasoning}{closing}{conclusion}", None
        return SimChoice(
            content=content,
            reasoning=reasoning_out,
            finish_reason=finish,
            completion_tokens=reasoning_tokens + conclusion_tokens,
            reasoning_tokens=reasoning_tokens,
        )


def _body(request: GenerationRequest, model: str) -> dict[str, Any]:
    sampling = request.sampling
    body: dict[str, Any] = {"model": request.model or model, "messages": request.messages}
    if request.n != 1:
        body["n"] = request.n
    for key, value in (
        ("temperature", sampling.temperature),
        ("top_p", sampling.top_p),
        ("max_tokens", sampling.max_tokens),
        ("seed", sampling.seed),
    ):
        if value is not None:
            body[key] = value
    body.update(sampling.extra_body)
    return body


_OPENAI_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error"}
_SERVER_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    404: "NotFoundError",
    429: "RateLimitError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}


def error_json(
    style: str, status: int, message: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """An error body as the server of ``style`` sends it (`pacore_agent.backends.sim.ERROR_STYLES`).

    OpenAI puts a string ``code`` (or null) and a snake-case ``type`` under ``error``; vLLM the same
    envelope with the HTTP status as ``code``; SGLang (and vLLM before 0.10) the fields at top level.
    """
    if style == "openai":
        kind = (
            "requests"
            if status == 429
            else _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        )
        return {"error": {"message": message, "type": kind, "param": param, "code": code}}
    fields = {
        "message": message,
        "type": _SERVER_TYPES.get(status, "BadRequestError"),
        "param": param,
        "code": status,
    }
    if style == "sglang":
        return {"object": "error", **fields}
    return {"error": fields}


def stream_error_json(style: str, status: int, message: str) -> dict[str, Any]:
    """The ``data:`` payload of an SSE error chunk: always under ``error`` (SGLang keeps ``object``)."""
    body = error_json(style, status, message)
    return {"error": body} if style == "sglang" else body


def fault_error(fault: SimFault, endpoint: str, style: str = "vllm") -> Exception:
    """The exception a client sees for a simulated fault (the in-process twin of the HTTP path)."""
    if fault.kind in ("drop", "stream_drop"):
        return EndpointConnectionError(f"{endpoint}: {fault.message}")
    if fault.kind in ("malformed", "empty_choices"):
        return MalformedResponseError(f"{endpoint} sent a malformed response: {fault.message}")
    headers = {"Retry-After": "soon" if fault.retry_after is None else f"{fault.retry_after:g}"}
    body = error_json(style, fault.status, fault.message, param=fault.param, code=fault.code)
    return error_from_response(endpoint, fault.status, body, headers)


class SimBackend(Backend):
    """The simulated model in-process (no HTTP): fast tests and offline demos.

    Args:
        config: The model's settings, or an existing engine to share.
        sleep: Sleep function for latency (inject a fake one to never wait).
        max_concurrency: Requests in flight at once.
    """

    def __init__(
        self,
        config: SimConfig | SimEngine | None = None,
        *,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        max_concurrency: int = 64,
    ) -> None:
        super().__init__(max_concurrency=max_concurrency)
        self.engine = config if isinstance(config, SimEngine) else SimEngine(config)
        self.name = self.engine.config.model
        self._sleep = sleep

    async def generate(
        self, request: GenerationRequest, *, on_delta: DeltaCallback | None = None
    ) -> list[Completion]:
        """Answer as the simulated model (see `Backend.generate`)."""
        engine = self.engine
        replies: list[SimReply] = []
        with engine.track():
            while sum(len(r.choices) for r in replies) < request.n:
                missing = request.n - sum(len(r.choices) for r in replies)
                replies.append(await self._one(_body(replace(request, n=missing), engine.config.model)))
        completions: list[Completion] = []
        for reply in replies:
            if reply.cut is not None:
                await self._cut(reply, len(completions), on_delta)
            usages = reply.usage.split([c.completion_tokens for c in reply.choices])
            for choice, usage in zip(reply.choices, usages, strict=True):
                if on_delta is not None:
                    if choice.reasoning:
                        await on_delta(len(completions), "reasoning", choice.reasoning)
                    await on_delta(len(completions), "content", choice.content)
                completions.append(
                    Completion(
                        content=choice.content,
                        reasoning=choice.reasoning,
                        finish_reason=choice.finish_reason,
                        usage=usage,
                        model=reply.model,
                    )
                )
        return completions

    async def _one(self, body: dict[str, Any]) -> SimReply:
        engine = self.engine
        reply = engine.respond(body)
        try:
            if isinstance(reply, SimFault):
                if reply.kind == "stall":
                    await anyio.sleep_forever()
                raise fault_error(reply, "sim", engine.config.wire_style)
            if reply.latency is None:
                await anyio.sleep_forever()
            await self._sleep(reply.latency or 0.0)
        except anyio.get_cancelled_exc_class():
            engine.disconnects += 1
            raise
        if reply.cut is None:
            engine.record_served(reply)
        return reply

    async def _cut(self, reply: SimReply, offset: int, on_delta: DeltaCallback | None) -> None:
        """Stream part of an answer that then fails, as the HTTP server does."""
        assert reply.cut is not None
        if on_delta is not None:
            share = self.engine.config.faults.stream_cut
            for index, choice in enumerate(reply.choices):
                if choice.reasoning:
                    await on_delta(
                        offset + index, "reasoning", choice.reasoning[: int(len(choice.reasoning) * share)]
                    )
                await on_delta(offset + index, "content", choice.content[: int(len(choice.content) * share)])
        raise fault_error(reply.cut, "sim", self.engine.config.wire_style)
