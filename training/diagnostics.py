"""Synthesis behaviour of a training step: the figures of ``pacore analyze``, on the step's episodes.

The PaCoRe report says cross-checking markers emerge during training while the model learns to be right
when every message is wrong. `step_diagnostics` measures that per PPO step with the very functions that
analyse benchmark runs (`pacore_agent.evaluation.analyze.classify`, `SynthesisDiagnostics`), so a
training curve and a benchmark table mean the same thing. Each episode is one synthesis: its messages
(answers extracted from the references, grades from the pool), the response's answer and grade (the
environment's `RewardResult`) and the response's whole text.

Metrics (``None`` where nothing was counted, e.g. no episode had all messages wrong):

- ``synthesis/markers``: share of responses with a cross-checking marker; ``synthesis/marker_mean``:
  markers per response;
- ``synthesis/emergent``: right among responses whose messages were all wrong;
- ``synthesis/shortcut``: the answer is the plurality of the messages (the majority shortcut), against
  ``synthesis/plurality_right``, how often that plurality is right;
- ``synthesis/novel_right``, ``synthesis/novel_wrong``, ``synthesis/recovery``, ``synthesis/damage``,
  ``synthesis/message_use``: as in `pacore_agent.evaluation.analyze`.
"""

from __future__ import annotations

from collections.abc import Sequence

from pacore_agent.compactors import final_conclusion
from pacore_agent.evaluation.analyze import (
    MARKER_PATTERNS,
    Synthesis,
    SynthesisDiagnostics,
    classify,
)
from pacore_agent.evaluation.answers import extract_answer
from pacore_agent.exceptions import UsageError
from training.env import Episode, RewardResult

__all__ = ["PREFIX", "episode_synthesis", "step_diagnostics"]

PREFIX = "synthesis/"
"""The prefix of the metrics `step_diagnostics` returns."""


def episode_synthesis(episode: Episode, response: str, result: RewardResult) -> Synthesis:
    """One episode as the synthesis `classify` reads: its messages, the response and its grade."""
    answers = tuple(extract_answer(final_conclusion(m)) for m in episode.references)
    return Synthesis(answers, tuple(episode.message_correct), result.predicted, result.correct, response)


def step_diagnostics(
    episodes: Sequence[Episode],
    responses: Sequence[str],
    results: Sequence[RewardResult],
    *,
    markers: Sequence[str] = MARKER_PATTERNS,
) -> dict[str, float | None]:
    """The synthesis figures of one step's episodes (see the module docstring), keyed ``synthesis/*``.

    Args:
        episodes: The step's episodes.
        responses: The generated trajectory of each, reasoning included.
        results: The environment's score of each.
        markers: The cross-checking marker patterns.

    Raises:
        UsageError: The three sequences differ in length.
    """
    if not len(episodes) == len(responses) == len(results):
        raise UsageError(
            f"need one response and one result per episode, got {len(episodes)}, {len(responses)}, {len(results)}"
        )
    flags = [
        classify(episode_synthesis(e, text, r), markers=markers)
        for e, text, r in zip(episodes, responses, results, strict=True)
    ]
    return SynthesisDiagnostics.of(flags).metrics(PREFIX)
