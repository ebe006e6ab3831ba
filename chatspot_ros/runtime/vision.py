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

    def __init__(self, image_processor: object, pad_to_square: bool, settings: dict | None = None) -> None:
        self.image_processor = image_processor
        self.pad_to_square = pad_to_square
        self.settings = settings  # the saved processor settings (TensorPreprocessor is built from them)
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
                 dtype: torch.dtype, device_preprocess: bool | None = None) -> None:
        super().__init__(preprocess, device, dtype)
        self.encoder = encoder
        # auto (None): preprocessing as tensor ops on CUDA (one upload of uint8 pixels, no PIL pass on the
        # host); the CPU keeps HF's processor, whose pixels the float32 parity tests match exactly
        use = device.type == "cuda" if device_preprocess is None else device_preprocess
        self.tensor_preprocess = None
        if use and preprocess.settings is not None:
            self.tensor_preprocess = TensorPreprocessor(preprocess.settings, preprocess.pad_to_square,
                                                        preprocess.background, device)

    def encode(self, frames: Sequence[np.ndarray]) -> torch.Tensor:
        if self.tensor_preprocess is None:
            return super().encode(frames)
        return self.run(self.tensor_preprocess(frames)).to(self.device, self.dtype)

    @torch.inference_mode()
    def run(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.encoder(pixel_values.to(self.device, self.dtype))

    def close(self) -> None:
        self.encoder = None  # type: ignore[assignment]


_RESAMPLE_MODES = {2: "bilinear", 3: "bicubic"}  # PIL's BILINEAR / BICUBIC (CLIP's is bicubic)


class TensorPreprocessor:
    """The checkpoint's preprocessing as torch ops on the runtime's device (a GPU takes a frame as one
    upload of uint8 pixels instead of a PIL pass on the host): pad-to-square with the mean colour,
    resize (HF's output size: shortest edge or a fixed size; PIL's antialiased bicubic/bilinear, rounded
    to uint8 as PIL does), center crop, rescale, normalize. Within 1/255 per pixel of the HF processor
    for the stretch, center-crop and pad geometries (test_preprocessing.py). Built from the saved
    processor settings, so no transformers class is involved.
    """

    def __init__(self, settings: dict, pad_to_square: bool, background: Sequence[int], device: torch.device) -> None:
        self.device = device
        self.pad_to_square = pad_to_square
        # (3, 1, 1) constants made on the CPU and moved to the device at the first frame (a backend may be
        # constructed where the device is not usable yet, e.g. while `auto` picks a backend)
        self.background = torch.tensor(list(background), dtype=torch.float32)[:, None, None]
        resample = int(settings.get("resample", 3))
        if resample not in _RESAMPLE_MODES:
            raise ValueError(f"resample {resample} has no tensor equivalent (supported: 2 bilinear, 3 bicubic)")
        self.mode = _RESAMPLE_MODES[resample]
        self.do_resize = bool(settings.get("do_resize", True))
        size = settings.get("size", {})
        self.shortest_edge = int(size) if isinstance(size, int) else size.get("shortest_edge")
        self.fixed = None if self.shortest_edge is not None else (int(size["height"]), int(size["width"]))
        crop = settings.get("crop_size")
        self.crop = (int(crop["height"]), int(crop["width"])) if settings.get("do_center_crop") and crop else None
        self.scale = float(settings.get("rescale_factor", 1 / 255)) if settings.get("do_rescale", True) else 1.0
        self.normalize = bool(settings.get("do_normalize", True))
        self.mean = torch.tensor(settings.get("image_mean", [0.0] * 3), dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(settings.get("image_std", [1.0] * 3), dtype=torch.float32)[:, None, None]
        self._on_device = False

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """HF's resize target (get_resize_output_image_size with default_to_square=False)."""
        if self.fixed is not None:
            return self.fixed
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = int(self.shortest_edge), int(int(self.shortest_edge) * long / short)
        return (new_long, new_short) if width <= height else (new_short, new_long)

    def _resize(self, x: torch.Tensor, target: tuple[int, int]) -> torch.Tensor:
        """PIL's separable resize: one pass per axis, each rounded and clipped to uint8 (the clipping between
        the passes matters where bicubic overshoots, on edges and noise), in the order PIL's output shows:
        vertical first when the height shrinks by more than the width does, else horizontal first (found
        by comparing both orders with PIL on the shapes of test_tensor_preprocessing.py, not read from
        PIL's source)."""
        def one_pass(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
            if tuple(t.shape[1:]) == size:
                return t
            return torch.nn.functional.interpolate(t[None], size=size, mode=self.mode, antialias=True,
                                                   align_corners=False)[0].round().clamp(0, 255)

        height, width = x.shape[1:]
        if height > target[0] and height * target[1] > width * target[0]:  # h/H > w/W, and H < h
            return one_pass(one_pass(x, (target[0], width)), target)
        return one_pass(one_pass(x, (height, target[1])), target)

    @torch.inference_mode()
    def __call__(self, frames: Sequence[np.ndarray]) -> torch.Tensor:
        """frames: B arrays (H, W, 3) uint8 RGB -> pixel_values (B, 3, S, S) float32 on the device."""
        if not self._on_device:
            self.background, self.mean, self.std = (t.to(self.device) for t in (self.background, self.mean, self.std))
            self._on_device = True
        out = []
        for frame in frames:
            ImagePreprocessor.check_frame(frame)
            x = torch.from_numpy(np.ascontiguousarray(frame)).to(self.device).permute(2, 0, 1).float()  # (3, H, W)
            height, width = x.shape[1:]
            if self.pad_to_square and height != width:
                pad_x, pad_y, side = square_padding(width, height)
                square = self.background.expand(3, side, side).clone()
                square[:, pad_y:pad_y + height, pad_x:pad_x + width] = x
                x, height, width = square, side, side
            if self.do_resize:
                target = self.output_size(height, width)
                if target != (height, width):
                    x = self._resize(x, target)
            if self.crop is not None:
                crop_h, crop_w = self.crop
                top, left = (x.shape[1] - crop_h) // 2, (x.shape[2] - crop_w) // 2
                if top < 0 or left < 0:
                    raise ValueError(f"crop {self.crop} is larger than the resized frame {tuple(x.shape[1:])}")
                x = x[:, top:top + crop_h, left:left + crop_w]
            x = x * self.scale
            if self.normalize:
                x = (x - self.mean) / self.std
            out.append(x)
        return torch.stack(out)
