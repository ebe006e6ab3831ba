"""Message <-> core conversions on hand-built messages; no rclpy.init anywhere in this module."""
from __future__ import annotations

import math

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point32
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header
from vision_msgs.msg import Detection2D, ObjectHypothesisWithPose

from chatspot_ros.service import imaging
from chatspot_ros.service.imaging import ImageDecodeError
from chatspot_ros.msg import Region as RegionMsg
from chatspot_ros.referring import Region, RegionKind
from chatspot_ros.ros import convert


def header(sec: int = 3, nanosec: int = 4, frame_id: str = "cam") -> Header:
    return Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id=frame_id)


def det(cx, cy, w, h, det_id="d", theta=0.0, hyps=(("cup", 0.4), ("mug", 0.7))) -> Detection2D:
    d = Detection2D(id=det_id)
    d.bbox.center.position.x, d.bbox.center.position.y, d.bbox.center.theta = cx, cy, theta
    d.bbox.size_x, d.bbox.size_y = w, h
    for label, score in hyps:
        r = ObjectHypothesisWithPose()
        r.hypothesis.class_id, r.hypothesis.score = label, score
        d.results.append(r)
    return d


def test_times_and_headers() -> None:
    assert convert.time_to_ns(Time(sec=2, nanosec=5)) == 2_000_000_005
    assert convert.ns_to_time(2_000_000_005) == Time(sec=2, nanosec=5)
    h = header()
    copy = convert.copy_header(h)
    assert copy == h and copy is not h and copy.stamp is not h.stamp
    assert convert.is_zero_time(Time()) and not convert.is_zero_time(Time(nanosec=1))


def test_region_messages_roundtrip() -> None:
    for region in (Region.point(1.5, 2.0, id="p"), Region.box(1, 2, 3, 4, id="b"),
                   Region.polygon([(0, 0), (4, 0), (0, 3)], id="poly")):
        msg = convert.region_to_msg(region)
        assert msg.type == int(region.kind) and msg.id == region.id
        assert convert.region_from_msg(msg) == region


@pytest.mark.parametrize(
    ("msg", "needle"),
    [
        (RegionMsg(type=9, points=[Point32()]), "unknown type 9"),
        (RegionMsg(type=RegionMsg.POINT, points=[]), "exactly 1 point"),
        (RegionMsg(type=RegionMsg.BOX, points=[Point32(x=5.0), Point32(x=1.0)]), "max < min"),
        (RegionMsg(type=RegionMsg.POLYGON, points=[Point32(), Point32(x=1.0), Point32(x=2.0)]), "degenerate"),
        (RegionMsg(type=RegionMsg.POINT, points=[Point32(x=math.inf)], id="z"), "region 3 \\('z'\\)"),
    ],
)
def test_bad_region_messages_raise_value_error_with_the_index(msg, needle) -> None:
    with pytest.raises(ValueError, match=needle):
        convert.region_from_msg(msg, index=3)


def test_detection_to_region_takes_the_best_hypothesis_and_handles_rotation() -> None:
    out = convert.detection_to_region(det(50, 40, 20, 10, "cup_1"))
    assert out.region == Region.box(40, 35, 60, 45, id="cup_1", label="mug")
    assert (out.label, out.score) == ("mug", 0.7)
    rotated = convert.detection_to_region(det(50, 40, 20, 10, theta=math.pi / 2))
    assert rotated.region.kind is RegionKind.POLYGON
    xs = [p[0] for p in rotated.region.points]
    assert min(xs) == pytest.approx(45) and max(xs) == pytest.approx(55)
    flipped = convert.detection_to_region(det(50, 40, 20, 10, theta=math.pi))
    assert flipped.region.kind is RegionKind.BOX
    assert convert.detection_to_region(det(5, 5, 0, 0, hyps=())).label == ""


@pytest.mark.parametrize(
    ("args", "needle"),
    [((math.nan, 1, 1, 1), "non-finite bbox center.x"), ((1, 1, math.inf, 1), "size_x"),
     ((1, 1, -1, 1), "negative bbox size")],
)
def test_bad_detections_raise(args, needle) -> None:
    with pytest.raises(ValueError, match=needle):
        convert.detection_to_region(det(*args), index=0)


def test_raw_frames_are_checked_on_arrival_and_decoded_once() -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    w, h, step, data = imaging.encode_raw(rgb, "bgr8")
    msg = Image(header=header(), width=w, height=h, step=step, encoding="bgr8", data=data)
    frame = convert.frame_from_image(msg, use_cv_bridge=False)
    assert (frame.width, frame.height, frame.frame_id, frame.stamp_ns) == (8, 6, "cam", 3_000_000_004)
    assert not frame.decoded
    np.testing.assert_array_equal(frame.rgb(), rgb)
    assert frame.rgb() is frame.rgb() and frame.decoded
    msg.header.frame_id = "changed later"
    assert frame.frame_id == "cam"  # the frame keeps its own header copy
    with pytest.raises(ImageDecodeError, match="needs"):
        convert.frame_from_image(Image(width=8, height=6, step=24, encoding="rgb8", data=bytes(10)))


