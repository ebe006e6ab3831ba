"""Golden texts per dialect, worked out by hand from the published formats.

All on a 640x480 source image. The numbers are derived in the comments; the code is not
consulted to write them. Rounding is Python's round-half-to-even, on the exact binary value
(0.3125 -> "0.312", 0.6875 -> "0.688", 312.5 -> 312).

PAD (LLaVA-1.5 expand2square, then resize to 336x336):
    the 640x480 image is pasted at (0, (640 - 480) // 2) = (0, 80) on a 640x640 square, so
    u = x / 640 and v = (y + 80) / 640; resizing the square keeps u, v.
    box (64, 120, 320, 360): u = 64/640 = 0.1, 320/640 = 0.5
                             v = 200/640 = 0.3125, 440/640 = 0.6875
    point (160, 304):        u = 0.25, v = 384/640 = 0.6
    polygon (64,112) (576,112) (320,432):
                             u = 0.1, 0.9, 0.5; v = 192/640 = 0.3, 0.3, 512/640 = 0.8
    qwen2_5_vl on this geometry writes pixels of the 336x336 input: round(u * 336), round(v * 336)
        box: 33.6 -> 34, 105, 168, 231     point: 84, 201.6 -> 202
        polygon: 33.6 -> 34, 100.8 -> 101, 302.4 -> 302, 101, 168, 268.8 -> 269

CENTER_CROP (CLIP: shortest edge -> 336, center crop 336x336):
    resize 640x480 -> (int(336 * 640 / 480), 336) = (448, 336), scale 0.7 on both axes;
    crop left = (448 - 336) // 2 = 56, top = 0; u = (0.7 x - 56) / 336, v = 0.7 y / 336.
    box (160, 120, 480, 360): u = (112 - 56)/336 = 0.1667, (336 - 56)/336 = 0.8333
                              v = 84/336 = 0.25, 252/336 = 0.75
    box (0, 120, 160, 360): x = 0 -> -56 px, cropped; clipped to u = 0 (x = 56 / 0.7 = 80 source px)
    box (0, 0, 60, 100): x_max -> 42 px < 56: entirely cropped away -> ValueError

STRETCH (plain resize to 336x336): u = x / 640, v = y / 480.
    box (64, 120, 320, 360): u = 0.1, 0.5; v = 0.25, 0.75
    qwen2_5_vl: 33.6 -> 34, 84, 168, 252

SMART_RESIZE (Qwen2.5-VL, factor 28, 3136 <= pixels <= 12845056):
    h = round(480 / 28) * 28 = 17 * 28 = 476, w = round(640 / 28) * 28 = 23 * 28 = 644;
    476 * 644 = 306544 is inside the budget, so the input is 644x476 (a stretch).
    box (64, 120, 320, 360): 64 * 644/640 = 64.4 -> 64, 120 * 476/480 = 119, 322, 357
    point (160, 304): 161, 301.47 -> 301
"""
from __future__ import annotations

import pytest

from chatspot_ros.referring import (
    ImageGeometry,
    InstructionBuilder,
    Region,
    RegionKind,
    get_dialect,
    parse_regions,
    smart_resize,
)

SIZE = (640, 480)
PAD = ImageGeometry.pad(336)
CROP = ImageGeometry.center_crop(336, (336, 336))
STRETCH = ImageGeometry.stretch(336, 336)
SMART = ImageGeometry.qwen_smart_resize()

BOX = Region.box(64, 120, 320, 360)
POINT = Region.point(160, 304)
POLYGON = Region.polygon([(64, 112), (576, 112), (320, 432)])

PAD_GOLDENS = {
    "chatspot": (
        "<box>[0.100,0.312,0.500,0.688]</box>",
        "<box>[0.250,0.600]</box>",
        "<box>[0.100,0.300,0.900,0.300,0.500,0.800]</box>",
    ),
    "llava": (
        "[0.10, 0.31, 0.50, 0.69]",
        "[0.25, 0.60]",
        "[0.10, 0.30, 0.90, 0.30, 0.50, 0.80]",
    ),
    "mmgpt": (
        "[100,312,500,688]",
        "[250,600]",
        "[100,300,900,300,500,800]",
    ),
    "qwen_vl": (
        "<|box_start|>(100,312),(500,688)<|box_end|>",
        "<|box_start|>(250,600)<|box_end|>",
        "<|box_start|>(100,300),(900,300),(500,800)<|box_end|>",
    ),
    "qwen2_5_vl": (
        '{"bbox_2d": [34, 105, 168, 231]}',
        '{"point_2d": [84, 202]}',
        '{"polygon_2d": [[34, 101], [302, 101], [168, 269]]}',
    ),
}


@pytest.mark.parametrize("dialect", sorted(PAD_GOLDENS))
def test_pad_to_square_goldens(dialect: str) -> None:
    builder = InstructionBuilder(dialect, PAD)
    box, point, polygon = PAD_GOLDENS[dialect]
    assert builder.region_text(BOX, SIZE) == box
    assert builder.region_text(POINT, SIZE) == point
    assert builder.region_text(POLYGON, SIZE) == polygon


