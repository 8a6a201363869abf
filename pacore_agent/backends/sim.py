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
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import anyio

from pacore_agent.backends.base import Backend, Completion, DeltaCallback, GenerationRequest
from pacore_agent.backends.sim_faults import (
    CUT_MID_ANSWER,
    ERROR_STYLES,
    FAULT_KINDS,
    Faults,
    SimFault,
    context_fault,
    draw_fault,
    fault_error,
    refusal,
)
from pacore_agent.compactors import last_boxed
from pacore_agent.exceptions import UsageError
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
        uniform: Seconds drawn uniformly from ``(low, high)`` instead of the log-normal, e.g.
            ``(0.1, 0.9)``.
    """

    median: float = 0.0
    sigma: float = 0.0
    stall_probability: float = 0.0
    uniform: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.median < 0 or self.sigma < 0 or not 0 <= self.stall_probability <= 1:
            raise UsageError("latency median and sigma must be >= 0 and stall_probability within [0, 1]")
        if self.uniform is not None and not 0 <= self.uniform[0] <= self.uniform[1]:
            raise UsageError(f"latency uniform must be (low, high) with 0 <= low <= high, got {self.uniform}")

    def sample(self, rng: random.Random) -> float | None:
        """Seconds for one request, or ``None`` for a stall."""
        if self.stall_probability and rng.random() < self.stall_probability:
            return None
        if self.uniform is not None:
            return rng.uniform(*self.uniform)
        if self.median == 0:
            return 0.0
        if self.sigma == 0:
            return self.median
        return self.median * math.exp(rng.gauss(0.0, self.sigma))


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
        send_usage: Report usage; ``False`` mimics servers that send none (and ignore
            ``stream_options.include_usage``).
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
    send_usage: bool = True

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
        fault = draw_fault(self.config.faults, self._arrivals - 1, self._fault_rng)
        if fault is not None and fault.kind not in ("stall", *CUT_MID_ANSWER, "context_length"):
            return fault
        if (refused := refusal(self.config, body)) is not None:
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
            return context_fault(self.config, prompt_tokens, max_tokens or window)
        if prompt_tokens >= window or (max_tokens is not None and prompt_tokens + int(max_tokens) > window):
            return context_fault(self.config, prompt_tokens, int(max_tokens or 0))
        if fault is not None and fault.kind in CUT_MID_ANSWER and not body.get("stream"):
            # Without a stream there is no "mid-answer": the error is the whole answer.
            if fault.kind == "stream_error":
                return SimFault("server_error", 500, "Internal server error (simulated)")
            if fault.kind == "stream_context_length":
                return context_fault(self.config, prompt_tokens, max_tokens or window)

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
        if fault is not None and fault.kind in CUT_MID_ANSWER:
            # The server front end sends part of this answer, then fails (`SimReply.cut`).
            return replace(reply, cut=self._cut_fault(fault, prompt_tokens, max_tokens or window))
        return reply

    def _cut_fault(self, fault: SimFault, prompt_tokens: int, max_tokens: int) -> SimFault:
        if fault.kind == "stream_context_length":
            return context_fault(self.config, prompt_tokens, max_tokens)
        if fault.kind == "stream_error":
            return replace(fault, status=500, message="Internal server error (simulated)")
        return fault

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
