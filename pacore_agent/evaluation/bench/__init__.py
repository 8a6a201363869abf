"""Benchmark runs of PaCoRe and its baselines: ``pacore bench`` and its Python API.

- `MethodSpec`: ``pacore:high``, ``pacore:[32,4]``, ``single``, ``sc@16``, ``bon@8`` (oracle best-of-n).
- `BenchSettings` + `run_bench`: every (problem, method, sample) once, graded and appended durably to a
  `pacore_agent.evaluation.store.RunStore`; reruns resume. Fresh runs, or the paper's pool protocol
  (``pool_size``): first rounds drawn from a pool of pre-generated trajectories per problem.
- `pacore_agent.evaluation.report` turns run directories into tables, CSV and scaling plots.
"""

from pacore_agent.evaluation.bench.methods import MethodKind, MethodSpec, parse_methods
from pacore_agent.evaluation.bench.progress import BenchProgress
from pacore_agent.evaluation.bench.runner import (
    FAILURES_FILENAME,
    BenchSettings,
    BenchSummary,
    FailedItem,
    load_problems,
    problems_fingerprint,
    read_failures,
    run_bench,
)
from pacore_agent.evaluation.bench.seeds import derive_seed

__all__ = [
    "FAILURES_FILENAME",
    "BenchProgress",
    "BenchSettings",
    "BenchSummary",
    "FailedItem",
    "MethodKind",
    "MethodSpec",
    "derive_seed",
    "load_problems",
    "parse_methods",
    "problems_fingerprint",
    "read_failures",
    "run_bench",
]
