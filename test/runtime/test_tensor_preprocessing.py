"""Preprocessing as tensor ops (vision.TensorPreprocessor, the CUDA default) against HF's processor:
within 1/255 per pixel for every geometry the referring core supports for LLaVA checkpoints (stretch,
center crop, pad), on the CPU."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from chatspot_ros.runtime.compat import load_image_processor
from chatspot_ros.runtime.loading import read_processor_config
from chatspot_ros.runtime.vision import ImagePreprocessor, TensorPreprocessor, TorchVisionBackend

# camera-like frames (larger than the model input: downscaling) and odd small ones (upscaling)
DOWN = [(480, 640), (720, 1280), (300, 200), (1000, 130), (240, 320)]
UP = [(90, 160), (64, 64), (7, 33), (100, 20)]


def _stretch_settings(settings: dict) -> dict:
    """The same checkpoint read as a stretch geometry: a fixed size, no crop."""
    out = dict(settings, size={"height": 96, "width": 128}, do_center_crop=False)
    out.pop("crop_size", None)
    return out


def _pair(model_dir: Path, pad: bool, stretch: bool = False):
    settings, _ = read_processor_config(model_dir)
    if stretch:
        settings = _stretch_settings(settings)
        image_processor = type(load_image_processor(model_dir))(**{k: v for k, v in settings.items()
                                                                   if k != "image_processor_type"})
    else:
        image_processor = load_image_processor(model_dir)
    hf = ImagePreprocessor(image_processor, pad_to_square=pad, settings=settings)
    return hf, TensorPreprocessor(settings, pad, hf.background, torch.device("cpu")), settings


def _levels(a: torch.Tensor, b: torch.Tensor, settings: dict) -> torch.Tensor:
    """|a - b| in 0-255 pixel levels (undoing the normalization)."""
    std = torch.tensor(settings["image_std"])[:, None, None]
    return (a - b).abs() * std * 255


@pytest.mark.parametrize("geometry", ["center_crop", "pad", "stretch"])
def test_tensor_preprocessing_matches_the_hf_processor(seeded_model_dirs, geometry) -> None:
    model_dir = seeded_model_dirs[2] if geometry == "center_crop" else seeded_model_dirs[1]
    hf, tensor, settings = _pair(model_dir, pad=geometry == "pad", stretch=geometry == "stretch")
    rng = np.random.default_rng(0)
    for height, width in DOWN + UP:
        frame = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        a, b = hf([frame]), tensor([frame])
        assert a.shape == b.shape, (height, width)
        levels = _levels(a, b, settings)
        if (height, width) in DOWN:
            assert float(levels.max()) <= 1.0 + 1e-3, (geometry, height, width, float(levels.max()))
        else:  # upscaling noise: PIL's fixed-point intermediate rounds a very few pixels one level further
            assert float(levels.max()) <= 2.0 + 1e-3 and float((levels > 1.0 + 1e-3).float().mean()) < 1e-4


def test_backend_with_device_preprocessing_gives_the_same_answers(runtime) -> None:
    """The torch backend with tensor preprocessing (what CUDA runs) on the CPU: features within rounding
    of the HF-processor path, and the same greedy answers on the tiny checkpoint."""
    from runtime_reference import QUESTIONS, make_frame, prompt

    from chatspot_ros.runtime import GenerationConfig

    frame = make_frame(3, height=480, width=640)
    reference = runtime.backend.encode([frame])
    device_backend = TorchVisionBackend(runtime.backend.encoder, runtime.preprocess, runtime.device, runtime.dtype,
                                        device_preprocess=True)
    assert device_backend.tensor_preprocess is not None
    features = device_backend.encode([frame])
    assert float((features - reference).abs().max()) < 0.05 * float(reference.abs().max())
    gen = GenerationConfig(max_new_tokens=8)
    prompts = [prompt(q) for q in QUESTIONS[:3]]
    expected = [g.token_ids for g in runtime.generate(runtime.encode(frame), prompts, gen)]
    cached = runtime.encode(frame)
    cached.features = features
    assert [g.token_ids for g in runtime.generate(cached, prompts, gen)] == expected
    auto = TorchVisionBackend(runtime.backend.encoder, runtime.preprocess, torch.device("cpu"), runtime.dtype)
    assert auto.tensor_preprocess is None  # the CPU keeps HF's processor (exact parity)
