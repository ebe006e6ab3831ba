"""Conversions between ROS messages and the ROS-free core; no rclpy.init needed.

Every function takes or returns plain messages and raises ``ValueError`` (or
:class:`chatspot_ros.service.imaging.ImageDecodeError`, a ValueError) with a reason on bad input. The node
only calls these and counts the errors. Inputs: regions, detections, images, camera info, clicks,
request fields. Outputs: images, rviz markers, parameter descriptors.
"""
from __future__ import annotations

import array
import math
import threading
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np
from builtin_interfaces.msg import Duration, Time
from geometry_msgs.msg import Point, Point32
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from chatspot_ros.service import imaging
from chatspot_ros.service.frames import ns_to_stamp, stamp_to_ns
from chatspot_ros.service.inputs import DetectionRegion, check_fields, click_region  # noqa: F401 (re-exported)
from chatspot_ros.service.projection import PinholeCamera
from chatspot_ros.referring import ReferringInstruction, parse_steps
from chatspot_ros.referring.regions import Region, RegionKind
from chatspot_ros.service.config import ParamSpec
from chatspot_ros.ros.drawing import PALETTE, Annotation

try:  # a real ROS install; absent from the PyPI wheels
    from cv_bridge import CvBridge, CvBridgeError  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the install
    CvBridge = None  # type: ignore[assignment,misc]
    CvBridgeError = Exception  # type: ignore[assignment,misc]

from chatspot_ros.msg import ActionSuggestion, RegionDescription, RegionDescriptionArray
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


def detections_to_regions(detections: Sequence[Any], max_regions: int) -> tuple[list[DetectionRegion], list[str], int]:
    """The valid detections of a Detection2DArray as regions, highest score first, at most
    ``max_regions``; also the reasons the invalid ones were refused, and how many valid ones were
    left out by the cap."""
    regions: list[DetectionRegion] = []
    errors: list[str] = []
    for index, detection in enumerate(detections):
        try:
            regions.append(detection_to_region(detection, index=index))
        except ValueError as exc:
            errors.append(str(exc))
    regions.sort(key=lambda r: -r.score)  # stable: equal scores keep the message's order
    overflow = max(0, len(regions) - max_regions)
    return regions[:max_regions], errors, overflow


# --------------------------------------------------------------------------------------------
# Images


class DecodedFrame:
    """One camera image: checked on arrival, decoded to RGB on first use (then cached).

    Arrival costs only the header checks (:func:`imaging.check_raw` /
    :func:`imaging.inspect_compressed`); the pixels are decoded when a request needs them, so a
    30 Hz camera feeding a 2 Hz detector pays for 2 decodes a second.

    ``width`` x ``height`` is always the SOURCE size: region coordinates and their normalization
    are in source pixels. The RGB may be decoded at 1/``reduction`` scale (JPEG, see
    :func:`frame_from_compressed`), ``imaging.reduced_size(width, height, reduction)``; a source
    pixel coordinate x is x / reduction in it.
    """

    def __init__(self, header: Header, width: int, height: int, decode: Callable[[], np.ndarray],
                 reduction: int = 1) -> None:
        self.header = header
        self.width = int(width)
        self.height = int(height)
        self.reduction = int(reduction)
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

    @property
    def rgb_scale(self) -> float:
        """Pixels of :meth:`rgb` per source pixel (1 / reduction)."""
        return 1.0 / self.reduction

    def rgb(self) -> np.ndarray:
        """(H, W, 3) uint8 RGB, possibly reduced (see the class); ImageDecodeError when the pixels
        cannot be decoded."""
        with self._lock:
            if self._rgb is None:
                rgb = self._decode()
                out_w, out_h = imaging.reduced_size(self.width, self.height, self.reduction)
                if rgb.shape[:2] != (out_h, out_w):
                    reduced = f" reduced 1/{self.reduction} to {out_w}x{out_h}" if self.reduction > 1 else ""
                    raise imaging.ImageDecodeError(
                        f"decoded image is {rgb.shape[1]}x{rgb.shape[0]}, header says "
                        f"{self.width}x{self.height}{reduced}"
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
    msg: CompressedImage,
    limits: imaging.ImageLimits = imaging.DEFAULT_LIMITS,
    reduction_for: Optional[Callable[[int, int], int]] = None,
) -> DecodedFrame:
    """Check a sensor_msgs/CompressedImage's header now (ImageDecodeError), decode it later.

    ``reduction_for(width, height)`` (e.g. ``ImageGeometry.max_reduction``) picks the scale
    1/r at which a JPEG is decoded (r in 1, 2, 4, 8); PNG is always decoded at full size.
    """
    data = msg.data
    codec, width, height = imaging.inspect_compressed(data, msg.format, limits)
    reduction = 1
    if reduction_for is not None and codec == "jpeg":
        reduction = int(reduction_for(width, height))
        if reduction not in imaging.JPEG_REDUCTIONS:
            raise ValueError(f"reduction_for gave {reduction}; expected one of {imaging.JPEG_REDUCTIONS}")
    fmt = msg.format
    return DecodedFrame(copy_header(msg.header), width, height,
                        lambda: imaging.decode_compressed(data, fmt, limits, reduction), reduction)


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


