"""Record every request and response of a backend to a JSONL file, and replay them offline, bit for bit.

`RecordingBackend` wraps any backend (overriding only `Backend.generate`) and appends one line per call:
the request in canonical form, then the completions or the error. `ReplayBackend` serves a file
without any endpoint: the same request (messages, ``n``, sampling settings, model) gets the recorded
completions, and several identical requests get theirs in the order they were issued when recording.
Recorded errors are raised again as the same exception class with the same fields, so retries and
failed trajectories replay too.

File format, one JSON object per line::

    {"format": "pacore-replay", "version": 1, "backend": "..."}        opens each recording session
    {"key": "<sha256>", "seq": 0, "request": {...}, "completions": [...], "backend": "...", "elapsed_s": 0.1}
    {"key": "<sha256>", "seq": 1, "request": {...}, "error": {"type": "ServerError", ...}, ...}

``key`` is the SHA-256 of the canonical request (``request`` as stored, as JSON with sorted keys);
``seq`` numbers the identical requests of one session in the order they were issued. Requests carry
no credentials (API keys live in the backend, never in a request); ``extra_body`` fields named like
credentials are redacted all the same.

Replays reproduce the recorded order of identical requests; a solve whose outcome depends on timing
(quorum, hedging, round deadlines) can end differently, as it could against the live endpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

import anyio

from pacore_agent import exceptions as _exceptions
from pacore_agent.backends.base import (
    DEFAULT_MAX_CONCURRENCY,
    Backend,
    Completion,
    DeltaCallback,
    GenerationRequest,
)
from pacore_agent.backends.limiter import EndpointLimiter
from pacore_agent.exceptions import BackendError, PacoreError, ReplayMissError, UsageError
from pacore_agent.prompts import message_text
from pacore_agent.results import Usage

__all__ = [
    "FORMAT",
    "VERSION",
    "RecordingBackend",
    "ReplayBackend",
    "canonical_request",
    "request_key",
]

FORMAT = "pacore-replay"
VERSION = 1

_REDACTED = "<redacted>"
_SECRET_FIELDS = frozenset(
    {"api_key", "apikey", "api-key", "x-api-key", "authorization", "password", "secret"}
)
_PREVIEW = 60


def _redact(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {
            str(k): _REDACTED if str(k).lower() in _SECRET_FIELDS else _redact(v) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_redact(v) for v in value]
    return value


def canonical_request(request: GenerationRequest) -> dict[str, Any]:
    """The JSON form of a request that identifies it: messages, ``n``, sampling settings and model.

    Credential-like ``extra_body`` fields are redacted (they never identify a request).
    """
    sampling = request.sampling
    record = {
        "model": request.model,
        "messages": request.messages,
        "n": request.n,
        "sampling": {
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_tokens,
            "seed": sampling.seed,
            "stop": list(sampling.stop) if sampling.stop is not None else None,
            "extra_body": _redact(sampling.extra_body),
        },
    }
    # A JSON round trip: tuples become lists, so a recorded request and a live one compare equal.
    try:
        decoded: dict[str, Any] = json.loads(json.dumps(record, ensure_ascii=False, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise UsageError(f"the request cannot be recorded as JSON: {exc}") from exc
    return decoded


def _key(record: Mapping[str, Any]) -> str:
    text = json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def request_key(request: GenerationRequest) -> str:
    """The SHA-256 of the canonical request: identical requests have identical keys."""
    return _key(canonical_request(request))


def _completion_json(completion: Completion) -> dict[str, Any]:
    return {
        "content": completion.content,
        "reasoning": completion.reasoning,
        "finish_reason": completion.finish_reason,
        "usage": completion.usage.model_dump(),
        "model": completion.model,
        "token_ids": completion.token_ids,
        "logprobs": completion.logprobs,
    }


def _completion_from(data: Mapping[str, Any]) -> Completion:
    return Completion(
        content=data.get("content"),
        reasoning=data.get("reasoning"),
        finish_reason=data.get("finish_reason"),
        usage=Usage.model_validate(data.get("usage") or {}),
        model=data.get("model"),
        token_ids=data.get("token_ids"),
        logprobs=data.get("logprobs"),
    )


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def _error_json(error: PacoreError) -> dict[str, Any]:
    return {
        "type": type(error).__name__,
        "args": [a if _jsonable(a) else str(a) for a in error.args],
        "attrs": {k: v for k, v in vars(error).items() if not k.startswith("_") and _jsonable(v)},
    }


def _error_from(data: Mapping[str, Any]) -> PacoreError:
    """The recorded error as its own class, fields restored (constructors differ, so none is called)."""
    cls = getattr(_exceptions, str(data.get("type")), None)
    if not (isinstance(cls, type) and issubclass(cls, PacoreError)):
        cls = BackendError
    error: PacoreError = cls.__new__(cls)
    error.args = tuple(data.get("args") or ())
    for name, value in (data.get("attrs") or {}).items():
        if not str(name).startswith("_"):
            setattr(error, str(name), value)
    if isinstance(error, BackendError) and not hasattr(error, "message"):
        error.message = str(error.args[0]) if error.args else ""
        error.status_code = error.body = None
        error.attempt = 1
    return error


def _safe_name(name: str) -> str:
    """A backend's name for the file: a URL loses any user, password and query it carries."""
    if "://" not in name:
        return name
    parts = urlsplit(name)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _preview(record: Mapping[str, Any]) -> str:
    messages = record.get("messages") or []
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    last = users[-1] if users else (messages[-1] if messages else {})
    text = " ".join(message_text(last).split()) if isinstance(last, dict) else ""
    return text if len(text) <= _PREVIEW else text[:_PREVIEW] + "..."


