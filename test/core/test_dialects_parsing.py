"""Dialect selection, parsing free model output, and action steps."""
from __future__ import annotations

import pytest

from chatspot_ros.referring import (
    DIALECTS,
    ImageGeometry,
    Region,
    RegionKind,
    get_dialect,
    parse_regions,
    parse_steps,
)

SIZE = (640, 480)
PAD = ImageGeometry.pad(336)
STRETCH_1000 = ImageGeometry.stretch(1000, 1000)


def _flat(region: Region) -> list[float]:
    return [v for p in region.points for v in p]


def test_dialect_names() -> None:
    assert DIALECTS == ("chatspot", "llava", "mmgpt", "qwen_vl", "qwen2_5_vl")
    for name in DIALECTS:
        assert get_dialect(name).name == name


@pytest.mark.parametrize(
    ("name", "precision", "match"),
    [
        ("llava-1.6", None, "unknown region dialect"),
        ("mmgpt", 3, "not configurable"),
        ("qwen2_5_vl", 1, "not configurable"),
        ("chatspot", -1, "precision"),
        ("chatspot", 2.5, "precision"),
    ],
)
def test_get_dialect_errors(name: str, precision, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        get_dialect(name, precision=precision)


def test_chatspot_precision_is_configurable() -> None:
    dialect = get_dialect("chatspot", precision=5)
    assert dialect.format(RegionKind.POINT, [(1 / 3, 2 / 3)], (336, 336)) == "<box>[0.33333,0.66667]</box>"


def test_format_checks_the_point_count() -> None:
    with pytest.raises(ValueError, match="box needs == 2"):
        get_dialect("chatspot").format(RegionKind.BOX, [(0.1, 0.2)], (336, 336))


@pytest.mark.parametrize(
    ("dialect", "text"),
    [
        ("chatspot", "It is here: < box >[ 0.1 , 0.2,0.5 ,0.6 ]</box> ok"),
        ("chatspot", "It is here: <box>[0.1, 0.2, 0.5, 0.6]</box>"),
        ("chatspot", "It is here: <BOX> [0.100,0.200,0.500,0.600] </BOX>"),
        ("llava", "The cup [0.1,0.2,  0.5,0.6]."),
        ("mmgpt", "The cup [ 100, 200 ,500,600 ]."),
        ("qwen_vl", "<|box_start|>( 100 ,200 ), ( 500,600)<|box_end|>"),
        ("qwen_vl", "<ref>the cup</ref><box>(100,200),(500,600)</box>"),
        ("qwen2_5_vl", '```json\n[{"bbox_2d" : [ 100,200, 500 ,600 ], "label": "cup"}]\n```'),
    ],
)
def test_parse_is_robust_to_spacing_and_variants(dialect: str, text: str) -> None:
    (region,) = parse_regions(text, dialect, STRETCH_1000, (1000, 1000))
    assert region.kind is RegionKind.BOX
    assert _flat(region) == pytest.approx([100, 200, 500, 600])


def test_labels_are_read_where_the_dialect_has_them() -> None:
    text = (
        '[{"bbox_2d": [10, 20, 30, 40], "label": "cup"}, {"label": "fridge door", "point_2d": [5, 6]}, '
        '{"polygon_2d": [10, 10, 90, 10, 50, 80]}]'
    )
    regions = parse_regions(text, "qwen2_5_vl", STRETCH_1000, (1000, 1000))
    assert [(r.kind, r.label) for r in regions] == [
        (RegionKind.BOX, "cup"), (RegionKind.POINT, "fridge door"), (RegionKind.POLYGON, "")
    ]
    qwen = "<|object_ref_start|>the cup<|object_ref_end|><|box_start|>(100,200),(500,600)<|box_end|>"
    assert parse_regions(qwen, "qwen_vl", STRETCH_1000, (1000, 1000))[0].label == "the cup"


def test_parse_skips_lists_that_are_no_region_and_regions_far_outside() -> None:
    text = "Scores [0.1, 0.2, 0.3] and [5] and [0.2, 0.4] and [3.0, 0.1, 4.0, 0.2]"
    regions = parse_regions(text, "llava", STRETCH_1000, (1000, 1000))
    assert [r.kind for r in regions] == [RegionKind.POINT]  # 3 values: nothing; [3.0, ...]: far outside


def test_parse_snaps_padding_coordinates_onto_the_image() -> None:
    # v = 0.05 lies in the 80 px top padding of 640x480 under pad-to-square: y = 0.05*640 - 80 = -48
    (region,) = parse_regions("<box>[0.1,0.05,0.5,0.5]</box>", "chatspot", PAD, SIZE)
    assert _flat(region) == pytest.approx([64, 0, 320, 240])


def test_parse_swapped_box_corners() -> None:
    (region,) = parse_regions("[500,600,100,200]", "mmgpt", STRETCH_1000, (1000, 1000))
    assert _flat(region) == pytest.approx([100, 200, 500, 600])


def test_parse_regions_accepts_a_dialect_object_and_finds_several() -> None:
    dialect = get_dialect("chatspot")
    text = "region 1 <box>[0.1,0.1,0.2,0.2]</box>, region 2 <box>[0.5,0.5]</box> and <box>[0.1,0.1,0.9,0.1,0.5,0.9]</box>"
    regions = parse_regions(text, dialect, STRETCH_1000, (1000, 1000))
    assert [r.kind for r in regions] == [RegionKind.BOX, RegionKind.POINT, RegionKind.POLYGON]
    assert regions[2] == Region.polygon([(100, 100), (900, 100), (500, 900)])


# -- parse_steps ---------------------------------------------------------------------------------


def test_numbered_steps_with_preamble_and_closing_remark() -> None:
    text = (
        "Sure! Here is what to do:\n"
        "1. Walk to the fridge.\n"
        "2) Open the door\n   with the handle on the right.\n"
        "Step 3: Take the Coke.\n"
        "\n"
        "Hope this helps."
    )
    assert parse_steps(text) == [
        "Walk to the fridge.",
        "Open the door with the handle on the right.",
        "Take the Coke.",
    ]


@pytest.mark.parametrize("bullet", ["-", "*", "•"])
def test_bulleted_steps(bullet: str) -> None:
    assert parse_steps(f"{bullet} Grasp the handle\n{bullet} Pull") == ["Grasp the handle", "Pull"]


def test_inline_numbered_steps() -> None:
    assert parse_steps("1. Open the fridge. 2. Take the can, it is 1.5 m away. 3. Close it.") == [
        "Open the fridge.",
        "Take the can, it is 1.5 m away.",
        "Close it.",
    ]


def test_sentences_when_there_is_no_list() -> None:
    assert parse_steps("Open the fridge. Take the Coke! Is it cold? ") == ["Open the fridge.", "Take the Coke!", "Is it cold?"]
    assert parse_steps("") == []
    assert parse_steps("The fridge is 1.5 m tall.") == ["The fridge is 1.5 m tall."]
