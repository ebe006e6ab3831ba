"""The OpenAI-compatible client for one served model (``openai`` library; vLLM's extensions used).

Every failure is a :class:`ServerError` (a ``ModelError``, so the node fails the one request with
the reason and stays up) whose ``reason`` names the kind: ``unreachable``, ``timeout``, ``http``,
``unavailable`` (503), ``auth``, ``malformed``, ``lost`` (the stream broke), ``model``. Only the
failures where the server cannot have started on the request are retried, with exponential
backoff: connection refused / reset before a response, a connect timeout, and HTTP 503. A read
timeout, a broken stream, a 4xx/500 or a malformed answer fail at once (retrying those would
double the load on a struggling server or repeat the same bad answer).

The API key is read from the environment when the client is made and handed to the ``openai``
client only; it is never part of a message, a log record or a parameter.
"""
from __future__ import annotations

import importlib
import logging
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from chatspot_ros.remote.config import ServerConfig
from chatspot_ros.runtime.config import GenerationConfig
from chatspot_ros.runtime.errors import ModelError

LOGGER = logging.getLogger("chatspot_ros.remote")
_TOKEN_ID = re.compile(r"^token_id:(-?\d+)$")
_MAX_DETAIL = 300  # characters of a server's error text kept in a message
_NOT_UP_YET = frozenset({"unreachable", "timeout", "unavailable"})  # how a server that is still starting fails


class ServerError(ModelError):
    """A request to the serving engine failed; ``reason`` says how (see the module docstring)."""

    def __init__(self, message: str, *, reason: str, status: int | None = None, attempts: int = 1,
                 cause: BaseException | None = None) -> None:
        super().__init__(message, cause=cause)
        self.reason = reason
        self.status = status
        self.attempts = attempts


class _Skipped(Exception):
    """A queued request not sent because another request of its frame failed."""


class _Retryable(Exception):
    def __init__(self, error: ServerError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True)
class Completion:
    """One chat completion's answer."""

    text: str
    token_ids: tuple[int, ...]  # generated ids (vLLM's return_tokens_as_token_ids), () when not reported
    tokens: int
    stopped: str  # "eos" | "length" | "stop" | "cancelled"
    ttft_ms: float  # request sent -> first token
    total_ms: float
    attempts: int
    # per generated token: ((token id or text, logprob), ...) best first; () unless top_logprobs > 0
    top_logprobs: tuple[tuple[tuple[Any, float], ...], ...] = ()


@dataclass(frozen=True)
class ServerHealth:
    models: tuple[str, ...]
    latency_ms: float


@dataclass
class ClientStats:
    """Counters for diagnostics (thread-safe through the client's lock)."""

    requests: int = 0
    ok: int = 0
    retries: int = 0
    failures: Counter = field(default_factory=Counter)  # reason -> count
    last_latency_ms: float = 0.0
    last_error: str = ""


