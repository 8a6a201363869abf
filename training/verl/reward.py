"""`compute_score`: verl's custom reward function for PaCoRe synthesis training.

verl loads it with::

    reward.custom_reward_function.path=pkg://training.verl.reward
    reward.custom_reward_function.name=compute_score

and calls ``compute_score(data_source=..., solution_str=..., ground_truth=..., extra_info=...)`` once per
response (its ``naive`` reward manager, in a worker thread). The score is the paper's reward on
C(response) (`training.env.score_response`, the environment's own code): 1.0/0.0 for math
(`pacore_agent.evaluation.answers.grade`), the pass rate of the tests for code. The returned dict also carries the
episode's flags, which verl logs as reward metrics: ``acc``, ``all_messages_wrong``, ``emergent``,
``cross_check``, ``cross_check_mentions``, ``num_messages`` (floats, present on every response).

Truncation follows the local trainer's rule (`training.env.score_response`, `training.train`'s
``--truncation``): by default a response that hit the length limit earns 0 and is flagged ``truncated``.
verl hands the function the decoded text, not the finish reason, so a response counts as truncated when
``extra_info`` says so (``finish_reason``, when a reward manager passes it) or, otherwise, when it opened
``<think>`` and never closed it (`training.env.response_truncated`): a response cut off inside its
reasoning, whose mid-reasoning ``\boxed{}`` would otherwise be graded.

Extra keyword arguments (from ``reward.custom_reward_function.reward_kwargs`` or verl itself) tune
grading: ``math_timeout`` (seconds for math-verify), ``sandbox_timeout_s`` (per test) and ``truncation``
(``zero``, the default, or ``grade``; ``mask`` scores 0 and reports ``masked``, which verl's loss does
not read, so it acts as ``zero`` there); anything else is ignored.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from pacore_agent.evaluation.datasets import Domain
from pacore_agent.evaluation.grading import DEFAULT_TRUNCATION, Truncation
from pacore_agent.evaluation.sandbox import SandboxConfig
from pacore_agent.exceptions import UsageError
from training.data import TrainProblem, parse_tests
from training.env import default_reward, score_response
from training.verl.dataset import DATA_SOURCE_PREFIX

__all__ = ["compute_score"]


def _domain(data_source: str, extra_info: Mapping[str, Any]) -> Domain:
    domain = extra_info.get("domain")
    if domain is None and isinstance(data_source, str) and data_source.startswith(DATA_SOURCE_PREFIX):
        domain = data_source[len(DATA_SOURCE_PREFIX) :]
    if domain in ("math", "code"):
        return "math" if domain == "math" else "code"
    raise UsageError(
        f"cannot tell the domain of a response (data_source={data_source!r}, extra_info domain={domain!r}): "
        "use training.verl.dataset.PacoreSynthesisDataset, which sets both"
    )


def _flags(value: Any) -> list[bool]:
    """Message correctness flags from ``extra_info`` (a list, or a numpy array after verl's collation)."""
    if value is None or isinstance(value, str | bytes):
        return []
    return [bool(v) for v in value]


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: Mapping[str, Any] | None = None,
    *,
    math_timeout: float = 5.0,
    sandbox_timeout_s: float | None = None,
    truncation: Truncation = DEFAULT_TRUNCATION,
    **_: Any,
) -> dict[str, float]:
    """Score one response of a PaCoRe synthesis episode.

    Args:
        data_source: ``pacore/math`` or ``pacore/code`` (set by `PacoreSynthesisDataset`).
        solution_str: The decoded response (the whole trajectory; C is applied here).
        ground_truth: The answer (math), or the tests as JSON or a list (code).
        extra_info: The item's ``extra_info`` (``problem_id``, ``domain``, ``message_correct``).
        math_timeout: Seconds math-verify may spend.
        sandbox_timeout_s: Per-test wall-clock limit for code (default: the sandbox's).
        truncation: What a truncated response earns (see the module docstring).

    Returns:
        ``score`` (the reward) and the flags (``truncated`` and ``masked`` among them), all floats.

    Raises:
        UsageError: The domain cannot be told, or a code ground truth holds no tests.
        RewardError: Grading raised (the message names the problem).
    """
    info: Mapping[str, Any] = extra_info if isinstance(extra_info, Mapping) else {}
    domain = _domain(data_source, info)
    problem_id = str(info.get("problem_id", "?"))
    if domain == "code":
        tests = parse_tests(ground_truth)
        if not tests:
            raise UsageError(f"problem {problem_id!r}: the code ground truth holds no tests")
        problem = TrainProblem(id=problem_id, problem="", domain="code", tests=tests)
    else:
        problem = TrainProblem(id=problem_id, problem="", answer=str(ground_truth), domain="math")
    sandbox = SandboxConfig(timeout_s=sandbox_timeout_s) if sandbox_timeout_s else None
    reward_fn = functools.partial(default_reward, sandbox=sandbox, math_timeout=math_timeout)
    message_correct = _flags(info.get("message_correct"))
    finish_reason = info.get("finish_reason")
    result = score_response(
        problem,
        solution_str or "",
        message_correct,
        reward_fn=reward_fn,
        finish_reason=finish_reason if isinstance(finish_reason, str) else None,
        truncation=truncation,
    )
    return {**result.metrics(), "num_messages": float(len(message_correct))}
