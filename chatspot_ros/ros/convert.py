"""Conversions between ROS messages and the ROS-free core; no rclpy.init needed.

Every function takes or returns plain messages and raises ``ValueError`` (or
:class:`chatspot_ros.imaging.ImageDecodeError`, a ValueError) with a reason on bad input. The node
only calls these and counts the errors.
"""
from __future__ import annotations

import array
import math
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point32
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header

from chatspot_ros import imaging
from chatspot_ros.frames import ns_to_stamp, stamp_to_ns
from chatspot_ros.projection import PinholeCamera
from chatspot_ros.referring.regions import Region, RegionKind

try:  # a real ROS install; absent from the PyPI wheels
    from cv_bridge import CvBridge, CvBridgeError  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the install
    CvBridge = None  # type: ignore[assignment,misc]
    CvBridgeError = Exception  # type: ignore[assignment,misc]

from chatspot_ros.msg import Region as RegionMsg


# --------------------------------------------------------------------------------------------
# Time and headers


def time_to_ns(stamp: Time) -> int:
    return stamp_to_ns(stamp.sec, stamp.nanosec)


def ns_to_time(ns: int) -> Time:
    sec, nanosec = ns_to_stamp(ns)
    return Time(sec=sec, nanosec=nanosec)


def copy_header(header: Header) -> Header:
    """A new Header equal to ``header`` (outputs never share the input's message object)."""
    return Header(stamp=Time(sec=header.stamp.sec, nanosec=header.stamp.nanosec),
                  frame_id=header.frame_id)


def is_zero_time(stamp: Time) -> bool:
    return stamp.sec == 0 and stamp.nanosec == 0


# --------------------------------------------------------------------------------------------
# Regions


def region_from_msg(msg: RegionMsg, *, index: Optional[int] = None) -> Region:
    """chatspot_ros/Region -> Region; ValueError on a bad type, point count or coordinate."""
    where = f"region {index}" if index is not None else "region"
    if msg.id:
        where += f" ({msg.id!r})"
    try:
        kind = RegionKind(int(msg.type))
    except ValueError:
        raise ValueError(
            f"{where}: unknown type {msg.type} (POINT=0, BOX=1, POLYGON=2)"
        ) from None
    points = [(float(p.x), float(p.y)) for p in msg.points]
    try:
        return Region(kind, tuple(points), msg.id, "")
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def region_to_msg(region: Region) -> RegionMsg:
    return RegionMsg(
        type=int(region.kind),
        points=[Point32(x=float(x), y=float(y), z=0.0) for x, y in region.points],
        id=region.id,
    )


@dataclass(frozen=True)
class DetectionRegion:
    region: Region  # a BOX (a POLYGON when the box is rotated), id = Detection2D.id
    label: str  # class id of the best hypothesis, "" when none
    score: float  # its score, 0 when none


def _bbox_center(bbox: Any) -> tuple[float, float, float]:
    center = bbox.center
    if hasattr(center, "position"):  # vision_msgs >= 3 (Humble): Pose2D{position: Point2D, theta}
        return float(center.position.x), float(center.position.y), float(center.theta)
    return float(center.x), float(center.y), float(center.theta)  # geometry_msgs/Pose2D (Foxy)


def best_hypothesis(detection: Any) -> tuple[str, float]:
    """(class id, score) of the highest-scoring hypothesis; ("", 0.0) when there is none."""
    best_label, best_score = "", -math.inf
    for result in detection.results:
        hyp = getattr(result, "hypothesis", result)  # vision_msgs >= 3 nests it
        label = str(getattr(hyp, "class_id", getattr(hyp, "id", "")))
        score = float(hyp.score)
        if math.isfinite(score) and score > best_score:
            best_label, best_score = label, score
    return (best_label, best_score) if best_score > -math.inf else ("", 0.0)


