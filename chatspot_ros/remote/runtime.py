"""RemoteRuntime: the runtime boundary (encode once, generate for K prompts) over a serving engine.

It implements :class:`chatspot_ros.pipeline.Runtime` like the local
:class:`~chatspot_ros.runtime.core.ChatSpotRuntime`, so ``ChatSpot.answer`` returns the same
RegionAnswers and the node, ``chatspot-ask`` and ``chatspot-eval`` run unchanged on either. Its
prompts are the instructions themselves (``prompt_form``): the server applies the chat template.

* ``encode(frame, key)`` pads the frame when Φ assumed a padded square (vLLM ignores
  ``image_aspect_ratio: pad``) and encodes it once as a PNG / JPEG data URL (LRU by key).
* ``generate_timed`` sends each prompt's instruction as its own chat completion with that image,
  all prompts of a frame at once (at most ``max_concurrency`` in flight), so the server's
  prefix cache and multimodal cache serve them from one encode.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from chatspot_ros.referring.conversation import ConversationTemplate, get_conversation
from chatspot_ros.referring.geometry import ImageGeometry
from chatspot_ros.remote.checkpoint import ServedModelInfo, read_served_model
from chatspot_ros.remote.client import Completion, ServerHealth, VllmClient, generate_concurrently
from chatspot_ros.remote.config import ServerConfig
from chatspot_ros.remote.image import PreparedImage, prepare_image
from chatspot_ros.runtime.config import BatchTiming, FrameFeatures, Generation, GenerationConfig, GenerationResult

LOGGER = logging.getLogger("chatspot_ros.remote")


def _eos_ids(info: ServedModelInfo) -> frozenset[int]:
    """eos ids from generation_config.json / config.json of the local copy (vLLM reports eos as a token)."""
    found: set[int] = set()
    for name in ("generation_config.json", "config.json"):
        file = info.path / name
        if not file.is_file():
            continue
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            continue
        for section in (data, data.get("text_config") or {}):
            eos = section.get("eos_token_id") if isinstance(section, dict) else None
            for value in eos if isinstance(eos, list) else [eos]:
                if isinstance(value, int):
                    found.add(value)
    return frozenset(found)


class RemoteRuntime:
    """The served model behind the runtime interface. Thread-safe (the cache has a lock)."""

    backend_name = "vllm"
    family: str
    device = "cpu"  # where the caller's own work (e.g. the evaluation's matcher) runs

    def __init__(self, config: ServerConfig, info: ServedModelInfo, client: VllmClient,
                 health: ServerHealth | None = None) -> None:
        self.config = config
        self.info = info
        self.client = client
        self.health = health
        self.family = info.family
        self.default_dialect: str = info.default_dialect
        self.conversation_name: str = info.conversation
        self.conversation: ConversationTemplate = get_conversation(info.conversation)
        self.geometry: ImageGeometry = info.geometry
        self.model_name: str = config.served_name
        self.eos_token_ids = _eos_ids(info)
        self._images: OrderedDict[Hashable, FrameFeatures] = OrderedDict()
        self._lock = threading.Lock()
        self._callback_lock = threading.Lock()  # on_token is called from one thread at a time

    @classmethod
    def connect(cls, config: ServerConfig, *, check: bool = True) -> RemoteRuntime:
        """Read the served model's config files, then (``check``) GET /health and /v1/models, waiting
        up to ``config.startup_wait_s`` for a server that is still starting.

        ServerError when the server is down or does not serve ``config.served_name``;
        FileNotFoundError / ValueError for the local config copy."""
        info = read_served_model(config.model_config)
        client = VllmClient(config)
        try:
            health = client.wait_until_serving(config.served_name, config.startup_wait_s) if check else None
        except Exception:
            client.close()
            raise
        LOGGER.info("vllm backend: %s at %s (%s preprocessing%s, dialect %s, template %s)%s",
                    config.served_name, config.display_url, info.geometry.mode.value,
                    ", frames padded by the client" if info.pad_to_square else "", info.default_dialect,
                    info.conversation,
                    f"; health check {health.latency_ms:.0f} ms" if health is not None else "")
        return cls(config, info, client, health)

    # ------------------------------------------------------------------ vision
    def encode(self, frame: np.ndarray, key: Hashable | None = None) -> FrameFeatures:
        """The frame as the server must see it, encoded once (``features`` is a PreparedImage)."""
        with self._lock:
            if key is not None and key in self._images:
                self._images.move_to_end(key)
                return replace(self._images[key], cache_hit=True)
        start = time.perf_counter()
        image = prepare_image(frame, pad_to_square=self.info.pad_to_square, background=self.info.background,
                              image_format=self.config.image_format, jpeg_quality=self.config.jpeg_quality)
        result = FrameFeatures(key=key, features=image, vision_ms=(time.perf_counter() - start) * 1e3)
        if key is not None:
            with self._lock:
                self._images[key] = result
                while len(self._images) > self.config.feature_cache_size:
                    self._images.popitem(last=False)
        return result

    # ------------------------------------------------------------------ text
    @property
    def prompt_form(self) -> str:
        """The server applies the checkpoint's chat template itself: prompts are instructions."""
        return "instruction"

    def generate(self, features: FrameFeatures, prompts: Sequence[str], gen: GenerationConfig,
                 on_token: Callable[[int, str], None] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> list[Generation]:
        return list(self.generate_timed(features, prompts, gen, on_token, should_stop).generations)

    def generate_timed(self, features: FrameFeatures, prompts: Sequence[str], gen: GenerationConfig,
                       on_token: Callable[[int, str], None] | None = None,
                       should_stop: Callable[[], bool] | None = None) -> GenerationResult:
        """One Generation per prompt, in order; the prompts run concurrently as one "batch".

        ServerError (a ModelError) when a request fails: the first failure cancels the others."""
        if isinstance(prompts, str):
            raise TypeError("prompts must be a sequence of strings, not one string")
        image = features.features
        if not isinstance(image, PreparedImage):
            raise TypeError("features must come from RemoteRuntime.encode")
        instructions = list(prompts)  # prompt_form "instruction": the server renders the template
        start = time.perf_counter()

        def job(index: int, instruction: str) -> Callable[[Callable[[], bool]], Completion]:
            def run(stop: Callable[[], bool]) -> Completion:
                on_text = None
                if on_token is not None:
                    def on_text(text: str) -> None:
                        with self._callback_lock:
                            on_token(index, text)
                return self.client.complete(image.data_url, instruction, gen, on_text=on_text, should_stop=stop)
            return run

        completions = generate_concurrently([job(i, text) for i, text in enumerate(instructions)],
                                            self.config.max_concurrency, should_stop)
        wall_ms = (time.perf_counter() - start) * 1e3
        ttfts = [c.ttft_ms for c in completions if c.ttft_ms > 0]
        prefill_ms = min(ttfts) if ttfts else 0.0  # first token of the frame: the shared prefill
        decode_ms = max(wall_ms - prefill_ms, 0.0)
        generations = []
        for c in completions:
            ids = c.token_ids
            if c.stopped == "eos" and ids and ids[-1] in self.eos_token_ids:
                ids = ids[:-1]  # the local runtime reports generated ids without the eos
            generations.append(Generation(text=c.text, tokens=len(ids) if c.token_ids else c.tokens,
                                          prefill_ms=prefill_ms, decode_ms=decode_ms, stopped=c.stopped,
                                          token_ids=ids, batch=0))
        batches = (BatchTiming(batch=0, prompts=tuple(range(len(prompts))), prefill_ms=prefill_ms,
                               decode_ms=decode_ms, tokens=sum(g.tokens for g in generations)),) if prompts else ()
        return GenerationResult(generations=tuple(generations), batches=batches)

    def complete_one(self, features: FrameFeatures, instruction: str, gen: GenerationConfig) -> Completion:
        """One instruction's raw Completion (token ids, top log-probabilities): for parity checks and benches."""
        return self.client.complete(features.features.data_url, instruction, gen)

    # ------------------------------------------------------------------ status and lifecycle
    def check_health(self) -> ServerHealth:
        self.health = self.client.check(self.config.served_name)
        return self.health

    def status(self) -> dict[str, Any]:
        """For diagnostics: backend, server (no credentials), counters, last latency and error."""
        stats = self.client.stats
        return {
            "backend": self.backend_name, "server": self.config.display_url, "served_model": self.model_name,
            "requests": stats.requests, "ok": stats.ok, "retries": stats.retries,
            "failures": dict(stats.failures), "last_latency_ms": round(stats.last_latency_ms, 1),
            "last_error": stats.last_error, "api_key": "set" if self.config.has_api_key else "not set",
        }

    def cached_keys(self) -> list[Hashable]:
        with self._lock:
            return list(self._images)

    def clear_cache(self) -> None:
        with self._lock:
            self._images.clear()

    def close(self) -> None:
        self.clear_cache()
        self.client.close()
