"""Box arithmetic of the evaluation: formats, IoU, Acc@0.5 and the box-noise rule (paper Fig. 5).

Boxes are in source-image pixels with continuous coordinates (docs/referring.md): ``xywh`` is
COCO's ``[x_min, y_min, width, height]``, ``xyxy`` is ``(x_min, y_min, x_max, y_max)``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Box = tuple[float, float, float, float]

# The noise rule moves each edge by at most scale x the box side; at 0.5 two edges could cross.
MAX_NOISE_SCALE = 0.5


def xywh_to_xyxy(box: Sequence[float]) -> Box:
    """COCO ``[x, y, w, h]`` -> ``(x0, y0, x1, y1)``; ValueError for a negative size or a non-finite value."""
    if len(box) != 4:
        raise ValueError(f"a box needs 4 numbers [x, y, w, h], got {list(box)!r}")
    x, y, w, h = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise ValueError(f"box values must be finite, got {list(box)!r}")
    if w < 0 or h < 0:
        raise ValueError(f"a box [x, y, w, h] needs w, h >= 0, got {list(box)!r}")
    return (x, y, x + w, y + h)


def xyxy_to_xywh(box: Sequence[float]) -> list[float]:
    x0, y0, x1, y1 = (float(v) for v in box)
    return [x0, y0, x1 - x0, y1 - y0]


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``xyxy`` boxes; 0.0 when both are empty."""
    ax0, ay0, ax1, ay1 = a
    bx0, by0, bx1, by1 = b
    iw = max(0.0, min(ax1, bx1) - max(ax0, bx0))
    ih = max(0.0, min(ay1, by1) - max(ay0, by0))
    inter = iw * ih
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    return inter / union if union > 0 else 0.0


def accuracy_at_iou(ious: Sequence[float | None], threshold: float = 0.5) -> float:
    """Share of predictions with IoU >= threshold; ``None`` (no parsable box) counts as wrong."""
    if not ious:
        return 0.0
    return sum(1 for v in ious if v is not None and v >= threshold) / len(ious)


def jitter_box(box: Sequence[float], scale: float, rng: np.random.Generator,
               image_size: tuple[int, int]) -> Box:
    """The paper's box noise: each edge moves by U(-scale, scale) x the box side, then the box is clipped.

    x edges move by a fraction of the box width, y edges by a fraction of its height, all four
    independently, drawn from ``rng`` in the order x0, y0, x1, y1; the result is clipped to the
    ``(width, height)`` image. ``scale`` must be in [0, 0.5), so the edges can never cross.
    """
    if not (0.0 <= scale < MAX_NOISE_SCALE):
        raise ValueError(f"noise scale must be in [0, {MAX_NOISE_SCALE}), got {scale}")
    x0, y0, x1, y1 = (float(v) for v in box)
    w, h = x1 - x0, y1 - y0
    dx0, dy0, dx1, dy1 = rng.uniform(-scale, scale, size=4)
    width, height = image_size
    nx0 = min(max(x0 + dx0 * w, 0.0), float(width))
    ny0 = min(max(y0 + dy0 * h, 0.0), float(height))
    nx1 = min(max(x1 + dx1 * w, 0.0), float(width))
    ny1 = min(max(y1 + dy1 * h, 0.0), float(height))
    return (nx0, ny0, nx1, ny1)
