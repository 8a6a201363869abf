"""Retries by error class, outside the concurrency limit.

- 429: wait what ``Retry-After`` asks (capped), else back off.
- 5xx, timeouts, dropped connections, malformed bodies: exponential back-off with jitter.
- 400/401/403/404/422: not retried, except a context-length error, retried once with ``max_tokens``
  lowered to fit the context the endpoint reported.

Each attempt holds one slot of the backend's limiter; back-off sleeps hold none. Sleep and randomness
are injectable, so tests never wait.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio

from pacore_agent.backends.base import Backend, Completion, DeltaCallback, GenerationRequest
from pacore_agent.exceptions import BackendError, ContextLengthError, RateLimitError, UsageError

__all__ = ["Call", "RetryHook", "RetryPolicy", "call_with_retries"]

SleepFn = Callable[[float], Awaitable[None]]

_CONTEXT_MARGIN = 16
"""Tokens left free when lowering max_tokens after a context-length error (tokenizer rounding)."""


@dataclass(frozen=True)
class RetryPolicy:
    """How calls are retried.

    Attributes:
        max_attempts: Attempts per call, the first included.
        initial_backoff: Seconds of the first back-off; doubles each retry.
        max_backoff: Cap of one back-off.
        max_retry_after: Cap on a server's ``Retry-After`` request.
        retry_context_length: Retry once with a smaller ``max_tokens`` after a context-length error.
        sleep: The sleep function (injected in tests).
        rng: Randomness of the jitter.
    """

    max_attempts: int = 5
    initial_backoff: float = 1.0
    max_backoff: float = 60.0
    max_retry_after: float = 600.0
    retry_context_length: bool = True
    sleep: SleepFn = anyio.sleep
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise UsageError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.initial_backoff < 0 or self.max_backoff < 0:
            raise UsageError("back-off durations must not be negative")

    def backoff(self, attempt: int, error: BaseException | None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        if isinstance(error, RateLimitError) and error.retry_after is not None:
            return min(max(float(error.retry_after), 0.0), self.max_retry_after)
        if isinstance(error, ContextLengthError):
            return 0.0
        base = min(self.max_backoff, self.initial_backoff * 2 ** (attempt - 1))
        # "Equal jitter": never less than half the base, so waits still grow.
        return float(base / 2 + self.rng.uniform(0, base / 2))


@dataclass
class Call:
    """The outcome of `call_with_retries`: the completions and the attempts it took."""

    completions: list[Completion]
    attempts: int
    request: GenerationRequest


def _fit_max_tokens(request: GenerationRequest, error: ContextLengthError) -> GenerationRequest | None:
    if error.max_context is None or error.prompt_tokens is None:
        return None
    room = error.max_context - error.prompt_tokens - _CONTEXT_MARGIN
    current = request.sampling.max_tokens
    if room <= 0 or (current is not None and room >= current):
        return None
    return GenerationRequest(
        messages=request.messages,
        n=request.n,
        sampling=request.sampling.with_(max_tokens=room),
        model=request.model,
    )


RetryHook = Callable[[int, BaseException], Awaitable[bool]]
"""Called before each retry with (the attempt about to start, the error of the last one); returning
``False`` stops retrying (the last error is raised)."""


async def call_with_retries(
    backend: Backend,
    request: GenerationRequest,
    policy: RetryPolicy,
    *,
    on_delta: DeltaCallback | None = None,
    before_retry: RetryHook | None = None,
) -> Call:
    """Send one request through ``backend`` with ``policy``'s retries.

    Args:
        backend: Where the request goes.
        request: The request.
        policy: How failed attempts are retried.
        on_delta: Receives streamed text; a retried attempt streams again from the start, so callers
            that keep partial text drop it in ``before_retry``.
        before_retry: Called before each retry, before its back-off: the place to check a budget and to
            forget a failed attempt's partial output.

    Raises:
        BackendError: The last error, with ``attempt`` set, when retries are exhausted, the error is
            not retryable, or ``before_retry`` refused.
    """
    # Fast path: most calls succeed at once, and at high request rates even building the retry
    # machinery costs more than the call's own client-side work.
    try:
        async with backend.limiter:
            return Call(
                completions=await backend.generate(request, on_delta=on_delta), attempts=1, request=request
            )
    except BackendError as error:
        return await _retry(backend, request, policy, on_delta, before_retry, error)


async def _retry(
    backend: Backend,
    request: GenerationRequest,
    policy: RetryPolicy,
    on_delta: DeltaCallback | None,
    before_retry: RetryHook | None,
    error: BackendError,
) -> Call:
    """The attempts after a failed first one."""
    current = request
    context_retried = False
    attempts = 1
    while attempts < policy.max_attempts:
        if isinstance(error, ContextLengthError):
            smaller = _fit_max_tokens(current, error) if policy.retry_context_length else None
            if context_retried or smaller is None:
                break
            current, context_retried = smaller, True
        elif not error.retryable:
            break
        if before_retry is not None and not await before_retry(attempts + 1, error):
            break
        await policy.sleep(policy.backoff(attempts, error))
        attempts += 1
        try:
            async with backend.limiter:
                completions = await backend.generate(current, on_delta=on_delta)
        except BackendError as failed:
            error = failed
            continue
        return Call(completions=completions, attempts=attempts, request=current)
    error.attempt = attempts
    raise error
