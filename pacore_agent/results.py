"""Typed traces: usage, trajectories, rounds, solve results and live events.

Every strategy (PaCoRe, single call, self-consistency, best-of-N) returns the same `SolveResult`, so
reports and training treat every method alike. All models round-trip through JSON::

    SolveResult.model_validate_json(result.model_dump_json()) == result
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    computed_field,
    model_serializer,
)

__all__ = [
    "AttemptRestarted",
    "Done",
    "ErrorInfo",
    "Event",
    "RoundFinished",
    "RoundResult",
    "RoundStarted",
    "SolveResult",
    "TokenDelta",
    "Trajectory",
    "TrajectoryFinished",
    "Usage",
]

TrajectoryStatus = Literal["ok", "failed", "cancelled"]


class Usage(BaseModel):
    """Token counts as the endpoint reported them.

    ``completion_tokens`` includes ``reasoning_tokens`` (as in the OpenAI API); ``cached_tokens`` is the
    part of ``prompt_tokens`` served from the prefix cache. ``estimated`` is true when some of the counts
    were made by pacore with a tokenizer because the endpoint sent none (a sum is estimated when any
    part is).
    """

    model_config = ConfigDict(frozen=True)

    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    cached_tokens: int = 0
    estimated: bool = False

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Measured counts (the usual case) are stored as before: the flag only appears when it is set.
        data: dict[str, Any] = handler(self)
        if not self.estimated:
            data.pop("estimated", None)
        return data

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens

    def to_openai(self) -> dict[str, Any]:
        """The ``usage`` object of an OpenAI chat completion with these counts."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        }

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            reasoning_tokens=self.reasoning_tokens + other.reasoning_tokens,
            cached_tokens=self.cached_tokens + other.cached_tokens,
            estimated=self.estimated or other.estimated,
        )

    def split(self, weights: list[int]) -> list[Usage]:
        """Split one request's usage over its ``n`` choices so that the parts add up to this usage.

        Prompt and cached tokens go to the first choice (the prompt is processed once); completion and
        reasoning tokens are split in proportion to ``weights`` (e.g. text lengths).
        """
        n = len(weights)
        if n <= 1:
            return [self] * n
        shares = weights if sum(weights) > 0 else [1] * n
        total = sum(shares)

        def parts(value: int) -> list[int]:
            split = [value * share // total for share in shares]
            split[-1] += value - sum(split)
            return split

        completion, reasoning = parts(self.completion_tokens), parts(self.reasoning_tokens)
        return [
            Usage(
                prompt_tokens=self.prompt_tokens if i == 0 else 0,
                cached_tokens=self.cached_tokens if i == 0 else 0,
                completion_tokens=completion[i],
                reasoning_tokens=reasoning[i],
                estimated=self.estimated,
            )
            for i in range(n)
        ]

    @classmethod
    def sum(cls, usages: list[Usage] | tuple[Usage, ...]) -> Usage:
        """Add up several usages."""
        total = cls()
        for usage in usages:
            total = total + usage
        return total


class ErrorInfo(BaseModel):
    """Why a trajectory failed, as recorded in the trace (never with secrets)."""

    model_config = ConfigDict(frozen=True)

    type: str
    message: str
    status_code: int | None = None


class Trajectory(BaseModel):
    """One generated trajectory of a round.

    Attributes:
        round: Index of the round (0-based).
        index: Index of the trajectory within its round, in launch order.
        status: ``"ok"``, ``"failed"`` (see ``error``) or ``"cancelled"`` (cut by a quorum, deadline or
            budget; partial output and usage kept when the backend streamed).
        content: The message content the endpoint returned (with ``<think>`` when not split out).
        reasoning: ``reasoning_content`` when the server's reasoning parser split it out.
        message: The compacted message C(trajectory) passed to the next round; ``None`` when the
            trajectory contributed none (failed, cancelled or empty content).
        finish_reason: ``"stop"``, ``"length"``, ... as reported.
        usage: Tokens of this trajectory. When several trajectories came from one request (``n``), the
            prompt tokens are counted on the first of them only, so sums stay equal to what the
            server reported.
        latency_s: Seconds from the first attempt to the answer.
        attempts: Attempts made by its request, retries included.
        call: Index of the request that produced it within its round (several trajectories share one
            request when ``n`` > 1 was asked for).
        model: The model that produced it.
        error: Why it failed, when it did.
    """

    round: int
    index: int
    status: TrajectoryStatus = "ok"
    content: str | None = None
    reasoning: str | None = None
    message: str | None = None
    finish_reason: str | None = None
    usage: Usage = Field(default_factory=Usage)
    latency_s: float = 0.0
    attempts: int = 1
    call: int = 0
    model: str | None = None
    error: ErrorInfo | None = None

    @property
    def ok(self) -> bool:
        """Whether the trajectory finished without error or cancellation."""
        return self.status == "ok"

    @property
    def text(self) -> str:
        """The whole trajectory as one string, reasoning re-wrapped in ``<think>`` when split out.

        The conclusion after the last ``</think>`` of this text is exactly ``content``.
        """
        content = self.content or ""
        if self.reasoning:
            return f"<think>{self.reasoning}</think>{content}"
        return content


class RoundResult(BaseModel):
    """One round: its trajectories and the messages it produced.

    Attributes:
        index: Index of the round (0-based).
        width: How many trajectories the schedule asked for.
        trajectories: Every trajectory launched, in launch order (failed and cancelled included).
        order: Indices of the trajectories whose messages feed the next round, in reference order.
        messages: Those messages, in that order: ``messages[i]`` is ``trajectories[order[i]].message``.
        wall_s: Seconds from the round's start to its end.
        stop_reason: Why the round ended: ``"complete"``, ``"quorum"``, ``"deadline"``, ``"budget"``.
    """

    index: int
    width: int
    trajectories: list[Trajectory] = Field(default_factory=list)
    order: list[int] = Field(default_factory=list)
    messages: list[str] = Field(default_factory=list)
    wall_s: float = 0.0
    stop_reason: str = "complete"

    @property
    def usage(self) -> Usage:
        """Total usage of the round's trajectories."""
        return Usage.sum([t.usage for t in self.trajectories])


class SolveResult(BaseModel):
    """What a strategy returns for one problem.

    Totals (``usage``, ``calls``, ``ttc_tokens``) are derived from the rounds, so they always equal the
    sum of what the endpoints reported.

    Attributes:
        method: The strategy, e.g. ``"pacore[32,4]"``, ``"single"``, ``"sc@16"``.
        problem: The conversation as given (a string becomes one user message).
        answer: For PaCoRe, C(final trajectory); for voting strategies, the chosen conclusion.
        final: The trajectory the answer comes from.
        rounds: Every round run, in order.
        schedule: The widths actually scheduled, e.g. ``[32, 4, 1]``.
        order_policy: How references were ordered (``"seeded"``, ``"official"``, ...).
        seed: The seed of the reference order and of derived sampling seeds.
        wall_s: Seconds from start to finish.
        started_at: Unix time of the start.
        info: Strategy-specific data (vote counts, scores, early-stop reasons, grading).
    """

    method: str
    problem: list[dict[str, Any]]
    answer: str | None = None
    final: Trajectory | None = None
    rounds: list[RoundResult] = Field(default_factory=list)
    schedule: list[int] = Field(default_factory=list)
    order_policy: str = "seeded"
    seed: int = 0
    wall_s: float = 0.0
    started_at: float = 0.0
    info: dict[str, Any] = Field(default_factory=dict)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def usage(self) -> Usage:
        """Total usage over every trajectory of every round."""
        return Usage.sum([r.usage for r in self.rounds])

    @computed_field  # type: ignore[prop-decorator]
    @property
    def calls(self) -> int:
        """Requests sent to endpoints, retries included."""
        requests = {(r.index, t.call): t.attempts for r in self.rounds for t in r.trajectories}
        return sum(requests.values())

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ttc_tokens(self) -> int:
        """Effective test-time compute: the sum of every trajectory's generated tokens."""
        return sum(t.usage.completion_tokens for r in self.rounds for t in r.trajectories)

    @property
    def trajectories(self) -> list[Trajectory]:
        """Every trajectory of every round, in order."""
        return [t for r in self.rounds for t in r.trajectories]


class RoundStarted(BaseModel):
    """A round is about to launch its trajectories."""

    kind: Literal["round_started"] = "round_started"
    round: int
    width: int
    model: str | None = None


class TrajectoryFinished(BaseModel):
    """A trajectory finished (ok, failed or cancelled)."""

    kind: Literal["trajectory_finished"] = "trajectory_finished"
    trajectory: Trajectory


class TokenDelta(BaseModel):
    """New text of a streaming trajectory (``field`` is ``"content"`` or ``"reasoning"``)."""

    kind: Literal["token"] = "token"
    round: int
    index: int
    field: Literal["content", "reasoning"] = "content"
    text: str


class AttemptRestarted(BaseModel):
    """A trajectory's request failed and is being retried from the start.

    Text already received from the failed attempt (``TokenDelta`` events) is void: the retry streams the
    trajectory again from its first token, and only the retry's text is kept in the trace. Live
    displays should clear what they showed of trajectory ``index`` of ``round``.
    """

    kind: Literal["attempt_restarted"] = "attempt_restarted"
    round: int
    index: int
    attempt: int
    error: ErrorInfo


class RoundFinished(BaseModel):
    """A round ended; ``result.messages`` feed the next one."""

    kind: Literal["round_finished"] = "round_finished"
    result: RoundResult


class Done(BaseModel):
    """The solve finished; the last event of a stream."""

    kind: Literal["done"] = "done"
    result: SolveResult


Event = Annotated[
    RoundStarted | TrajectoryFinished | TokenDelta | AttemptRestarted | RoundFinished | Done,
    Field(discriminator="kind"),
]
"""Any live event of `Coordinator.stream`."""
