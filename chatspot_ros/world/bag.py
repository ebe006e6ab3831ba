"""The tabletop world as a robot log: a rosbag2 (sqlite3 and/or MCAP) of camera frames, detector
output with class hypotheses and camera info (docs/replay.md). Written with rosbags, no ROS needed.

Frame ``i`` of seed ``s`` is the world's frame (docs/world.md), stamped ``T0 + i / rate``. Its
``Detection2DArray`` carries the frame's stamp (logged ``DETECTOR_LATENCY_NS`` later, as a real
detector's would be), one ``Detection2D`` per object with id ``obj<k>``, its box, and two class
hypotheses: the true category (score 0.9) and a same-shape category of another colour (score 0.1),
drawn from ``default_rng([s, i, 3])``.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from chatspot_ros.world.scene import COLOURS, HEIGHT, WIDTH, Scene, render, sample_scene

T0_NS = 1_700_000_000 * 1_000_000_000  # stamp of frame 0 (fixed, so two writes agree byte for byte)
DETECTOR_LATENCY_NS = 30_000_000
FRAME_ID = "camera_optical"
IMAGE_FORMATS = ("raw", "jpeg", "png")
STORAGES = ("sqlite3", "mcap")
# The node's default topic names (config/agent.yaml, topics.*) in the root namespace.
TOPICS = {"image": "/image", "detections": "/detections", "camera_info": "/camera_info"}
FOCAL_PX = 300.0


@dataclass(frozen=True)
class BagMessage:
    """One message of a recording: topic, type, log time (ns) and the rosbags message object."""
    topic: str
    msgtype: str
    time_ns: int
    msg: Any


def _header(ts: Any, stamp_ns: int, frame_id: str = FRAME_ID) -> Any:
    Time = ts.types["builtin_interfaces/msg/Time"]
    sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
    return ts.types["std_msgs/msg/Header"](stamp=Time(sec=sec, nanosec=nanosec), frame_id=frame_id)


def image_message(ts: Any, rgb: np.ndarray, stamp_ns: int, image_format: str = "raw") -> tuple[str, Any]:
    """(msgtype, message) of an RGB frame: an rgb8 Image, or a jpeg / png CompressedImage."""
    from chatspot_ros.service import imaging

    if image_format == "raw":
        width, height, step, data = imaging.encode_raw(rgb, "rgb8")
        return "sensor_msgs/msg/Image", ts.types["sensor_msgs/msg/Image"](
            header=_header(ts, stamp_ns), height=height, width=width, encoding="rgb8", is_bigendian=0,
            step=step, data=np.frombuffer(bytes(data), dtype=np.uint8))
    if image_format in ("jpeg", "png"):
        data = imaging.encode_compressed(rgb, image_format)
        return "sensor_msgs/msg/CompressedImage", ts.types["sensor_msgs/msg/CompressedImage"](
            header=_header(ts, stamp_ns), format=image_format, data=np.frombuffer(bytes(data), dtype=np.uint8))
    raise ValueError(f"unknown image format {image_format!r}; one of {', '.join(IMAGE_FORMATS)}")


def camera_info_message(ts: Any, stamp_ns: int, width: int = WIDTH, height: int = HEIGHT) -> Any:
    """A distortion-free pinhole camera looking down at the table."""
    t = ts.types
    cx, cy = width / 2.0, height / 2.0
    k = np.array([FOCAL_PX, 0, cx, 0, FOCAL_PX, cy, 0, 0, 1], dtype=np.float64)
    p = np.array([FOCAL_PX, 0, cx, 0, 0, FOCAL_PX, cy, 0, 0, 0, 1, 0], dtype=np.float64)
    roi = t["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    return t["sensor_msgs/msg/CameraInfo"](
        header=_header(ts, stamp_ns), height=height, width=width, distortion_model="plumb_bob",
        d=np.zeros(5, dtype=np.float64), k=k, r=np.eye(3, dtype=np.float64).reshape(-1), p=p,
        binning_x=0, binning_y=0, roi=roi)


def detection(ts: Any, box: tuple[float, float, float, float], det_id: str,
              hypotheses: Iterable[tuple[str, float]], stamp_ns: int) -> Any:
    """A vision_msgs/Detection2D of an axis-aligned pixel box with (class id, score) hypotheses."""
    t = ts.types
    x0, y0, x1, y1 = box
    results = [t["vision_msgs/msg/ObjectHypothesisWithPose"](
        hypothesis=t["vision_msgs/msg/ObjectHypothesis"](class_id=label, score=float(score)),
        pose=t["geometry_msgs/msg/PoseWithCovariance"](
            pose=t["geometry_msgs/msg/Pose"](position=t["geometry_msgs/msg/Point"](x=0.0, y=0.0, z=0.0),
                                             orientation=t["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0,
                                                                                           w=1.0)),
            covariance=np.zeros(36, dtype=np.float64)))
        for label, score in hypotheses]
    center = t["vision_msgs/msg/Pose2D"](position=t["vision_msgs/msg/Point2D"](x=(x0 + x1) / 2, y=(y0 + y1) / 2),
                                         theta=0.0)
    return t["vision_msgs/msg/Detection2D"](
        header=_header(ts, stamp_ns), results=results,
        bbox=t["vision_msgs/msg/BoundingBox2D"](center=center, size_x=float(x1 - x0), size_y=float(y1 - y0)),
        id=det_id)


def scene_detections(ts: Any, scene: Scene, stamp_ns: int) -> Any:
    """The Detection2DArray of a world frame (module docstring)."""
    rng = np.random.default_rng([scene.seed, scene.index, 3])
    colours = list(COLOURS)
    dets = []
    for k, obj in enumerate(scene.objects):
        other = [c for c in colours if c != obj.colour][int(rng.integers(0, len(colours) - 1))]
        dets.append(detection(ts, obj.box, f"obj{k}", [(obj.category, 0.9), (f"{other} {obj.shape}", 0.1)],
                              stamp_ns))
    return ts.types["vision_msgs/msg/Detection2DArray"](header=_header(ts, stamp_ns), detections=dets)


def world_messages(seed: int, frames: int, *, start: int = 0, rate_hz: float = 2.0, image_format: str = "raw",
                   topics: dict[str, str] | None = None) -> Iterator[BagMessage]:
    """The messages of frames ``start .. start + frames - 1`` of world ``seed``, in log-time order."""
    from chatspot_ros.replay.types import typestore

    if not rate_hz > 0:
        raise ValueError(f"rate must be > 0 Hz, got {rate_hz}")
    ts = typestore()
    names = dict(TOPICS, **(topics or {}))
    image_topic = names["image"] + ("/compressed" if image_format != "raw" else "")
    period_ns = int(round(1e9 / rate_hz))
    for i in range(start, start + frames):
        scene = sample_scene(seed, i)
        stamp = T0_NS + (i - start) * period_ns
        msgtype, image = image_message(ts, render(scene), stamp, image_format)
        yield BagMessage(names["camera_info"], "sensor_msgs/msg/CameraInfo", stamp, camera_info_message(ts, stamp))
        yield BagMessage(image_topic, msgtype, stamp + 1, image)
        yield BagMessage(names["detections"], "vision_msgs/msg/Detection2DArray", stamp + DETECTOR_LATENCY_NS,
                         scene_detections(ts, scene, stamp))


def write_bag(out: str | Path, messages: Iterable[BagMessage], storage: str = "mcap") -> Path:
    """Write ``messages`` as a rosbag2 folder ``out`` (must not exist) with the storage plugin named."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    from chatspot_ros.replay.types import typestore

    if storage not in STORAGES:
        raise ValueError(f"unknown storage {storage!r}; one of {', '.join(STORAGES)}")
    ts = typestore()
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    connections: dict[tuple[str, str], Any] = {}
    with Writer(Path(out), version=9, storage_plugin=plugin) as writer:
        for m in messages:
            key = (m.topic, m.msgtype)
            if key not in connections:
                connections[key] = writer.add_connection(m.topic, m.msgtype, typestore=ts)
            writer.write(connections[key], m.time_ns, ts.serialize_cdr(m.msg, m.msgtype))
    return Path(out)


