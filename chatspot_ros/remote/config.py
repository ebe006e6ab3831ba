"""ServerConfig: how to reach an OpenAI-compatible serving engine (vLLM). Pure Python, validates itself."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

BACKENDS: tuple[str, ...] = ("local", "vllm")
IMAGE_FORMATS: tuple[str, ...] = ("png", "jpeg")
# The API key is read from this environment variable (never a parameter, never logged).
DEFAULT_API_KEY_ENV = "CHATSPOT_VLLM_API_KEY"
# What the client sends when no key is set: vLLM started without --api-key accepts anything.
NO_API_KEY = "EMPTY"


def split_server_url(url: str) -> tuple[str, str]:
    """(root, OpenAI base URL) of ``url``: "http://h:8000" and "http://h:8000/v1" both give
    ("http://h:8000", "http://h:8000/v1"). ValueError for other schemes, a missing host,
    credentials in the URL (the key belongs in the environment) or a query / fragment."""
    if not isinstance(url, str) or not url.strip():
        raise ValueError("server url must be a non-empty http(s) URL, e.g. http://127.0.0.1:8000")
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"server url must start with http:// or https://, got {url!r}")
    if not parts.hostname:
        raise ValueError(f"server url has no host: {url!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            "server url must not hold credentials; put the API key in the environment variable "
            f"named by api_key_env (default {DEFAULT_API_KEY_ENV})"
        )
    if parts.query or parts.fragment:
        raise ValueError(f"server url must not have a query or fragment: {parts.scheme}://{parts.netloc}{parts.path}")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as err:
        raise ValueError(f"server url has a bad port: {err}") from None
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[: -len("/v1")]
    root = urlunsplit((parts.scheme, parts.netloc, path, "", ""))
    return root, root + "/v1"


@dataclass(frozen=True)
class ServerConfig:
    """One served model. ``model_config``: a local copy of the served checkpoint's config files
    (config.json, the image processor settings, tokenizer files; weights are not needed), read
    for Φ, the dialect and the conversation template. ``model``: the served model name
    (``--served-model-name``); "" = the folder name of ``model_config``."""

    url: str
    model_config: str
    model: str = ""
    timeout_s: float = 60.0  # a whole request (and any silence while streaming) must end within it
    connect_timeout_s: float = 5.0
    max_concurrency: int = 8  # requests in flight at once from this client
    image_format: str = "png"  # "png" (lossless: the server sees the local runtime's pixels) | "jpeg"
    jpeg_quality: int = 95
    retries: int = 2  # extra attempts, only for failures before the server took the request
    backoff_s: float = 0.25  # first retry after this, doubling
    api_key_env: str = DEFAULT_API_KEY_ENV
    feature_cache_size: int = 4  # frames whose encoded image is kept (keyed like the local runtime)
    top_logprobs: int = 0  # >0: keep the top-N log-probabilities of each generated token
    # >0: the health check at connect waits up to this long for a server that is not up yet (one started
    # beside the node loads for minutes); 0: one check, a server that is down fails at once
    startup_wait_s: float = 0.0

    def __post_init__(self) -> None:
        split_server_url(self.url)
        if not isinstance(self.model_config, str) or not self.model_config.strip():
            raise ValueError("model_config must be a local folder with the served checkpoint's config files")
        if not isinstance(self.model, str):
            raise ValueError(f"model must be a string (the served model name), got {self.model!r}")
        if isinstance(self.startup_wait_s, bool) or not isinstance(self.startup_wait_s, (int, float)) or not (
                math.isfinite(self.startup_wait_s) and self.startup_wait_s >= 0):
            raise ValueError(f"startup_wait_s must be a number of seconds >= 0, got {self.startup_wait_s!r}")
        for name in ("timeout_s", "connect_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        for name, low in (("max_concurrency", 1), ("retries", 0), ("feature_cache_size", 1), ("top_logprobs", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if self.top_logprobs > 20:
            raise ValueError(f"top_logprobs must be <= 20 (the OpenAI API limit), got {self.top_logprobs}")
        if self.image_format not in IMAGE_FORMATS:
            raise ValueError(f"image_format must be one of {', '.join(IMAGE_FORMATS)}, got {self.image_format!r}")
        if isinstance(self.jpeg_quality, bool) or not isinstance(self.jpeg_quality, int) or not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be an int in [1, 100], got {self.jpeg_quality!r}")
        if isinstance(self.backoff_s, bool) or not isinstance(self.backoff_s, (int, float)) or not (
                math.isfinite(self.backoff_s) and self.backoff_s >= 0):
            raise ValueError(f"backoff_s must be a number >= 0, got {self.backoff_s!r}")
        if not isinstance(self.api_key_env, str) or not self.api_key_env:
            raise ValueError("api_key_env must name an environment variable")

    # The evaluation report and the CLIs read ``runtime.config.model_path`` of either backend.
    @property
    def model_path(self) -> str:
        return self.model_config

    @property
    def root_url(self) -> str:
        return split_server_url(self.url)[0]

    @property
    def base_url(self) -> str:
        return split_server_url(self.url)[1]

    @property
    def display_url(self) -> str:
        """The URL for logs and diagnostics (it never holds credentials: those are refused)."""
        return self.root_url

    @property
    def served_name(self) -> str:
        return self.model or os.path.basename(os.path.normpath(os.path.expanduser(self.model_config)))

    def api_key(self) -> str:
        """The key from the environment (read at each client creation; never stored in the config)."""
        return os.environ.get(self.api_key_env, "") or NO_API_KEY

    @property
    def has_api_key(self) -> bool:
        return bool(os.environ.get(self.api_key_env, ""))
