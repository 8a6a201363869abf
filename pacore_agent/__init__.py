"""pacore: Parallel Coordinated Reasoning on any OpenAI-compatible endpoint.

Example::

    from pacore_agent import Coordinator, OpenAIBackend

    backend = OpenAIBackend("http://127.0.0.1:30000/v1")
    result = await Coordinator(schedule=[32, 4], backend=backend).solve("Find all primes p ...")
    print(result.answer)
"""

from pacore_agent.backends.base import Backend, Completion, GenerationRequest, SamplingParams
from pacore_agent.backends.env import backend_from_env
from pacore_agent.backends.openai_compat import OpenAIBackend
from pacore_agent.backends.replay import RecordingBackend, ReplayBackend
from pacore_agent.backends.sim import Faults, Latency, SimBackend, SimConfig
from pacore_agent.backends.sim_server import SimServer
from pacore_agent.backends.transformers import DEFAULT_LOCAL_MODEL, TransformersBackend
from pacore_agent.compactors import boxed_only, chain, final_conclusion, full, last_tokens
from pacore_agent.coordinator import Coordinator
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
from pacore_agent.schedule import Schedule

__all__ = [
    "DEFAULT_LOCAL_MODEL",
    "Backend",
    "BackendError",
    "BudgetExceeded",
    "Completion",
    "ConfigurationError",
    "Coordinator",
    "Done",
    "Event",
    "Faults",
    "GenerationRequest",
    "Latency",
    "OpenAIBackend",
    "PacoreError",
    "RecordingBackend",
    "ReplayBackend",
    "ReplayMissError",
    "RetryPolicy",
    "RoundFailedError",
    "RoundFinished",
    "RoundResult",
    "RoundStarted",
    "SamplingParams",
    "Schedule",
    "SimBackend",
    "SimConfig",
    "SimServer",
    "SolveError",
    "SolveResult",
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
]