def _httpx() -> Any:
    """The HTTP library the installed ``openai`` uses (httpx, or httpx2 in openai 3)."""
    for name in ("httpx2", "httpx"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise ImportError("neither httpx nor httpx2 is installed (openai needs one)")


def _short(text: object) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= _MAX_DETAIL else s[:_MAX_DETAIL] + "..."


def _token_id(token: Any) -> int | None:
    match = _TOKEN_ID.match(str(token or ""))
    return int(match.group(1)) if match else None


class VllmClient:
    """Chat completions with one image for one served model, with timeouts and bounded retries."""

    def __init__(self, config: ServerConfig, *, sleep: Callable[[float], None] = time.sleep) -> None:
        import openai

        self.config = config
        self._openai = openai
        self._httpx = _httpx()
        self._sleep = sleep
        self._lock = threading.Lock()
        self.stats = ClientStats()
        timeout = openai.Timeout(config.timeout_s, connect=config.connect_timeout_s)
        self._client = openai.OpenAI(
            base_url=config.base_url, api_key=config.api_key(), timeout=timeout,
            max_retries=0,  # retries are ours: only for failures where the request cannot have run
            http_client=openai.DefaultHttpxClient(
                timeout=timeout,
                limits=self._httpx.Limits(max_connections=config.max_concurrency + 2,
                                          max_keepalive_connections=config.max_concurrency)),
        )

    def close(self) -> None:
        self._client.close()

    # ------------------------------------------------------------------ health and metrics
    def health(self) -> ServerHealth:
        """GET /health, then /v1/models; ServerError when either fails."""
        start = time.perf_counter()
        self._call(lambda: self._client.get(self.config.root_url + "/health", cast_to=str), "GET /health")
        page = self._call(lambda: self._client.models.list(), "GET /v1/models")
        try:
            models = tuple(str(m.id) for m in page.data)
        except (AttributeError, TypeError) as err:
            raise ServerError(f"{self._where()}: /v1/models answered something that is not a model list ({err})",
                              reason="malformed") from None
        return ServerHealth(models, (time.perf_counter() - start) * 1e3)

    def check(self, model: str) -> ServerHealth:
        """:meth:`health`, and the served model list must hold ``model``."""
        health = self.health()
        if model not in health.models:
            raise ServerError(
                f"{self._where()} serves {', '.join(map(repr, health.models)) or 'no model'}, not {model!r}; "
                "set server.model (--server-model) to the served name (vLLM --served-model-name)",
                reason="model")
        return health

    def wait_until_serving(self, model: str, wait_s: float, *, poll_s: float = 1.0,
                           log_every_s: float = 10.0) -> ServerHealth:
        """:meth:`check`, repeated while the server is not up yet (refused, timed out, 503: a server
        started beside the node loads for minutes) for up to ``wait_s``; a server that answers with
        the wrong model, or anything else, fails at once. ``wait_s`` 0: one check."""
        deadline = time.monotonic() + wait_s
        next_log = time.monotonic()
        while True:
            try:
                return self.check(model)
            except ServerError as err:
                left = deadline - time.monotonic()
                if err.reason not in _NOT_UP_YET or wait_s <= 0:
                    raise
                if left <= 0:
                    raise ServerError(f"{err} (waited {wait_s:.0f} s for it to start)", reason=err.reason,
                                      status=err.status, attempts=err.attempts) from None
                if time.monotonic() >= next_log:
                    LOGGER.info("waiting for %s to serve %r (%s); %.0f s left", self._where(), model, err.reason,
                                left)
                    next_log = time.monotonic() + log_every_s
                time.sleep(min(poll_s, max(0.0, left)))

    def metrics(self) -> dict[str, float]:
        """The server's Prometheus counters (/metrics), summed over labels: name -> value."""
        text = self._call(lambda: self._client.get(self.config.root_url + "/metrics", cast_to=str), "GET /metrics")
        values: dict[str, float] = {}
        for line in str(text).splitlines():
            if not line or line.startswith("#"):
                continue
            name_part, _, value = line.rpartition(" ")
            name = name_part.split("{", 1)[0].strip()
            try:
                values[name] = values.get(name, 0.0) + float(value)
            except ValueError:
                continue
        return values

    # ------------------------------------------------------------------ completions
    def complete(
        self,
        image_url: str,
        instruction: str,
        gen: GenerationConfig,
        on_text: Callable[[str], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Completion:
        """One streamed chat completion: the image, then the instruction, as one user turn.

        ``on_text(text_so_far)`` after each streamed piece; ``should_stop()`` is checked between
        pieces and closes the stream (``stopped="cancelled"``, the text so far kept).
        """
        config = self.config
        start = time.perf_counter()
        if should_stop is not None and should_stop():  # stopped before it was sent: nothing to ask
            return Completion(text="", token_ids=(), tokens=0, stopped="cancelled", ttft_ms=0.0, total_ms=0.0,
                              attempts=0)
        deadline = start + config.timeout_s
        with self._lock:
            self.stats.requests += 1
        attempt = 0
        while True:
            attempt += 1
            try:
                result = self._stream_once(image_url, instruction, gen, on_text, should_stop, start, deadline,
                                           attempt)
            except _Retryable as retry:
                error = retry.error
                delay = config.backoff_s * (2 ** (attempt - 1)) * random.uniform(0.75, 1.0)
                stopping = should_stop is not None and should_stop()
                if attempt > config.retries or stopping or time.perf_counter() + delay >= deadline:
                    error.attempts = attempt
                    if attempt > 1:
                        error.args = (f"{error} (after {attempt} attempts in {time.perf_counter() - start:.1f} s)",)
                    self._failed(error)
                    raise error from error.cause
                with self._lock:
                    self.stats.retries += 1
                LOGGER.info("%s; retry %d/%d in %.2f s", error, attempt, config.retries, delay)
                self._sleep(delay)
                continue
            except ServerError as error:
                error.attempts = attempt
                self._failed(error)
                raise
            with self._lock:
                self.stats.ok += 1
                self.stats.last_latency_ms = result.total_ms
            return result

    def _failed(self, error: ServerError) -> None:
        with self._lock:
            self.stats.failures[error.reason] += 1
            self.stats.last_error = str(error)

    def _where(self) -> str:
        return f"vLLM server {self.config.display_url}"

    def _request_args(self, image_url: str, instruction: str, gen: GenerationConfig) -> dict[str, Any]:
        config = self.config
        args: dict[str, Any] = dict(
            model=config.served_name,
            messages=[{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": image_url}},
                {"type": "text", "text": instruction},
            ]}],
            max_tokens=gen.max_new_tokens,
            temperature=gen.temperature,
            top_p=gen.top_p,
            stream=True,
            stream_options={"include_usage": True},
            logprobs=True,
            top_logprobs=config.top_logprobs,
            # vLLM: report each token as "token_id:<id>"; special tokens stay in the text, as the
            # local runtime keeps them: <box>/</box> mark regions in answers (eos is not emitted).
            extra_body={"return_tokens_as_token_ids": True, "skip_special_tokens": False,
                        "spaces_between_special_tokens": False},
        )
        if gen.stop:
            args["stop"] = list(gen.stop)
        if gen.seed is not None:
            args["seed"] = gen.seed
        return args

    def _classify(self, exc: BaseException, what: str, *, started: bool) -> ServerError:
        """A typed ServerError for an exception from the openai / HTTP layer; _Retryable when safe."""
        openai, httpx = self._openai, self._httpx
        where = self._where()
        if isinstance(exc, openai.APITimeoutError) or isinstance(exc, httpx.TimeoutException):
            cause = exc.__cause__ if isinstance(exc, openai.APITimeoutError) else exc
            if isinstance(cause, (httpx.ConnectTimeout, httpx.PoolTimeout)) and not started:
                raise _Retryable(ServerError(f"{where}: {what}: no connection within "
                                             f"{self.config.connect_timeout_s:g} s", reason="unreachable", cause=exc))
            return ServerError(f"{where}: {what}: no answer within {self.config.timeout_s:g} s", reason="timeout",
                               cause=exc)
        if isinstance(exc, openai.APIConnectionError) or isinstance(exc, httpx.TransportError):
            cause = exc.__cause__ or exc
            if started:
                return ServerError(f"{where}: {what}: the connection broke mid-answer ({_short(cause)})",
                                   reason="lost", cause=exc)
            raise _Retryable(ServerError(f"{where}: {what}: cannot connect ({_short(cause)})",
                                         reason="unreachable", cause=exc))
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            detail = _short(getattr(exc, "message", "") or exc)
            if status == 503 and not started:
                raise _Retryable(ServerError(f"{where}: {what}: unavailable (HTTP 503: {detail})",
                                             reason="unavailable", status=status, cause=exc))
            if status in (401, 403):
                return ServerError(f"{where}: {what}: not authorized (HTTP {status}); set the API key in the "
                                   f"environment variable {self.config.api_key_env}", reason="auth", status=status,
                                   cause=exc)
            return ServerError(f"{where}: {what}: HTTP {status}: {detail}", reason="http", status=status, cause=exc)
        if isinstance(exc, openai.APIError):  # an error event inside the stream, or an unparsable body
            return ServerError(f"{where}: {what}: the server reported an error: {_short(exc)}", reason="http",
                               cause=exc)
        if isinstance(exc, (ValueError, TypeError, AttributeError, KeyError, IndexError)):
            return ServerError(f"{where}: {what}: malformed answer ({type(exc).__name__}: {_short(exc)})",
                               reason="malformed", cause=exc)
        raise exc

    def _call(self, fn: Callable[[], Any], what: str) -> Any:
        """A plain request (health, metrics) with the same typing and retries as completions."""
        attempt = 0
        while True:
            attempt += 1
            try:
                try:
                    return fn()
                except Exception as exc:  # noqa: BLE001 - typed by _classify, or re-raised as itself
                    raise self._classify(exc, what, started=False) from exc
            except _Retryable as retry:
                if attempt > self.config.retries:
                    retry.error.attempts = attempt
                    raise retry.error from retry.error.cause
                self._sleep(self.config.backoff_s * (2 ** (attempt - 1)))

    def _stream_once(self, image_url: str, instruction: str, gen: GenerationConfig,
                     on_text: Callable[[str], None] | None, should_stop: Callable[[], bool] | None,
                     start: float, deadline: float, attempt: int) -> Completion:
        what = "chat completion"
        try:
            stream = self._client.chat.completions.create(**self._request_args(image_url, instruction, gen))
        except Exception as exc:  # noqa: BLE001 - typed by _classify, or re-raised as itself
            raise self._classify(exc, what, started=False) from exc
        text, token_ids, top = "", [], []
        finish: str | None = None
        stop_reason: Any = None
        usage_tokens: int | None = None
        ttft_ms = 0.0
        cancelled = False
        try:
            with stream:
                for chunk in stream:
                    if should_stop is not None and should_stop():
                        cancelled = True
                        break  # leaving the with-block closes the response: the server aborts it
                    if time.perf_counter() > deadline:
                        raise ServerError(f"{self._where()}: {what}: not finished within {self.config.timeout_s:g} s",
                                          reason="timeout")
                    usage = getattr(chunk, "usage", None)
                    if usage is not None and getattr(usage, "completion_tokens", None) is not None:
                        usage_tokens = int(usage.completion_tokens)
                    choices = chunk.choices
                    if not choices:
                        continue
                    choice = choices[0]
                    piece = choice.delta.content if choice.delta is not None else None
                    logprobs = getattr(choice, "logprobs", None)
                    for item in (getattr(logprobs, "content", None) or ()) if logprobs is not None else ():
                        token_ids.append(_token_id(item.token))
                        if self.config.top_logprobs:
                            top.append(tuple((_token_id(t.token) if _token_id(t.token) is not None else t.token,
                                              float(t.logprob)) for t in (item.top_logprobs or ())))
                    if piece:
                        if not text and not ttft_ms:
                            ttft_ms = (time.perf_counter() - start) * 1e3
                        if not isinstance(piece, str):
                            raise TypeError(f"delta content is {type(piece).__name__}, not text")
                        text += piece
                        if on_text is not None:
                            on_text(text)
                    if choice.finish_reason is not None:
                        finish = str(choice.finish_reason)
                        extra = getattr(choice, "model_extra", None) or {}
                        stop_reason = extra.get("stop_reason", getattr(choice, "stop_reason", None))
        except ServerError:
            raise
        except Exception as exc:  # noqa: BLE001 - typed by _classify, or re-raised as itself
            try:
                raise self._classify(exc, what, started=True) from exc
            except _Retryable as retry:  # a refused connection cannot happen mid-stream; be safe
                raise retry.error from exc
        if cancelled:
            stopped = "cancelled"
        elif finish is None:
            raise ServerError(f"{self._where()}: {what}: the answer ended without a finish_reason "
                              f"({len(text)} characters received)", reason="malformed")
        elif finish == "length":
            stopped = "length"
        elif finish == "stop":
            stopped = "stop" if isinstance(stop_reason, str) else "eos"
        else:
            raise ServerError(f"{self._where()}: {what}: unexpected finish_reason {finish!r}", reason="malformed")
        ids = tuple(i for i in token_ids if i is not None) if token_ids and None not in token_ids else ()
        tokens = len(ids) if ids else (usage_tokens if usage_tokens is not None else 0)
        return Completion(text=text, token_ids=ids, tokens=tokens, stopped=stopped, ttft_ms=ttft_ms,
                          total_ms=(time.perf_counter() - start) * 1e3, attempts=attempt,
                          top_logprobs=tuple(top))


def generate_concurrently(
    jobs: Sequence[Callable[[Callable[[], bool]], Completion]],
    max_concurrency: int,
    should_stop: Callable[[], bool] | None = None,
) -> list[Completion]:
    """Run ``jobs`` (each takes a stop check) on at most ``max_concurrency`` threads; results in order.

    The first failure stops the others (their stop check turns true) and is raised; a caller's
    callback error propagates as itself."""
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

    failed = threading.Event()

    def stop() -> bool:
        return failed.is_set() or (should_stop is not None and bool(should_stop()))

    def guarded(job: Callable[[Callable[[], bool]], Completion]) -> Completion:
        if failed.is_set():
            raise _Skipped()
        try:
            return job(stop)
        except BaseException:
            failed.set()  # here, on the worker thread: no queued job starts after it
            raise

    if not jobs:
        return []
    with ThreadPoolExecutor(max_workers=min(max_concurrency, len(jobs)), thread_name_prefix="chatspot-remote") as pool:
        futures = [pool.submit(guarded, job) for job in jobs]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        if any(f.exception() is not None for f in done):
            for f in futures:
                f.cancel()
        wait(futures)
    for index, future in enumerate(futures):
        if future.cancelled() or isinstance(future.exception(), _Skipped):
            continue
        exc = future.exception()
        if exc is not None:
            if isinstance(exc, ServerError) and len(jobs) > 1:
                wrapped = ServerError(f"prompt {index + 1} of {len(jobs)}: {exc}", reason=exc.reason,
                                      status=exc.status, attempts=exc.attempts, cause=exc.cause)
                raise wrapped from exc
            raise exc
    return [f.result() for f in futures]
