"""TensorRT engines for the vision tower + projector: keying, building, checking, running.

``tensorrt`` is imported lazily (inside functions), so this module imports and its keying logic is
tested on machines without TensorRT. The build and run code follows the TensorRT 10 Python API
(Builder, OnnxParser, IBuilderConfig.set_memory_pool_limit, optimization profiles, ITimingCache,
IProgressMonitor, IExecutionContext.set_tensor_address / execute_async_v3). It has NOT been run on
this project's machines (TensorRT cannot be installed there); see docs/runtime.md.

An engine is only valid for the exact model weights, ONNX graph, TensorRT version, GPU SM,
precision and shape profile it was built for. All of those are in its key; the key's digest is in
the file name, and the JSON sidecar next to the engine records every field plus the engine's
sha256. A sidecar that disagrees with the current key, or an engine whose bytes changed, is stale
and never deserialized.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from chatspot_ros.runtime.onnx_vision import INPUT_NAME, OUTPUT_NAME, OnnxArtifact, sha256_file
from chatspot_ros.runtime.vision import ImagePreprocessor, VisionBackend

LOGGER = logging.getLogger("chatspot_ros.runtime")
PRECISIONS: tuple[str, ...] = ("fp16", "fp32")


class StaleEngineError(ValueError):
    """An engine file exists but was built for something else (or changed on disk)."""


def import_tensorrt() -> Any:
    """The tensorrt module, or ImportError with what to do."""
    try:
        import tensorrt  # noqa: PLC0415  (lazy on purpose)
    except ImportError as err:
        raise ImportError(
            "TensorRT is not installed (import tensorrt failed: "
            f"{err}); install NVIDIA's tensorrt Python package on a CUDA machine, or use "
            "vision_backend 'onnxruntime' / 'torch'"
        ) from err
    return tensorrt


@functools.lru_cache(maxsize=None)
def trt_logger(trt: Any) -> Any:
    """One trt.Logger per process, shared by builder and runtime (TensorRT warns about a second one)."""
    return trt.Logger(trt.Logger.WARNING)


def gpu_sm(device: torch.device) -> str:
    """'sm_90' for an H100: the compute capability an engine is bound to."""
    if device.type != "cuda" or not torch.cuda.is_available():
        raise RuntimeError("TensorRT engines need a CUDA device")
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm_{major}{minor}"


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on."""

    model_hash: str
    onnx_hash: str
    tensorrt_version: str
    gpu_sm: str
    precision: str
    image_size: int
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 4

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError("batch profile needs 1 <= min_batch <= opt_batch <= max_batch")

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:24]

    @property
    def stem(self) -> str:
        return f"vision-{self.model_hash[:12]}-{self.digest}"

    def describe(self) -> str:
        return (f"model {self.model_hash[:12]}, onnx {self.onnx_hash[:12]}, TensorRT {self.tensorrt_version}, "
                f"{self.gpu_sm}, {self.precision}, {self.image_size} px, batch {self.min_batch}/{self.opt_batch}/"
                f"{self.max_batch}")


def engine_paths(engine_dir: str | Path, key: EngineKey) -> tuple[Path, Path]:
    """(engine file, JSON sidecar) for a key."""
    folder = Path(engine_dir)
    return folder / f"{key.stem}.engine", folder / f"{key.stem}.json"


def engines_for_model(engine_dir: str | Path, model_hash: str) -> list[Path]:
    """Engine files built from this model's vision weights (for any key), without reading the ONNX."""
    folder = Path(engine_dir)
    return sorted(folder.glob(f"vision-{model_hash[:12]}-*.engine")) if folder.is_dir() else []


def find_engine(engine_dir: str | Path, key: EngineKey) -> Path:
    """The engine built for exactly ``key``. FileNotFoundError if none; StaleEngineError if it does not match."""
    engine, sidecar = engine_paths(engine_dir, key)
    if not engine.is_file() or not sidecar.is_file():
        others = sorted(Path(engine_dir).glob(f"vision-{key.model_hash[:12]}-*.json")) if Path(engine_dir).is_dir() else []
        hint = ""
        if others:
            reasons = [f"{p.stem}: {stale_reason(p, key)}" for p in others]
            hint = "; engines for other keys are ignored (" + "; ".join(reasons) + ")"
        raise FileNotFoundError(
            f"no TensorRT engine for {key.describe()} under {engine_dir}{hint}; "
            "build one with: chatspot-build-engine --model <checkpoint folder>"
        )
    reason = stale_reason(sidecar, key)
    if reason:
        raise StaleEngineError(f"{engine} is stale ({reason}); rebuild it with chatspot-build-engine")
    recorded = json.loads(sidecar.read_text())
    if recorded.get("engine_sha256") != sha256_file(engine):
        raise StaleEngineError(f"{engine} changed on disk since it was built (sha256 differs); rebuild it")
    return engine


