"""Configuration and result types of the model runtime (see docs/design.md)."""
from __future__ import annotations

import math
import re
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

# The one definition of each (the node's parameter table, the CLIs and the loader import them).
DEVICE_PATTERN = re.compile(r"^(cpu|cuda(:\d+)?)$")
DTYPES: tuple[str, ...] = ("float32", "float16", "bfloat16")
VISION_BACKENDS: tuple[str, ...] = ("torch", "onnxruntime", "tensorrt", "auto")
STOP_REASONS: tuple[str, ...] = ("eos", "length", "stop", "cancelled")
DECODERS: tuple[str, ...] = ("auto", "static", "dynamic")  # auto: static on CUDA, dynamic on the CPU
COMPILE_MODES: tuple[str, ...] = ("auto", "off", "on")
QUANTIZATIONS: tuple[str, ...] = ("none", "int8", "int4")  # weight-only, the LLM's linear layers (torchao)


@dataclass(frozen=True)
class RuntimeConfig:
    """How to load a checkpoint. Validates itself; a bad value is a ValueError with the reason."""

    model_path: str
    device: str = "cpu"  # "cpu" | "cuda" | "cuda:N"
    dtype: str = "float32"  # "float32" | "float16" | "bfloat16"
    vision_backend: str = "torch"  # "torch" | "onnxruntime" | "tensorrt" | "auto"
    engine_dir: str = "engines"
    feature_cache_size: int = 4  # frames whose image features (and prefix KV) are kept
    trust_remote_code: bool = False
    safetensors_only: bool = True
    # the decode loop: "static" (fixed shapes, shared prefix read once; Llama family), "dynamic" (the
    # first loop: finished rows compacted, faster on the CPU for short answers), "auto" (static on CUDA)
    decoder: str = "auto"
    compile: str = "auto"  # torch.compile of the static decode step: "auto" (on CUDA), "off", "on"
    sync_every: int = 0  # decode steps between host reads of the tokens; 0: auto (8 on CUDA, 1 on the CPU)
    # the answer length the compiled decode step is warmed up for at load (one region): the caller's
    # max_new_tokens, so the first frame finds its bucket compiled (a different length may need another)
    warmup_new_tokens: int = 64
    quantization: str = "none"  # weight-only "int8" (any device) or "int4" (CUDA) of the LLM, torchao

    def __post_init__(self) -> None:
        if not isinstance(self.model_path, str) or not self.model_path.strip():
            raise ValueError("model_path must be a non-empty path to a local checkpoint folder")
        if not DEVICE_PATTERN.match(self.device):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.device == "cpu" and self.dtype == "float16":
            raise ValueError("dtype float16 is not supported on cpu; use float32 (or bfloat16)")
        if self.vision_backend not in VISION_BACKENDS:
            raise ValueError(
                f"vision_backend must be one of {', '.join(VISION_BACKENDS)}, got {self.vision_backend!r}"
            )
        if isinstance(self.feature_cache_size, bool) or not isinstance(self.feature_cache_size, int):
            raise ValueError(f"feature_cache_size must be an int, got {self.feature_cache_size!r}")
        if self.feature_cache_size < 1:
            raise ValueError(f"feature_cache_size must be >= 1, got {self.feature_cache_size}")
        if not isinstance(self.engine_dir, str) or not self.engine_dir:
            raise ValueError("engine_dir must be a non-empty path")
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got {self.decoder!r}")
        if isinstance(self.warmup_new_tokens, bool) or not isinstance(self.warmup_new_tokens, int) \
                or self.warmup_new_tokens < 1:
            raise ValueError(f"warmup_new_tokens must be an int >= 1, got {self.warmup_new_tokens!r}")
        if self.compile not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {', '.join(COMPILE_MODES)}, got {self.compile!r}")
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, got {self.quantization!r}")
        if isinstance(self.sync_every, bool) or not isinstance(self.sync_every, int) or self.sync_every < 0:
            raise ValueError(f"sync_every must be an int >= 0 (0: auto), got {self.sync_every!r}")


@dataclass(frozen=True)
class GenerationConfig:
    """Decoding settings. temperature 0 means greedy."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int):
            raise ValueError(f"max_new_tokens must be an int, got {self.max_new_tokens!r}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if not math.isfinite(self.top_p) or not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if isinstance(self.stop, str):
            raise ValueError("stop must be a tuple of strings, not a single string")
        if any(not isinstance(s, str) or s == "" for s in self.stop):
            raise ValueError(f"stop strings must be non-empty strings, got {self.stop!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ValueError(f"seed must be an int or None, got {self.seed!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class Generation:
    """One prompt's answer.

    The timings belong to the batch the prompt was decoded in (all prompts of a frame that share a
    prefix): every Generation of that batch carries the same ``prefill_ms``, ``decode_ms`` and
    ``batch``, so sum timings over distinct batches, not over a frame's answers.
    """

    text: str
    # generated tokens, eos excluded; when a stop string ended the answer, up to and including the
    # token that completed it (``text`` is cut before the stop string, so it may hold fewer)
    tokens: int
    prefill_ms: float  # prefix (when not cached) + this batch's suffix prefill
    decode_ms: float  # the batch's decode loop
    stopped: str  # "eos" | "length" | "stop" | "cancelled"
    token_ids: tuple[int, ...] = ()  # the generated ids (eos excluded)
    batch: int = 0  # index of the decode batch within one generate() call


@dataclass(frozen=True)
class BatchTiming:
    """One decode batch of a ``generate`` call (the prompts that share a prefix), reported once."""

    batch: int  # index within the call
    prompts: tuple[int, ...]  # indices of the prompts decoded in it
    prefill_ms: float  # prefix (when not cached) + the batch's suffix prefill
    decode_ms: float  # the batch's decode loop
    tokens: int  # tokens generated by all its prompts


@dataclass(frozen=True)
class GenerationResult:
    """What one ``generate_timed`` call produced: one Generation per prompt, and the batch timings."""

    generations: tuple[Generation, ...]
    batches: tuple[BatchTiming, ...]

    @property
    def prefill_ms(self) -> float:
        return sum(b.prefill_ms for b in self.batches)

    @property
    def decode_ms(self) -> float:
        return sum(b.decode_ms for b in self.batches)

    @property
    def tokens(self) -> int:
        return sum(b.tokens for b in self.batches)


@dataclass
class FrameFeatures:
    """Projected image features of one frame, plus the prefix KV caches computed from them."""

    key: Hashable | None
    features: Any  # torch.Tensor (1, N_img, D) on the runtime's device and dtype
    vision_ms: float  # what encoding this frame cost when it was encoded
    # prefix token ids -> per-layer (keys, values), each (1, H_kv, P, hd); filled by generate()
    prefix_kv: dict[tuple[int, ...], Any] = field(default_factory=dict, repr=False)
    cache_hit: bool = False  # this encode() call found the frame in the cache (no vision work done)
