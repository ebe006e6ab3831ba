"""ChatSpotRuntime: encode each frame once, answer every region prompt of it in one batch."""
from __future__ import annotations

import functools

import contextlib
import dataclasses
import gc
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from chatspot_ros.referring.conversation import ConversationTemplate, get_conversation
from chatspot_ros.referring.geometry import ImageGeometry
from chatspot_ros.runtime.config import (
    BatchTiming,
    FrameFeatures,
    Generation,
    GenerationConfig,
    GenerationResult,
    RuntimeConfig,
)
from chatspot_ros.runtime.errors import ModelError, ModelOutOfMemory, as_model_error
from chatspot_ros.runtime.generation import LanguageModel, PrefixKV, generate_batch, prefill_prefix
from chatspot_ros.runtime.static_decoder import StaticDecoder, unsupported
from chatspot_ros.runtime.loading import TORCH_DTYPES, CheckpointInfo, inspect_checkpoint, load_model
from chatspot_ros.runtime.vision import ImagePreprocessor, VisionBackend, VisionEncoder

from chatspot_ros.tokens import IMAGE_TOKEN

LOGGER = logging.getLogger("chatspot_ros.runtime")
MAX_PREFIXES_PER_FRAME = 4


class _CallbackFailed(Exception):
    """Carries an exception raised by a caller's callback through the model-error typing."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def _callers(callback: Callable[..., Any], *args: Any) -> Any:
    try:
        return callback(*args)
    except Exception as exc:  # noqa: BLE001 - re-raised as itself by _model_errors
        raise _CallbackFailed(exc) from exc


class ChatSpotRuntime:
    """The model boundary: ``encode(frame)`` once, then ``generate(features, prompts)`` for any regions.

    Prompts are full conversation strings holding one ``<image>`` (e.g. from ConversationTemplate).
    Thread-safe: calls are serialized with a lock. When the model itself fails, ``encode`` and
    ``generate`` raise :class:`~chatspot_ros.runtime.errors.ModelError`
    (:class:`~chatspot_ros.runtime.errors.ModelOutOfMemory` when the device ran out of memory; the
    caches are dropped first); bad arguments stay ``ValueError`` / ``TypeError``.
    """

    def __init__(
        self,
        config: RuntimeConfig,
        info: CheckpointInfo,
        model: Any,
        tokenizer: Any,
        preprocess: ImagePreprocessor,
        backend: VisionBackend,
    ) -> None:
        self.config = config
        self.info = info
        self.model = model
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.backend = backend
        self.family: str = info.family
        self.default_dialect: str = info.default_dialect
        self.conversation_name: str = info.conversation
        self.model_name: str = str(info.model_config.get("_name_or_path") or info.path.name)
        self.device = torch.device(config.device)
        self.dtype = TORCH_DTYPES[config.dtype]
        self.image_token_id = int(model.config.image_token_id)
        generation_config = model.generation_config
        eos = generation_config.eos_token_id if generation_config.eos_token_id is not None else tokenizer.eos_token_id
        eos_ids = frozenset(eos if isinstance(eos, (list, tuple)) else [eos])
        pad = generation_config.pad_token_id
        if pad is None:
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos_ids)
        self.lm = LanguageModel(
            embed=model.model.language_model.get_input_embeddings(),
            decoder=model.model.language_model,
            lm_head=model.lm_head,
            text_config=model.config.text_config,
            eos_token_ids=eos_ids,
            pad_token_id=int(pad),
            image_token_id=self.image_token_id,
        )
        self.decoder: StaticDecoder | None = None
        use_static = config.decoder == "static" or (config.decoder == "auto" and self.device.type == "cuda")
        if use_static:
            reason = unsupported(self.lm)
            if reason is None:
                self.decoder = StaticDecoder(self.lm, self.device, self.dtype, compile=config.compile,
                                             sync_every=config.sync_every)
            else:
                LOGGER.warning("the static decoder does not support %s; using the dynamic loop", reason)
        self.geometry: ImageGeometry = info.geometry  # how the model sees a frame (from the checkpoint)
        self.conversation: ConversationTemplate = get_conversation(info.conversation)
        self._features: OrderedDict[Hashable, FrameFeatures] = OrderedDict()
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, config: RuntimeConfig) -> ChatSpotRuntime:
        """Load a local checkpoint folder and the vision backend the config asks for."""
        from chatspot_ros.runtime.backends import check_engine_dir, create_vision_backend

        info = inspect_checkpoint(config)
        if config.vision_backend != "torch":
            check_engine_dir(config.engine_dir, info.path)  # before minutes of loading, not after
        start = time.perf_counter()
        model, tokenizer, image_processor = load_model(info, config)
        preprocess = ImagePreprocessor(image_processor, info.pad_to_square, settings=info.processor_config)
        backend = create_vision_backend(
            config.vision_backend,
            encoder=VisionEncoder.from_llava(model),
            preprocess=preprocess,
            device=torch.device(config.device),
            dtype=TORCH_DTYPES[config.dtype],
            engine_dir=config.engine_dir,
            model_path=info.path,
        )
        LOGGER.info(
            "loaded %s (family %s, projector %s) on %s/%s with vision backend %s in %.1f s",
            info.path, info.family, info.projector_type, config.device, config.dtype, backend.name,
            time.perf_counter() - start,
        )
        runtime = cls(config, info, model, tokenizer, preprocess, backend)
        runtime.warm_up()
        return runtime

    def warm_up(self) -> float:
        """Compile the static decode step for one region of a typical prompt now, at load (the node's
        configure), so the first frame does not pay it; logged with the compile cache's state.
        Nothing to do when the step is not compiled (the CPU default). Returns seconds."""
        if self.decoder is None:
            return 0.0
        prompt = self.conversation.render("What is in this region? [0.100, 0.200, 0.300, 0.400]")
        ids = self.tokenize_prompt(prompt, self.num_image_tokens)
        prefix = len(ids) - ids[::-1].index(self.image_token_id)
        with self._model_errors():
            return self.decoder.warm_up(prefix, len(ids) - prefix + self.config.warmup_new_tokens)

    @property
    def backend_name(self) -> str:
        return self.backend.name

    @property
    def prompt_form(self) -> str:
        """``generate`` takes full conversation prompts (see chatspot_ros.pipeline.Runtime)."""
        return "conversation"

    def status(self) -> dict[str, Any]:
        """Live figures for diagnostics beyond the model info: none for the local backend."""
        return {}

    @property
    def num_image_tokens(self) -> int:
        vision = self.model.config.vision_config
        n = (vision.image_size // vision.patch_size) ** 2
        return n if self.model.config.vision_feature_select_strategy == "default" else n + 1

    # ------------------------------------------------------------------ vision
    def encode(self, frame: np.ndarray, key: Hashable | None = None) -> FrameFeatures:
        """Image features of one (H, W, 3) uint8 RGB frame; cached (LRU) under ``key`` when given.

        ``cache_hit`` on the result says whether this call found the frame in the cache (decided
        under the lock, so it cannot race another caller); a hit shares the cached features and
        prefix KV, ``vision_ms`` still says what the frame cost when it was encoded.
        """
        with self._lock:
            if key is not None and key in self._features:
                self._features.move_to_end(key)
                return dataclasses.replace(self._features[key], cache_hit=True)
            start = time.perf_counter()
            with self._model_errors():
                features = self.backend.encode([frame])  # (1, N, D)
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
            result = FrameFeatures(key=key, features=features, vision_ms=(time.perf_counter() - start) * 1e3)
            if key is not None:
                self._features[key] = result
                while len(self._features) > self.config.feature_cache_size:
                    self._features.popitem(last=False)
            return result

    @contextlib.contextmanager
    def _model_errors(self) -> Iterator[None]:
        """Failures of the model as typed errors; after running out of memory, drop the caches."""
        try:
            yield
        except _CallbackFailed as failed:  # the caller's own callback raised: its error, untouched
            raise failed.error from None
        except (ValueError, TypeError, ModelError):
            raise
        except Exception as exc:  # noqa: BLE001 - typed here, once, for every caller
            error = as_model_error(exc)
            if isinstance(error, ModelOutOfMemory):
                self._free_memory()
            raise error from exc

    def _free_memory(self) -> None:
        self._features.clear()
        gc.collect()
        if self.device.type == "cuda" and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def cached_keys(self) -> list[Hashable]:
        with self._lock:
            return list(self._features)

    # ------------------------------------------------------------------ text
    def tokenize_prompt(self, prompt: str, num_image_tokens: int) -> list[int]:
        """Token ids exactly as LlavaProcessor makes them: '<image>' expanded to one token per feature."""
        count = prompt.count(IMAGE_TOKEN)
        if count != 1:
            raise ValueError(f"a prompt must hold exactly one '{IMAGE_TOKEN}', this one holds {count}: {prompt[:80]!r}")
        text = prompt.replace(IMAGE_TOKEN, IMAGE_TOKEN * num_image_tokens)
        return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def decode_text(self, ids: list[int]) -> str:
        """Answer text without control tokens, but with ``<box>``/``</box>``: a region in an answer
        (REC, grounded captions) is only parsable with its markers."""
        drop = self._control_token_ids
        return self.tokenizer.decode([i for i in ids if i not in drop], skip_special_tokens=False)

    @functools.cached_property
    def _control_token_ids(self) -> frozenset[int]:
        from chatspot_ros.runtime.loading import BOX_TOKENS

        keep = {self.tokenizer.convert_tokens_to_ids(t) for t in BOX_TOKENS if t in self.tokenizer.get_vocab()}
        return frozenset(set(self.tokenizer.all_special_ids) - keep)

    def _prefix_kv(self, features: FrameFeatures, prefix: tuple[int, ...]) -> tuple[PrefixKV, float]:
        cached = features.prefix_kv.get(prefix)
        if cached is not None:
            return cached, 0.0
        start = time.perf_counter()
        ids = torch.tensor([prefix], dtype=torch.long, device=self.device)  # (1, P)
        kv = prefill_prefix(self.lm, ids, features.features)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        features.prefix_kv[prefix] = kv
        while len(features.prefix_kv) > MAX_PREFIXES_PER_FRAME:
            features.prefix_kv.pop(next(iter(features.prefix_kv)))
        return kv, (time.perf_counter() - start) * 1e3

    def generate(
        self,
        features: FrameFeatures,
        prompts: Sequence[str],
        gen: GenerationConfig,
        on_token: Callable[[int, str], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[Generation]:
        """One Generation per prompt, in order. All prompts sharing a prefix decode as one batch."""
        return list(self.generate_timed(features, prompts, gen, on_token, should_stop).generations)

    def generate_timed(
        self,
        features: FrameFeatures,
        prompts: Sequence[str],
        gen: GenerationConfig,
        on_token: Callable[[int, str], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> GenerationResult:
        """As :meth:`generate`, with each decode batch's timings reported once (``batches``)."""
        if isinstance(prompts, str):
            raise TypeError("prompts must be a sequence of strings, not one string")
        with self._lock:
            token_lists, groups = self._group_by_prefix(features, prompts)
            results: list[Generation | None] = [None] * len(prompts)
            batches: list[BatchTiming] = []
            for batch, (prefix, indices) in enumerate(groups.items()):
                suffixes = [token_lists[i][len(prefix):] for i in indices]

                def row_callback(row: int, text: str, _indices: list[int] = indices) -> None:
                    if on_token is not None:
                        _callers(on_token, _indices[row], text)

                with self._model_errors():
                    kv, prefix_ms = self._prefix_kv(features, prefix)
                    outputs = generate_batch(
                        self.lm, self.decode_text, kv, len(prefix), suffixes, gen,
                        prefix_ms=prefix_ms,
                        on_token=row_callback if on_token is not None else None,
                        should_stop=(lambda: bool(_callers(should_stop))) if should_stop is not None else None,
                        decoder=self.decoder,
                    )
                for i, out in zip(indices, outputs):
                    results[i] = dataclasses.replace(out, batch=batch)
                first = outputs[0] if outputs else None
                batches.append(BatchTiming(
                    batch=batch, prompts=tuple(indices),
                    prefill_ms=first.prefill_ms if first else 0.0,
                    decode_ms=first.decode_ms if first else 0.0,
                    tokens=sum(o.tokens for o in outputs),
                ))
            missing = [i for i, r in enumerate(results) if r is None]
            if missing:
                raise RuntimeError(f"internal error: no generation for prompt(s) {missing}")
            return GenerationResult(generations=tuple(results), batches=tuple(batches))  # type: ignore[arg-type]

    def _group_by_prefix(self, features: FrameFeatures, prompts: Sequence[str]
                         ) -> tuple[list[list[int]], "OrderedDict[tuple[int, ...], list[int]]"]:
        """Token ids per prompt, and the prompts grouped by their shared prefix (up to the last
        image token), in first-seen order: each group is prefilled once and decoded as one batch."""
        n_image = features.features.shape[1]
        token_lists = [self.tokenize_prompt(p, n_image) for p in prompts]
        groups: OrderedDict[tuple[int, ...], list[int]] = OrderedDict()
        for index, ids in enumerate(token_lists):
            last_image = len(ids) - 1 - ids[::-1].index(self.image_token_id)
            groups.setdefault(tuple(ids[: last_image + 1]), []).append(index)
        return token_lists, groups

    def teacher_forced_logits(self, features: FrameFeatures, prompts: Sequence[str],
                              references: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """Per prompt, the runtime's logits (len(reference), V) float32 with the reference's tokens fed in,
        through the same prefix cache, batch and decode loop as :meth:`generate` (fidelity.py)."""
        from chatspot_ros.runtime.fidelity import teacher_forced_logits

        with self._lock:
            token_lists, groups = self._group_by_prefix(features, prompts)
            out: list[torch.Tensor | None] = [None] * len(prompts)
            for prefix, indices in groups.items():
                with self._model_errors():
                    kv, _ = self._prefix_kv(features, prefix)
                    logits = teacher_forced_logits(
                        self.lm, kv, len(prefix), [token_lists[i][len(prefix):] for i in indices],
                        [references[i] for i in indices], decoder=self.decoder)
                for i, row in zip(indices, logits):
                    out[i] = row
            return out  # type: ignore[return-value]

    # ------------------------------------------------------------------ lifecycle
    def clear_cache(self) -> None:
        with self._lock:
            self._features.clear()

    def close(self) -> None:
        """Free the model, the backend and the caches (and GPU memory)."""
        with self._lock:
            self._features.clear()
            if self.backend is not None:
                self.backend.close()
            self.backend = None  # type: ignore[assignment]
            self.model = None
            self.lm = None  # type: ignore[assignment]
            self.decoder = None
            gc.collect()
            if self.device.type == "cuda" and torch.cuda.is_available():
                torch.cuda.empty_cache()
