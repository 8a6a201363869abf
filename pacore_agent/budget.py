"""Budgets: hard limits on calls, tokens, cost and wall time, per solve or per batch.

A `Budget` is checked before every request and after every answer. When a limit is reached the run
stops cleanly: requests in flight are cancelled (their partial output kept and marked ``cancelled``),
everything finished is kept, and then, as ``on_exceeded`` chooses:

- ``"raise"`` (default): `pacore_agent.exceptions.BudgetExceeded` carrying the partial result;
- ``"synthesize"``: the final round of one runs at once on the messages gathered so far (the one call
  allowed past the limit), so the caller still gets an answer.

A limit is reached within one call's worth: a request, and each retry of it, starts only while every
limit has room, and requests still running when the limit is reached are cut. Everything is charged:
every attempt as it starts, the tokens of every answer, the tokens a cut request had streamed (when its
backend streams), and the final synthesis that ``"synthesize"`` lets past the limit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from pacore_agent.exceptions import UsageError
from pacore_agent.results import Usage

__all__ = ["ANY_MODEL", "Budget", "BudgetTracker", "Price"]

ANY_MODEL = "*"
"""The `Budget.prices` key that prices every model the table does not name (one price for a one-model run,
whatever the endpoint calls its model)."""


@dataclass(frozen=True)
class Price:
    """Price of a model per million tokens (any currency, used consistently).

    Attributes:
        input: Per million prompt tokens not served from cache.
        output: Per million completion tokens (reasoning included).
        cached_input: Per million cached prompt tokens (default: the input price).
    """

    input: float
    output: float
    cached_input: float | None = None

    def __post_init__(self) -> None:
        values = (self.input, self.output, self.cached_input)
        # NaN compares False with everything: a NaN price would make a cost budget never run out.
        if any(v is not None and not (math.isfinite(v) and v >= 0) for v in values):
            raise UsageError(f"prices must be finite and not negative, got {self!r}")

    def cost(self, usage: Usage) -> float:
        """Cost of ``usage`` at this price."""
        cached = usage.cached_tokens
        cached_price = self.input if self.cached_input is None else self.cached_input
        return (
            (usage.prompt_tokens - cached) * self.input
            + cached * cached_price
            + usage.completion_tokens * self.output
        ) / 1e6


@dataclass(frozen=True)
class Budget:
    """Limits of a solve (``Coordinator(budget=...)``) or of a batch (``solve_many(..., budget=...)``).

    Attributes:
        max_calls: Requests sent, retries included.
        max_tokens: Prompt plus completion tokens.
        max_cost: Cost from ``prices``.
        max_wall_s: Seconds from the start.
        prices: Price per model id (`ANY_MODEL` for every model not named); required with ``max_cost``
            and must cover every model in use.
        on_exceeded: ``"raise"`` or ``"synthesize"`` (see the module docstring).
    """

    max_calls: int | None = None
    max_tokens: int | None = None
    max_cost: float | None = None
    max_wall_s: float | None = None
    prices: Mapping[str, Price] = field(default_factory=dict)
    on_exceeded: Literal["raise", "synthesize"] = "raise"

    def __post_init__(self) -> None:
        for name in ("max_calls", "max_tokens", "max_cost", "max_wall_s"):
            value = getattr(self, name)
            if value is None:
                continue
            counted = name in ("max_calls", "max_tokens")
            kind = int if counted else int | float
            if (
                isinstance(value, bool)
                or not isinstance(value, kind)
                or not math.isfinite(value)
                or value <= 0
            ):
                what = "a whole number" if counted else "a number"
                raise UsageError(f"budget {name} must be positive ({what}), got {value!r}")
        if self.max_cost is not None and not self.prices:
            raise UsageError(
                "a max_cost budget needs prices: Budget(prices={'model-id': Price(input=..., output=...)})"
            )
        if self.on_exceeded not in ("raise", "synthesize"):
            raise UsageError(f"on_exceeded must be 'raise' or 'synthesize', got {self.on_exceeded!r}")

    def check_models(self, models: list[str | None]) -> None:
        """Fail early when ``max_cost`` is set and a model in use has no price.

        Raises:
            UsageError: A model is unknown (``None``: not configured yet) or missing from ``prices``.
        """
        if self.max_cost is None or ANY_MODEL in self.prices:
            return
        for model in models:
            if model is None:
                raise UsageError(
                    "a max_cost budget needs the backend's model set explicitly (model=...), or one price for "
                    "every model: prices={ANY_MODEL: Price(...)}"
                )
            if model not in self.prices:
                raise UsageError(
                    f"the price table has no entry for model {model!r} (it has {sorted(self.prices)}): add it"
                )


class BudgetTracker:
    """What a budget has used so far; shared by every solve it covers.

    Args:
        budget: The limits.
        clock: Monotonic clock (the coordinator's).
        parent: A wider budget (a batch's) also charged and checked.
    """

    def __init__(
        self, budget: Budget, clock: Callable[[], float], parent: BudgetTracker | None = None
    ) -> None:
        self.budget = budget
        self.clock = clock
        self.parent = parent
        self.started = clock()
        self.calls = 0
        self.tokens = 0
        self.cost = 0.0

    def exceeded(self) -> str | None:
        """The first limit used up (``"calls"``, ``"tokens"``, ``"cost"``, ``"wall_time"``), or ``None``.

        Once a limit is used up no new request starts.
        """
        if self.budget.max_calls is not None and self.calls >= self.budget.max_calls:
            return "calls"
        if self.parent is not None and (reason := self.parent.exceeded()) is not None:
            return reason
        return self.overrun()

    def overrun(self) -> str | None:
        """A limit that requests in flight must not keep consuming (tokens, cost, wall time), or ``None``.

        Calls in flight were counted when they started, so a used-up call budget does not cut them.
        """
        budget = self.budget
        if budget.max_tokens is not None and self.tokens >= budget.max_tokens:
            return "tokens"
        if budget.max_cost is not None and self.cost >= budget.max_cost:
            return "cost"
        if budget.max_wall_s is not None and self.clock() - self.started >= budget.max_wall_s:
            return "wall_time"
        return self.parent.overrun() if self.parent else None

    def remaining_s(self) -> float | None:
        """Seconds left before the wall-time limit (the tightest of this and the parent's)."""
        own = (
            None if self.budget.max_wall_s is None else self.budget.max_wall_s - (self.clock() - self.started)
        )
        parent = self.parent.remaining_s() if self.parent else None
        left = [t for t in (own, parent) if t is not None]
        return max(0.0, min(left)) if left else None

    def start_call(self, *, force: bool = False, count: int = 1) -> bool:
        """Reserve one request (a first attempt or a retry); ``False`` when a limit has been reached.

        Args:
            force: Charge the request even past a limit (the final synthesis under ``"synthesize"``).
            count: Requests to charge at once (a round run elsewhere, retries included).
        """
        if not force and self.exceeded() is not None:
            return False
        self._charge_call(count)
        return True

    def _charge_call(self, count: int) -> None:
        self.calls += count
        if self.parent:
            self.parent._charge_call(count)

    def charge(self, usage: Usage, model: str | None) -> None:
        """Record the tokens (and their cost) of an answer, or of the part a cut request had streamed.

        Requests themselves, retries included, are charged by `start_call` as they start.
        """
        self.tokens += usage.total_tokens
        prices = self.budget.prices
        price = prices.get(model or "", prices.get(ANY_MODEL))
        if price is not None:
            self.cost += price.cost(usage)
        if self.parent:
            self.parent.charge(usage, model)

    def summary(self) -> dict[str, float | int]:
        """What was used, for the trace."""
        return {
            "calls": self.calls,
            "tokens": self.tokens,
            "cost": round(self.cost, 6),
            "wall_s": self.clock() - self.started,
        }
