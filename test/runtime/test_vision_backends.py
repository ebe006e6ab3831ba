"""Vision backends: ONNX export vs torch, engine keys, stale-engine rejection, auto fallback.

TensorRT cannot be installed on these machines: its paths are exercised with a fake ``tensorrt``
module (keying, sidecar checks, I/O checks, fallbacks); nothing here claims an engine ran.
"""
from __future__ import annotations

import dataclasses
import logging
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from runtime_reference import make_frame

from chatspot_ros.runtime import tensorrt_engine as trt_engine
from chatspot_ros.runtime.backends import create_vision_backend
from chatspot_ros.runtime.onnx_vision import export_vision_onnx, model_hash, sha256_file
from chatspot_ros.runtime.tensorrt_engine import EngineKey, StaleEngineError, find_engine, write_engine
from chatspot_ros.runtime.vision import VisionEncoder

LOGGER_NAME = "chatspot_ros.runtime"


def _backend(runtime, name: str, engine_dir: Path, device: str = "cpu"):
    return create_vision_backend(
        name, encoder=VisionEncoder.from_llava(runtime.model), preprocess=runtime.preprocess,
        device=torch.device(device), dtype=torch.float32, engine_dir=engine_dir,
    )


def test_onnx_matches_torch(runtime, onnx_runtime) -> None:
    """Both backends behind one interface: the same tensor (shape, dtype, device, values) per frame."""
    assert onnx_runtime.backend_name == "onnxruntime-cpu"
    frames = [make_frame(s, 70 + 10 * s, 120) for s in range(3)]
    expected = runtime.backend.encode(frames)  # (3, N, D)
    got = onnx_runtime.backend.encode(frames)
    assert got.shape == expected.shape == (3, 64, 64)
    assert got.dtype == expected.dtype == torch.float32 and got.device == expected.device
    assert float((got - expected).abs().max()) < 1e-4


def test_onnx_export_is_reused_and_refreshed(runtime, engine_dir) -> None:
    encoder = VisionEncoder.from_llava(runtime.model)
    first = export_vision_onnx(encoder, engine_dir)
    mtime = first.path.stat().st_mtime_ns
    again = export_vision_onnx(encoder, engine_dir)
    assert again == first and first.path.stat().st_mtime_ns == mtime
    first.path.write_bytes(first.path.read_bytes() + b"x")  # tampered: hash no longer matches the sidecar
    fresh = export_vision_onnx(encoder, engine_dir)
    assert fresh.onnx_hash == sha256_file(fresh.path) and fresh.onnx_hash == first.onnx_hash


def test_model_hash_follows_the_weights(runtime, chatspot_model_dir) -> None:
    from chatspot_ros.runtime import ChatSpotRuntime, RuntimeConfig

    h1 = model_hash(VisionEncoder.from_llava(runtime.model))
    assert h1 == model_hash(VisionEncoder.from_llava(runtime.model))
    other = ChatSpotRuntime.load(RuntimeConfig(model_path=str(chatspot_model_dir)))
    assert model_hash(VisionEncoder.from_llava(other.model)) != h1
    other.close()


KEY = EngineKey(model_hash="a" * 64, onnx_hash="b" * 64, tensorrt_version="10.3.0", gpu_sm="sm_90",
                precision="fp16", image_size=336, min_batch=1, opt_batch=1, max_batch=4)


@pytest.mark.parametrize("field, value", [
    ("model_hash", "c" * 64), ("onnx_hash", "d" * 64), ("tensorrt_version", "10.4.0"), ("gpu_sm", "sm_89"),
    ("precision", "fp32"), ("image_size", 224), ("max_batch", 8),
])
def test_every_key_field_changes_the_engine_file(field, value, tmp_path) -> None:
    other = dataclasses.replace(KEY, **{field: value})
    assert other.digest != KEY.digest
    write_engine(tmp_path, KEY, b"engine bytes")
    with pytest.raises(FileNotFoundError, match="chatspot-build-engine") as info:
        find_engine(tmp_path, other)
    if field != "model_hash":  # the same model's engine for another key is reported as ignored
        assert field in str(info.value)