def write_world_bag(out: str | Path, seed: int, frames: int, *, storage: str = "mcap", start: int = 0,
                    rate_hz: float = 2.0, image_format: str = "raw") -> list[Path]:
    """The world recording in ``out`` (one storage), or ``out/sqlite3`` and ``out/mcap`` ("both"),
    and its ground truth ``out/instances.json`` (COCO; each image also has its ``stamp_ns``)."""
    out = Path(out)
    storages = STORAGES if storage == "both" else (storage,)
    written = []
    for name in storages:
        target = out / name if storage == "both" else out
        written.append(write_bag(target, world_messages(seed, frames, start=start, rate_hz=rate_hz,
                                                        image_format=image_format), name))
    (out / "instances.json").write_text(json.dumps(world_coco(seed, frames, start=start, rate_hz=rate_hz)) + "\n")
    return written


def world_coco(seed: int, frames: int, *, start: int = 0, rate_hz: float = 2.0) -> dict[str, Any]:
    """COCO instances of the recorded frames (the world's annotations, docs/world.md), with the
    stamp of each image, so that ``chatspot-replay --coco`` finds an image by its stamp."""
    from chatspot_ros.world.annotations import coco_categories, scene_annotations

    period_ns = int(round(1e9 / rate_hz))
    images, annotations = [], []
    for i in range(start, start + frames):
        scene = sample_scene(seed, i)
        images.append({"id": i + 1, "file_name": f"{i:06d}.png", "width": scene.size[0], "height": scene.size[1],
                       "stamp_ns": T0_NS + (i - start) * period_ns})
        annotations += scene_annotations(scene, i + 1, first_ann_id=1 + len(annotations))[0]
    return {"info": {"description": "chatspot_ros tabletop world as a recording", "seed": seed, "start": start,
                     "frames": frames}, "images": images, "annotations": annotations, "categories": coco_categories()}


