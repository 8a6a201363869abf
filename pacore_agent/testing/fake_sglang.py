"""A fake SGLang server: SGLang's HTTP API with deterministic made-up tokens. A test double, not a model.

It answers the endpoints pacore uses the way SGLang documents them (``python/sglang/srt/entrypoints/
http_server.py`` and ``managers/io_struct.py`` upstream): ``/health``, ``/health_generate``,
``/model_info`` (and the older ``/get_model_info``), ``/v1/models``, ``/generate`` (token ids and ``output_token_logprobs`` as
``[logprob, token_id, text]``, ``meta_info`` with ``prompt_tokens``, ``completion_tokens``,
``finish_reason`` ``{"type": ...}``), a minimal ``/v1/chat/completions``, ``/flush_cache``,
``/update_weights_from_disk`` and ``/update_weights_from_tensor``; and it fails like SGLang (HTTP 400
with ``{"error": {"message": ...}}`` from ``/generate``, ``{"object": "error", ...}`` for malformed
requests, ``{"success": false, ...}`` from weight updates, 401 ``{"error": "Unauthorized"}`` without the
API key, and the same from the admin endpoints without the ``--admin-api-key`` when one is set).
``meta_info.weight_versions`` lists the weight versions of each sequence as spans; a sequence generated
across a weight update has two.

Tokens are drawn from a generator seeded by the server seed, the prompt and the sample index, so the
same request always gets the same answer.

Two ways to run it:

- in-process, as an async context manager (``async with FakeSGLangServer() as fake: fake.base_url``);
- as a process in place of ``sglang.launch_server``: ``python -m pacore_agent.testing.fake_sglang
  --model-path X --port P`` accepts SGLang's launch arguments and ignores those it has no use for.

Test controls live under ``/_fake/``: ``GET /_fake/state`` (recorded weight updates, flushes, request
counts) and ``POST /_fake/configure`` (make weight updates fail, make the cache busy, die after N more
``/generate`` requests). The command line adds process-level faults: ``--fail-startup CODE``,
``--startup-delay S``, ``--die-after-requests N``, ``--ignore-sigterm`` and ``--leak-child``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any, NoReturn

from aiohttp import web

from pacore_agent.serving.app import AppServer

__all__ = ["DIE_EXIT_CODE", "FakeSGLangServer", "main"]

logger = logging.getLogger("pacore_agent.testing.fake_sglang")

DIE_EXIT_CODE = 70
"""Exit status of a fake server process told to die mid-run."""

EOS_TOKEN_ID = 2
"""The fake vocabulary's end-of-sequence token; a sequence that stops ends with it."""

_FIRST_TOKEN_ID = 3
_ADMIN_PATHS = frozenset({"/update_weights_from_disk", "/update_weights_from_tensor", "/flush_cache"})
_LABEL = "fake SGLang server (a test double, not SGLang)"