def _cut_torn_line(path: Path) -> None:
    """Drop a last line left without its newline by a crash, so appended lines stay whole."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with path.open("rb+") as file:
        file.seek(-1, os.SEEK_END)
        if file.read(1) == b"\n":
            return
        file.seek(0)
        data = file.read()
        file.truncate(data.rfind(b"\n") + 1)


class RecordingBackend(Backend):
    """Wraps a backend and appends every request and its response (or error) to a JSONL file.

    Its limiter and name are the wrapped backend's; other attributes are looked up on it too. Each line is
    flushed as soon as its call ends; closing the recorder closes the wrapped backend.

    Example::

        async with RecordingBackend(OpenAIBackend(url), "run.replay.jsonl") as backend:
            await Coordinator([8], backend).solve(problem)
        # later, offline:
        await Coordinator([8], ReplayBackend("run.replay.jsonl")).solve(problem)

    Args:
        inner: The backend to record.
        path: The JSONL file; appended to (created with its folder when missing).
    """

    def __init__(self, inner: Backend, path: str | os.PathLike[str]) -> None:
        super().__init__(max_concurrency=inner.max_concurrency)
        self.inner = inner
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _cut_torn_line(self.path)
        self._file: IO[str] | None = self.path.open("a", encoding="utf-8")
        self._issued: dict[str, int] = {}
        self.recorded = 0  # calls written by this recorder
        self._write({"format": FORMAT, "version": VERSION, "backend": _safe_name(inner.name)})

    @property
    def name(self) -> str:
        """The wrapped backend's name."""
        return self.inner.name

    @name.setter
    def name(self, value: str) -> None:
        self.inner.name = value

    @property
    def limiter(self) -> EndpointLimiter:
        """The wrapped backend's limiter: recording adds no concurrency."""
        return self.inner.limiter

    def __getattr__(self, attribute: str) -> Any:
        # Abilities of the wrapped backend (resolve_model, tokenizer, ...) stay reachable.
        if attribute == "inner":
            raise AttributeError(attribute)
        return getattr(self.inner, attribute)

    def __repr__(self) -> str:
        return f"RecordingBackend({self.inner!r}, path={str(self.path)!r})"

    def _write(self, entry: Mapping[str, Any]) -> None:
        if self._file is None:
            raise UsageError(f"the recorder of {self.path} is closed")
        self._file.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self._file.flush()

    async def generate(
        self, request: GenerationRequest, *, on_delta: DeltaCallback | None = None
    ) -> list[Completion]:
        """Call the wrapped backend and record the request with its completions or error."""
        if self._file is None:
            raise UsageError(f"the recorder of {self.path} is closed")
        record = canonical_request(request)
        key = _key(record)
        seq = self._issued.get(key, 0)
        self._issued[key] = seq + 1
        started = time.perf_counter()
        entry: dict[str, Any] = {"key": key, "seq": seq, "request": record}
        try:
            completions = await self.inner.generate(request, on_delta=on_delta)
        except PacoreError as error:
            entry["error"] = _error_json(error)
            self._finish(entry, started)
            raise
        entry["completions"] = [_completion_json(c) for c in completions]
        self._finish(entry, started)
        return completions

    def _finish(self, entry: dict[str, Any], started: float) -> None:
        entry["backend"] = _safe_name(self.inner.name)
        entry["elapsed_s"] = round(time.perf_counter() - started, 6)
        self._write(entry)
        self.recorded += 1

    async def aclose(self) -> None:
        """Close the file and the wrapped backend."""
        if self._file is not None:
            file, self._file = self._file, None
            file.close()
        await self.inner.aclose()


