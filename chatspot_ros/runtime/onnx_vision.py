"""ONNX export of the vision tower + projector, and the onnxruntime vision backend.

The exported graph is what TensorRT consumes too, so it is keyed and cached the same way:
``<engine_dir>/onnx/vision-<model hash>-opset<N>.onnx`` with a JSON sidecar that records the model
hash, torch version, opset, image size and the ONNX file's own sha256. A sidecar that does not match
means the file is re-exported.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from chatspot_ros.runtime.vision import ImagePreprocessor, VisionBackend, VisionEncoder

LOGGER = logging.getLogger("chatspot_ros.runtime")
OPSET = 18
INPUT_NAME = "pixel_values"
OUTPUT_NAME = "image_features"
MAX_EXPORT_BATCH = 64


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while True:
            block = handle.read(chunk)
            if not block:
                break
            digest.update(block)
    return digest.hexdigest()


def model_hash(encoder: VisionEncoder) -> str:
    """sha256 over the vision encoder's weights (names, dtypes, shapes, bytes) and its selection settings.

    Only what the exported graph depends on goes in, so the LLM's weights do not change it.
    """
    digest = hashlib.sha256()
    vision_config = getattr(getattr(encoder.vision_tower, "config", None), "to_json_string", None)
    digest.update((vision_config() if vision_config else "").encode())
    digest.update(json.dumps({"layers": encoder.feature_layers, "drop_cls": encoder.drop_cls,
                              "projector": type(encoder.projector).__name__}).encode())
    for name, tensor in encoder.state_dict().items():
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        data = tensor.detach().to("cpu").contiguous()
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def image_size_of(encoder: VisionEncoder) -> int:
    return int(encoder.vision_tower.config.image_size)  # type: ignore[union-attr]


@dataclass(frozen=True)
class OnnxArtifact:
    path: Path
    model_hash: str
    onnx_hash: str
    opset: int
    torch_version: str
    image_size: int


def _fp32_cpu_copy(encoder: VisionEncoder) -> VisionEncoder:
    clone = copy.deepcopy(encoder).to(device="cpu", dtype=torch.float32)
    return clone.eval()


def _read_sidecar(sidecar: Path) -> dict[str, object]:
    """A sidecar's record; an unreadable or damaged one reads as empty (it then matches nothing)."""
    try:
        record = json.loads(sidecar.read_text())
    except (OSError, json.JSONDecodeError) as err:
        LOGGER.warning("cannot read %s (%s); treating it as stale", sidecar, err)
        return {}
    return record if isinstance(record, dict) else {}


def export_vision_onnx(encoder: VisionEncoder, engine_dir: str | Path, *, encoder_hash: str | None = None,
                       force: bool = False) -> OnnxArtifact:
    """Export (or reuse) the fp32 ONNX graph of ``encoder`` under ``engine_dir/onnx``."""
    digest = encoder_hash or model_hash(encoder)
    size = image_size_of(encoder)
    folder = Path(engine_dir) / "onnx"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"vision-{digest[:16]}-opset{OPSET}.onnx"
    sidecar = path.with_suffix(".json")
    expected = {"model_hash": digest, "opset": OPSET, "torch_version": torch.__version__, "image_size": size}
    if not force and path.is_file() and sidecar.is_file():
        recorded = _read_sidecar(sidecar)
        if all(recorded.get(k) == v for k, v in expected.items()) and recorded.get("onnx_hash") == sha256_file(path):
            return OnnxArtifact(path=path, onnx_hash=recorded["onnx_hash"], **expected)  # type: ignore[arg-type]
        LOGGER.warning("re-exporting %s: its sidecar does not match this model/torch/opset", path.name)
    start = time.perf_counter()
    module = _fp32_cpu_copy(encoder)
    dummy = torch.zeros((2, 3, size, size), dtype=torch.float32)
    batch = torch.export.Dim("batch", min=1, max=MAX_EXPORT_BATCH)
    tmp = path.with_suffix(".onnx.tmp")
    torch.onnx.export(
        module, (dummy,), str(tmp), dynamo=True, opset_version=OPSET, external_data=False,
        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_shapes={INPUT_NAME: {0: batch}},
    )
    tmp.replace(path)
    artifact = OnnxArtifact(path=path, onnx_hash=sha256_file(path), **expected)  # type: ignore[arg-type]
    record = asdict(artifact)
    record["path"] = path.name
    sidecar.write_text(json.dumps(record, indent=2) + "\n")
    LOGGER.info("exported vision ONNX %s in %.1f s", path, time.perf_counter() - start)
    return artifact