def test_compressed_frames_are_checked_on_arrival() -> None:
    rgb = np.zeros((6, 8, 3), np.uint8)
    msg = CompressedImage(header=header(), format="png", data=imaging.encode_compressed(rgb, "png"))
    frame = convert.frame_from_compressed(msg)
    assert (frame.width, frame.height) == (8, 6)
    np.testing.assert_array_equal(frame.rgb(), rgb)
    with pytest.raises(ImageDecodeError):
        convert.frame_from_compressed(CompressedImage(format="jpeg", data=b"\x00" * 10))


def test_compressed_frames_decode_jpeg_reduced_and_keep_the_source_size() -> None:
    from chatspot_ros.referring import ImageGeometry

    rgb = np.zeros((1080, 1920, 3), np.uint8)
    rgb[:, 960:] = 200
    jpeg = CompressedImage(header=header(), format="jpeg", data=imaging.encode_compressed(rgb, "jpeg"))
    calls: list[tuple[int, int]] = []

    def reduction_for(width: int, height: int) -> int:
        calls.append((width, height))
        return ImageGeometry.pad(336).max_reduction(width, height)

    frame = convert.frame_from_compressed(jpeg, reduction_for=reduction_for)
    assert calls == [(1920, 1080)] and not frame.decoded  # picked from the header, decoded later
    assert (frame.width, frame.height, frame.reduction, frame.rgb_scale) == (1920, 1080, 4, 0.25)
    assert frame.rgb().shape == (270, 480, 3)
    assert frame.rgb()[:, 250:].min() > 150 and frame.rgb()[:, :230].max() < 50  # same picture
    assert convert.frame_from_compressed(jpeg).rgb().shape == (1080, 1920, 3)  # no reduction asked
    png = CompressedImage(header=header(), format="png", data=imaging.encode_compressed(rgb[:64, :96], "png"))
    frame = convert.frame_from_compressed(png, reduction_for=lambda w, h: 8)
    assert frame.reduction == 1 and frame.rgb().shape == (64, 96, 3)  # PNG: always full size
    with pytest.raises(ValueError, match="reduction"):
        convert.frame_from_compressed(jpeg, reduction_for=lambda w, h: 3)


def test_rgb_to_image_message() -> None:
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    msg = convert.rgb_to_image(rgb, header(7))
    assert (msg.width, msg.height, msg.step, msg.encoding, msg.header.stamp.sec) == (3, 2, 9, "rgb8", 7)
    np.testing.assert_array_equal(imaging.decode_raw("rgb8", 3, 2, 9, msg.data), rgb)
    assert convert.image_is_empty(Image()) and not convert.image_is_empty(msg)


def test_camera_info_to_camera() -> None:
    info = CameraInfo(header=header(frame_id="optical"), width=640, height=480, distortion_model="plumb_bob",
                      d=[0.0] * 5, k=[500.0, 0.0, 320.0, 0.0, 500.0, 240.0, 0.0, 0.0, 1.0])
    camera = convert.camera_from_info(info)
    assert camera.frame_id == "optical" and camera.project((0, 0, 1)) == (320.0, 240.0)
    with pytest.raises(ValueError, match="not calibrated"):
        convert.camera_from_info(CameraInfo(width=640, height=480))


def test_click_regions() -> None:
    assert convert.click_region(10, 20, 100, 80, 0) == Region.point(10, 20, id="click")
    assert convert.click_region(5, 78, 100, 80, 20) == Region.box(0, 68, 15, 80, id="click")
    with pytest.raises(ValueError, match="outside"):
        convert.click_region(101, 5, 100, 80, 0)
    with pytest.raises(ValueError, match="non-finite"):
        convert.click_region(math.nan, 5, 100, 80, 0)


def test_check_request_limits() -> None:
    limits = dict(max_regions=2, max_question_chars=10, max_new_tokens_limit=100, default_max_new_tokens=7)
    region = RegionMsg(type=RegionMsg.POINT, points=[Point32(x=1.0, y=2.0)], id="a")
    spec = convert.check_request(Time(), [region], " what? ", 0, **limits)
    assert spec.question == "what?" and spec.max_new_tokens == 7 and spec.regions[0].id == "a"
    assert spec.stamp_ns == 0
    with pytest.raises(ValueError, match="limit is 2"):
        convert.check_request(Time(), [region] * 3, "q", 0, **limits)
    with pytest.raises(ValueError, match="empty"):
        convert.check_request(Time(), [], "   ", 0, **limits)
    with pytest.raises(ValueError, match="characters"):
        convert.check_request(Time(), [], "q" * 11, 0, **limits)
    with pytest.raises(ValueError, match="exceeds the limit 100"):
        convert.check_request(Time(), [], "q", 101, **limits)
    assert convert.check_request(Time(), [], "", 0, require_question=False, **limits).question == ""