class ReplayBackend(Backend):
    """Serves a file written by `RecordingBackend`, offline.

    Args:
        path: The JSONL file.
        name: Label for traces (default: the recorded backend's name).
        max_concurrency: Requests in flight at once.

    Raises:
        UsageError: The file is missing or a line (other than a torn last one) is not a record.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        name: str | None = None,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    ) -> None:
        super().__init__(max_concurrency=max_concurrency)
        self.path = Path(path)
        if not self.path.is_file():
            raise UsageError(f"no replay file at {self.path}: record one first with RecordingBackend")
        self._queues: dict[str, deque[dict[str, Any]]] = {}
        self._served: dict[str, int] = {}
        self.recorded = 0  # calls the file holds
        recorded_name = self._load()
        self.name = name or recorded_name or "replay"

    def _load(self) -> str | None:
        lines = self.path.read_text(encoding="utf-8").splitlines()
        entries: list[tuple[int, int, int, dict[str, Any]]] = []
        session, recorded_name = 0, None
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                if number == len(lines):  # a torn last line: the recording stopped mid-write
                    break
                raise UsageError(f"{self.path}:{number}: not a replay record ({exc})") from exc
            if not isinstance(item, dict):
                raise UsageError(f"{self.path}:{number}: not a replay record")
            if item.get("format") == FORMAT:
                session += 1
                continue
            if "request" not in item or ("completions" not in item and "error" not in item):
                raise UsageError(f"{self.path}:{number}: a replay record needs a request and its response")
            recorded_name = item.get("backend") or recorded_name
            entries.append((session, int(item.get("seq", 0)), number, item))
        for _, _, _, item in sorted(entries, key=lambda e: e[:3]):
            self._queues.setdefault(_key(item["request"]), deque()).append(item)
        self.recorded = len(entries)
        return recorded_name

    @property
    def remaining(self) -> int:
        """Recorded calls not served yet."""
        return sum(len(queue) for queue in self._queues.values())

    def __repr__(self) -> str:
        return f"ReplayBackend(path={str(self.path)!r}, recorded={self.recorded}, remaining={self.remaining})"

    async def generate(
        self, request: GenerationRequest, *, on_delta: DeltaCallback | None = None
    ) -> list[Completion]:
        """Return the recorded completions of this request (or raise its recorded error).

        Raises:
            ReplayMissError: The file holds no (more) responses to this request.
        """
        record = canonical_request(request)
        key = _key(record)
        queue = self._queues.get(key)
        if not queue:
            served = self._served.get(key, 0)
            what = (
                f"all {served} recorded responses to request {key[:12]} were already served"
                if served
                else f"no recorded response to request {key[:12]}"
            )
            raise ReplayMissError(
                f"{what} (last user message: {_preview(record)!r}) in {self.path}, which holds "
                f"{self.recorded} recorded requests ({len(self._queues)} distinct): record this run first "
                "with RecordingBackend"
            )
        entry = queue.popleft()
        self._served[key] = self._served.get(key, 0) + 1
        await anyio.lowlevel.checkpoint()
        if "error" in entry:
            raise _error_from(entry["error"])
        completions = [_completion_from(c) for c in entry["completions"]]
        if on_delta is not None:
            for index, completion in enumerate(completions):
                if completion.reasoning:
                    await on_delta(index, "reasoning", completion.reasoning)
                if completion.content:
                    await on_delta(index, "content", completion.content)
        return completions
