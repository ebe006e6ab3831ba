"""Reading a recording: rosbag2 (sqlite3, MCAP) or ROS 1 bags through rosbags' AnyReader.

The inputs the node subscribes to are found by the node's topic parameters (``topics.*`` of
config/agent.yaml, resolved in a namespace); a missing input or one of the wrong type is a
:class:`RecordingError` that lists every topic of the recording with its type, so the user can
map it (``--topics image=/camera/color/image_raw``).
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from chatspot_ros.replay import types as T

# The node's inputs: key (= its topics.* parameter without the prefix) -> accepted types.
INPUTS: dict[str, tuple[str, ...]] = {
    "image": (T.IMAGE,),
    "image_compressed": (T.COMPRESSED_IMAGE,),
    "detections": (T.DETECTIONS,),
    "camera_info": (T.CAMERA_INFO,),
    "clicked_point": (T.POINT_STAMPED,),
    "task": (T.STRING,),
}
TOPIC_KEYS = ("image", "detections", "camera_info", "clicked_point", "task")


class RecordingError(ValueError):
    """A recording that cannot be replayed as asked (one line: what is wrong and what to do)."""


def resolve_topic(name: str, namespace: str = "/") -> str:
    """A relative ROS name in ``namespace`` (``image`` -> ``/image``, ``/robot1`` + ``image`` ->
    ``/robot1/image``); absolute names stay."""
    if name.startswith("/"):
        return name
    ns = "/" + namespace.strip("/") if namespace.strip("/") else ""
    return f"{ns}/{name}"


def default_topics(config: Any, namespace: str = "/") -> dict[str, str]:
    """The node's input topics from its configuration (an AgentConfig), resolved in ``namespace``."""
    image = resolve_topic(config.topics_image, namespace)
    return {
        "image": image,
        "image_compressed": f"{image}/compressed",
        "detections": resolve_topic(config.topics_detections, namespace),
        "camera_info": resolve_topic(config.topics_camera_info, namespace),
        "clicked_point": resolve_topic(config.topics_clicked_point, namespace),
        "task": resolve_topic(config.topics_task, namespace),
    }


def parse_topic_mapping(items: list[str], topics: dict[str, str], namespace: str = "/") -> dict[str, str]:
    """Apply ``key=/topic`` overrides (key: image, detections, camera_info, clicked_point, task,
    also with a ``topics.`` prefix); mapping ``image`` also maps ``image/compressed``."""
    out = dict(topics)
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().removeprefix("topics.")
        if not sep or not value.strip() or key not in (*TOPIC_KEYS, "image_compressed"):
            raise RecordingError(f"--topics {item!r}: expected KEY=TOPIC with KEY one of {', '.join(TOPIC_KEYS)}")
        out[key] = resolve_topic(value.strip(), namespace)
        if key == "image":
            out["image_compressed"] = out[key] + "/compressed"
    return out


@dataclass(frozen=True)
class Selected:
    """The recording's connections for each input key that is present."""
    topics: dict[str, str]  # key -> topic used
    connections: dict[str, list[Any]]  # key -> rosbags connections


def open_reader(path: str | Path) -> Any:
    """An opened AnyReader; RecordingError (one line) for a missing, unreadable or damaged bag."""
    from rosbags.highlevel import AnyReader

    p = Path(path)
    if not p.exists():
        raise RecordingError(f"recording {p} does not exist")
    if p.is_file() and p.suffix != ".bag":
        raise RecordingError(f"{p}: give the rosbag2 folder (with metadata.yaml) or a ROS 1 .bag file")
    try:
        reader = AnyReader([p], default_typestore=T.typestore())
        reader.open()
    except Exception as err:  # noqa: BLE001 - rosbags raises many types for damaged files; all are the user's file
        raise RecordingError(f"cannot open recording {p}: {type(err).__name__}: {err}") from None
    return reader


def describe_topics(reader: Any) -> str:
    return ", ".join(f"{c.topic} ({c.msgtype})" for c in sorted(reader.connections, key=lambda c: c.topic)) or "none"