@dataclass(frozen=True)
class BackendDelta:
    """How far a vision backend's features are from the eager torch encoder's on one input."""

    max_abs: float  # max |backend - torch| (inf when either holds a NaN or an inf)
    reference_max: float  # max |torch|: the scale the difference is judged against

    @property
    def relative(self) -> float:
        """max_abs as a fraction of the largest reference feature (fp16 rounding is relative)."""
        if not math.isfinite(self.max_abs):
            return math.inf
        return self.max_abs / max(self.reference_max, 1e-12)

    def __str__(self) -> str:
        return (f"max abs difference {self.max_abs:.3g} ({self.relative:.3g} of the largest feature, "
                f"{self.reference_max:.3g})")


def compare_with_torch(backend: VisionBackend, encoder: VisionEncoder, image_size: int,
                       seed: int = 0) -> BackendDelta:
    """A backend against the eager encoder on one random input (logged once at INFO)."""
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn((1, 3, image_size, image_size), generator=generator)
    with torch.inference_mode():
        param = next(encoder.parameters())
        reference = encoder(pixel_values.to(param.device, param.dtype)).float().cpu()
    got = backend.run(pixel_values).float().cpu()
    if got.shape != reference.shape:
        raise ValueError(f"{backend.name} returns {tuple(got.shape)}, torch returns {tuple(reference.shape)}")
    diff = (got - reference).abs()
    finite = bool(torch.isfinite(diff).all())
    delta = BackendDelta(max_abs=float(diff.max()) if finite else math.inf,
                         reference_max=float(reference.abs().max()) if finite else math.nan)
    LOGGER.info("vision backend %s vs torch: %s", backend.name, delta)
    return delta


class OnnxRuntimeVisionBackend(VisionBackend):
    """onnxruntime on the CPU or CUDA execution provider."""

    def __init__(self, onnx_path: Path, preprocess: ImagePreprocessor, device: torch.device,
                 dtype: torch.dtype) -> None:
        import onnxruntime as ort

        super().__init__(preprocess, device, dtype)
        available = ort.get_available_providers()
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in available:
                raise RuntimeError(f"onnxruntime has no CUDAExecutionProvider (has {available})")
            providers: list[object] = [("CUDAExecutionProvider", {"device_id": device.index or 0}),
                                       "CPUExecutionProvider"]
            self.name = "onnxruntime-cuda"
        else:
            providers = ["CPUExecutionProvider"]
            self.name = "onnxruntime-cpu"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=providers)
        in_use = self.session.get_providers()
        if device.type == "cuda" and (not in_use or in_use[0] != "CUDAExecutionProvider"):
            # onnxruntime drops a provider it cannot start (missing CUDA/cuDNN libraries) with only a
            # log line and runs on the CPU; an explicit CUDA backend must not do that silently.
            raise RuntimeError(f"onnxruntime could not start its CUDAExecutionProvider (providers in use: {in_use})")
        inputs = self.session.get_inputs()
        if [i.name for i in inputs] != [INPUT_NAME]:
            raise ValueError(f"{onnx_path} has inputs {[i.name for i in inputs]}, expected [{INPUT_NAME!r}]")
        self.onnx_path = onnx_path

    def run(self, pixel_values: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(pixel_values.detach().float().cpu().numpy())  # (B, 3, S, S)
        (features,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: array})  # (B, N, D)
        return torch.from_numpy(features)

    def close(self) -> None:
        self.session = None
