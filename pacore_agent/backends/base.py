"""The backend interface: one abstract async method, `Backend.generate`.

A backend turns a `GenerationRequest` (chat messages, ``n``, sampling settings) into ``n``
`Completion` objects. Everything else (retries, recording, the PaCoRe rounds) is built on top of it.
Each backend owns one `EndpointLimiter`: the concurrency limit of its endpoint, shared by every
problem in flight that uses that backend instance.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, Literal, Self

from pacore_agent.backends.limiter import EndpointLimiter
from pacore_agent.exceptions import UsageError
from pacore_agent.results import Usage

__all__ = [
    "DEFAULT_MAX_CONCURRENCY",
    "AsyncResource",
    "Backend",
    "Completion",
    "DeltaCallback",
    "GenerationRequest",
    "SamplingParams",
]

DEFAULT_MAX_CONCURRENCY = 64
"""Requests in flight per backend when the caller sets no limit."""

Message = dict[str, Any]

DeltaCallback = Callable[[int, Literal["content", "reasoning"], str], Awaitable[None]]
"""Called with (choice index, field, new text) as a streaming backend receives tokens."""


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Sampling settings sent with every request.

    A field left ``None`` is not sent, so the endpoint's own default applies (hosted reasoning models
    refuse ``top_p`` and any temperature but 1). The paper's settings, temperature = top_p = 1.0 and no
    token cap, are `SamplingParams.paper`.

    Attributes:
        temperature: Sampling temperature; ``None`` leaves it to the server.
        top_p: Nucleus sampling mass; ``None`` leaves it to the server.
        max_tokens: Cap on generated tokens; ``None`` leaves it to the server. Backends send it under the
            name the endpoint wants (``max_completion_tokens`` or ``max_tokens``).
        seed: Base seed. When set, every request gets its own seed derived from it, the problem, the
            round and the trajectory, so runs repeat on servers that honour ``seed``.
        stop: Stop strings.
        extra_body: Extra JSON fields passed through as-is (``chat_template_kwargs``, ``top_k``,
            ``reasoning_effort``, ...).
    """

    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] | None = None
    extra_body: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.temperature is not None and not 0.0 <= self.temperature <= 2.0:
            raise UsageError(f"temperature must be within [0, 2], got {self.temperature}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise UsageError(f"top_p must be within (0, 1], got {self.top_p}")
        if self.max_tokens is not None and self.max_tokens <= 0:
            raise UsageError(f"max_tokens must be positive or None, got {self.max_tokens}")

    @classmethod
    def paper(cls, **changes: Any) -> SamplingParams:
        """The paper's settings (temperature = top_p = 1.0, no token cap), with ``changes`` applied."""
        return cls(**{"temperature": 1.0, "top_p": 1.0, **changes})

    def with_(self, **changes: Any) -> SamplingParams:
        """A copy with some fields changed."""
        return replace(self, **changes)


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One request to a backend.

    Attributes:
        messages: OpenAI-style chat messages.
        n: How many completions to return.
        sampling: Sampling settings.
        model: Overrides the backend's model for this request, when set.
    """

    messages: list[Message]
    n: int = 1
    sampling: SamplingParams = field(default_factory=SamplingParams)
    model: str | None = None


@dataclass(slots=True)
class Completion:
    """One completion as the backend returned it.

    Attributes:
        content: Message content (including ``<think>`` when the server does not split reasoning).
        reasoning: ``reasoning_content`` / ``reasoning`` when the server split it out.
        finish_reason: As reported (``"stop"``, ``"length"``, ...).
        usage: Tokens of this completion (see `pacore_agent.results.Trajectory.usage`).
        model: The model that answered.
        token_ids: Generated token ids, for backends that return them (training).
        logprobs: Log-probabilities of ``token_ids``, for backends that return them.
    """

    content: str | None
    reasoning: str | None = None
    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    model: str | None = None
    token_ids: list[int] | None = None
    logprobs: list[float] | None = None


class AsyncResource:
    """An async context manager that enters with `start` and exits with `aclose`.

    A failed `start` closes what it opened before the error propagates.
    """

    async def start(self) -> None:
        """Open what must be open before use; nothing by default."""
        return None

    async def aclose(self) -> None:
        """Release connections and other resources. Idempotent."""
        return None

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class Backend(AsyncResource, ABC):
    """Base class of every backend.

    Subclasses implement `generate`. Optional abilities (token ids, logprobs, weight updates) live on
    the subclasses that have them. A backend is an async context manager; `aclose` releases its
    connections.

    Args:
        max_concurrency: Requests in flight at once against this backend's endpoint.
    """

    name: str = "backend"
    """A short label for traces, e.g. the model id."""

    streams: bool = False
    """Whether requests stream by default; the coordinator then keeps the partial output of
    trajectories it cancels (quorum, deadline, hedging, budget)."""

    def __init__(self, *, max_concurrency: int = DEFAULT_MAX_CONCURRENCY) -> None:
        if max_concurrency <= 0:
            raise UsageError(f"max_concurrency must be positive, got {max_concurrency}")
        self.max_concurrency = max_concurrency
        self._limiter = EndpointLimiter(max_concurrency)

    @property
    def limiter(self) -> EndpointLimiter:
        """The concurrency limit of this backend's endpoint, shared by every caller.

        Every request holds one of its slots: ``async with backend.limiter: ...``.
        """
        return self._limiter

    @abstractmethod
    async def generate(
        self, request: GenerationRequest, *, on_delta: DeltaCallback | None = None
    ) -> list[Completion]:
        """Generate ``request.n`` completions.

        Args:
            request: What to generate.
            on_delta: When given and the backend can stream, called with new text as it arrives.

        Returns:
            Exactly ``request.n`` completions.

        Raises:
            pacore_agent.exceptions.BackendError: The endpoint failed; subclasses say how.
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, max_concurrency={self.max_concurrency})"