class FakeSGLangServer(AppServer):
    """SGLang's HTTP API with deterministic fake generations, on a loopback port.

    Args:
        model_path: What ``/get_model_info`` reports (changed by ``/update_weights_from_disk``).
        served_model_name: The model id of ``/v1/models``; ``model_path`` when ``None``.
        host: Interface to listen on.
        port: Port; 0 picks a free one (see `base_url`).
        seed: Seed of the fake generations.
        vocab_size: Token ids are drawn from ``[3, vocab_size)``.
        context_length: Prompts (plus ``max_new_tokens``) longer than this are refused as SGLang does.
        api_key: Require ``Authorization: Bearer <api_key>`` (except on ``/health*`` and ``/_fake``).
        admin_api_key: As ``--admin-api-key``: the weight updates and ``/flush_cache`` require this key,
            and refuse ``api_key``.
        legacy_model_info: Serve only ``/get_model_info``, as SGLang did before ``/model_info``.
        reasoning_parser: As ``--reasoning-parser``: chat answers then carry ``reasoning_content``.
        startup_delay: Seconds during which the health endpoints answer 503, as while loading.
        die_after_requests: Serve this many ``/generate`` requests, then die on the next one.
        exit_on_die: Dying exits the process (command-line mode); in-process, the connection of the
            fatal request and of every later request is dropped instead.

    Generation honours ``max_new_tokens`` (default 128, as SGLang), ``temperature`` 0 (greedy: every
    sample the same), ``ignore_eos`` and ``stop_token_ids`` (a sampled stop token ends the sequence and
    is kept, with ``finish_reason`` ``{"type": "stop", "matched": id}``). In-process, the JSON body of
    every ``/generate`` request is kept in `generate_bodies`, and the path of every request in `paths`.
    """

    def __init__(
        self,
        model_path: str = "fake/model",
        *,
        served_model_name: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int = 0,
        vocab_size: int = 32000,
        context_length: int = 32768,
        api_key: str | None = None,
        admin_api_key: str | None = None,
        legacy_model_info: bool = False,
        reasoning_parser: str | None = None,
        startup_delay: float = 0.0,
        die_after_requests: int | None = None,
        exit_on_die: bool = False,
    ) -> None:
        if vocab_size <= _FIRST_TOKEN_ID:
            raise ValueError(f"vocab_size must exceed {_FIRST_TOKEN_ID}, got {vocab_size}")
        self.model_path = model_path
        self.served_model_name = served_model_name or model_path
        self.seed = seed
        self.vocab_size = vocab_size
        self.context_length = context_length
        self.api_key = api_key
        self.admin_api_key = admin_api_key
        self.legacy_model_info = legacy_model_info
        self.reasoning_parser = reasoning_parser
        self.startup_delay = startup_delay
        self.die_after_requests = die_after_requests
        self.exit_on_die = exit_on_die
        self.weight_version = "default"
        self.fail_weight_updates = False
        self.next_weight_version: str | None = None
        self.flush_busy = False
        self.weight_updates: list[dict[str, Any]] = []
        self.tensor_updates: list[dict[str, Any]] = []
        self.flush_count = 0
        self.generate_requests = 0
        self.generate_bodies: list[Any] = []
        self.paths: list[str] = []
        self.chat_requests = 0
        self.child_pids: list[int] = []
        self._dead = False
        self._ready_at = 0.0
        super().__init__(self._build_app(), host=host, port=port)

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://host:port`` of the running server."""
        return self.root_url

    async def start(self) -> None:
        """Listen on `host`:`port` (a free port when 0)."""
        self._ready_at = time.monotonic() + self.startup_delay
        if self.exit_on_die:
            self._runner_options["access_log"] = logger
        await super().start()

    def state(self) -> dict[str, Any]:
        """What the server recorded: weight updates, flushes, request counts, model path, ..."""
        return {
            "model_path": self.model_path,
            "weight_version": self.weight_version,
            "weight_updates": self.weight_updates,
            "tensor_updates": self.tensor_updates,
            "flush_count": self.flush_count,
            "generate_requests": self.generate_requests,
            "chat_requests": self.chat_requests,
            "fail_weight_updates": self.fail_weight_updates,
            "flush_busy": self.flush_busy,
            "die_after_requests": self.die_after_requests,
            "child_pids": self.child_pids,
            "pid": os.getpid(),
        }

    # -- the app --------------------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth_middleware])
        routes: list[tuple[str, str, Any]] = [
            ("GET", "/health", self._health),
            ("GET", "/health_generate", self._health),
            ("GET", "/get_model_info", self._model_info),
            ("GET", "/model_info", self._model_info),
            ("GET", "/v1/models", self._models),
            ("POST", "/generate", self._generate),
            ("PUT", "/generate", self._generate),
            ("POST", "/v1/chat/completions", self._chat),
            ("GET", "/flush_cache", self._flush_cache),
            ("POST", "/flush_cache", self._flush_cache),
            ("POST", "/update_weights_from_disk", self._update_from_disk),
            ("POST", "/update_weights_from_tensor", self._update_from_tensor),
            ("GET", "/_fake/state", self._fake_state),
            ("POST", "/_fake/configure", self._fake_configure),
        ]
        for method, path, handler in routes:
            if not (self.legacy_model_info and path == "/model_info"):
                app.router.add_route(method, path, handler)
        return app

    @web.middleware
    async def _auth_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self._dead:
            _drop_connection(request)
        path = request.path
        self.paths.append(path)
        exempt = path.startswith("/health") or path.startswith("/_fake")
        # The admin endpoints take only the admin key when there is one (the normal key is refused).
        key = self.admin_api_key if self.admin_api_key and path in _ADMIN_PATHS else self.api_key
        if key and not exempt and request.headers.get("Authorization") != f"Bearer {key}":
            return web.json_response({"error": "Unauthorized"}, status=401)
        response: web.StreamResponse = await handler(request)
        return response

    async def _health(self, request: web.Request) -> web.StreamResponse:
        if time.monotonic() < self._ready_at:
            return web.Response(status=503)
        return web.Response(status=200)

    async def _model_info(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {
                "model_path": self.model_path,
                "tokenizer_path": self.model_path,
                "is_generation": True,
                "preferred_sampling_params": None,
                "weight_version": self.weight_version,
                "fake": _LABEL,
            }
        )

    async def _models(self, request: web.Request) -> web.StreamResponse:
        card = {
            "id": self.served_model_name,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "sglang",
            "root": self.served_model_name,
            "max_model_len": self.context_length,
        }
        return web.json_response({"object": "list", "data": [card]})

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        self.generate_requests += 1
        if self.die_after_requests is not None and self.generate_requests > self.die_after_requests:
            self._die(request)
        body = await _json_body(request)
        self.generate_bodies.append(body)
        if not isinstance(body, dict):
            return _validation_error("the request body must be a JSON object (GenerateReqInput)")
        text, input_ids = body.get("text"), body.get("input_ids")
        if text is None and input_ids is None:
            return _generate_error("Either text, input_ids or input_embeds should be provided.")
        if input_ids is not None:
            if not isinstance(input_ids, list) or not input_ids:
                return _generate_error("input_ids cannot be empty.")
            single = not isinstance(input_ids[0], list)
            prompts = [input_ids] if single else input_ids
            if not all(_is_id_list(prompt) for prompt in prompts):
                return _validation_error("input_ids must be a list of ints or a list of lists of ints")
        else:
            single = isinstance(text, str)
            texts = [text] if single else text
            if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
                return _validation_error("text must be a string or a list of strings")
            prompts = [self._tokenize(t) for t in texts]
        sampling = body.get("sampling_params") or {}
        samplings = sampling if isinstance(sampling, list) else [sampling] * len(prompts)
        if len(samplings) != len(prompts) or not all(isinstance(s, dict) for s in samplings):
            return _generate_error("sampling_params must be an object or one object per prompt.")
        n = int(samplings[0].get("n", 1))
        if any(int(s.get("n", 1)) != n for s in samplings):
            return _generate_error(
                "The parallel_sample_num should be the same for all samples in sample params."
            )
        return_logprob = bool(body.get("return_logprob") or False)
        outputs: list[dict[str, Any]] = []
        # Copies of a prompt in one batch are independent samples, like the n of one prompt, which
        # SGLang expands prompt by prompt: [p0 s0, p0 s1, ..., p1 s0, ...].
        copies: dict[str, int] = {}
        for prompt, params in zip(prompts, samplings, strict=True):
            error = self._check_request(prompt, params)
            if error is not None:
                return _generate_error(error)
            key = ",".join(map(str, prompt))
            for _ in range(n):
                sample = copies.get(key, 0)
                copies[key] = sample + 1
                outputs.append(self._fake_sequence(prompt, params, sample, return_logprob))
        if self.next_weight_version is not None:
            self.weight_version, self.next_weight_version = self.next_weight_version, None
        if single and n == 1:
            return web.json_response(outputs[0])
        return web.json_response(outputs)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self.chat_requests += 1
        body = await _json_body(request)
        if not isinstance(body, dict):
            return _openai_error("the request body must be a JSON object", err_type="Bad Request")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return _openai_error("messages must be a non-empty list", err_type="Bad Request")
        last = messages[-1].get("content", "") if isinstance(messages[-1], dict) else ""
        prompt = self._tokenize(json.dumps(messages, sort_keys=True))
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        n = int(body.get("n") or 1)
        choices = []
        completion_tokens = 0
        for index in range(n):
            rng = random.Random(f"chat:{self.seed}:{json.dumps(messages, sort_keys=True)}:{index}")
            answer = rng.randrange(1000)
            reasoning = f"Fake reasoning about {str(last)[:40]!r}."
            conclusion = f"The answer is \\boxed{{{answer}}}."
            tokens = len(reasoning.split()) + len(conclusion.split())
            finish = "stop"
            if limit is not None and tokens > int(limit):
                tokens, finish = int(limit), "length"
            completion_tokens += tokens
            if self.reasoning_parser:
                message = {"role": "assistant", "content": conclusion, "reasoning_content": reasoning}
            else:
                message = {"role": "assistant", "content": f"<think>{reasoning}</think>\n{conclusion}"}
            choices.append({"index": index, "message": message, "finish_reason": finish})
        return web.json_response(
            {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": self.served_model_name,
                "choices": choices,
                "usage": {
                    "prompt_tokens": len(prompt),
                    "completion_tokens": completion_tokens,
                    "total_tokens": len(prompt) + completion_tokens,
                },
            }
        )

    async def _flush_cache(self, request: web.Request) -> web.StreamResponse:
        text = (
            "Cache flushed.\nPlease check backend logs for more details. (When there are running or "
            "waiting requests, the operation will not be performed.)\n"
        )
        if self.flush_busy:
            return web.Response(text=text, status=400)
        self.flush_count += 1
        return web.Response(text=text, status=200)

    async def _update_from_disk(self, request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("model_path"), str):
            return _validation_error("model_path: Field required (UpdateWeightFromDiskReqInput)")
        self.weight_updates.append(body)
        if self.fail_weight_updates:
            message = f"Failed to update weights: {body['model_path']} could not be loaded (fake failure)."
            return web.json_response(
                {"success": False, "message": message, "num_paused_requests": 0}, status=400
            )
        self.model_path = body["model_path"]
        return self._updated(body, num_paused_requests=0)

    async def _update_from_tensor(self, request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("serialized_named_tensors"), list):
            return _validation_error(
                "serialized_named_tensors: Field required (UpdateWeightsFromTensorReqInput)"
            )
        self.tensor_updates.append(body)
        if self.fail_weight_updates:
            return web.json_response(
                {"success": False, "message": "Failed to update weights (fake failure)."}, status=400
            )
        return self._updated(body)

    def _updated(self, body: dict[str, Any], **extra: Any) -> web.Response:
        message = "Succeeded to update model weights."
        if body.get("weight_version") is not None:
            self.weight_version = str(body["weight_version"])
            message += f" Weight version updated to {self.weight_version}."
        return web.json_response({"success": True, "message": message, **extra})

    async def _fake_state(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self.state())

    async def _fake_configure(self, request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        if not isinstance(body, dict):
            return _validation_error("the request body must be a JSON object")
        if "fail_weight_updates" in body:
            self.fail_weight_updates = bool(body["fail_weight_updates"])
        if "flush_busy" in body:
            self.flush_busy = bool(body["flush_busy"])
        if "next_weight_version" in body:
            # The next /generate is served across a weight update to this version, as when weights
            # are updated while requests run (SGLang pauses them and resumes with the new weights).
            self.next_weight_version = body["next_weight_version"]
        if "die_after_requests" in body:
            more = body["die_after_requests"]
            self.die_after_requests = None if more is None else self.generate_requests + int(more)
        return web.json_response(self.state())

    # -- fake generation ------------------------------------------------------------------------

    def _tokenize(self, text: str) -> list[int]:
        span = self.vocab_size - _FIRST_TOKEN_ID
        return [_FIRST_TOKEN_ID + ord(char) % span for char in text] or [_FIRST_TOKEN_ID]

    def _check_request(self, prompt: list[int], params: dict[str, Any]) -> str | None:
        """SGLang's checks (tokenizer manager and SamplingParams.verify), with its messages."""
        temperature = float(params.get("temperature", 1.0))
        top_p = float(params.get("top_p", 1.0))
        max_new_tokens = params.get("max_new_tokens", 128)
        if temperature < 0.0:
            return f"temperature must be non-negative, got {temperature}."
        if not 0.0 < top_p <= 1.0:
            return f"top_p must be in (0, 1], got {top_p}."
        if max_new_tokens is not None and int(max_new_tokens) < 0:
            return f"max_new_tokens must be at least 0, got {max_new_tokens}."
        if any(token >= self.vocab_size or token < 0 for token in prompt):
            return f"The input_ids {prompt} contains values greater than the vocab size ({self.vocab_size})."
        if len(prompt) >= self.context_length:
            return (
                f"The input ({len(prompt)} tokens) is longer than the model's context length "
                f"({self.context_length} tokens)."
            )
        if max_new_tokens is not None and len(prompt) + int(max_new_tokens) > self.context_length:
            total = len(prompt) + int(max_new_tokens)
            return (
                f"Requested token count exceeds the model's maximum context length of {self.context_length} "
                f"tokens. You requested a total of {total} tokens: {len(prompt)} tokens from the input "
                f"messages and {max_new_tokens} tokens for the completion. Please reduce the number of "
                "tokens in the input messages or the completion to fit within the limit."
            )
        return None

    def _fake_sequence(
        self, prompt: list[int], params: dict[str, Any], sample: int, return_logprob: bool
    ) -> dict[str, Any]:
        max_new_tokens = int(params.get("max_new_tokens", 128))
        greedy = float(params.get("temperature", 1.0)) == 0.0
        prompt_key = ",".join(map(str, prompt))
        rng = random.Random(
            f"{self.seed}:{prompt_key}:{0 if greedy else sample}:{params.get('sampling_seed')}"
        )
        length = rng.randint(1, max_new_tokens) if max_new_tokens > 0 else 0
        finish: dict[str, Any]
        if 0 < length < max_new_tokens and not params.get("ignore_eos"):
            ids = [rng.randrange(_FIRST_TOKEN_ID, self.vocab_size) for _ in range(length - 1)] + [
                EOS_TOKEN_ID
            ]
            finish = {"type": "stop", "matched": EOS_TOKEN_ID}
        else:
            ids = [rng.randrange(_FIRST_TOKEN_ID, self.vocab_size) for _ in range(max_new_tokens)]
            finish = {"type": "length", "length": max_new_tokens}
        stop_ids = set(params.get("stop_token_ids") or ()) if not params.get("ignore_eos") else set()
        end = next((i for i, token in enumerate(ids) if token in stop_ids), None)
        if end is not None:  # a stop token ends the sequence and is kept, like EOS
            finish = {"type": "stop", "matched": ids[end]}
            ids = ids[: end + 1]
        meta: dict[str, Any] = {
            "id": uuid.uuid4().hex,
            "finish_reason": finish,
            "prompt_tokens": len(prompt),
            "weight_version": self.next_weight_version or self.weight_version,
            "weight_versions": self._spans(len(ids)),
            "completion_tokens": len(ids),
            "cached_tokens": 0,
            "e2e_latency": 0.001,
        }
        if return_logprob:
            meta["input_token_logprobs"] = [[None, prompt[0], None]]
            meta["output_token_logprobs"] = [[round(-rng.expovariate(2.0), 6), token, None] for token in ids]
            meta["output_token_logprobs_length"] = len(ids)
        text = "".join(f" tok{token}" for token in ids if token != EOS_TOKEN_ID)
        return {"text": text, "output_ids": ids, "meta_info": meta}

    def _spans(self, length: int) -> list[dict[str, Any]]:
        if self.next_weight_version is None or length < 2:
            return [{"version": self.weight_version, "start": 0, "end": length}]
        half = length // 2
        return [
            {"version": self.weight_version, "start": 0, "end": half},
            {"version": self.next_weight_version, "start": half, "end": length},
        ]

    def _die(self, request: web.Request) -> NoReturn:
        logger.error("simulated crash after %d /generate requests (fake server)", self.generate_requests - 1)
        if self.exit_on_die:
            logging.shutdown()
            sys.stderr.flush()
            os._exit(DIE_EXIT_CODE)
        self._dead = True
        _drop_connection(request)


def _drop_connection(request: web.Request) -> NoReturn:
    if request.transport is not None:
        request.transport.abort()
    raise web.HTTPServiceUnavailable()  # never sent: the connection is already gone


def _is_id_list(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(t, int) and not isinstance(t, bool) for t in value)
    )