def detection_to_region(detection: Any, *, index: Optional[int] = None) -> DetectionRegion:
    """vision_msgs/Detection2D -> its box as a Region (pixel corners); ValueError when invalid."""
    where = f"detection {index}" if index is not None else "detection"
    if detection.id:
        where += f" ({detection.id!r})"
    cx, cy, theta = _bbox_center(detection.bbox)
    sx, sy = float(detection.bbox.size_x), float(detection.bbox.size_y)
    values = {"center.x": cx, "center.y": cy, "theta": theta, "size_x": sx, "size_y": sy}
    bad = [k for k, v in values.items() if not math.isfinite(v)]
    if bad:
        raise ValueError(f"{where}: non-finite bbox {', '.join(bad)}")
    if sx < 0 or sy < 0:
        raise ValueError(f"{where}: negative bbox size ({sx:g} x {sy:g})")
    label, score = best_hypothesis(detection)
    if abs(math.remainder(theta, math.pi)) < 1e-6:  # axis-aligned (theta = 0 or pi)
        region = Region.box(cx - sx / 2, cy - sy / 2, cx + sx / 2, cy + sy / 2,
                            id=detection.id, label=label)
    else:
        c, s = math.cos(theta), math.sin(theta)
        corners = [(-sx / 2, -sy / 2), (sx / 2, -sy / 2), (sx / 2, sy / 2), (-sx / 2, sy / 2)]
        pts = [(cx + c * x - s * y, cy + s * x + c * y) for x, y in corners]
        try:
            region = Region.polygon(pts, id=detection.id, label=label)
        except ValueError as exc:  # a zero-size rotated box
            raise ValueError(f"{where}: {exc}") from None
    return DetectionRegion(region, label, score)


# --------------------------------------------------------------------------------------------
# Images


class DecodedFrame:
    """One camera image: checked on arrival, decoded to RGB on first use (then cached).

    Arrival costs only the header checks (:func:`imaging.check_raw` /
    :func:`imaging.inspect_compressed`); the pixels are decoded when a request needs them, so a
    30 Hz camera feeding a 2 Hz detector pays for 2 decodes a second.
    """

    def __init__(self, header: Header, width: int, height: int, decode: Callable[[], np.ndarray]) -> None:
        self.header = header
        self.width = int(width)
        self.height = int(height)
        self._decode = decode
        self._rgb: Optional[np.ndarray] = None
        self._lock = threading.Lock()

    @property
    def stamp_ns(self) -> int:
        return time_to_ns(self.header.stamp)

    @property
    def frame_id(self) -> str:
        return self.header.frame_id

    @property
    def decoded(self) -> bool:
        return self._rgb is not None

    def rgb(self) -> np.ndarray:
        """(H, W, 3) uint8 RGB; ImageDecodeError when the pixels cannot be decoded."""
        with self._lock:
            if self._rgb is None:
                rgb = self._decode()
                if rgb.shape[:2] != (self.height, self.width):
                    raise imaging.ImageDecodeError(
                        f"decoded image is {rgb.shape[1]}x{rgb.shape[0]}, header says "
                        f"{self.width}x{self.height}"
                    )
                self._rgb = rgb
            return self._rgb


def frame_from_image(
    msg: Image, limits: imaging.ImageLimits = imaging.DEFAULT_LIMITS, *, use_cv_bridge: bool = True
) -> DecodedFrame:
    """Check a sensor_msgs/Image now (ImageDecodeError), decode it later."""
    data = msg.data
    size = len(data)
    info = imaging.check_raw(msg.encoding, msg.width, msg.height, msg.step, size,
                             bool(msg.is_bigendian), limits)
    if use_cv_bridge and CvBridge is not None:
        def decode() -> np.ndarray:
            try:
                return np.ascontiguousarray(CvBridge().imgmsg_to_cv2(msg, desired_encoding="rgb8"))
            except CvBridgeError as exc:
                raise imaging.ImageDecodeError(f"cv_bridge: {exc}") from exc
    else:
        def decode() -> np.ndarray:
            return imaging.decode_checked(info, data)
    return DecodedFrame(copy_header(msg.header), info.width, info.height, decode)


