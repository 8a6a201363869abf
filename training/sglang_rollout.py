"""Rollouts through an SGLang server: token ids and logprobs from ``/generate``, weights pushed from disk.

`SGLangRollout` is the `RolloutEngine` of a trainer whose sampler is an SGLang server, launched or
attached through `pacore_agent.backends.sglang.SGLangBackend`:

- ``generate(prompts, n, max_new_tokens)`` sends each prompt's ``n`` samples to SGLang's native
  ``/generate`` as token ids with ``return_logprob=True`` (one request per prompt, all prompts at once
  under the backend's concurrency limit) and returns `Sample` objects prompt-major, each with SGLang's
  ``output_token_logprobs`` aligned with its response ids, so the trainer's truncated importance
  sampling (``PPOConfig.tis_cap``) and ``charts/rollout_logprob_diff`` compare like with like.
- ``sync_weights(model)`` writes the actor with ``save_pretrained`` (safetensors) to a new folder under
  `weights_dir`, a folder the server can read, then calls ``/update_weights_from_disk`` on it with a
  fresh ``weight_version`` and ``/flush_cache`` so that no prefix computed with the old weights is
  reused. Every later sequence must report that weight version (when the server reports versions):
  strict on-policy PPO must never train on samples from stale weights.

Why from disk rather than ``/update_weights_from_tensor``: the tensor path hands SGLang CUDA IPC handles
serialised with SGLang's own utilities, so it needs SGLang importable in the trainer and the trainer
co-located with the server on the same GPUs. Loading from disk works with the server on any GPU (or
machine) that sees the folder, needs nothing of SGLang on the trainer's side and is testable without a
GPU; its cost is one write and read of the weights per update (about 1.2 GB for a 0.6B model in bf16,
a second or two on local NVMe or /dev/shm; pass ``save_dtype=torch.bfloat16`` to halve it when the
trainer keeps fp32 weights). Point `weights_dir` at /dev/shm to keep the round trip in memory.

The `RolloutEngine` interface is synchronous (the trainer is), while the SGLang client is async: the
engine runs its own event loop in a daemon thread (an anyio blocking portal) and every call crosses
into it. Its methods therefore block, and must not be called from a thread that runs an event loop
(use ``anyio.to_thread.run_sync`` there). ``close()`` (or leaving a ``with`` block) closes the
connections, stops a launched server and ends the thread.

Depending on its version and its ``SGLANG_RETURN_ORIGINAL_LOGPROB`` setting, SGLang takes the logprobs
before or after temperature scaling; at the paper's temperature 1.0 and top_p 1.0 both are the model's
own distribution, which is what `training.ppo.PPOTrainer` computes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, TypeVar

import anyio
import torch
from anyio.from_thread import BlockingPortal, start_blocking_portal
from torch import nn

from pacore_agent.backends.sglang import NativeCompletion, SGLangBackend, SGLangServerError
from pacore_agent.exceptions import BackendError, PacoreRuntimeError, UsageError
from training.rollout import FinishReason, RolloutEngine, Sample

__all__ = ["DEFAULT_KEEP_WEIGHTS", "SGLangRollout", "WeightSyncError"]

logger = logging.getLogger(__name__)

DEFAULT_KEEP_WEIGHTS = 1
"""Pushed weight folders kept on disk: the server has loaded them, so older ones are deleted."""

_WEIGHTS_PREFIX = "weights-"

T = TypeVar("T")


class WeightSyncError(PacoreRuntimeError):
    """The SGLang server did not take the trainer's weights, or generated with other weights.

    Attributes:
        version: The weight version that was being pushed (or expected).
        path: The folder the weights were written to.
        server: The server's base URL.
        log_tail: The last lines of a launched server's log ("" when attached).
    """

    def __init__(
        self, message: str, *, version: str, path: Path | None, server: str, log_tail: str = ""
    ) -> None:
        super().__init__(message)
        self.version = version
        self.path = path
        self.server = server
        self.log_tail = log_tail


class SGLangRollout(RolloutEngine):
    """A rollout engine on an SGLang server: native ``/generate`` for samples, weights pushed from disk.

    The engine owns ``backend``: it starts it (launches the server, or health-checks an attached one) on
    `start`, on entering a ``with`` block or on first use, and closes it on `close` (a launched server
    is stopped with its whole process group; an attached one keeps running)::

        backend = SGLangBackend.launch("/ckpt/actor-0", extra_args=["--mem-fraction-static", "0.5"])
        with SGLangRollout(backend, weights_dir="/dev/shm/pacore", stop_token_ids=[im_end]) as engine:
            samples = engine.generate(prompts, n=64, max_new_tokens=8192)
            trainer.step(samples, rewards)
            engine.sync_weights(trainer.actor)

    Args:
        backend: The SGLang backend (from `SGLangBackend.launch` or `SGLangBackend.attach`). Its
            ``max_concurrency`` caps the ``/generate`` requests in flight (one per prompt).
        weights_dir: A folder the server can read, where `sync_weights` writes each new version of the
            weights (``weights-000001``, ...). A temporary folder, deleted on `close`, when ``None``:
            then the server must run on this machine.
        stop_token_ids: Extra tokens that end a response (SGLang always stops at the model's own EOS
            tokens); the stop token is kept in ``response_ids``.
        temperature: Sampling temperature (the paper samples at 1.0); the trainer's
            ``PPOConfig.temperature`` must match it.
        top_p: Nucleus sampling mass (the paper uses 1.0).
        sampling_extra: More SGLang ``sampling_params`` (``top_k``, ``min_p``, ...), sent as they are;
            ``max_new_tokens`` and ``n`` are set by `generate`.
        load_format: SGLang's ``load_format`` for the pushed weights (the server's when ``None``).
        save_dtype: Cast the weights to this dtype when writing them (e.g. ``torch.bfloat16`` for an
            fp32 trainer and a bf16 server); as the model holds them when ``None``.
        keep_weights: Pushed weight folders kept on disk (the newest ones).

    Raises:
        UsageError: Inconsistent settings.
    """

    def __init__(
        self,
        backend: SGLangBackend,
        *,
        weights_dir: str | Path | None = None,
        stop_token_ids: Sequence[int] = (),
        temperature: float = 1.0,
        top_p: float = 1.0,
        sampling_extra: Mapping[str, Any] | None = None,
        load_format: str | None = None,
        save_dtype: torch.dtype | None = None,
        keep_weights: int = DEFAULT_KEEP_WEIGHTS,
    ) -> None:
        if not isinstance(backend, SGLangBackend):
            raise UsageError(
                f"SGLangRollout needs an SGLangBackend (SGLangBackend.launch or .attach), got {backend!r}"
            )
        if temperature <= 0:
            raise UsageError(f"SGLangRollout samples, so temperature must be positive, got {temperature}")
        if not 0.0 < top_p <= 1.0:
            raise UsageError(f"top_p must be within (0, 1], got {top_p}")
        if keep_weights < 1:
            raise UsageError(
                f"keep_weights must be at least 1 (the server reads the newest), got {keep_weights}"
            )
        stop = [int(t) for t in stop_token_ids]
        if isinstance(stop_token_ids, (str, bytes)) or any(t < 0 for t in stop):
            raise UsageError(f"stop_token_ids must be non-negative token ids, got {stop_token_ids!r}")
        extra = dict(sampling_extra or {})
        reserved = {"n", "max_new_tokens", "temperature", "top_p", "stop_token_ids"} & extra.keys()
        if reserved:
            raise UsageError(
                f"pass {sorted(reserved)} through SGLangRollout's own arguments, not sampling_extra"
            )
        self.backend = backend
        self.temperature = temperature
        self.top_p = top_p
        self.stop_token_ids = tuple(stop)
        self.load_format = load_format
        self.save_dtype = save_dtype
        self.keep_weights = keep_weights
        self._sampling: dict[str, Any] = {"temperature": temperature, "top_p": top_p, **extra}
        if stop:
            self._sampling["stop_token_ids"] = stop
        self._own_weights_dir = weights_dir is None
        self._weights_dir = Path(weights_dir) if weights_dir is not None else None
        self._pushed: list[Path] = []
        self._version = 0
        self._weight_version: str | None = None
        self._failed_sync: WeightSyncError | None = None
        self._portal_cm: AbstractContextManager[BlockingPortal] | None = None
        self._portal: BlockingPortal | None = None
        self._started = False
        self._closed = False

    def __repr__(self) -> str:
        weights_dir = str(self._weights_dir) if self._weights_dir is not None else None
        return (
            f"SGLangRollout(backend={self.backend!r}, weights_dir={weights_dir!r}, "
            f"weight_version={self._weight_version!r})"
        )

    # -- read-only views ------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The server's root URL."""
        return self.backend.base_url

    @property
    def weight_version(self) -> str | None:
        """The version label of the weights the server holds (``None`` before the first push)."""
        return self._weight_version

    @property
    def weights_dir(self) -> Path | None:
        """Where pushed weights are written (a temporary folder is made on the first push when unset)."""
        return self._weights_dir

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the event-loop thread and the backend: launch the server, or health-check it. Idempotent.

        Raises:
            pacore_agent.backends.sglang.SGLangServerError: The server died or did not become healthy;
                the message quotes its log.
            UsageError: The engine was closed, or this is called from a thread running an event loop.
        """
        if self._closed:
            raise UsageError(f"{self!r} is closed; create a new SGLangRollout")
        if self._started:
            return
        _refuse_event_loop_thread()
        if self._portal is None:
            self._portal_cm = start_blocking_portal()
            self._portal = self._portal_cm.__enter__()
        try:
            self._portal.call(self.backend.start)
        except BaseException:
            self.close()
            raise
        self._started = True

    def __enter__(self) -> SGLangRollout:
        self.start()
        return self

    def close(self) -> None:
        """Close the connections, stop a launched server and end the event-loop thread. Idempotent.

        A temporary `weights_dir` (one the engine made) is deleted; a given one keeps the newest weights.
        """
        if self._closed:
            return
        self._closed = True
        try:
            if self._portal is not None:
                self._portal.call(self.backend.aclose)
        finally:
            portal_cm, self._portal_cm, self._portal = self._portal_cm, None, None
            if portal_cm is not None:
                portal_cm.__exit__(None, None, None)
            if self._own_weights_dir and self._weights_dir is not None:
                shutil.rmtree(self._weights_dir, ignore_errors=True)

    def _call(self, func: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``func(*args)`` on the engine's event loop and wait for it."""
        self.start()
        _refuse_event_loop_thread()
        assert self._portal is not None
        return self._portal.call(func, *args)

    # -- generation -----------------------------------------------------------------------------

    def generate(self, prompts: Sequence[Sequence[int]], n: int, max_new_tokens: int) -> list[Sample]:
        """Sample ``n`` responses to each prompt through ``/generate``; see `RolloutEngine.generate`.

        Raises:
            UsageError: Bad arguments, or the engine is closed.
            WeightSyncError: The last `sync_weights` failed (the server may hold older weights), or the
                server generated with weights other than the last pushed ones.
            pacore_agent.exceptions.BackendError: The server refused the request, aborted a sequence,
                answered something malformed, or could not be reached;
                `pacore_agent.backends.sglang.SGLangServerError` (with its exit status and log tail) when
                a launched server died.
        """
        if n <= 0 or max_new_tokens <= 0:
            raise UsageError(f"n and max_new_tokens must be positive, got n={n}, {max_new_tokens=}")
        rows = [list(p) for p in prompts]
        if any(len(p) == 0 for p in rows):
            raise UsageError("every prompt needs at least one token")
        if self._failed_sync is not None:
            failed = self._failed_sync
            raise WeightSyncError(
                f"the last weight push (version {failed.version}) failed, so the server may still hold "
                f"older weights; call sync_weights again before generating. It failed with: {failed}",
                version=failed.version,
                path=failed.path,
                server=failed.server,
                log_tail=failed.log_tail,
            ) from failed
        if not rows:
            return []
        sampling = {**self._sampling, "max_new_tokens": max_new_tokens}
        completions = self._call(self._generate_all, rows, n, sampling)
        return [
            self._sample(rows[index // n], completion, index // n, index % n)
            for index, completion in enumerate(completions)
        ]

    async def _generate_all(
        self, prompts: list[list[int]], n: int, sampling: dict[str, Any]
    ) -> list[NativeCompletion]:
        """One ``/generate`` request per prompt, all at once; the first failure cancels the rest."""
        results: list[list[NativeCompletion]] = [[] for _ in prompts]
        errors: list[Exception] = []

        async def one(index: int) -> None:
            try:
                results[index] = await self.backend.generate_ids(prompts[index], sampling, n=n)
            except Exception as exc:  # re-raised below, by its own class rather than in a group
                errors.append(exc)
                group.cancel_scope.cancel()

        async with anyio.create_task_group() as group:
            for index in range(len(prompts)):
                group.start_soon(one, index)
        if errors:
            raise errors[0]
        return [completion for per_prompt in results for completion in per_prompt]

    def _sample(
        self, prompt: list[int], out: NativeCompletion, prompt_index: int, sample_index: int
    ) -> Sample:
        where = f"SGLang sequence {sample_index} of prompt {prompt_index}"
        if out.finish_reason not in ("stop", "length"):
            details = dict(out.finish_details or {})
            message = details.get("message") or details or out.finish_reason
            raise BackendError(
                f"{where} at {self.base_url} ended with finish_reason {out.finish_reason!r}: {message}"
            )
        if (
            self._weight_version is not None
            and out.weight_version is not None
            and out.weight_version != self._weight_version
        ):
            raise WeightSyncError(
                f"{where} was generated with weight version {out.weight_version!r}, but the last push was "
                f"{self._weight_version!r}: is another process updating the server at {self.base_url}?",
                version=self._weight_version,
                path=self._pushed[-1] if self._pushed else None,
                server=self.base_url,
            )
        if out.logprobs is None or not out.token_ids:
            raise BackendError(f"{where} at {self.base_url} has no tokens or no logprobs: {out.meta_info!r}")
        finish_reason: FinishReason = "stop" if out.finish_reason == "stop" else "length"
        return Sample(prompt, list(out.token_ids), list(out.logprobs), finish_reason)

    # -- weights --------------------------------------------------------------------------------

    def sync_weights(self, model: nn.Module) -> None:
        """Write ``model`` with ``save_pretrained`` under `weights_dir` and load it into the server.

        The weights go to ``weights-<version>`` (written as ``.tmp`` and renamed once complete), then
        ``/update_weights_from_disk`` loads them with ``weight_version=<version>`` and ``/flush_cache``
        drops prefixes computed with the old weights. Older folders beyond ``keep_weights`` are deleted.

        Raises:
            UsageError: ``model`` has no ``save_pretrained`` (it must be a transformers model), or the
                engine is closed.
            WeightSyncError: The server refused the weights (the message quotes the server's and the
                end of a launched server's log), the server died, or the cache flush failed. Until a
                later push succeeds, `generate` refuses to sample.
        """
        save_pretrained = getattr(model, "save_pretrained", None)
        if not callable(save_pretrained):
            raise UsageError(
                f"sync_weights needs a transformers model with save_pretrained, got {type(model).__name__}"
            )
        self.start()
        self._version += 1
        version = str(self._version)
        try:
            path = self._write_weights(model, version)
            self._pushed.append(path)
            self._call(self._push, path, version)
        except WeightSyncError as error:
            self._failed_sync = error
            raise
        self._failed_sync = None
        self._weight_version = version
        for old in self._pushed[: -self.keep_weights]:
            shutil.rmtree(old, ignore_errors=True)
        self._pushed = self._pushed[-self.keep_weights :]

    def _write_weights(self, model: nn.Module, version: str) -> Path:
        if self._weights_dir is None:
            self._weights_dir = Path(tempfile.mkdtemp(prefix="pacore-sglang-weights-"))
        path = self._weights_dir / f"{_WEIGHTS_PREFIX}{int(version):06d}"
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(path, ignore_errors=True)
        try:
            state_dict = _cast_state_dict(model, self.save_dtype) if self.save_dtype is not None else None
            save_pretrained: Any = model.save_pretrained
            save_pretrained(tmp, state_dict=state_dict)
            tmp.rename(path)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise WeightSyncError(
                f"could not write weight version {version} to {path} for the SGLang server at "
                f"{self.base_url}: {exc}",
                version=version,
                path=path,
                server=self.base_url,
            ) from exc
        return path

    async def _push(self, path: Path, version: str) -> None:
        try:
            result = await self.backend.update_weights_from_disk(
                path, load_format=self.load_format, weight_version=version
            )
            # SGLang flushes after a successful update; flushing again costs nothing and guards servers
            # that do not, where prefixes cached under the old weights would leak into the new samples.
            await self.backend.flush_cache()
        except BackendError as exc:
            server = self.backend.server
            tail = ""
            if server.launched and not isinstance(exc, SGLangServerError):  # that one quotes its log already
                tail = await anyio.to_thread.run_sync(server.log_tail)
            where = f"; last lines of {server.log_path}:\n{tail}" if tail else ""
            raise WeightSyncError(
                f"pushing weight version {version} ({path}) to the SGLang server at {self.base_url} "
                f"failed: {exc}{where}",
                version=version,
                path=path,
                server=self.base_url,
                log_tail=tail or getattr(exc, "log_tail", ""),
            ) from exc
        logger.info(
            "SGLang at %s loaded weight version %s from %s: %s", self.base_url, version, path, result.message
        )


def _refuse_event_loop_thread() -> None:
    with contextlib.suppress(RuntimeError):
        asyncio.get_running_loop()
        raise UsageError(
            "SGLangRollout's methods block until the server answers; call them from a thread without a "
            "running event loop (e.g. await anyio.to_thread.run_sync(engine.generate, prompts, n, max_new))"
        )


def _cast_state_dict(model: nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """``model``'s state dict on the CPU in ``dtype``, with tied (shared) tensors still shared."""
    cast: dict[tuple[int, torch.Size], torch.Tensor] = {}
    out = {}
    for name, tensor in model.state_dict().items():
        key = (tensor.data_ptr(), tensor.shape)
        if key not in cast:
            target = dtype if tensor.is_floating_point() else tensor.dtype
            cast[key] = tensor.detach().to(device="cpu", dtype=target)
        out[name] = cast[key]
    return out
