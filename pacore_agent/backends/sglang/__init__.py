"""SGLang: launch or attach to a server, speak its native API, and generate through it.

Layers, each usable alone:

- `SGLangServer` (`pacore_agent.backends.sglang.process`): the process. It launches
  ``python -m sglang.launch_server`` in its own process group with its output in a log file, waits until
  the server answers ``/health_generate``, notices when it dies, and on exit stops the whole group.
  Attach mode wraps a server that is already running.
- `SGLangNativeClient` (`pacore_agent.backends.sglang.native`): SGLang's own HTTP API: ``/generate``
  with token ids and logprobs, weight updates, ``/flush_cache``, model info, health.
- `SGLangRouter` (`pacore_agent.backends.sglang.router`): SGLang's router launched in front of running
  workers, with the same process handling as `SGLangServer`.
- `SGLangBackend` (`pacore_agent.backends.sglang.backend`): the `Backend`. ``generate`` goes through the
  OpenAI-compatible endpoint (``/v1/chat/completions``); the native client and the weight updates are
  there for training.

SGLang is an optional dependency that needs CUDA: it is never imported, only run as a command and
reached over HTTP, so this package works (and is tested against `pacore_agent.testing.fake_sglang`)
anywhere.
"""

from pacore_agent.backends.sglang.backend import SGLangBackend
from pacore_agent.backends.sglang.native import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_REQUEST_TIMEOUT,
    NativeCompletion,
    SGLangNativeClient,
    WeightUpdateResult,
)
from pacore_agent.backends.sglang.process import (
    DEFAULT_ATTACH_TIMEOUT,
    DEFAULT_HOST,
    DEFAULT_LOG_TAIL_LINES,
    DEFAULT_SHUTDOWN_TIMEOUT,
    DEFAULT_STARTUP_TIMEOUT,
    SGLangServer,
    SGLangServerError,
)
from pacore_agent.backends.sglang.router import ROUTER_POLICIES, SGLangRouter

__all__ = [
    "DEFAULT_ATTACH_TIMEOUT",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_HOST",
    "DEFAULT_LOG_TAIL_LINES",
    "DEFAULT_REQUEST_TIMEOUT",
    "DEFAULT_SHUTDOWN_TIMEOUT",
    "DEFAULT_STARTUP_TIMEOUT",
    "ROUTER_POLICIES",
    "NativeCompletion",
    "SGLangBackend",
    "SGLangNativeClient",
    "SGLangRouter",
    "SGLangServer",
    "SGLangServerError",
    "WeightUpdateResult",
]
