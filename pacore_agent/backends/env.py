"""Build a backend from environment variables.

- ``PACORE_BASE_URL`` or ``OPENAI_BASE_URL``: the endpoint (default ``https://api.openai.com/v1`` when
  only a key is set).
- ``PACORE_API_KEY`` or ``OPENAI_API_KEY``: the key; required for hosted endpoints, optional for local
  servers (loopback, private networks, single-label hosts such as a container name).
- ``PACORE_MODEL``: the model; when unset, the endpoint's only model (``/v1/models``) is used.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from pacore_agent.backends.openai_compat import OpenAIBackend, is_local_url
from pacore_agent.exceptions import ConfigurationError

__all__ = ["OPENAI_BASE_URL", "backend_from_env", "is_local_url"]

OPENAI_BASE_URL = "https://api.openai.com/v1"

_NO_ENDPOINT = (
    "no endpoint configured: set PACORE_BASE_URL (e.g. http://127.0.0.1:30000/v1 for a local SGLang "
    "server) and optionally PACORE_MODEL, or set OPENAI_API_KEY (and PACORE_MODEL) for api.openai.com; "
    "or pass backend=... explicitly"
)


def backend_from_env(environ: Mapping[str, str] | None = None, **options: Any) -> OpenAIBackend:
    """An `OpenAIBackend` configured from the environment.

    Args:
        environ: Variables to read (default: ``os.environ``).
        **options: Passed to `OpenAIBackend` (``max_concurrency``, ``stream``, ...).

    Raises:
        ConfigurationError: Nothing is configured, or a hosted endpoint has no API key.
    """
    env = os.environ if environ is None else environ
    base_url = env.get("PACORE_BASE_URL") or env.get("OPENAI_BASE_URL")
    api_key = env.get("PACORE_API_KEY") or env.get("OPENAI_API_KEY")
    model = env.get("PACORE_MODEL") or None
    if not base_url and not api_key:
        raise ConfigurationError(_NO_ENDPOINT)
    if not base_url:
        base_url = OPENAI_BASE_URL
    if not api_key and not is_local_url(base_url):
        raise ConfigurationError(
            f"API key missing for the hosted endpoint {base_url}: set PACORE_API_KEY (or OPENAI_API_KEY)"
        )
    return OpenAIBackend(base_url, model, api_key=api_key, **options)
