"""Regions of interest in source-image pixels, their validation and their clipping to the image.

Coordinates are continuous: x to the right, y down, the image covers [0, width] x [0, height]
(pixel edges sit on integers, so the box (0, 0, W, H) is the whole image). Detectors often return
boxes a few pixels outside the image; those are clipped and the clip is reported, because a
silently moved box changes what the model is asked about. Regions far outside the image are
rejected: they are a bug upstream (wrong image, wrong units), not detector noise.
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Iterable, Sequence

Point = tuple[float, float]

# How far outside the image a coordinate may lie before it is an error rather than noise, as a
# fraction of the image size on that axis: 0.5 accepts x in [-0.5 W, 1.5 W].
DEFAULT_MAX_OUTSIDE = 0.5

# Polygons whose area is below this fraction of their bounding square are degenerate (collinear).
_DEGENERATE_AREA_FRACTION = 1e-9


class RegionKind(enum.IntEnum):
    """What the points of a region mean; values equal the msg/Region.msg constants."""

    POINT = 0
    BOX = 1
    POLYGON = 2


def polygon_area(points: Sequence[Point]) -> float:
    """Signed shoelace area (positive for counter-clockwise in x-right/y-up axes)."""
    area = 0.0
    n = len(points)
    for i in range(n):
        x0, y0 = points[i]
        x1, y1 = points[(i + 1) % n]
        area += x0 * y1 - x1 * y0
    return 0.5 * area


def is_degenerate_polygon(points: Sequence[Point]) -> bool:
    """True when the polygon has fewer than 3 distinct points or (numerically) zero area."""
    if len(set(points)) < 3:
        return True
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    extent = max(max(xs) - min(xs), max(ys) - min(ys))
    return abs(polygon_area(points)) <= _DEGENERATE_AREA_FRACTION * extent * extent


def _as_points(points: Iterable[Sequence[float]]) -> tuple[Point, ...]:
    out = []
    for p in points:
        if len(p) != 2:
            raise ValueError(f"a point needs 2 coordinates (x, y), got {tuple(p)!r}")
        x, y = float(p[0]), float(p[1])
        if not (math.isfinite(x) and math.isfinite(y)):
            raise ValueError(f"region coordinates must be finite, got ({x}, {y})")
        out.append((x, y))
    return tuple(out)


@dataclass(frozen=True)
class Region:
    """A point, box or polygon in pixel coordinates of the source image.

    BOX points are ((x_min, y_min), (x_max, y_max)); a zero-width or zero-height box is allowed
    (a detector's line), max < min is not.
    """

    kind: RegionKind
    points: tuple[Point, ...]
    id: str = ""
    label: str = ""

    def __post_init__(self) -> None:
        kind = RegionKind(self.kind)
        points = _as_points(self.points)
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "points", points)
        object.__setattr__(self, "id", str(self.id))
        object.__setattr__(self, "label", str(self.label))
        name = f" {self.id!r}" if self.id else ""
        if kind is RegionKind.POINT and len(points) != 1:
            raise ValueError(f"point region{name} needs exactly 1 point, got {len(points)}")
        if kind is RegionKind.BOX:
            if len(points) != 2:
                raise ValueError(f"box region{name} needs 2 corner points, got {len(points)}")
            (x0, y0), (x1, y1) = points
            if x1 < x0 or y1 < y0:
                raise ValueError(
                    f"box region{name} has max < min: (x_min, y_min, x_max, y_max) = ({x0}, {y0}, {x1}, {y1})"
                )
        if kind is RegionKind.POLYGON:
            if len(points) < 3:
                raise ValueError(f"polygon region{name} needs at least 3 points, got {len(points)}")
            if is_degenerate_polygon(points):
                raise ValueError(
                    f"polygon region{name} is degenerate (fewer than 3 distinct points or zero area): {points}"
                )

    @classmethod
    def point(cls, x: float, y: float, *, id: str = "", label: str = "") -> Region:
        return cls(RegionKind.POINT, ((x, y),), id, label)

    @classmethod
    def box(
        cls, x_min: float, y_min: float, x_max: float, y_max: float, *, id: str = "", label: str = ""
    ) -> Region:
        return cls(RegionKind.BOX, ((x_min, y_min), (x_max, y_max)), id, label)

    @classmethod
    def polygon(cls, points: Iterable[Sequence[float]], *, id: str = "", label: str = "") -> Region:
        return cls(RegionKind.POLYGON, tuple(tuple(p) for p in points), id, label)  # type: ignore[arg-type]

    @classmethod
    def from_points(cls, points: Iterable[Sequence[float]], *, id: str = "", label: str = "") -> Region:
        """The paper's unified form R = {(x_k, y_k)}_{k=1..N}: N=1 point, N=2 box, N>=3 polygon."""
        pts = _as_points(points)
        if not pts:
            raise ValueError("a region needs at least 1 point")
        kind = RegionKind.POINT if len(pts) == 1 else RegionKind.BOX if len(pts) == 2 else RegionKind.POLYGON
        return cls(kind, pts, id, label)

    @property
    def name(self) -> str:
        """How notes refer to this region: its id, else its label, else its kind."""
        if self.id:
            return f"region {self.id!r}"
        if self.label:
            return f"region {self.label!r}"
        return f"{self.kind.name.lower()} region"


@dataclass(frozen=True)
class ClippedRegion:
    """A region after clipping to the image, and whether (and how) the clip changed it."""

    region: Region
    clipped: bool
    message: str = ""


def check_image_size(image_size: Sequence[int]) -> tuple[int, int]:
    """(width, height) as positive ints; ValueError otherwise."""
    if len(image_size) != 2:
        raise ValueError(f"image size must be (width, height), got {tuple(image_size)!r}")
    w, h = image_size
    if int(w) != w or int(h) != h or w <= 0 or h <= 0:
        raise ValueError(f"image size must be two positive integers (width, height), got ({w}, {h})")
    return int(w), int(h)


def clip_polygon_to_rect(
    points: Sequence[Point], x0: float, y0: float, x1: float, y1: float
) -> list[Point]:
    """Sutherland-Hodgman clip of a polygon to an axis-aligned rectangle (may return < 3 points)."""

    def clip_edge(pts: list[Point], inside, intersect) -> list[Point]:
        out: list[Point] = []
        for i, cur in enumerate(pts):
            prev = pts[i - 1]
            if inside(cur):
                if not inside(prev):
                    out.append(intersect(prev, cur))
                out.append(cur)
            elif inside(prev):
                out.append(intersect(prev, cur))
        return out

    def at_x(x: float):
        return lambda p, q: (x, p[1] + (q[1] - p[1]) * (x - p[0]) / (q[0] - p[0]))

    def at_y(y: float):
        return lambda p, q: (p[0] + (q[0] - p[0]) * (y - p[1]) / (q[1] - p[1]), y)

    pts = list(points)
    for inside, intersect in (
        (lambda p: p[0] >= x0, at_x(x0)),
        (lambda p: p[0] <= x1, at_x(x1)),
        (lambda p: p[1] >= y0, at_y(y0)),
        (lambda p: p[1] <= y1, at_y(y1)),
    ):
        if not pts:
            break
        pts = clip_edge(pts, inside, intersect)
    # Consecutive duplicates appear where the polygon touches a clip edge.
    deduped = [p for i, p in enumerate(pts) if p != pts[i - 1]] if len(pts) > 1 else pts
    return deduped


def clip_points(
    kind: RegionKind,
    points: Sequence[Point],
    x0: float,
    y0: float,
    x1: float,
    y1: float,
    *,
    point_tolerance: float = math.inf,
) -> tuple[tuple[Point, ...], bool]:
    """Clip points of one region kind to a rectangle: (points, changed). ValueError if nothing is left.

    A point is clamped if it lies at most ``point_tolerance`` outside (a crop passes a tiny
    tolerance: a point cropped away is gone, not moved); a box is intersected; a polygon is clipped
    with Sutherland-Hodgman. "Nothing left" means the region lay entirely outside: a box axis with
    positive extent shrinks to zero, or the polygon degenerates.
    """
    pts = tuple(points)
    if kind is RegionKind.POINT:
        (x, y), = pts
        cx, cy = min(max(x, x0), x1), min(max(y, y0), y1)
        if max(abs(cx - x), abs(cy - y)) > point_tolerance:
            raise ValueError("the point lies outside")
        return ((cx, cy),), (cx, cy) != (x, y)
    if kind is RegionKind.BOX:
        (bx0, by0), (bx1, by1) = pts
        cx0, cx1 = max(bx0, x0), min(bx1, x1)
        cy0, cy1 = max(by0, y0), min(by1, y1)
        if cx1 < cx0 or cy1 < cy0 or (cx1 == cx0 and bx1 > bx0) or (cy1 == cy0 and by1 > by0):
            raise ValueError("the box lies entirely outside")
        out = ((cx0, cy0), (cx1, cy1))
        return out, out != pts
    if all(x0 <= x <= x1 and y0 <= y <= y1 for x, y in pts):
        return pts, False
    clipped = clip_polygon_to_rect(pts, x0, y0, x1, y1)
    if len(clipped) < 3 or is_degenerate_polygon(clipped):
        raise ValueError("the polygon lies entirely outside")
    return tuple(clipped), True


def clip_region(
    region: Region, width: int, height: int, *, max_outside: float = DEFAULT_MAX_OUTSIDE
) -> ClippedRegion:
    """Clip a region to the [0, width] x [0, height] image and report the clip.

    ValueError when a coordinate lies more than ``max_outside`` x the image size outside the image
    (e.g. 0.5: x < -0.5 W or x > 1.5 W), or when nothing of the region is left inside.
    """
    width, height = check_image_size((width, height))
    if not (math.isfinite(max_outside) and max_outside >= 0):
        raise ValueError(f"max_outside must be a finite fraction >= 0, got {max_outside}")
    lo_x, hi_x = -max_outside * width, (1 + max_outside) * width
    lo_y, hi_y = -max_outside * height, (1 + max_outside) * height
    for x, y in region.points:
        if not (lo_x <= x <= hi_x and lo_y <= y <= hi_y):
            raise ValueError(
                f"{region.name} has the point ({x:g}, {y:g}), more than {max_outside:g} x the image size "
                f"outside the {width}x{height} image; wrong image or wrong units?"
            )
    try:
        points, changed = clip_points(region.kind, region.points, 0.0, 0.0, float(width), float(height))
    except ValueError as err:
        raise ValueError(f"{region.name} lies entirely outside the {width}x{height} image ({err})") from None
    if not changed:
        return ClippedRegion(region, False, "")
    clipped = Region(region.kind, points, region.id, region.label)
    return ClippedRegion(clipped, True, f"{region.name} clipped to the {width}x{height} image")