def test_detections_to_regions_sorts_caps_and_reports() -> None:
    dets = [det(10, 10, 4, 4, "low", hyps=(("a", 0.2),)), det(math.nan, 1, 1, 1, "bad"),
            det(20, 20, 4, 4, "high", hyps=(("b", 0.9),)), det(30, 30, 4, 4, "mid", hyps=(("c", 0.5),))]
    regions, errors, overflow = convert.detections_to_regions(dets, 2)
    assert [r.region.id for r in regions] == ["high", "mid"] and overflow == 1
    assert len(errors) == 1 and "detection 1 ('bad')" in errors[0]
    assert convert.detections_to_regions([], 4) == ([], [], 0)


def test_click_to_pixel_in_every_frame() -> None:
    camera = convert.camera_from_info(CameraInfo(
        header=header(frame_id="optical"), width=160, height=120, distortion_model="plumb_bob", d=[0.0] * 5,
        k=[100.0, 0.0, 80.0, 0.0, 100.0, 60.0, 0.0, 0.0, 1.0]))
    assert convert.click_to_pixel((12.0, 34.0, 0.0), "", "optical", None) == (12.0, 34.0)  # rqt_image_view
    assert convert.click_to_pixel((0.2, -0.1, 1.0), "optical", "optical", camera) == pytest.approx((100.0, 50.0))
    moved = convert.click_to_pixel((9.0, 9.0, 9.0), "map", "optical", camera, transform=lambda target: (0.0, 0.0, 2.0))
    assert moved == (80.0, 60.0)
    with pytest.raises(ValueError, match="no camera_info"):
        convert.click_to_pixel((0.2, 0.1, 1.0), "map", "optical", None)
    with pytest.raises(ValueError, match="without tf2"):
        convert.click_to_pixel((0.2, 0.1, 1.0), "map", "optical", camera)
    with pytest.raises(ValueError, match="non-finite"):
        convert.click_to_pixel((math.nan, 0.0, 0.0), "", "optical", camera)
    with pytest.raises(ValueError, match="not in front"):
        convert.click_to_pixel((0.0, 0.0, -1.0), "optical", "optical", camera)


def test_markers_carry_the_image_stamp_in_the_camera_frame() -> None:
    from chatspot_ros.ros.drawing import Annotation

    camera = convert.camera_from_info(CameraInfo(
        header=header(frame_id="optical"), width=160, height=120, k=[100.0, 0.0, 80.0, 0.0, 100.0, 60.0, 0.0, 0.0, 1.0]))
    image_header = header(9, 1, "camera_link")
    markers = convert.markers_from_annotations(
        image_header, camera, [Annotation(Region.box(0, 0, 80, 60), "box"), Annotation(Region.point(80, 60), "pt")],
        2.0, 160, 120).markers
    assert [m.action for m in markers][:1] == [markers[0].DELETEALL] and len(markers) == 5
    assert all((m.header.stamp.sec, m.header.stamp.nanosec, m.header.frame_id) == (9, 1, "optical") for m in markers)
    assert all(m.header is not image_header for m in markers)
    outline, text = markers[1], markers[2]
    assert outline.type == outline.LINE_STRIP and len(outline.points) == 5  # closed rectangle
    assert (outline.points[0].x, outline.points[0].y, outline.points[0].z) == pytest.approx((-1.6, -1.2, 2.0))
    assert text.text == "box" and markers[3].type == markers[3].SPHERE


def test_every_parameter_descriptor_has_its_type_range_and_description() -> None:
    from rcl_interfaces.msg import ParameterType

    from chatspot_ros.service.config import PARAMETERS

    types = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
             float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING}
    for spec in PARAMETERS:
        descriptor = convert.parameter_descriptor(spec)
        assert descriptor.name == spec.name and descriptor.description == spec.description
        assert descriptor.type == types[type(spec.default)]
        assert descriptor.read_only == (spec.when == "startup"), spec.name
        if type(spec.default) is int:
            (r,) = descriptor.integer_range
            assert r.from_value <= spec.default <= r.to_value, spec.name
        elif type(spec.default) is float:
            (r,) = descriptor.floating_point_range
            assert r.from_value <= spec.default <= r.to_value, spec.name
        else:
            assert not descriptor.integer_range and not descriptor.floating_point_range
        for choice in spec.choices:
            assert repr(choice) in descriptor.additional_constraints
