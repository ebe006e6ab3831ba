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

from chatspot_ros.referring.geometry import square_padding

LOGGER = logging.getLogger("chatspot_ros.runtime")
CHANNELS_LAST = "channels_last"  # transformers' ChannelDimension.LAST: frames are (H, W, 3)


class ImagePreprocessor:
    """The checkpoint's preprocessing: optional pad-to-square with the mean colour, then the HF processor.

    ``pad_to_square`` comes from the checkpoint's ImageGeometry (see ``loading.inspect_checkpoint``):
    original LLaVA-1.5 and ChatSpot-style checkpoints (``image_aspect_ratio: "pad"``) pad the frame
    to a centred square with ``tuple(int(255 * m) for m in image_mean)`` like LLaVA's
    ``expand2square``; the HF image processor then resizes and normalizes.

    Frames are always H x W x 3 (channels last), and the processor is told so: left to guess, it
    reads a 3 x 3 x 3 or 4 x 4 x 3 frame (any frame 1, 3 or 4 pixels high) as channels first.
    """

    def __init__(self, image_processor: object, pad_to_square: bool) -> None:
        self.image_processor = image_processor
        self.pad_to_square = pad_to_square
        mean = getattr(image_processor, "image_mean", None)
        if pad_to_square and not mean:
            raise ValueError("pad-to-square needs the image processor's image_mean (the padding colour)")
        self.background = tuple(int(255 * m) for m in mean) if mean else (0, 0, 0)

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
        """(H, W, 3) -> (S, S, 3), S = max(H, W), the frame centred on the mean colour."""
        height, width = frame.shape[:2]
        if height == width:
            return frame
        pad_x, pad_y, side = square_padding(width, height)
        square = np.empty((side, side, 3), dtype=np.uint8)
        square[...] = np.asarray(self.background, dtype=np.uint8)
        square[pad_y:pad_y + height, pad_x:pad_x + width, :] = frame
        return square

    def __call__(self, frames: Sequence[np.ndarray]) -> torch.Tensor:
        """frames: B arrays (H, W, 3) uint8 RGB -> pixel_values (B, 3, S, S) float32."""
        images = []
        for frame in frames:
            self.check_frame(frame)
            images.append(self.expand_to_square(frame) if self.pad_to_square else frame)
        out = self.image_processor(  # type: ignore[operator]
            images=images, return_tensors="pt", input_data_format=CHANNELS_LAST
        )
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