def stale_reason(sidecar: Path, key: EngineKey) -> str:
    """Why the engine described by ``sidecar`` does not fit ``key`` ('' when it fits)."""
    try:
        recorded = json.loads(sidecar.read_text())
    except (OSError, json.JSONDecodeError) as err:
        return f"unreadable sidecar ({err})"
    wanted = asdict(key)
    diffs = [f"{name} {recorded.get(name)!r} != {value!r}" for name, value in wanted.items()
             if recorded.get(name) != value]
    return ", ".join(diffs)


def write_engine(engine_dir: str | Path, key: EngineKey, serialized: bytes, extra: dict[str, Any] | None = None) -> Path:
    """Store an engine and its sidecar (atomically replaced)."""
    engine, sidecar = engine_paths(engine_dir, key)
    engine.parent.mkdir(parents=True, exist_ok=True)
    tmp = engine.with_suffix(".engine.tmp")
    tmp.write_bytes(serialized)
    tmp.replace(engine)
    record = dict(asdict(key))
    record["engine_sha256"] = sha256_file(engine)
    record["built_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    record.update(extra or {})
    sidecar.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return engine


def make_key(onnx: OnnxArtifact, device: torch.device, precision: str = "fp16", *, min_batch: int = 1,
             opt_batch: int = 1, max_batch: int = 4, tensorrt_version: str | None = None,
             sm: str | None = None) -> EngineKey:
    if tensorrt_version is None:
        tensorrt_version = str(import_tensorrt().__version__)
    return EngineKey(
        model_hash=onnx.model_hash, onnx_hash=onnx.onnx_hash, tensorrt_version=tensorrt_version,
        gpu_sm=sm or gpu_sm(device), precision=precision, image_size=onnx.image_size,
        min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch,
    )


def build_engine(onnx: OnnxArtifact, key: EngineKey, engine_dir: str | Path, *, workspace_gib: float = 4.0,
                 progress: bool = True) -> Path:
    """Build a serialized engine from the ONNX graph with the TensorRT 10 builder API and store it."""
    trt = import_tensorrt()
    logger = trt_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx.path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx.path}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if key.precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    size = key.image_size
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, (key.min_batch, 3, size, size), (key.opt_batch, 3, size, size),
                      (key.max_batch, 3, size, size))
    config.add_optimization_profile(profile)

    timing_path = Path(engine_dir) / f"timing-{key.tensorrt_version}-{key.gpu_sm}.cache"
    _use_timing_cache(config, timing_path)
    monitor = _progress_monitor(trt) if progress else None  # must outlive the build (TensorRT's rule)
    if monitor is not None:
        config.progress_monitor = monitor

    start = time.perf_counter()
    LOGGER.info("building TensorRT engine for %s (this takes minutes)", key.describe())
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT build_serialized_network failed; see the TensorRT log above")
    timing_path.parent.mkdir(parents=True, exist_ok=True)
    timing_tmp = timing_path.with_suffix(".cache.tmp")
    timing_tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    timing_tmp.replace(timing_path)
    path = write_engine(engine_dir, key, bytes(serialized),
                        {"onnx_file": onnx.path.name, "build_seconds": round(time.perf_counter() - start, 1),
                         "workspace_gib": workspace_gib})
    LOGGER.info("engine %s built in %.0f s", path, time.perf_counter() - start)
    return path


def _use_timing_cache(config: Any, timing_path: Path) -> None:
    """Give the builder the timing cache of earlier builds (same TensorRT and SM), or a fresh one.

    ``create_timing_cache`` / ``set_timing_cache`` report a cache they cannot use (another TensorRT
    build, damaged bytes) by returning None / False; the build then starts from an empty cache.
    """
    data = timing_path.read_bytes() if timing_path.is_file() else b""
    try:
        cache = config.create_timing_cache(data)
    except (RuntimeError, TypeError, ValueError) as err:  # damaged bytes may raise instead
        LOGGER.warning("TensorRT cannot read the timing cache %s: %s", timing_path, err)
        cache = None
    if cache is not None and config.set_timing_cache(cache, False):
        return
    LOGGER.warning("TensorRT did not accept the timing cache %s; building with an empty one", timing_path)
    if not config.set_timing_cache(config.create_timing_cache(b""), False):
        raise RuntimeError("TensorRT refused an empty timing cache")


