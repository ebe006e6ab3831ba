"""Image preprocessing: channels-last for any frame size, and pixels that agree with Φ.

Left to guess, transformers' image processor reads an (H, W, 3) frame whose height is 1, 3 or 4 as
channels-first ("channel dimension is ambiguous") and preprocesses a different picture. The runtime
tells it the frames are channels-last; these tests compare against references that cannot guess:
a hand computation on single-colour frames, and the processor fed PIL images.
"""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image
from runtime_reference import QUESTIONS, hf_generate, processor_for, prompt

from chatspot_ros.referring import ImageGeometry
from chatspot_ros.runtime import GenerationConfig
from chatspot_ros.runtime.vision import ImagePreprocessor

TINY_SHAPES = [(3, 3), (2, 2), (4, 3), (3, 4), (1, 5), (4, 4), (3, 160)]  # (height, width)
COLOUR = (10, 200, 90)


def _solid(height: int, width: int, colour: tuple[int, int, int] = COLOUR) -> np.ndarray:
    frame = np.empty((height, width, 3), dtype=np.uint8)
    frame[...] = np.asarray(colour, dtype=np.uint8)
    return frame


def _normalized(processor: object, colour: tuple[int, int, int]) -> torch.Tensor:
    """(3,) what rescale + normalize make of one RGB colour, computed by hand."""
    mean = torch.tensor(processor.image_mean, dtype=torch.float64)  # type: ignore[attr-defined]
    std = torch.tensor(processor.image_std, dtype=torch.float64)  # type: ignore[attr-defined]
    return ((torch.tensor(colour, dtype=torch.float64) / 255.0 - mean) / std).float()


@pytest.mark.parametrize("height, width", TINY_SHAPES)
def test_tiny_solid_frame_by_hand(runtime, caplog, height: int, width: int) -> None:
    """A single-colour frame stays that colour through resize and crop: every pixel is known."""
    preprocess = ImagePreprocessor(runtime.preprocess.image_processor, pad_to_square=False)
    with caplog.at_level(logging.WARNING):
        pixels = preprocess([_solid(height, width)])  # (1, 3, S, S)
    assert not [r for r in caplog.records if "ambiguous" in r.getMessage()]
    size = runtime.model.config.vision_config.image_size
    assert pixels.shape == (1, 3, size, size)
    expected = _normalized(preprocess.image_processor, COLOUR)[:, None, None].expand(3, size, size)
    assert torch.allclose(pixels[0], expected, atol=1e-5)


@pytest.mark.parametrize("height, width", TINY_SHAPES)
def test_tiny_frame_matches_the_processor_on_a_pil_image(runtime, height: int, width: int) -> None:
    """Random pixels, padded to a square with the mean colour: as if the processor had a PIL image."""
    frame = np.random.default_rng(height * 10 + width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    got = runtime.preprocess([frame])  # (1, 3, S, S)
    square = runtime.preprocess.expand_to_square(frame)
    reference = runtime.preprocess.image_processor(images=[Image.fromarray(square)], return_tensors="pt")
    assert torch.equal(got, reference["pixel_values"].float())


def test_tiny_frame_features_come_from_channels_last_pixels(runtime) -> None:
    frame = _solid(3, 3)
    pixels = runtime.preprocess.image_processor(images=[Image.fromarray(frame)], return_tensors="pt")
    expected = runtime.backend.run(pixels["pixel_values"].float())  # (1, N, D)
    assert torch.allclose(runtime.encode(frame).features, expected, atol=1e-6)


@pytest.mark.parametrize("height, width", [(20, 60), (60, 20), (7, 8), (33, 33)])
def test_padding_puts_pixels_where_phi_puts_coordinates(runtime, height: int, width: int) -> None:
    """Φ (ImageGeometry.pad) and the pixels (expand_to_square) agree on where a source pixel lands."""
    frame = _solid(height, width)
    x, y = width - 1, height // 2
    frame[y, x] = (255, 255, 255)
    square = runtime.preprocess.expand_to_square(frame)
    side = max(height, width)
    (u, v), = ImageGeometry.pad(side).to_model([(x + 0.5, y + 0.5)], width, height)[0]  # pixel centre
    col, row = int(u * side), int(v * side)
    assert tuple(square[row, col]) == (255, 255, 255)
    assert int((square == 255).all(axis=2).sum()) == 1
    background = (square == np.asarray(runtime.preprocess.background, dtype=np.uint8)).all(axis=2)
    assert int(background.sum()) == side * side - height * width


def test_pad_needs_the_mean_colour() -> None:
    class NoMean:
        image_mean = None

    with pytest.raises(ValueError, match="image_mean"):
        ImagePreprocessor(NoMean(), pad_to_square=True)


def test_tiny_frame_answers_match_hf_generate(runtime, tiny_model_dir) -> None:
    """End to end on a 4 x 3 frame (padded to 4 x 4): the runtime and HF's own pipeline agree."""
    frame = np.random.default_rng(43).integers(0, 256, (4, 3, 3), dtype=np.uint8)
    question = prompt(QUESTIONS[0])
    (result,) = runtime.generate(runtime.encode(frame), [question], GenerationConfig(max_new_tokens=8))
    assert list(result.token_ids) == hf_generate(runtime, processor_for(tiny_model_dir), frame, question, 8)