def select_inputs(reader: Any, topics: Mapping[str, str], *, prefer_compressed: bool = False) -> Selected:
    """The connections of the node's inputs. Images: the raw topic, or ``<image>/compressed``
    (both present: raw unless ``prefer_compressed``, as the node's image.transport). Needs an image
    topic and detections or clicks; a topic of the wrong type is an error."""
    by_topic: dict[str, list[Any]] = {}
    for conn in reader.connections:
        by_topic.setdefault(conn.topic, []).append(conn)
    chosen: dict[str, list[Any]] = {}
    used: dict[str, str] = {}
    for key, accepted in INPUTS.items():
        topic = topics[key]
        conns = by_topic.get(topic, [])
        if not conns:
            continue
        wrong = sorted({c.msgtype for c in conns if c.msgtype not in accepted})
        if wrong:
            raise RecordingError(
                f"topic {topic} ({key}) is {', '.join(wrong)}, expected {' or '.join(accepted)}; map the right "
                f"topic with --topics {key.replace('image_compressed', 'image')}=TOPIC. The recording has: "
                f"{describe_topics(reader)}")
        chosen[key], used[key] = conns, topic
    raw, compressed = "image" in chosen, "image_compressed" in chosen
    if raw and compressed:
        drop = "image" if prefer_compressed else "image_compressed"
        chosen.pop(drop)
        used.pop(drop)
    if not (raw or compressed):
        raise RecordingError(
            f"no image topic {topics['image']} ({T.IMAGE}) or {topics['image_compressed']} ({T.COMPRESSED_IMAGE}) "
            f"in the recording; map it with --topics image=TOPIC. The recording has: {describe_topics(reader)}")
    if "detections" not in chosen and "clicked_point" not in chosen:
        raise RecordingError(
            f"nothing to answer: no detections topic {topics['detections']} ({T.DETECTIONS}) and no clicks on "
            f"{topics['clicked_point']} ({T.POINT_STAMPED}); map one with --topics detections=TOPIC. "
            f"The recording has: {describe_topics(reader)}")
    return Selected(used, chosen)


class CdrConverter:
    """A recorded message as ROS 2 CDR bytes: rosbag2 data as is; ROS 1 data migrated to the ROS 2
    layout of the replay's typestore (the Header loses ``seq``) with rosbags' own converter."""

    def __init__(self, reader: Any) -> None:
        self._reader = reader
        self._cache: dict[str, object] = {}

    @property
    def typestore(self) -> Any:
        """The typestore the bytes are laid out for."""
        return self._reader.typestore if self._reader.is2 else T.typestore()

    def __call__(self, msgtype: str, raw: bytes) -> bytes:
        if self._reader.is2:
            return raw
        from rosbags.convert.converter import migrate_bytes

        return bytes(migrate_bytes(self._reader.typestore, T.typestore(), msgtype, msgtype, self._cache, raw,
                                   src_is2=False, dst_is2=True))


@dataclass
class ReadStats:
    """What reading saw: messages per key, header stamps that went back on their topic, decode errors."""
    messages: dict[str, int]
    out_of_order: dict[str, int]
    undecodable: int = 0
    read_error: str = ""


def iter_messages(reader: Any, selected: Selected, stats: ReadStats, *, start_ns: Optional[int] = None,
                  stop_ns: Optional[int] = None) -> Iterator[tuple[str, Any, int, bytes, Any]]:
    """(key, connection, log time ns, raw bytes, message) in log-time order. A message that cannot
    be deserialized is counted and skipped; a damaged file ends the iteration with
    ``stats.read_error`` set (what was read before stays valid)."""
    key_of = {id(c): k for k, conns in selected.connections.items() for c in conns}
    conns = [c for cs in selected.connections.values() for c in cs]
    last_stamp: dict[str, int] = {}
    try:
        for conn, time_ns, raw in reader.messages(connections=conns, start=start_ns, stop=stop_ns):
            key = key_of[id(conn)]
            try:
                msg = reader.deserialize(raw, conn.msgtype)
            except Exception:  # noqa: BLE001 - a damaged message: counted, the replay goes on
                stats.undecodable += 1
                continue
            stats.messages[key] = stats.messages.get(key, 0) + 1
            header = getattr(msg, "header", None)
            if header is not None:
                stamp = int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)
                if stamp < last_stamp.get(key, stamp):
                    stats.out_of_order[key] = stats.out_of_order.get(key, 0) + 1
                last_stamp[key] = max(stamp, last_stamp.get(key, stamp))
            yield key, conn, time_ns, raw, msg
    except Exception as err:  # noqa: BLE001 - a truncated / corrupt file: stop reading, keep what was read
        stats.read_error = f"{type(err).__name__}: {err}"