def _progress_monitor(trt: Any) -> Any:
    """An IProgressMonitor that logs each phase (TensorRT calls it from its own threads)."""

    class ProgressMonitor(trt.IProgressMonitor):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._steps: dict[str, int] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self._steps[phase_name] = num_steps
            LOGGER.info("TensorRT %s%s: %d steps", f"{parent_phase} / " if parent_phase else "", phase_name, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            total = self._steps.get(phase_name, 0)
            if total >= 10 and (step + 1) % max(1, total // 10) == 0:
                LOGGER.info("TensorRT %s: step %d/%d", phase_name, step + 1, total)
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            LOGGER.info("TensorRT %s: done", phase_name)

    return ProgressMonitor()


def _torch_dtype(trt: Any, trt_dtype: Any) -> torch.dtype:
    table = {trt.float32: torch.float32, trt.float16: torch.float16}
    if hasattr(trt, "bfloat16"):
        table[trt.bfloat16] = torch.bfloat16
    if trt_dtype not in table:
        raise ValueError(f"unsupported TensorRT tensor dtype {trt_dtype}")
    return table[trt_dtype]


class TensorRTVisionBackend(VisionBackend):
    """Runs a checked engine on the runtime's CUDA stream."""

    name = "tensorrt"

    def __init__(self, engine_path: Path, key: EngineKey, preprocess: ImagePreprocessor, device: torch.device,
                 dtype: torch.dtype) -> None:
        super().__init__(preprocess, device, dtype)
        trt = import_tensorrt()
        self._trt = trt
        self._runtime = trt.Runtime(trt_logger(trt))
        self.engine = self._runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise StaleEngineError(f"TensorRT could not deserialize {engine_path}; rebuild it")
        self.key = key
        self._check_io()
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise RuntimeError(f"TensorRT could not create an execution context for {engine_path} (GPU memory?)")

    def _check_io(self) -> None:
        trt, engine, key = self._trt, self.engine, self.key
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        if sorted(names) != sorted([INPUT_NAME, OUTPUT_NAME]):
            raise StaleEngineError(f"engine I/O tensors are {names}, expected {INPUT_NAME} and {OUTPUT_NAME}")
        if engine.get_tensor_mode(INPUT_NAME) != trt.TensorIOMode.INPUT:
            raise StaleEngineError(f"engine tensor {INPUT_NAME} is not an input")
        shape = tuple(engine.get_tensor_shape(INPUT_NAME))  # (-1, 3, S, S)
        if shape[1:] != (3, key.image_size, key.image_size):
            raise StaleEngineError(f"engine input shape {shape} does not fit {key.image_size} px images")
        low, _, high = engine.get_tensor_profile_shape(INPUT_NAME, 0)
        if tuple(low)[0] != key.min_batch or tuple(high)[0] != key.max_batch:
            raise StaleEngineError(f"engine batch profile {tuple(low)}..{tuple(high)} does not match its key")
        self.input_dtype = _torch_dtype(trt, engine.get_tensor_dtype(INPUT_NAME))
        self.output_dtype = _torch_dtype(trt, engine.get_tensor_dtype(OUTPUT_NAME))

    def run(self, pixel_values: torch.Tensor) -> torch.Tensor:
        outputs = []
        for chunk in pixel_values.split(self.key.max_batch):  # the profile's largest batch at a time
            x = chunk.to(self.device, self.input_dtype).contiguous()  # (b, 3, S, S)
            self.context.set_input_shape(INPUT_NAME, tuple(x.shape))
            out = torch.empty(tuple(self.context.get_tensor_shape(OUTPUT_NAME)), dtype=self.output_dtype,
                              device=self.device)  # (b, N, D)
            self.context.set_tensor_address(INPUT_NAME, x.data_ptr())
            self.context.set_tensor_address(OUTPUT_NAME, out.data_ptr())
            stream = torch.cuda.current_stream(self.device)
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed")
            outputs.append(out)
        torch.cuda.current_stream(self.device).synchronize()
        return torch.cat(outputs, dim=0)

    def close(self) -> None:
        self.context = None
        self.engine = None
        self._runtime = None
