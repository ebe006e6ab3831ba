"""Property tests: source region -> instruction text -> parsed region, for every dialect and mode.

The bound is derived, not tuned: a dialect writes each normalized coordinate on a grid whose
half step is ``dialect.quantization(model_size)``; one normalized unit is
``geometry.source_per_unit(w, h)`` source pixels, so the round trip may move a coordinate by at
most their product (plus float noise).
"""
from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from chatspot_ros.referring import (
    DIALECTS,
    ImageGeometry,
    InstructionBuilder,
    Region,
    RegionKind,
    ResizeMode,
    clip_region,
    get_dialect,
    parse_regions,
    parse_steps,
)
from chatspot_ros.referring.regions import polygon_area

GEOMETRIES = {
    "stretch_336": ImageGeometry.stretch(336, 336),
    "stretch_448x224": ImageGeometry.stretch(448, 224),
    "center_crop_336": ImageGeometry.center_crop(336, (336, 336)),
    "center_crop_256_224": ImageGeometry.center_crop(256, (224, 224)),
    "pad_336": ImageGeometry.pad(336),
    "pad_crop_336": ImageGeometry(ResizeMode.PAD, (336, 336), shortest_edge=336),
    "smart_resize": ImageGeometry.qwen_smart_resize(),
    "smart_resize_small_budget": ImageGeometry.qwen_smart_resize(max_pixels=64 * 28 * 28),
}

# Every dialect at its default precision on every geometry; other precisions on a few geometries.
CASES = [(name, None, geometry) for name in DIALECTS for geometry in sorted(GEOMETRIES)] + [
    (name, precision, geometry)
    for name, precision in (("chatspot", 5), ("llava", 4))
    for geometry in ("pad_336", "center_crop_256_224", "smart_resize")
]

EXTREME_SIZES = [(4000, 50), (50, 4000), (1, 1), (640, 480), (480, 640), (1920, 1080), (7, 5000)]

image_sizes = st.one_of(
    st.sampled_from(EXTREME_SIZES),
    st.tuples(st.integers(1, 5000), st.integers(1, 5000)),
)

unit = st.floats(0.0, 1.0, allow_nan=False)

PROPERTY_SETTINGS = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
)


def _usable(geometry: ImageGeometry, size: tuple[int, int]) -> bool:
    """Qwen's smart resize rejects aspect ratios above 200, as the real processor does."""
    w, h = size
    return geometry.mode is not ResizeMode.SMART_RESIZE or max(w, h) / min(w, h) <= 200


@st.composite
def regions_in(draw: st.DrawFn, rect: tuple[float, float, float, float]) -> Region:
    """A point, box or simple (star-shaped) polygon inside rect, in source pixels."""
    x0, y0, x1, y1 = rect

    def at(u: float, v: float) -> tuple[float, float]:
        return x0 + u * (x1 - x0), y0 + v * (y1 - y0)

    kind = draw(st.sampled_from(list(RegionKind)))
    if kind is RegionKind.POINT:
        return Region.point(*at(draw(unit), draw(unit)))
    if kind is RegionKind.BOX:
        us, vs = sorted((draw(unit), draw(unit))), sorted((draw(unit), draw(unit)))
        (ax, ay), (bx, by) = at(us[0], vs[0]), at(us[1], vs[1])
        return Region.box(ax, ay, bx, by)
    n = draw(st.integers(3, 6))
    cu, cv = draw(st.floats(0.3, 0.7)), draw(st.floats(0.3, 0.7))
    angles = sorted(draw(st.lists(st.floats(0.0, 2 * math.pi, exclude_max=True), min_size=n, max_size=n, unique=True)))
    radii = draw(st.lists(st.floats(0.1, 0.3), min_size=n, max_size=n))
    points = [at(cu + r * math.cos(a), cv + r * math.sin(a)) for a, r in zip(angles, radii)]
    try:
        return Region.polygon(points)
    except ValueError:
        assume(False)
        raise  # unreachable


def _robust_polygon(region: Region, delta: float) -> bool:
    """True when moving every vertex by <= delta (per axis) cannot collapse the polygon.

    Shoelace: the area changes by at most sqrt(2) * delta * perimeter + n * delta^2.
    """
    pts = region.points
    perimeter = sum(math.dist(pts[i], pts[i - 1]) for i in range(len(pts)))
    return abs(polygon_area(pts)) > 1.5 * delta * perimeter + len(pts) * delta * delta + 1e-6


@pytest.mark.parametrize(("dialect_name", "precision", "geometry_name"), CASES)
@settings(PROPERTY_SETTINGS, max_examples=20)  # 46 combinations: keeps the folder well under 20 s
@given(data=st.data(), size=image_sizes)
def test_region_round_trips_within_quantization(
    dialect_name: str, precision: int | None, geometry_name: str, data: st.DataObject, size: tuple[int, int]
) -> None:
    geometry = GEOMETRIES[geometry_name]
    assume(_usable(geometry, size))
    dialect = get_dialect(dialect_name, precision=precision)
    width, height = size
    rect = geometry.visible_rect(width, height)
    regions = data.draw(st.lists(regions_in(rect), min_size=1, max_size=3))

    qx, qy = dialect.quantization(geometry.model_size(width, height))
    ux, uy = geometry.source_per_unit(width, height)
    tol_x = qx * ux + 1e-7 * max(ux, 1.0)
    tol_y = qy * uy + 1e-7 * max(uy, 1.0)
    for region in regions:
        if region.kind is RegionKind.POLYGON:
            assume(_robust_polygon(region, max(tol_x, tol_y)))
        event(region.kind.name)

    builder = InstructionBuilder(dialect, geometry)
    instruction = builder.ask("What is the object doing in the region?", regions, size)
    assert instruction.notes == ()  # regions inside the visible rect are never clipped
    parsed = parse_regions(instruction.text, dialect, geometry, size)

    assert [r.kind for r in parsed] == [r.kind for r in regions], instruction.text
    for want, got in zip(regions, parsed):
        assert len(got.points) == len(want.points)
        for (wx, wy), (gx, gy) in zip(want.points, got.points):
            assert abs(gx - wx) <= tol_x, (instruction.text, want, got, tol_x)
            assert abs(gy - wy) <= tol_y, (instruction.text, want, got, tol_y)