# ------------------------------------------------------------------------------------------------
# `chatspot-world bag` (the subcommand's arguments and run live here; cli/world.py only registers it)


def add_bag_parser(sub: Any) -> None:
    bag = sub.add_parser("bag", help="write frames as a robot log: a rosbag2 of camera images, detections with "
                                     "class hypotheses and camera info (docs/replay.md)",
                         formatter_class=__import__("argparse").ArgumentDefaultsHelpFormatter)
    bag.add_argument("--seed", type=int, required=True, help="the world split's seed")
    bag.add_argument("--frames", type=int, required=True, help="number of frames")
    bag.add_argument("--start", type=int, default=0, help="index of the first frame")
    bag.add_argument("--out", required=True, help="bag folder to create (with --storage both: OUT/sqlite3, OUT/mcap)")
    bag.add_argument("--storage", default="mcap", choices=(*STORAGES, "both"), help="rosbag2 storage plugin")
    bag.add_argument("--rate", type=float, default=2.0, help="frames per second of the recording")
    bag.add_argument("--image-format", default="raw", choices=IMAGE_FORMATS,
                     help="raw: sensor_msgs/Image rgb8 on /image; jpeg/png: CompressedImage on /image/compressed")
    bag.add_argument("--overwrite", action="store_true", help="replace OUT when it exists")


def run_bag(args: Any) -> int:
    """`chatspot-world bag`: one line on stdout per bag written; a user error is one line on stderr, exit 2."""
    import shutil
    import sys

    from chatspot_ros.cli.errors import EXIT_USAGE, UsageError

    try:
        out = Path(args.out)
        if args.frames < 1:
            raise UsageError("--frames must be >= 1")
        if not args.rate > 0:
            raise UsageError("--rate must be > 0")
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            if not args.overwrite:
                raise UsageError(f"{out} exists and is not empty; choose another --out or pass --overwrite")
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        elif out.is_dir():
            out.rmdir()  # rosbags creates the folder itself
        paths = write_world_bag(out, args.seed, args.frames, storage=args.storage, start=args.start,
                                rate_hz=args.rate, image_format=args.image_format)
    except UsageError as err:
        print(f"chatspot-world: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    for path in paths:
        print(f"wrote {args.frames} frames of world seed {args.seed} to {path}")
    return 0