def click_to_pixel(
    point: tuple[float, float, float],
    frame_id: str,
    image_frame_id: str,
    camera: Optional[PinholeCamera],
    *,
    rectified: bool = False,
    transform: Optional[Callable[[str], tuple[float, float, float]]] = None,
) -> tuple[float, float]:
    """Pixel of a clicked ``point`` (a PointStamped's point in ``frame_id``); ValueError with the
    reason when it cannot be placed in the image.

    * in the image frame (or with no frame id) and ``z == 0``: already a pixel (rqt_image_view);
    * in the camera's frame: projected with the camera model (``P`` when ``rectified``);
    * in another frame: ``transform(target_frame)`` (tf2) gives the point in the camera frame, or
      raises ValueError; without ``transform`` such a click is refused.
    """
    x, y, z = (float(c) for c in point)
    if not all(math.isfinite(c) for c in (x, y, z)):
        raise ValueError(f"click ({x}, {y}, {z}) has a non-finite coordinate")
    if frame_id in ("", image_frame_id) and z == 0.0:
        return x, y
    if camera is None:
        raise ValueError(
            f"click in frame '{frame_id}' is not a pixel of the image frame '{image_frame_id}' "
            f"(z must be 0) and no camera_info has been received to project a 3D point"
        )
    target = camera.frame_id or image_frame_id
    if frame_id == target:
        return camera.project((x, y, z), rectified=rectified)
    if transform is None:
        raise ValueError(
            f"click in frame '{frame_id}': only the image/camera frame '{target}' "
            "can be used without tf2 (tf2_ros is not installed)"
        )
    return camera.project(transform(target), rectified=rectified)


@dataclass(frozen=True)
class RequestSpec:
    """A checked AskRegion / Describe / SuggestActions request, ROS-free."""

    stamp_ns: int  # 0 = latest
    regions: tuple[Region, ...]
    question: str
    max_new_tokens: int


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
    """Check the common fields of a request (:func:`inputs.check_fields`); ValueError with the reason."""
    check_fields(len(regions), question, max_new_tokens, max_regions=max_regions,
                 max_question_chars=max_question_chars, max_new_tokens_limit=max_new_tokens_limit,
                 what=what, require_question=require_question)
    text = question.strip()
    parsed = tuple(region_from_msg(r, index=i) for i, r in enumerate(regions))
    return RequestSpec(
        stamp_ns=time_to_ns(stamp), regions=parsed, question=text,
        max_new_tokens=int(max_new_tokens) or int(default_max_new_tokens),
    )


# --------------------------------------------------------------------------------------------
# Outputs: answers, rviz markers, parameter descriptors


def region_descriptions(header: Header, inference_time_s: float, model: str,
                        items: Sequence[tuple[str, ReferringInstruction, str]]) -> RegionDescriptionArray:
    """A RegionDescriptionArray from (label, instruction, answer) per region (the instruction's
    first region is the one described); ``header`` is copied."""
    return RegionDescriptionArray(
        header=copy_header(header), inference_time_s=float(inference_time_s), model=model,
        descriptions=[RegionDescription(region=region_to_msg(instruction.regions[0]), label=label,
                                        instruction=instruction.text, text=text)
                      for label, instruction, text in items])


def action_suggestion(header: Header, region: Region, task: str, text: str) -> ActionSuggestion:
    """An ActionSuggestion for ``task`` on ``region``: the answer and the steps parsed from it."""
    return ActionSuggestion(header=copy_header(header), region=region_to_msg(region), task=task,
                            steps=parse_steps(text) if text else [], text=text)