def frame_from_compressed(
    msg: CompressedImage, limits: imaging.ImageLimits = imaging.DEFAULT_LIMITS
) -> DecodedFrame:
    """Check a sensor_msgs/CompressedImage's header now (ImageDecodeError), decode it later."""
    data = msg.data
    _, width, height = imaging.inspect_compressed(data, msg.format, limits)
    fmt = msg.format
    return DecodedFrame(copy_header(msg.header), width, height,
                        lambda: imaging.decode_compressed(data, fmt, limits))


def image_is_empty(msg: Image) -> bool:
    """An unset sensor_msgs/Image field in a request ("use the camera stream")."""
    return msg.width == 0 and msg.height == 0 and len(msg.data) == 0


def rgb_to_image(rgb: np.ndarray, header: Header) -> Image:
    """An (H, W, 3) uint8 RGB array as an rgb8 sensor_msgs/Image with a copy of ``header``."""
    imaging.check_rgb(rgb)
    rgb = np.ascontiguousarray(rgb)
    data = array.array("B")
    data.frombytes(memoryview(rgb).cast("B"))
    msg = Image(header=copy_header(header), height=int(rgb.shape[0]), width=int(rgb.shape[1]),
                encoding="rgb8", is_bigendian=0, step=int(rgb.shape[1]) * 3)
    msg.data = data
    return msg


# --------------------------------------------------------------------------------------------
# Camera model and clicks


def camera_from_info(msg: CameraInfo) -> PinholeCamera:
    """sensor_msgs/CameraInfo -> PinholeCamera; ValueError for an uncalibrated camera."""
    return PinholeCamera(
        width=int(msg.width), height=int(msg.height), k=tuple(msg.k), d=tuple(msg.d),
        distortion_model=msg.distortion_model or "plumb_bob", p=tuple(msg.p),
        frame_id=msg.header.frame_id,
    )


def click_region(u: float, v: float, width: int, height: int, box_size: int, *, id: str = "click") -> Region:
    """A region for a click at pixel (u, v): a point, or a box of ``box_size`` pixels around it
    (clamped to the image). ValueError when the click lies outside the image."""
    if not (math.isfinite(u) and math.isfinite(v)):
        raise ValueError(f"click ({u}, {v}) has a non-finite coordinate")
    if not (0.0 <= u <= width and 0.0 <= v <= height):
        raise ValueError(f"click ({u:.1f}, {v:.1f}) lies outside the {width}x{height} image")
    if box_size <= 0:
        return Region.point(u, v, id=id)
    half = box_size / 2.0
    return Region.box(max(0.0, u - half), max(0.0, v - half), min(float(width), u + half),
                      min(float(height), v + half), id=id)


@dataclass(frozen=True)
class RequestSpec:
    """A checked AskRegion / Describe / SuggestActions request, ROS-free."""

    stamp_ns: int  # 0 = latest
    regions: tuple[Region, ...]
    question: str
    max_new_tokens: int
    notes: tuple[str, ...] = field(default_factory=tuple)


def check_request(
    stamp: Time,
    regions: Sequence[RegionMsg],
    question: str,
    max_new_tokens: int,
    *,
    max_regions: int,
    max_question_chars: int,
    max_new_tokens_limit: int,
    default_max_new_tokens: int,
    what: str = "question",
    require_question: bool = True,
) -> RequestSpec:
    """Check the common fields of a request; ValueError with the reason."""
    if len(regions) > max_regions:
        raise ValueError(f"{len(regions)} regions in one request; the limit is {max_regions} "
                         "(limits.max_regions_per_request)")
    text = question.strip()
    if require_question and not text:
        raise ValueError(f"the {what} is empty")
    if len(question) > max_question_chars:
        raise ValueError(f"the {what} has {len(question)} characters; the limit is "
                         f"{max_question_chars} (limits.max_question_chars)")
    if max_new_tokens > max_new_tokens_limit:
        raise ValueError(f"max_new_tokens {max_new_tokens} exceeds the limit {max_new_tokens_limit} "
                         "(generation.max_new_tokens_limit)")
    parsed = tuple(region_from_msg(r, index=i) for i, r in enumerate(regions))
    return RequestSpec(
        stamp_ns=time_to_ns(stamp), regions=parsed, question=text,
        max_new_tokens=int(max_new_tokens) or int(default_max_new_tokens),
    )
