"""Φ: where a source-image region lands in the image the model actually sees.

The paper normalizes region coordinates to [0, 1] (Φ in Eq. 1). "Normalized to what" matters: a
checkpoint that pads to a square (LLaVA-1.5) or center-crops (plain CLIP preprocessing) sees a
different picture than the camera frame, and a box normalized against the camera frame points
at the wrong place. So normalization is always relative to the model's input image, described
by an ``ImageGeometry`` read from the checkpoint's own preprocessing config.

Every mode is the same affine chain, done per axis:
``[pad to square] -> resize to (rw, rh) -> center crop to size``; normalized = model pixel / size.
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from chatspot_ros.referring.regions import Point, RegionKind, check_image_size, clip_points

# Clamping below this (normalized units) is float noise, not a clip worth reporting.
_CLIP_EPS = 1e-9

# Qwen2-VL / Qwen2.5-VL image processor defaults (patch 14 x merge 2 = 28).
QWEN_MIN_PIXELS = 56 * 56
QWEN_MAX_PIXELS = 28 * 28 * 16384
QWEN_FACTOR = 28
QWEN_MAX_ASPECT = 200


class ResizeMode(str, enum.Enum):
    """How a checkpoint turns a source image into its input image."""

    STRETCH = "stretch"  # plain resize to size, aspect ratio not kept
    CENTER_CROP = "center_crop"  # resize the shortest edge (or to a fixed size), then center crop
    PAD = "pad"  # LLaVA-1.5 expand2square: pad to a centered square, then resize (and crop)
    SMART_RESIZE = "smart_resize"  # Qwen2-VL: stretch to multiples of `factor` within a pixel budget


def smart_resize(
    height: int,
    width: int,
    factor: int = QWEN_FACTOR,
    min_pixels: int = QWEN_MIN_PIXELS,
    max_pixels: int = QWEN_MAX_PIXELS,
) -> tuple[int, int]:
    """Qwen2-VL's resize target (height, width), as transformers' Qwen2VLImageProcessor computes it."""
    if max(height, width) / min(height, width) > QWEN_MAX_ASPECT:
        raise ValueError(
            f"aspect ratio of a {width}x{height} image exceeds {QWEN_MAX_ASPECT}, which Qwen2-VL rejects"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def square_padding(width: int, height: int) -> tuple[int, int, int]:
    """LLaVA's expand2square: (pad_x, pad_y, side) to paste a width x height image centred on a side x side square.

    The one place that says where the image lands: Φ (``ImageGeometry``) and the runtime's
    preprocessing (``ImagePreprocessor.expand_to_square``) both use it.
    """
    side = max(width, height)
    return (side - width) // 2, (side - height) // 2, side


def processor_pads_to_square(processor_config: Mapping[str, Any]) -> bool:
    """True when the image processor pads to a square itself (``do_pad`` of HF's LlavaImageProcessor)."""
    processor_type = str(processor_config.get("image_processor_type", ""))
    return processor_type.startswith("LlavaImageProcessor") and bool(processor_config.get("do_pad", False))


@dataclass(frozen=True)
class _Chain:
    """The affine chain for one source size: model_px = (src + pad) * scale - crop_offset."""

    pad_x: int
    pad_y: int
    scale_x: float
    scale_y: float
    left: int
    top: int
    out_w: int
    out_h: int


def _size_pair(value: Any, what: str) -> tuple[int, int]:
    """(width, height) from an HF size entry: {"height", "width"} or a bare int (square)."""
    if isinstance(value, int):
        return value, value
    if isinstance(value, Mapping) and "height" in value and "width" in value:
        return int(value["width"]), int(value["height"])
    raise ValueError(f"{what} must be an int or {{'height', 'width'}}, got {value!r}")


def _positive_pair(value: tuple[int, int], what: str) -> tuple[int, int]:
    w, h = value
    if int(w) != w or int(h) != h or w <= 0 or h <= 0:
        raise ValueError(f"{what} must be two positive integers (width, height), got {value!r}")
    return int(w), int(h)


@dataclass(frozen=True)
class ImageGeometry:
    """How the checkpoint's preprocessing sees a source image.

    size: the model input (width, height); (0, 0) for SMART_RESIZE, whose size depends on the
    source image (use ``model_size``). shortest_edge / resize_size: the resize before a center
    crop (CENTER_CROP, optionally PAD); at most one of them is set.
    """

    mode: ResizeMode
    size: tuple[int, int]
    shortest_edge: int | None = None
    resize_size: tuple[int, int] | None = None
    min_pixels: int = QWEN_MIN_PIXELS
    max_pixels: int = QWEN_MAX_PIXELS
    factor: int = QWEN_FACTOR

    def __post_init__(self) -> None:
        mode = ResizeMode(self.mode)
        object.__setattr__(self, "mode", mode)
        if self.shortest_edge is not None and self.resize_size is not None:
            raise ValueError("set at most one of shortest_edge and resize_size")
        edge = self.shortest_edge
        if edge is not None and (int(edge) != edge or edge <= 0):
            raise ValueError(f"shortest_edge must be a positive integer, got {self.shortest_edge!r}")
        if self.resize_size is not None:
            object.__setattr__(self, "resize_size", _positive_pair(tuple(self.resize_size), "resize_size"))
        if mode is ResizeMode.SMART_RESIZE:
            if tuple(self.size) != (0, 0):
                raise ValueError("smart_resize computes the size per image; pass size=(0, 0)")
            if self.shortest_edge is not None or self.resize_size is not None:
                raise ValueError("smart_resize takes no shortest_edge / resize_size")
            if not (0 < self.min_pixels <= self.max_pixels) or self.factor <= 0:
                raise ValueError(
                    f"smart_resize needs 0 < min_pixels <= max_pixels and factor > 0, got "
                    f"min_pixels={self.min_pixels}, max_pixels={self.max_pixels}, factor={self.factor}"
                )
            object.__setattr__(self, "size", (0, 0))
            return
        object.__setattr__(self, "size", _positive_pair(tuple(self.size), "size"))
        if mode is ResizeMode.STRETCH and (self.shortest_edge is not None or self.resize_size is not None):
            raise ValueError("stretch resizes straight to size; it takes no shortest_edge / resize_size")
        if mode is ResizeMode.CENTER_CROP and self.shortest_edge is None and self.resize_size is None:
            raise ValueError("center_crop needs shortest_edge or resize_size (the resize before the crop)")

    # -- constructors ---------------------------------------------------------------------------

    @classmethod
    def stretch(cls, width: int, height: int) -> ImageGeometry:
        return cls(ResizeMode.STRETCH, (width, height))

    @classmethod
    def center_crop(cls, shortest_edge: int, crop: tuple[int, int]) -> ImageGeometry:
        return cls(ResizeMode.CENTER_CROP, crop, shortest_edge=shortest_edge)

    @classmethod
    def pad(cls, size: int) -> ImageGeometry:
        """LLaVA-1.5: expand2square, then resize to size x size."""
        return cls(ResizeMode.PAD, (size, size))

    @classmethod
    def qwen_smart_resize(
        cls, min_pixels: int = QWEN_MIN_PIXELS, max_pixels: int = QWEN_MAX_PIXELS, factor: int = QWEN_FACTOR
    ) -> ImageGeometry:
        return cls(ResizeMode.SMART_RESIZE, (0, 0), min_pixels=min_pixels, max_pixels=max_pixels, factor=factor)

    @classmethod
    def from_checkpoint_configs(
        cls, processor_config: Mapping[str, Any], model_config: Mapping[str, Any] | None = None
    ) -> ImageGeometry:
        """Read the geometry from preprocessor_config.json (and config.json for LLaVA's padding).

        Pad-to-square comes from ``image_aspect_ratio: "pad"`` (original LLaVA, in the model config
        or at the top level of the processor config) or ``do_pad`` of HF's LlavaImageProcessor.
        Qwen2-VL processors (``min_pixels``/``max_pixels``/``merge_size``) give SMART_RESIZE.
        """
        pc = dict(processor_config)
        mc = dict(model_config or {})
        processor_type = str(pc.get("image_processor_type", ""))
        qwen_keys = ("min_pixels", "max_pixels", "merge_size")
        if processor_type.startswith("Qwen2") or any(k in pc for k in qwen_keys):
            return cls._from_qwen_config(pc)
        aspect = mc.get("image_aspect_ratio", pc.get("image_aspect_ratio"))
        if aspect not in (None, "", "pad", "square", "resize"):
            raise ValueError(f"image_aspect_ratio {aspect!r} is not supported (supported: 'pad', 'square')")
        pad = aspect == "pad" or processor_pads_to_square(pc)
        if not pc.get("do_resize", True):
            raise ValueError("do_resize=false: the model input size would follow the camera; not supported")
        if "size" not in pc:
            raise ValueError("the processor config has no 'size'; cannot tell the model's input size")
        size = pc["size"]
        do_crop = bool(pc.get("do_center_crop", "crop_size" in pc))
        if do_crop and "crop_size" not in pc:
            raise ValueError("do_center_crop is set but the processor config has no 'crop_size'")
        crop = _size_pair(pc["crop_size"], "crop_size") if do_crop else None
        if isinstance(size, int) or (isinstance(size, Mapping) and set(size) == {"shortest_edge"}):
            edge = int(size if isinstance(size, int) else size["shortest_edge"])
            if crop is not None:
                return cls(ResizeMode.PAD if pad else ResizeMode.CENTER_CROP, crop, shortest_edge=edge)
            if pad:  # the padded square resizes to edge x edge
                return cls(ResizeMode.PAD, (edge, edge))
            raise ValueError(
                "resize of the shortest edge without a center crop gives an input size that follows the "
                "camera's aspect ratio; not supported"
            )
        resize = _size_pair(size, "size")
        if crop is not None and crop != resize:
            return cls(ResizeMode.PAD if pad else ResizeMode.CENTER_CROP, crop, resize_size=resize)
        return cls(ResizeMode.PAD if pad else ResizeMode.STRETCH, resize)

    @classmethod
    def _from_qwen_config(cls, pc: Mapping[str, Any]) -> ImageGeometry:
        size = pc.get("size") if isinstance(pc.get("size"), Mapping) else {}
        # Newer transformers store the pixel budget as size {"shortest_edge", "longest_edge"} (pixels!).
        min_pixels = int(pc.get("min_pixels", size.get("shortest_edge", QWEN_MIN_PIXELS)))
        max_pixels = int(pc.get("max_pixels", size.get("longest_edge", QWEN_MAX_PIXELS)))
        factor = int(pc.get("patch_size", 14)) * int(pc.get("merge_size", 2))
        return cls.qwen_smart_resize(min_pixels, max_pixels, factor)

    # -- the mapping ----------------------------------------------------------------------------

    def _chain(self, src_w: int, src_h: int) -> _Chain:
        src_w, src_h = check_image_size((src_w, src_h))
        if self.mode is ResizeMode.PAD:
            pad_x, pad_y, side = square_padding(src_w, src_h)
            w1 = h1 = side
        else:
            pad_x, pad_y, w1, h1 = 0, 0, src_w, src_h
        if self.mode is ResizeMode.SMART_RESIZE:
            rh, rw = smart_resize(src_h, src_w, self.factor, self.min_pixels, self.max_pixels)
            out_w, out_h = rw, rh
        else:
            out_w, out_h = self.size
            if self.shortest_edge is not None:  # transformers' get_resize_output_image_size
                short, long = (w1, h1) if w1 <= h1 else (h1, w1)
                new_short, new_long = self.shortest_edge, int(self.shortest_edge * long / short)
                rw, rh = (new_short, new_long) if w1 <= h1 else (new_long, new_short)
            elif self.resize_size is not None:
                rw, rh = self.resize_size
            else:
                rw, rh = out_w, out_h
        # transformers' center_crop: offset (resized - crop) // 2, negative when it pads instead.
        return _Chain(pad_x, pad_y, rw / w1, rh / h1, (rw - out_w) // 2, (rh - out_h) // 2, out_w, out_h)

    def model_size(self, src_w: int, src_h: int) -> tuple[int, int]:
        """The (width, height) of the model input made from a src_w x src_h image."""
        c = self._chain(src_w, src_h)
        return c.out_w, c.out_h

    def max_reduction(self, src_w: int, src_h: int, choices: Sequence[int] = (1, 2, 4, 8)) -> int:
        """The largest factor r of ``choices`` (1 always allowed) at which a src_w x src_h image,
        first shrunk to ceil(src_w / r) x ceil(src_h / r) (JPEG's reduced decoding), is still only
        downscaled by the preprocessing: the model input loses no resolution.

        That is: the resize of the chain does not enlarge the reduced image on either axis. So for
        PAD the reduced longer side >= the resize target (size, or shortest_edge / resize_size
        before a crop); for CENTER_CROP the reduced shorter side >= shortest_edge (or each side >=
        resize_size); for STRETCH reduced w >= model w and reduced h >= model h. SMART_RESIZE
        gives 1: its model input size (and token count) follows the source size, so any reduction
        would change what the model sees.
        """
        src_w, src_h = check_image_size((src_w, src_h))
        best = 1
        if self.mode is ResizeMode.SMART_RESIZE:
            return best
        for r in choices:
            r = int(r)
            if r <= best:
                continue
            c = self._chain(-(-src_w // r), -(-src_h // r))
            if c.scale_x <= 1.0 and c.scale_y <= 1.0:
                best = r
        return best

    def source_per_unit(self, src_w: int, src_h: int) -> tuple[float, float]:
        """Source pixels per normalized unit on each axis: turns a normalized error into pixels."""
        c = self._chain(src_w, src_h)
        return c.out_w / c.scale_x, c.out_h / c.scale_y

    def to_model(
        self,
        points: Sequence[Sequence[float]],
        src_w: int,
        src_h: int,
        *,
        kind: RegionKind | None = None,
    ) -> tuple[tuple[Point, ...], bool]:
        """Source pixels -> normalized [0, 1] model coordinates, clipped to what the model sees.

        kind defaults to the paper's rule (1 point, 2 box, >= 3 polygon). Returns (points, clipped);
        clipped is True when a crop cut part of the region away. ValueError when all of it is.
        """
        c = self._chain(src_w, src_h)
        norm = tuple(
            (
                ((float(x) + c.pad_x) * c.scale_x - c.left) / c.out_w,
                ((float(y) + c.pad_y) * c.scale_y - c.top) / c.out_h,
            )
            for x, y in points
        )
        if kind is None:
            n = len(norm)
            kind = RegionKind.POINT if n == 1 else RegionKind.BOX if n == 2 else RegionKind.POLYGON
        if all(-_CLIP_EPS <= v <= 1 + _CLIP_EPS for p in norm for v in p):
            return tuple((min(max(x, 0.0), 1.0), min(max(y, 0.0), 1.0)) for x, y in norm), False
        try:
            clipped, _ = clip_points(RegionKind(kind), norm, 0.0, 0.0, 1.0, 1.0, point_tolerance=_CLIP_EPS)
        except ValueError as err:
            raise ValueError(
                f"{err} of the part of the {src_w}x{src_h} image the model sees ({self.mode.value} "
                f"preprocessing); it is cropped away"
            ) from None
        return clipped, True

    def to_source(self, points: Sequence[Sequence[float]], src_w: int, src_h: int) -> tuple[Point, ...]:
        """Normalized model coordinates -> source pixels (not clipped: pad areas map outside)."""
        c = self._chain(src_w, src_h)
        return tuple(
            (
                (float(u) * c.out_w + c.left) / c.scale_x - c.pad_x,
                (float(v) * c.out_h + c.top) / c.scale_y - c.pad_y,
            )
            for u, v in points
        )

    def visible_rect(self, src_w: int, src_h: int) -> tuple[float, float, float, float]:
        """The part of the source image the model sees, (x_min, y_min, x_max, y_max) in source pixels."""
        (x0, y0), (x1, y1) = self.to_source(((0.0, 0.0), (1.0, 1.0)), src_w, src_h)
        return max(x0, 0.0), max(y0, 0.0), min(x1, float(src_w)), min(y1, float(src_h))