def markers_from_annotations(header: Header, camera: PinholeCamera, annotations: Sequence[Annotation],
                             depth: float, image_width: int, image_height: int) -> MarkerArray:
    """Region outlines and answer texts at ``depth`` metres along their rays, in the camera frame.

    The first marker deletes the previous set; the stamp is ``header``'s (the image answered about).
    """
    frame_header = copy_header(header)
    if camera.frame_id:
        frame_header.frame_id = camera.frame_id
    out = MarkerArray()
    out.markers.append(Marker(header=copy_header(frame_header), ns="chatspot", action=Marker.DELETEALL))
    sx = camera.width / float(image_width)
    sy = camera.height / float(image_height)
    for i, ann in enumerate(annotations):
        r, g, b = PALETTE[i % len(PALETTE)]
        color = ColorRGBA(r=r / 255.0, g=g / 255.0, b=b / 255.0, a=1.0)
        pts = list(ann.region.points)
        if ann.region.kind is RegionKind.BOX:
            (x0, y0), (x1, y1) = pts
            pts = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
        rays = [camera.back_project(x * sx, y * sy, depth) for x, y in pts]
        out.markers.append(_outline_marker(frame_header, 2 * i, rays, color, depth))
        text = Marker(header=frame_header, ns="chatspot", id=2 * i + 1, type=Marker.TEXT_VIEW_FACING,
                      action=Marker.ADD, color=color, text=ann.text[:120])
        text.pose.position = Point(x=sum(p[0] for p in rays) / len(rays),
                                   y=min(p[1] for p in rays) - 0.03 * depth, z=float(depth))
        text.pose.orientation.w = 1.0
        text.scale.z = 0.03 * depth
        out.markers.append(text)
    return out


def _outline_marker(header: Header, marker_id: int, rays: list[tuple[float, float, float]],
                    color: ColorRGBA, depth: float) -> Marker:
    """A closed line strip through ``rays``, or a sphere for a single point."""
    marker = Marker(header=header, ns="chatspot", id=marker_id, action=Marker.ADD, color=color,
                    lifetime=Duration(sec=0))
    marker.pose.orientation.w = 1.0
    if len(rays) == 1:
        marker.type = Marker.SPHERE
        marker.pose.position = Point(x=rays[0][0], y=rays[0][1], z=rays[0][2])
        marker.scale.x = marker.scale.y = marker.scale.z = 0.02 * depth
    else:
        marker.type = Marker.LINE_STRIP
        marker.scale.x = 0.005 * depth
        marker.points = [Point(x=x, y=y, z=z) for x, y, z in rays + rays[:1]]
    return marker


_PARAMETER_TYPES = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
                    float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING}


def parameter_descriptor(spec: ParamSpec) -> ParameterDescriptor:
    """The ParameterDescriptor a parameter of :data:`chatspot_ros.service.config.PARAMETERS` is declared with.

    Numeric parameters carry their range; ``startup`` ones are read-only. ``configure`` and
    ``activate`` ones stay writable: the node's set-parameters callback refuses a change in a
    lifecycle state where it cannot apply, with the reason (a read-only parameter could never be
    changed, not even while the node is unconfigured).
    """
    kind = type(spec.default)
    constraints = []
    if spec.choices:
        constraints.append("one of: " + ", ".join(repr(c) for c in spec.choices))
    if spec.applies:
        constraints.append(spec.applies)
    descriptor = ParameterDescriptor(
        name=spec.name, type=_PARAMETER_TYPES[kind], description=spec.description,
        additional_constraints="; ".join(constraints), read_only=spec.when == "startup",
        # Floats accept integers too ("temperature: 0" in a YAML file); AgentConfig converts them.
        dynamic_typing=kind is float,
    )
    if kind is int and spec.minimum is not None and spec.maximum is not None:
        descriptor.integer_range = [IntegerRange(from_value=int(spec.minimum), to_value=int(spec.maximum), step=0)]
    elif kind is float and spec.minimum is not None and spec.maximum is not None:
        descriptor.floating_point_range = [
            FloatingPointRange(from_value=float(spec.minimum), to_value=float(spec.maximum), step=0.0)
        ]
    return descriptor