@pytest.mark.parametrize("geometry_name", sorted(GEOMETRIES))
@PROPERTY_SETTINGS
@given(size=image_sizes, u=unit, v=unit)
def test_to_source_inverts_to_model(geometry_name: str, size: tuple[int, int], u: float, v: float) -> None:
    geometry = GEOMETRIES[geometry_name]
    assume(_usable(geometry, size))
    x0, y0, x1, y1 = geometry.visible_rect(*size)
    point = (x0 + u * (x1 - x0), y0 + v * (y1 - y0))
    (norm,), clipped = geometry.to_model([point], *size)
    assert not clipped
    assert 0.0 <= norm[0] <= 1.0 and 0.0 <= norm[1] <= 1.0
    (back,) = geometry.to_source([norm], *size)
    scale = max(size)
    assert math.isclose(back[0], point[0], abs_tol=1e-9 * scale)
    assert math.isclose(back[1], point[1], abs_tol=1e-9 * scale)


@PROPERTY_SETTINGS
@given(
    size=image_sizes,
    bad=st.sampled_from([math.nan, math.inf, -math.inf]),
    slot=st.integers(0, 3),
)
def test_non_finite_coordinates_are_rejected(size: tuple[int, int], bad: float, slot: int) -> None:
    coords = [1.0, 1.0, 2.0, 2.0]
    coords[slot] = bad
    with pytest.raises(ValueError, match="finite"):
        Region.box(*coords)


@PROPERTY_SETTINGS
@given(a=st.floats(-1e4, 1e4), b=st.floats(-1e4, 1e4), y=st.floats(-1e4, 1e4))
def test_box_with_max_below_min_is_rejected(a: float, b: float, y: float) -> None:
    assume(a != b)
    lo, hi = min(a, b), max(a, b)
    with pytest.raises(ValueError, match="max < min"):
        Region.box(hi, y, lo, y + 1)
    with pytest.raises(ValueError, match="max < min"):
        Region.box(y, hi, y + 1, lo)


def _outside(width: int, height: int, u: float, v: float, side: str) -> tuple[float, float]:
    """A point u image sizes beyond one side of the image, at fraction v along that side."""
    return {
        "left": (-u * width, v * height),
        "right": ((1 + u) * width, v * height),
        "top": (v * width, -u * height),
        "bottom": (v * width, (1 + u) * height),
    }[side]


@PROPERTY_SETTINGS
@given(size=image_sizes, u=st.floats(0.5001, 50.0), v=unit, side=st.sampled_from(["left", "right", "top", "bottom"]))
def test_points_far_outside_the_image_are_rejected(size: tuple[int, int], u: float, v: float, side: str) -> None:
    width, height = size
    with pytest.raises(ValueError, match="outside"):
        clip_region(Region.point(*_outside(width, height, u, v, side)), width, height)


@PROPERTY_SETTINGS
@given(size=image_sizes, u=st.floats(1e-3, 0.5), v=unit, side=st.sampled_from(["left", "right", "top", "bottom"]))
def test_points_slightly_outside_are_clipped_and_reported(size: tuple[int, int], u: float, v: float, side: str) -> None:
    width, height = size
    result = clip_region(Region.point(*_outside(width, height, u, v, side)), width, height)
    (x, y), = result.region.points
    assert 0 <= x <= width and 0 <= y <= height
    assert result.clipped and "clipped" in result.message


@PROPERTY_SETTINGS
@given(question=st.text(alphabet=" \t\n\r\u00a0\u2003", max_size=20))
def test_whitespace_questions_are_rejected(question: str) -> None:
    builder = InstructionBuilder("chatspot", GEOMETRIES["pad_336"])
    with pytest.raises(ValueError, match="question is empty"):
        builder.ask(question, [Region.point(1, 1)], (640, 480))


@PROPERTY_SETTINGS
@given(limit=st.integers(1, 300), extra=st.integers(1, 50))
def test_questions_over_the_limit_are_rejected(limit: int, extra: int) -> None:
    builder = InstructionBuilder("chatspot", GEOMETRIES["pad_336"], max_question_chars=limit)
    builder.ask("q" * limit, [], (640, 480))
    with pytest.raises(ValueError, match=f"at most {limit}"):
        builder.ask("q" * (limit + extra), [], (640, 480))


step_text = st.text(
    alphabet=st.characters(whitelist_categories=("Lu", "Ll", "Nd"), whitelist_characters=" ,;'"),
    min_size=1,
    max_size=40,
).map(lambda s: " ".join(s.split())).filter(bool)


@PROPERTY_SETTINGS
@given(
    steps=st.lists(step_text, min_size=2, max_size=8),
    marker=st.sampled_from(["{i}. ", "{i}) ", "Step {i}: ", "- ", "* ", "• "]),
)
def test_listed_steps_round_trip(steps: list[str], marker: str) -> None:
    text = "Here is the plan:\n" + "\n".join(marker.format(i=i) + s for i, s in enumerate(steps, 1))
    assert parse_steps(text) == steps
