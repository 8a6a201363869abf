"""pacore: Parallel Coordinated Reasoning on any OpenAI-compatible endpoint."""

from pacore_agent.backends.base import Backend, Completion, GenerationRequest, SamplingParams
from pacore_agent.results import RoundResult, SolveResult, Trajectory, Usage

__all__ = [
    "Backend",
    "Completion",
    "GenerationRequest",
    "RoundResult",
    "SamplingParams",
    "SolveResult",
    "Trajectory",
    "Usage",
]