def test_paper_example_sentence() -> None:
    builder = InstructionBuilder("chatspot", PAD)
    instruction = builder.ask("What is the object doing in the region?", [BOX], SIZE)
    assert instruction.text == "What is the object doing in the region? <box>[0.100,0.312,0.500,0.688]</box>"
    assert instruction.regions == (BOX,)
    assert instruction.notes == ()


@pytest.mark.parametrize(
    ("dialect", "expected"),
    [
        ("chatspot", "<box>[0.167,0.250,0.833,0.750]</box>"),
        ("llava", "[0.17, 0.25, 0.83, 0.75]"),
        ("mmgpt", "[167,250,833,750]"),
        ("qwen_vl", "<|box_start|>(167,250),(833,750)<|box_end|>"),
        ("qwen2_5_vl", '{"bbox_2d": [56, 84, 280, 252]}'),  # crop pixels: 56, 84, 280, 252
    ],
)
def test_center_crop_goldens(dialect: str, expected: str) -> None:
    assert InstructionBuilder(dialect, CROP).region_text(Region.box(160, 120, 480, 360), SIZE) == expected


def test_center_crop_clips_a_partly_cropped_box_and_says_so() -> None:
    instruction = InstructionBuilder("chatspot", CROP).ask("What is this?", [Region.box(0, 120, 160, 360, id="car_3")], SIZE)
    assert instruction.text == "What is this? <box>[0.000,0.250,0.167,0.750]</box>"
    ((x0, y0), (x1, y1)), = [r.points for r in instruction.regions]
    assert (x0, y0, x1, y1) == pytest.approx((80, 120, 160, 360))
    assert len(instruction.notes) == 1 and "'car_3'" in instruction.notes[0] and "center_crop" in instruction.notes[0]


def test_center_crop_rejects_a_box_cropped_away_entirely() -> None:
    with pytest.raises(ValueError, match="cropped away"):
        InstructionBuilder("chatspot", CROP).ask("What is this?", [Region.box(0, 0, 60, 100)], SIZE)
    with pytest.raises(ValueError, match="cropped away"):
        InstructionBuilder("chatspot", CROP).ask("What is this?", [Region.point(30, 100)], SIZE)


@pytest.mark.parametrize(
    ("dialect", "expected"),
    [
        ("chatspot", "<box>[0.100,0.250,0.500,0.750]</box>"),
        ("llava", "[0.10, 0.25, 0.50, 0.75]"),
        ("mmgpt", "[100,250,500,750]"),
        ("qwen_vl", "<|box_start|>(100,250),(500,750)<|box_end|>"),
        ("qwen2_5_vl", '{"bbox_2d": [34, 84, 168, 252]}'),
    ],
)
def test_stretch_goldens(dialect: str, expected: str) -> None:
    assert InstructionBuilder(dialect, STRETCH).region_text(BOX, SIZE) == expected


def test_smart_resize_goldens() -> None:
    assert smart_resize(480, 640) == (476, 644)
    assert SMART.model_size(640, 480) == (644, 476)
    # 4000x50: h = round(50/28)*28 = 56, w = round(4000/28)*28 = 143*28 = 4004
    assert smart_resize(50, 4000) == (56, 4004)
    # 8000x6000 = 48e6 px > 12845056: beta = sqrt(48e6 / 12845056) = 1.9331;
    # h = floor(6000 / 1.9331 / 28) * 28 = 110 * 28 = 3080, w = floor(147.8) * 28 = 4116
    assert smart_resize(6000, 8000) == (3080, 4116)
    builder = InstructionBuilder("qwen2_5_vl", SMART)
    assert builder.region_text(BOX, SIZE) == '{"bbox_2d": [64, 119, 322, 357]}'
    assert builder.region_text(POINT, SIZE) == '{"point_2d": [161, 301]}'
    with pytest.raises(ValueError, match="aspect ratio"):
        SMART.model_size(201, 1)


@pytest.mark.parametrize("dialect", sorted(PAD_GOLDENS))
def test_goldens_parse_back_to_the_source_box(dialect: str) -> None:
    box_text, point_text, polygon_text = PAD_GOLDENS[dialect]
    text = f"The mug {box_text} is left of the point {point_text}; the table is {polygon_text}."
    regions = parse_regions(text, dialect, PAD, SIZE)
    assert [r.kind for r in regions] == [RegionKind.BOX, RegionKind.POINT, RegionKind.POLYGON]
    # Half a grid step in source pixels: 640 px per normalized unit on both axes (the square).
    step = {"chatspot": 0.0005, "llava": 0.005, "mmgpt": 0.0005, "qwen_vl": 0.0005, "qwen2_5_vl": 0.5 / 336}[dialect]
    tol = step * 640 + 1e-9
    for got, want in zip(regions, (BOX, POINT, POLYGON)):
        for (gx, gy), (wx, wy) in zip(got.points, want.points):
            assert abs(gx - wx) <= tol and abs(gy - wy) <= tol


def test_quantization_is_half_a_step() -> None:
    assert get_dialect("chatspot").quantization((336, 336)) == (0.0005, 0.0005)
    assert get_dialect("chatspot", precision=2).quantization((336, 336)) == (0.005, 0.005)
    assert get_dialect("mmgpt").quantization((336, 336)) == (0.0005, 0.0005)
    assert get_dialect("qwen2_5_vl").quantization((644, 476)) == (0.5 / 644, 0.5 / 476)