def test_engine_roundtrip_and_stale_rejection(tmp_path) -> None:
    path = write_engine(tmp_path, KEY, b"engine bytes")
    assert find_engine(tmp_path, KEY) == path
    sidecar = path.with_suffix(".json")
    path.write_bytes(b"other bytes")  # engine replaced behind our back
    with pytest.raises(StaleEngineError, match="sha256"):
        find_engine(tmp_path, KEY)
    write_engine(tmp_path, KEY, b"engine bytes")
    text = sidecar.read_text().replace('"tensorrt_version": "10.3.0"', '"tensorrt_version": "8.6.1"')
    sidecar.write_text(text)  # an engine from another TensorRT copied under this key's name
    with pytest.raises(StaleEngineError, match="tensorrt_version"):
        find_engine(tmp_path, KEY)


def test_key_validation() -> None:
    with pytest.raises(ValueError):
        dataclasses.replace(KEY, precision="int4")
    with pytest.raises(ValueError):
        dataclasses.replace(KEY, min_batch=4, max_batch=2)


def test_explicit_tensorrt_without_tensorrt_says_why(runtime, engine_dir, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    with pytest.raises(ImportError, match="TensorRT is not installed"):
        _backend(runtime, "tensorrt", engine_dir)


def test_auto_on_cpu_falls_back_to_torch_loudly(runtime, engine_dir, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
        backend = _backend(runtime, "auto", engine_dir)
    assert backend.name == "torch"
    warnings = [r for r in caplog.records if r.name == LOGGER_NAME and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "FALLING BACK to torch" in warnings[0].getMessage()
    assert "CUDA" in warnings[0].getMessage()


def _fake_tensorrt(version: str = "10.3.0") -> types.ModuleType:
    module = types.ModuleType("tensorrt")
    module.__version__ = version  # type: ignore[attr-defined]
    return module


def test_auto_without_engine_falls_back_with_the_reason(runtime, engine_dir, monkeypatch, caplog) -> None:
    """A (fake) TensorRT and a (pretended) GPU, but no engine built: auto must not build, it falls back."""
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt())
    monkeypatch.setattr(trt_engine, "gpu_sm", lambda device: "sm_90")
    with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
        backend = _backend(runtime, "auto", engine_dir, device="cuda")
    assert backend.name == "torch"
    message = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "no TensorRT engine" in message and "chatspot-build-engine" in message
    assert "onnxruntime-cuda" in message


def test_auto_ignores_a_stale_engine(runtime, engine_dir, monkeypatch, caplog) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt("10.3.0"))
    monkeypatch.setattr(trt_engine, "gpu_sm", lambda device: "sm_90")
    encoder = VisionEncoder.from_llava(runtime.model)
    onnx = export_vision_onnx(encoder, engine_dir)
    old = trt_engine.make_key(onnx, torch.device("cuda"), "fp16", tensorrt_version="10.0.1", sm="sm_90")
    write_engine(engine_dir, old, b"built with an older TensorRT")
    loads: list[Path] = []
    monkeypatch.setattr(trt_engine.TensorRTVisionBackend, "__init__", lambda self, *a, **k: loads.append(a[0]))
    with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
        backend = _backend(runtime, "auto", engine_dir, device="cuda")
    assert backend.name == "torch" and loads == []  # the stale engine was never deserialized
    message = " ".join(r.getMessage() for r in caplog.records)
    assert "tensorrt_version '10.0.1' != '10.3.0'" in message


class _FakeEngine:
    def __init__(self, input_shape, profile) -> None:
        self.num_io_tensors = 2
        self._shape = {"pixel_values": input_shape, "image_features": (-1, 64, 64)}
        self._profile = profile

    def get_tensor_name(self, i: int) -> str:
        return ["pixel_values", "image_features"][i]

    def get_tensor_mode(self, name: str) -> str:
        return "INPUT" if name == "pixel_values" else "OUTPUT"

    def get_tensor_shape(self, name: str):
        return self._shape[name]

    def get_tensor_profile_shape(self, name: str, profile: int):
        return self._profile

    def get_tensor_dtype(self, name: str) -> str:
        return "float32"


@pytest.mark.parametrize("input_shape, profile, ok", [
    ((-1, 3, 336, 336), ((1, 3, 336, 336), (1, 3, 336, 336), (4, 3, 336, 336)), True),
    ((-1, 3, 224, 224), ((1, 3, 224, 224), (1, 3, 224, 224), (4, 3, 224, 224)), False),
    ((-1, 3, 336, 336), ((1, 3, 336, 336), (1, 3, 336, 336), (8, 3, 336, 336)), False),
])
def test_engine_io_is_checked_on_load(input_shape, profile, ok) -> None:
    fake = _fake_tensorrt()
    fake.TensorIOMode = types.SimpleNamespace(INPUT="INPUT")  # type: ignore[attr-defined]
    fake.float32, fake.float16 = "float32", "float16"  # type: ignore[attr-defined]
    backend = trt_engine.TensorRTVisionBackend.__new__(trt_engine.TensorRTVisionBackend)
    backend._trt, backend.key = fake, KEY
    backend.engine = _FakeEngine(input_shape, profile)
    if ok:
        backend._check_io()
        assert backend.input_dtype == torch.float32
    else:
        with pytest.raises(StaleEngineError):
            backend._check_io()


def test_frames_are_padded_with_the_mean_colour(runtime) -> None:
    frame = np.full((20, 60, 3), 7, dtype=np.uint8)
    square = runtime.preprocess.expand_to_square(frame)
    assert square.shape == (60, 60, 3)
    assert (square[20:40] == 7).all()
    assert tuple(square[0, 0]) == runtime.preprocess.background == (122, 116, 104)


class _ConstantBackend:
    name = "constant"

    def __init__(self, value: float) -> None:
        self.value = value

    def run(self, pixel_values):  # (B, 3, S, S) -> (B, 64, 64)
        return torch.full((pixel_values.shape[0], 64, 64), self.value)


def test_backend_delta_is_relative_and_nan_never_passes(runtime) -> None:
    from chatspot_ros.runtime.onnx_vision import compare_with_torch

    encoder = VisionEncoder.from_llava(runtime.model)
    size = runtime.model.config.vision_config.image_size
    same = compare_with_torch(runtime.backend, encoder, size)
    assert same.max_abs == 0.0 and same.relative == 0.0 and same.reference_max > 0
    broken = compare_with_torch(_ConstantBackend(float("nan")), encoder, size)  # type: ignore[arg-type]
    assert broken.relative == float("inf") and not broken.relative <= 1.0


def test_damaged_onnx_sidecar_means_re_export(runtime, tmp_path, monkeypatch, caplog) -> None:
    exports: list[str] = []

    def fake_export(module, args, path, **kwargs) -> None:  # the real export is tested above
        exports.append(path)
        Path(path).write_bytes(b"graph %d" % len(exports))

    monkeypatch.setattr(torch.onnx, "export", fake_export)
    encoder = VisionEncoder.from_llava(runtime.model)
    first = export_vision_onnx(encoder, tmp_path)
    assert export_vision_onnx(encoder, tmp_path) == first and len(exports) == 1
    first.path.with_suffix(".json").write_text("{ not json")
    with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
        again = export_vision_onnx(encoder, tmp_path)
    assert len(exports) == 2 and again.onnx_hash == sha256_file(again.path) != first.onnx_hash
    assert "treating it as stale" in caplog.text


class _FakeBuilderConfig:
    """IBuilderConfig's timing-cache calls: create_timing_cache(bytes), set_timing_cache(cache, ignore_mismatch)."""

    def __init__(self, accept: bool) -> None:
        self.accept = accept
        self.caches: list[bytes] = []

    def create_timing_cache(self, data: bytes):
        return ("cache", data)

    def set_timing_cache(self, cache, ignore_mismatch: bool) -> bool:
        assert ignore_mismatch is False
        self.caches.append(cache[1])
        return self.accept or cache[1] == b""


def test_a_refused_timing_cache_falls_back_to_an_empty_one(tmp_path, caplog) -> None:
    timing = tmp_path / "timing-10.3.0-sm_90.cache"
    timing.write_bytes(b"from another TensorRT")
    config = _FakeBuilderConfig(accept=False)
    with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
        trt_engine._use_timing_cache(config, timing)
    assert config.caches == [b"from another TensorRT", b""] and "timing cache" in caplog.text
    accepted = _FakeBuilderConfig(accept=True)
    trt_engine._use_timing_cache(accepted, timing)
    assert accepted.caches == [b"from another TensorRT"]


def test_one_tensorrt_logger_per_process() -> None:
    fake = _fake_tensorrt()

    class Logger:
        WARNING = 2

        def __init__(self, severity: int) -> None:
            self.severity = severity

    fake.Logger = Logger  # type: ignore[attr-defined]
    assert trt_engine.trt_logger(fake) is trt_engine.trt_logger(fake)