async def _json_body(request: web.Request) -> Any:
    try:
        return await request.json()
    except (ValueError, UnicodeDecodeError):
        return None


def _generate_error(message: str) -> web.Response:
    """``/generate``'s answer to a ValueError: ``{"error": {"message": ...}}`` with HTTP 400."""
    return web.json_response({"error": {"message": message}}, status=400)


def _validation_error(message: str) -> web.Response:
    """FastAPI request-validation errors, which SGLang turns into 400 with its ErrorResponse."""
    return _openai_error(message, err_type="Bad Request")


def _openai_error(message: str, *, err_type: str = "BadRequestError", status: int = 400) -> web.Response:
    body = {"object": "error", "message": message, "type": err_type, "param": None, "code": status}
    return web.json_response(body, status=status)


# --------------------------------------------------------------------------------------------------
# Command line: a stand-in for `python -m sglang.launch_server`
# --------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pacore_agent.testing.fake_sglang",
        description=f"Run a {_LABEL}. Accepts sglang.launch_server's arguments and ignores the rest.",
    )
    parser.add_argument("--model-path", "--model", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=30000)
    parser.add_argument("--served-model-name")
    parser.add_argument("--api-key")
    parser.add_argument("--admin-api-key")
    parser.add_argument("--reasoning-parser")
    parser.add_argument("--tp-size", "--tensor-parallel-size", "--tp", type=int, default=1)
    parser.add_argument("--context-length", type=int, default=32768)
    parser.add_argument("--random-seed", "--seed", type=int, default=0)
    fake = parser.add_argument_group("faults (fake server only)")
    fake.add_argument("--legacy-model-info", action="store_true", help="serve only /get_model_info")
    fake.add_argument("--startup-delay", type=float, default=0.0, help="answer 503 on /health* for S seconds")
    fake.add_argument("--fail-startup", type=int, metavar="CODE", help="print an error and exit with CODE")
    fake.add_argument("--die-after-requests", type=int, metavar="N", help="exit on the (N+1)th /generate")
    fake.add_argument("--ignore-sigterm", action="store_true", help="ignore SIGTERM (only SIGKILL stops it)")
    fake.add_argument("--leak-child", action="store_true", help="spawn a child that outlives a clean exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the fake server until SIGTERM or SIGINT.

    Args:
        argv: Command-line arguments (``sys.argv[1:]`` when ``None``).

    Returns:
        The exit status.
    """
    args, ignored = _parser().parse_known_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="[%(asctime)s fake-sglang] %(message)s",
    )
    logger.info("starting the %s for %s (pid %d)", _LABEL, args.model_path, os.getpid())
    # SGLang logs its whole server_args, keys included: clients quoting this log must mask them.
    logger.info(
        "server_args=ServerArgs(model_path=%r, host=%r, port=%d, api_key=%r, admin_api_key=%r)",
        args.model_path, args.host, args.port, args.api_key, args.admin_api_key,
    )  # fmt: skip
    if ignored:
        logger.info("ignoring arguments the fake has no use for: %s", " ".join(ignored))
    if args.fail_startup is not None:
        logger.error("RuntimeError: simulated startup failure (fake): not enough memory to load the weights")
        return int(args.fail_startup)
    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    server = FakeSGLangServer(
        args.model_path,
        served_model_name=args.served_model_name,
        host=args.host,
        port=args.port,
        seed=args.random_seed,
        context_length=args.context_length,
        api_key=args.api_key,
        admin_api_key=args.admin_api_key,
        legacy_model_info=args.legacy_model_info,
        reasoning_parser=args.reasoning_parser,
        startup_delay=args.startup_delay,
        die_after_requests=args.die_after_requests,
        exit_on_die=True,
    )
    if args.leak_child:
        # A worker left behind by a sloppy exit, as a crashed engine leaves its schedulers: only a
        # signal to the whole process group reaches it.
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
        server.child_pids.append(child.pid)
        logger.info("spawned child pid %d", child.pid)
    asyncio.run(_serve(server, handle_sigterm=not args.ignore_sigterm))
    logger.info("fake server stopped")
    return 0


async def _serve(server: FakeSGLangServer, *, handle_sigterm: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    if handle_sigterm:
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with server:
        logger.info("The fake server is fired up and ready to roll! Listening on %s", server.base_url)
        await stop.wait()
        logger.info("received a stop signal; shutting down")


if __name__ == "__main__":
    sys.exit(main())
