"""Choosing and building a vision backend: torch | onnxruntime | tensorrt | auto.

``auto`` takes the best one available, in the order tensorrt > onnxruntime-cuda > torch. It uses
an existing, valid TensorRT engine only (it never starts a build that takes minutes); every step
down is logged once, as a warning, with the reason. An explicit backend never falls back: it works
or raises with what to do.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from chatspot_ros.runtime.config import VISION_BACKENDS
from chatspot_ros.runtime.onnx_vision import (
    OnnxRuntimeVisionBackend,
    compare_with_torch,
    export_vision_onnx,
    image_size_of,
    model_hash,
)
from chatspot_ros.runtime.tensorrt_engine import (
    StaleEngineError,
    TensorRTVisionBackend,
    build_engine,
    engines_for_model,
    find_engine,
    import_tensorrt,
    make_key,
)
from chatspot_ros.runtime.vision import ImagePreprocessor, TorchVisionBackend, VisionBackend, VisionEncoder

LOGGER = logging.getLogger("chatspot_ros.runtime")
# Largest |backend - torch| allowed, relative to the largest feature: fp32 ONNX vs eager fp32 is
# ~1e-6 on the tiny model; against an fp16/bf16 encoder (or a TensorRT fp16 engine) the reference
# itself carries ~1e-3 rounding per layer.
RELATIVE_TOLERANCE: dict[torch.dtype, float] = {torch.float32: 1e-3, torch.float16: 5e-2, torch.bfloat16: 5e-2}
TENSORRT_FP16_RELATIVE_TOLERANCE = 5e-2


def check_engine_dir(engine_dir: str | Path, model_path: Path | None) -> None:
    """ValueError when engine_dir lies inside the checkpoint folder: nothing is ever written there."""
    if model_path is None:
        return
    engines, model = Path(engine_dir).expanduser().resolve(), Path(model_path).expanduser().resolve()
    if engines == model or model in engines.parents:
        raise ValueError(
            f"engine_dir {engine_dir} is inside the model folder {model_path}; exported ONNX graphs and "
            "engines are never written into a checkpoint. Choose another folder (e.g. 'engines')."
        )


def create_vision_backend(
    name: str,
    *,
    encoder: VisionEncoder,
    preprocess: ImagePreprocessor,
    device: torch.device,
    dtype: torch.dtype,
    engine_dir: str | Path,
    model_path: Path | None = None,
) -> VisionBackend:
    """The backend ``name`` asks for ("auto" picks and logs why).

    ``model_path`` (the checkpoint folder) is only used to refuse an ``engine_dir`` inside it.
    """
    if name == "torch":
        return TorchVisionBackend(encoder, preprocess, device, dtype)
    if name not in VISION_BACKENDS:
        raise ValueError(f"unknown vision backend {name!r}; choose one of {', '.join(VISION_BACKENDS)}")
    check_engine_dir(engine_dir, model_path)
    if name == "onnxruntime":
        return _onnxruntime(encoder, preprocess, device, dtype, engine_dir)
    if name == "tensorrt":
        return _tensorrt(encoder, preprocess, device, dtype, engine_dir, build_if_missing=True)
    return _auto(encoder, preprocess, device, dtype, engine_dir)


def _onnxruntime(encoder: VisionEncoder, preprocess: ImagePreprocessor, device: torch.device,
                 dtype: torch.dtype, engine_dir: str | Path) -> VisionBackend:
    artifact = export_vision_onnx(encoder, engine_dir)
    backend = OnnxRuntimeVisionBackend(artifact.path, preprocess, device, dtype)
    delta = compare_with_torch(backend, encoder, artifact.image_size)
    tolerance = RELATIVE_TOLERANCE[dtype]
    if not delta.relative <= tolerance:
        backend.close()
        raise RuntimeError(f"onnxruntime vision output differs from torch: {delta} (> {tolerance} relative)")
    return backend


def _tensorrt(encoder: VisionEncoder, preprocess: ImagePreprocessor, device: torch.device, dtype: torch.dtype,
              engine_dir: str | Path, *, build_if_missing: bool) -> VisionBackend:
    import_tensorrt()  # ImportError with the reason when absent
    if device.type != "cuda":
        raise RuntimeError(f"TensorRT needs a CUDA device; the runtime is on {device}")
    encoder_hash = model_hash(encoder)
    if not build_if_missing and not engines_for_model(engine_dir, encoder_hash):
        # Checked before the ONNX export, which the key needs and which takes a while on a 7B checkpoint.
        raise FileNotFoundError(
            f"no TensorRT engine for this model (vision hash {encoder_hash[:12]}) under {engine_dir}; "
            "build one with: chatspot-build-engine --model <checkpoint folder>"
        )
    artifact = export_vision_onnx(encoder, engine_dir, encoder_hash=encoder_hash)
    key = make_key(artifact, device, "fp16")
    try:
        path = find_engine(engine_dir, key)
    except (FileNotFoundError, StaleEngineError) as err:
        if not build_if_missing:
            raise
        LOGGER.warning("%s; building it now", err)
        path = build_engine(artifact, key, engine_dir)
    backend = TensorRTVisionBackend(path, key, preprocess, device, dtype)
    delta = compare_with_torch(backend, encoder, image_size_of(encoder))  # logged at INFO
    if not delta.relative <= TENSORRT_FP16_RELATIVE_TOLERANCE:
        LOGGER.warning("TensorRT vision output differs from torch: %s (fp16 engine)", delta)
    return backend


def _auto(encoder: VisionEncoder, preprocess: ImagePreprocessor, device: torch.device, dtype: torch.dtype,
          engine_dir: str | Path) -> VisionBackend:
    reasons: list[str] = []
    if device.type != "cuda":
        reasons.append(f"tensorrt and onnxruntime-cuda need a CUDA device (device is {device})")
    else:
        try:
            return _tensorrt(encoder, preprocess, device, dtype, engine_dir, build_if_missing=False)
        except (ImportError, FileNotFoundError, StaleEngineError, RuntimeError) as err:
            reasons.append(f"tensorrt: {err}")
        try:
            import onnxruntime as ort

            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeError(f"onnxruntime has no CUDAExecutionProvider ({ort.get_available_providers()})")
            backend = _onnxruntime(encoder, preprocess, device, dtype, engine_dir)
            LOGGER.warning("vision backend auto: falling back to %s because %s", backend.name, "; ".join(reasons))
            return backend
        except (ImportError, RuntimeError) as err:
            reasons.append(f"onnxruntime-cuda: {err}")
    LOGGER.warning("vision backend auto: FALLING BACK to torch because %s", "; ".join(reasons))
    return TorchVisionBackend(encoder, preprocess, device, dtype)
