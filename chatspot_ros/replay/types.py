"""The rosbags typestore of recordings: ROS 2 Humble types plus vision_msgs and chatspot_ros.

vision_msgs and chatspot_ros are registered from their ``.msg`` definitions (the source tree's
``compat/vision_msgs/msg`` and ``msg/``, else an installed ``share/<package>/msg``), so messages are
read and written with rosbags' own serializers, never with hand-written CDR.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

REPO = Path(__file__).resolve().parents[2]

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
DETECTIONS = "vision_msgs/msg/Detection2DArray"
POINT_STAMPED = "geometry_msgs/msg/PointStamped"
STRING = "std_msgs/msg/String"
REGION_DESCRIPTIONS = "chatspot_ros/msg/RegionDescriptionArray"
ACTION_SUGGESTION = "chatspot_ros/msg/ActionSuggestion"


def _share_dirs(package: str) -> list[Path]:
    """``share/<package>/msg`` of every prefix on AMENT_PREFIX_PATH (a ROS install), in order."""
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    return [Path(p) / "share" / package / "msg" for p in prefixes]


def _msg_dir(package: str, source: Path) -> Path:
    for folder in [source, *_share_dirs(package)]:
        if folder.is_dir() and any(folder.glob("*.msg")):
            return folder
    raise FileNotFoundError(f"no .msg definitions of {package} found (looked in {source} and share/{package}/msg "
                            "of AMENT_PREFIX_PATH)")


def _register(store: Typestore, package: str, folder: Path) -> None:
    types: dict = {}
    for path in sorted(folder.glob("*.msg")):
        types.update(get_types_from_msg(path.read_text(encoding="utf-8"), f"{package}/msg/{path.stem}"))
    store.register(types)


@functools.lru_cache(maxsize=1)
def typestore() -> Typestore:
    """ROS 2 Humble's types, vision_msgs (Humble layout) and chatspot_ros's messages."""
    store = get_typestore(Stores.ROS2_HUMBLE)
    _register(store, "vision_msgs", _msg_dir("vision_msgs", REPO / "compat" / "vision_msgs" / "msg"))
    _register(store, "chatspot_ros", _msg_dir("chatspot_ros", REPO / "msg"))
    return store
