"""Image preprocessing and the vision backends behind one interface.

Every backend takes RGB uint8 frames (each H x W x 3) and returns the projected image features
``(B, N, D)`` as a torch tensor on the runtime's device and dtype: the vision tower's hidden state
at ``vision_feature_layer`` (CLS dropped under the "default" strategy) through the projector,
exactly what ``LlavaModel.get_image_features`` computes.
"""
from __future__ import annotations

import abc
import logging
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

LOGGER = logging.getLogger("chatspot_ros.runtime")


class ImagePreprocessor:
    """The checkpoint's preprocessing: optional pad-to-square with the mean colour, then the HF processor.

    ``image_aspect_ratio == "pad"`` in config.json (original LLaVA-1.5 and ChatSpot-style checkpoints)
    pads the frame to a square, centred, with ``tuple(int(255 * m) for m in image_mean)`` like
    LLaVA's ``expand2square``; the HF image processor then resizes and normalizes.
    """

    def __init__(self, image_processor: object, pad_to_square: bool) -> None:
        self.image_processor = image_processor
        self.pad_to_square = pad_to_square
        mean = getattr(image_processor, "image_mean", None) or (0.0, 0.0, 0.0)
        self.background = tuple(int(255 * m) for m in mean)

    @staticmethod
    def check_frame(frame: np.ndarray) -> None:
        if not isinstance(frame, np.ndarray):
            raise TypeError(f"a frame must be a numpy array, got {type(frame).__name__}")
        if frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"a frame must be H x W x 3 (RGB), got shape {frame.shape}")
        if frame.dtype != np.uint8:
            raise ValueError(f"a frame must be uint8, got {frame.dtype}")
        if frame.shape[0] == 0 or frame.shape[1] == 0:
            raise ValueError(f"a frame must not be empty, got shape {frame.shape}")

    def expand_to_square(self, frame: np.ndarray) -> np.ndarray:
        height, width = frame.shape[:2]
        if height == width:
            return frame
        side = max(height, width)
        square = np.empty((side, side, 3), dtype=np.uint8)
        square[...] = np.asarray(self.background, dtype=np.uint8)
        if width > height:
            top = (width - height) // 2
            square[top:top + height, :, :] = frame
        else:
            left = (height - width) // 2
            square[:, left:left + width, :] = frame
        return square

    def __call__(self, frames: Sequence[np.ndarray]) -> torch.Tensor:
        """frames: B arrays (H, W, 3) uint8 RGB -> pixel_values (B, 3, S, S) float32."""
        images = []
        for frame in frames:
            self.check_frame(frame)
            images.append(self.expand_to_square(frame) if self.pad_to_square else frame)
        out = self.image_processor(images=images, return_tensors="pt")  # type: ignore[operator]
        return out["pixel_values"].float()


class VisionEncoder(nn.Module):
    """Vision tower + feature selection + projector: pixel_values (B, 3, S, S) -> features (B, N, D).

    The submodules are registered (not closed over) so torch.onnx.export can trace them.
    """

    def __init__(
        self, vision_tower: nn.Module, projector: nn.Module, feature_layer: int | list[int], strategy: str
    ) -> None:
        super().__init__()
        self.vision_tower = vision_tower
        self.projector = projector
        self.feature_layers = [feature_layer] if isinstance(feature_layer, int) else list(feature_layer)
        if strategy not in ("default", "full"):
            raise ValueError(f"vision_feature_select_strategy {strategy!r} is not supported")
        self.drop_cls = strategy == "default"

    @classmethod
    def from_llava(cls, model: nn.Module) -> VisionEncoder:
        config = model.config  # type: ignore[attr-defined]
        return cls(
            model.model.vision_tower,  # type: ignore[attr-defined]
            model.model.multi_modal_projector,  # type: ignore[attr-defined]
            config.vision_feature_layer,
            config.vision_feature_select_strategy,
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.vision_tower(pixel_values, output_hidden_states=True, return_dict=True)
        selected = [out.hidden_states[i] for i in self.feature_layers]  # each (B, 1 + N, C_vis)
        if self.drop_cls:
            selected = [h[:, 1:] for h in selected]  # (B, N, C_vis)
        hidden = selected[0] if len(selected) == 1 else torch.cat(selected, dim=-1)
        return self.projector(hidden)  # (B, N, D)


class VisionBackend(abc.ABC):
    """One interface for every vision backend: frames in, projected features out."""

    name: str = "abstract"

    def __init__(self, preprocess: ImagePreprocessor, device: torch.device, dtype: torch.dtype) -> None:
        self.preprocess = preprocess
        self.device = device
        self.dtype = dtype

    def encode(self, frames: Sequence[np.ndarray]) -> torch.Tensor:
        """frames: B of (H, W, 3) uint8 RGB -> (B, N, D) on the runtime's device and dtype."""
        pixel_values = self.preprocess(frames)  # (B, 3, S, S) float32 on cpu
        return self.run(pixel_values).to(self.device, self.dtype)

    @abc.abstractmethod
    def run(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values (B, 3, S, S) float32 -> features (B, N, D)."""

    def close(self) -> None:
        """Free what the backend holds."""


class TorchVisionBackend(VisionBackend):
    """Eager PyTorch: the checkpoint's own modules."""

    name = "torch"

    def __init__(self, encoder: VisionEncoder, preprocess: ImagePreprocessor, device: torch.device,
                 dtype: torch.dtype) -> None:
        super().__init__(preprocess, device, dtype)
        self.encoder = encoder

    @torch.inference_mode()
    def run(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.encoder(pixel_values.to(self.device, self.dtype))

    def close(self) -> None:
        self.encoder = None  # type: ignore[assignment]
