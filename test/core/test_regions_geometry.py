"""Regions, clipping, and reading the geometry from checkpoint configs."""
from __future__ import annotations

import pytest

from chatspot_ros.referring import ImageGeometry, Region, RegionKind, ResizeMode, clip_region

# -- regions ------------------------------------------------------------------------------------


def test_region_kind_values_match_the_message_constants() -> None:
    # msg/Region.msg: POINT=0, BOX=1, POLYGON=2
    assert (RegionKind.POINT, RegionKind.BOX, RegionKind.POLYGON) == (0, 1, 2)


def test_from_points_follows_the_paper_rule() -> None:
    assert Region.from_points([(1, 2)]).kind is RegionKind.POINT
    assert Region.from_points([(1, 2), (3, 4)]).kind is RegionKind.BOX
    assert Region.from_points([(0, 0), (4, 0), (0, 3)], id="a", label="b") == Region.polygon(
        [(0, 0), (4, 0), (0, 3)], id="a", label="b"
    )
    with pytest.raises(ValueError, match="at least 1 point"):
        Region.from_points([])


def test_region_normalizes_numbers_and_is_frozen() -> None:
    region = Region(1, [[1, 2], [3, 4]])  # type: ignore[arg-type]
    assert region.kind is RegionKind.BOX and region.points == ((1.0, 2.0), (3.0, 4.0))
    with pytest.raises(AttributeError):
        region.id = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Region.box(10, 0, 5, 5), "max < min"),
        (lambda: Region.point(float("nan"), 0), "finite"),
        (lambda: Region(RegionKind.POINT, ((0, 0), (1, 1))), "exactly 1 point"),
        (lambda: Region(RegionKind.BOX, ((0, 0),)), "2 corner points"),
        (lambda: Region.polygon([(0, 0), (1, 1)]), "at least 3 points"),
        (lambda: Region.polygon([(0, 0), (1, 1), (0, 0)]), "degenerate"),
        (lambda: Region.polygon([(0, 0), (1, 1), (2, 2), (3, 3)]), "degenerate"),  # collinear: zero area
        (lambda: Region.from_points([(1, 2, 3)]), "2 coordinates"),
    ],
)
def test_invalid_regions_raise_value_error(make, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_zero_size_box_is_allowed() -> None:
    assert Region.box(5, 5, 5, 9).points == ((5.0, 5.0), (5.0, 9.0))


def test_clip_region_reports_what_it_clipped() -> None:
    inside = clip_region(Region.box(0, 0, 640, 480), 640, 480)
    assert not inside.clipped and inside.message == ""
    result = clip_region(Region.box(-12.5, 10, 650, 490, id="car_3"), 640, 480)
    assert result.clipped
    assert result.region.points == ((0.0, 10.0), (640.0, 480.0))
    assert result.region.id == "car_3"
    assert result.message == "region 'car_3' clipped to the 640x480 image"


def test_clip_region_clips_polygons_geometrically() -> None:
    result = clip_region(Region.polygon([(-20, 0), (20, 0), (20, 40)]), 100, 100)
    assert result.clipped
    xs = [x for x, _ in result.region.points]
    assert min(xs) == 0.0 and len(result.region.points) == 4  # the corner is cut, not moved


@pytest.mark.parametrize(
    ("region", "match"),
    [
        (Region.box(-400, 0, 10, 10), "more than 0.5 x the image size"),
        (Region.point(10, 800), "more than 0.5 x the image size"),
        (Region.box(-100, 10, -10, 20), "entirely outside"),
        (Region.polygon([(700, 0), (800, 0), (800, 50)]), "entirely outside"),
    ],
)
def test_clip_region_rejects_regions_outside_the_image(region: Region, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        clip_region(region, 640, 480)


def test_clip_region_tolerance_is_a_parameter() -> None:
    clip_region(Region.point(-600, 0), 640, 480, max_outside=1.0)
    with pytest.raises(ValueError):
        clip_region(Region.point(-600, 0), 640, 480, max_outside=0.5)
    with pytest.raises(ValueError, match="image size"):
        clip_region(Region.point(0, 0), 0, 480)


# -- geometry from checkpoint configs ------------------------------------------------------------

CLIP_336 = {  # openai/clip-vit-large-patch14-336 preprocessor_config.json (LLaVA-1.5's tower)
    "crop_size": {"height": 336, "width": 336},
    "do_center_crop": True,
    "do_normalize": True,
    "do_resize": True,
    "image_processor_type": "CLIPImageProcessor",
    "resample": 3,
    "size": {"shortest_edge": 336},
}


def test_clip_processor_is_center_crop() -> None:
    geometry = ImageGeometry.from_checkpoint_configs(CLIP_336)
    assert geometry == ImageGeometry.center_crop(336, (336, 336))


def test_llava_image_aspect_ratio_pad_in_model_config() -> None:
    geometry = ImageGeometry.from_checkpoint_configs(CLIP_336, {"image_aspect_ratio": "pad"})
    assert geometry.mode is ResizeMode.PAD and geometry.size == (336, 336)
    # The square resizes to 336x336 and the 336 crop keeps all of it: same mapping as plain pad.
    assert geometry.to_model([(64, 120)], 640, 480) == ImageGeometry.pad(336).to_model([(64, 120)], 640, 480)


def test_image_aspect_ratio_at_processor_top_level_and_hf_llava_do_pad() -> None:
    assert ImageGeometry.from_checkpoint_configs({**CLIP_336, "image_aspect_ratio": "pad"}).mode is ResizeMode.PAD
    hf = {**CLIP_336, "image_processor_type": "LlavaImageProcessor", "do_pad": True}
    assert ImageGeometry.from_checkpoint_configs(hf).mode is ResizeMode.PAD


def test_height_width_size_is_stretch() -> None:
    siglip = {"do_resize": True, "size": {"height": 384, "width": 384}, "image_processor_type": "SiglipImageProcessor"}
    assert ImageGeometry.from_checkpoint_configs(siglip) == ImageGeometry.stretch(384, 384)
    cropped = {"size": {"height": 256, "width": 320}, "do_center_crop": True, "crop_size": 224}
    geometry = ImageGeometry.from_checkpoint_configs(cropped)
    assert geometry.mode is ResizeMode.CENTER_CROP and geometry.resize_size == (320, 256)
    # resize to 320x256, crop 224x224 at ((320-224)//2, (256-224)//2) = (48, 16)
    assert geometry.visible_rect(320, 256) == (48.0, 16.0, 272.0, 240.0)


def test_qwen_processor_configs_are_smart_resize() -> None:
    old = {"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "merge_size": 2,
           "image_processor_type": "Qwen2VLImageProcessor"}
    assert ImageGeometry.from_checkpoint_configs(old) == ImageGeometry.qwen_smart_resize()
    new = {"size": {"shortest_edge": 200704, "longest_edge": 1003520}, "patch_size": 14, "merge_size": 2,
           "image_processor_type": "Qwen2VLImageProcessor"}
    geometry = ImageGeometry.from_checkpoint_configs(new)
    assert (geometry.min_pixels, geometry.max_pixels, geometry.factor) == (200704, 1003520, 28)
    assert geometry.size == (0, 0)


@pytest.mark.parametrize(
    ("processor", "model", "match"),
    [
        (CLIP_336, {"image_aspect_ratio": "anyres"}, "not supported"),
        ({**CLIP_336, "do_resize": False}, None, "do_resize"),
        ({"size": {"shortest_edge": 336}, "do_center_crop": False}, None, "not supported"),
        ({"size": {"longest_edge": 336}}, None, "size must be"),
        ({"do_resize": True}, None, "no 'size'"),
        ({"size": {"shortest_edge": 336}, "do_center_crop": True}, None, "no 'crop_size'"),
    ],
)
def test_unsupported_preprocessing_is_a_clear_error(processor, model, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ImageGeometry.from_checkpoint_configs(processor, model)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "stretch", "size": (0, 336)}, "positive"),
        ({"mode": "center_crop", "size": (336, 336)}, "shortest_edge or resize_size"),
        ({"mode": "stretch", "size": (336, 336), "shortest_edge": 336}, "no shortest_edge"),
        ({"mode": "smart_resize", "size": (336, 336)}, r"size=\(0, 0\)"),
        ({"mode": "smart_resize", "size": (0, 0), "min_pixels": 10, "max_pixels": 5}, "min_pixels"),
        ({"mode": "fisheye", "size": (336, 336)}, "fisheye"),
    ],
)
def test_invalid_geometry_raises(kwargs, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ImageGeometry(**kwargs)


def test_pad_of_a_tall_image_pads_left_and_right() -> None:
    # 480x640 (portrait): square 640, pasted at ((640 - 480) // 2, 0) = (80, 0)
    (u, v), = ImageGeometry.pad(336).to_model([(0, 320)], 480, 640)[0]
    assert (u, v) == (80 / 640, 0.5)
    assert ImageGeometry.pad(336).visible_rect(480, 640) == (0.0, 0.0, 480.0, 640.0)
    assert ImageGeometry.pad(336).to_source([(0.0, 0.0)], 480, 640) == ((-80.0, 0.0),)


def test_center_crop_polygon_is_clipped_to_the_crop() -> None:
    geometry = ImageGeometry.center_crop(336, (336, 336))
    # visible source x range for 640x480: [80, 560]
    points, clipped = geometry.to_model([(40, 100), (200, 100), (200, 300)], 640, 480)
    assert clipped and min(u for u, _ in points) == 0.0 and len(points) == 4


# -- reduced (JPEG DCT) decoding ---------------------------------------------------------------


@pytest.mark.parametrize(
    "geometry, size, expected",
    [
        (ImageGeometry.pad(336), (1920, 1080), 4),  # 480x270: longer side 480 >= 336; 1/8 gives 240
        (ImageGeometry.pad(336), (1080, 1920), 4),  # portrait: the longer side is the height
        (ImageGeometry.pad(336), (2688, 100), 8),  # 336x13 still covers the padded square
        (ImageGeometry.pad(336), (2689, 100), 8),  # ceil: 337
        (ImageGeometry.pad(336), (2681, 2000), 8),  # ceil(2681 / 8) = 336: exactly covered
        (ImageGeometry.pad(336), (2680, 2000), 4),  # 2680 / 8 = 335 < 336
        (ImageGeometry.pad(336), (640, 480), 1),  # 320 < 336 at 1/2
        (ImageGeometry.pad(336), (300, 200), 1),  # already upsampled: never reduce
        (ImageGeometry.center_crop(336, (336, 336)), (1920, 1080), 2),  # shorter side 540; 1/4 gives 270
        (ImageGeometry.center_crop(224, (224, 224)), (1920, 1080), 4),  # 270 >= 224
        (ImageGeometry(ResizeMode.CENTER_CROP, (224, 224), resize_size=(256, 256)), (1920, 1080), 4),
        (ImageGeometry.stretch(384, 384), (1920, 1080), 2),  # 960x540; 1/4 gives 270 < 384 high
        (ImageGeometry.stretch(224, 224), (1920, 1080), 4),
        (ImageGeometry.qwen_smart_resize(), (1920, 1080), 1),  # model size follows the source size
        (ImageGeometry.qwen_smart_resize(max_pixels=448 * 448), (1920, 1080), 1),
    ],
)
def test_max_reduction_never_upsamples_the_model_input(geometry: ImageGeometry, size, expected: int) -> None:
    w, h = size
    assert geometry.max_reduction(w, h) == expected
    if geometry.mode is not ResizeMode.SMART_RESIZE:
        # The model input size does not change with the reduction (it is fixed for these modes).
        r = expected
        assert geometry.model_size(-(-w // r), -(-h // r)) == geometry.model_size(w, h)


def test_max_reduction_respects_choices_and_keeps_normalization() -> None:
    pad = ImageGeometry.pad(336)
    assert pad.max_reduction(1920, 1080, choices=(1, 2)) == 2
    assert pad.max_reduction(1920, 1080, choices=()) == 1
    assert pad.max_reduction(1920, 1080, choices=(8, 4, 2)) == 4  # order does not matter
    # A uniformly reduced image normalizes a region the same: coordinates stay in source pixels.
    points = [(100, 200), (1500, 900)]
    reduced = [(x / 4, y / 4) for x, y in points]
    full, _ = pad.to_model(points, 1920, 1080)
    small, _ = pad.to_model(reduced, 480, 270)
    assert [c for p in full for c in p] == pytest.approx([c for p in small for c in p])
    with pytest.raises(ValueError):
        pad.max_reduction(0, 1080)
