"""pacore: Parallel Coordinated Reasoning on any OpenAI-compatible endpoint.

Example::

    from pacore_agent import Coordinator, OpenAIBackend

    backend = OpenAIBackend("http://127.0.0.1:30000/v1")
    result = await Coordinator(schedule=[32, 4], backend=backend).solve("Find all primes p ...")
    print(result.answer)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pacore_agent.backends.base import Backend, Completion, GenerationRequest, SamplingParams
    from pacore_agent.backends.env import backend_from_env
    from pacore_agent.backends.openai_compat import OpenAIBackend
    from pacore_agent.backends.replay import RecordingBackend, ReplayBackend
    from pacore_agent.backends.sglang import SGLangBackend, SGLangServer
    from pacore_agent.backends.sim import Faults, Latency, SimBackend, SimConfig
    from pacore_agent.backends.sim_server import SimServer
    from pacore_agent.backends.transformers import DEFAULT_LOCAL_MODEL, TransformersBackend
    from pacore_agent.budget import ANY_MODEL, Budget, Price
    from pacore_agent.compactors import boxed_only, chain, final_conclusion, full, last_tokens, summarize
    from pacore_agent.coordinator import Coordinator
    from pacore_agent.evaluation.bench import BenchSettings, MethodSpec, run_bench
    from pacore_agent.exceptions import (
        BackendError,
        BudgetExceeded,
        ConfigurationError,
        PacoreError,
        ReplayMissError,
        RoundFailedError,
        SolveError,
        UsageError,
    )
    from pacore_agent.results import (
        AttemptRestarted,
        Done,
        Event,
        RoundFinished,
        RoundResult,
        RoundStarted,
        SolveResult,
        TokenDelta,
        Trajectory,
        TrajectoryFinished,
        Usage,
    )
    from pacore_agent.retry import RetryPolicy
    from pacore_agent.runtime import tune_gc
    from pacore_agent.schedule import Schedule
    from pacore_agent.serving.server import PacoreServer
    from pacore_agent.strategies import BestOfN, PaCoRe, SelfConsistency, Single, Strategy

# Public names are imported on first use, so `pacore --help` and the simulated server start without
# importing every backend and the evaluation stack.
_LAZY: dict[str, str] = {
    "ANY_MODEL": "pacore_agent.budget",
    "Backend": "pacore_agent.backends.base",
    "BackendError": "pacore_agent.exceptions",
    "BenchSettings": "pacore_agent.evaluation.bench",
    "BestOfN": "pacore_agent.strategies",
    "Budget": "pacore_agent.budget",
    "BudgetExceeded": "pacore_agent.exceptions",
    "Completion": "pacore_agent.backends.base",
    "ConfigurationError": "pacore_agent.exceptions",
    "Coordinator": "pacore_agent.coordinator",
    "DEFAULT_LOCAL_MODEL": "pacore_agent.backends.transformers",
    "Done": "pacore_agent.results",
    "Event": "pacore_agent.results",
    "Faults": "pacore_agent.backends.sim",
    "GenerationRequest": "pacore_agent.backends.base",
    "Latency": "pacore_agent.backends.sim",
    "MethodSpec": "pacore_agent.evaluation.bench",
    "OpenAIBackend": "pacore_agent.backends.openai_compat",
    "PaCoRe": "pacore_agent.strategies",
    "PacoreError": "pacore_agent.exceptions",
    "PacoreServer": "pacore_agent.serving.server",
    "Price": "pacore_agent.budget",
    "RecordingBackend": "pacore_agent.backends.replay",
    "ReplayBackend": "pacore_agent.backends.replay",
    "ReplayMissError": "pacore_agent.exceptions",
    "RetryPolicy": "pacore_agent.retry",
    "RoundFailedError": "pacore_agent.exceptions",
    "RoundFinished": "pacore_agent.results",
    "RoundResult": "pacore_agent.results",
    "AttemptRestarted": "pacore_agent.results",
    "RoundStarted": "pacore_agent.results",
    "SGLangBackend": "pacore_agent.backends.sglang",
    "SGLangServer": "pacore_agent.backends.sglang",
    "SamplingParams": "pacore_agent.backends.base",
    "Schedule": "pacore_agent.schedule",
    "SelfConsistency": "pacore_agent.strategies",
    "SimBackend": "pacore_agent.backends.sim",
    "SimConfig": "pacore_agent.backends.sim",
    "SimServer": "pacore_agent.backends.sim_server",
    "Single": "pacore_agent.strategies",
    "SolveError": "pacore_agent.exceptions",
    "SolveResult": "pacore_agent.results",
    "Strategy": "pacore_agent.strategies",
    "TokenDelta": "pacore_agent.results",
    "Trajectory": "pacore_agent.results",
    "TrajectoryFinished": "pacore_agent.results",
    "TransformersBackend": "pacore_agent.backends.transformers",
    "Usage": "pacore_agent.results",
    "UsageError": "pacore_agent.exceptions",
    "backend_from_env": "pacore_agent.backends.env",
    "boxed_only": "pacore_agent.compactors",
    "chain": "pacore_agent.compactors",
    "final_conclusion": "pacore_agent.compactors",
    "full": "pacore_agent.compactors",
    "last_tokens": "pacore_agent.compactors",
    "summarize": "pacore_agent.compactors",
    "run_bench": "pacore_agent.evaluation.bench",
    "tune_gc": "pacore_agent.runtime",
}

__all__ = [
    "ANY_MODEL",
    "DEFAULT_LOCAL_MODEL",
    "AttemptRestarted",
    "Backend",
    "BackendError",
    "BenchSettings",
    "BestOfN",
    "Budget",
    "BudgetExceeded",
    "Completion",
    "ConfigurationError",
    "Coordinator",
    "Done",
    "Event",
    "Faults",
    "GenerationRequest",
    "Latency",
    "MethodSpec",
    "OpenAIBackend",
    "PaCoRe",
    "PacoreError",
    "PacoreServer",
    "Price",
    "RecordingBackend",
    "ReplayBackend",
    "ReplayMissError",
    "RetryPolicy",
    "RoundFailedError",
    "RoundFinished",
    "RoundResult",
    "RoundStarted",
    "SGLangBackend",
    "SGLangServer",
    "SamplingParams",
    "Schedule",
    "SelfConsistency",
    "SimBackend",
    "SimConfig",
    "SimServer",
    "Single",
    "SolveError",
    "SolveResult",
    "Strategy",
    "TokenDelta",
    "Trajectory",
    "TrajectoryFinished",
    "TransformersBackend",
    "Usage",
    "UsageError",
    "backend_from_env",
    "boxed_only",
    "chain",
    "final_conclusion",
    "full",
    "last_tokens",
    "run_bench",
    "summarize",
    "tune_gc",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pacore_agent' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
