"""What a replay writes: the output MCAP (inputs + the node's outputs), answers.jsonl / answers.csv,
summary.json / summary.md. Output messages are built from the rosbags typestore (no ROS needed)."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from chatspot_ros.replay import types as T
from chatspot_ros.referring import parse_steps
from chatspot_ros.referring.regions import Region

# The node's output topics (docs/node.md), resolved in the replay's namespace.
OUTPUT_TOPICS = {"descriptions": "region_descriptions", "suggestions": "action_suggestions",
                 "debug_image": "debug/image"}
ANSWER_FIELDS = ("request", "source", "stamp", "stamp_ns", "frame_stamp_ns", "detection_id", "label", "role",
                 "index", "count", "region_kind", "region", "instruction", "answer", "latency_s")


def _header(ts: Any, stamp_ns: int, frame_id: str) -> Any:
    sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
    return ts.types["std_msgs/msg/Header"](stamp=ts.types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec),
                                           frame_id=frame_id)


def region_msg(ts: Any, region: Region) -> Any:
    p32 = ts.types["geometry_msgs/msg/Point32"]
    return ts.types["chatspot_ros/msg/Region"](type=int(region.kind.value),
                                              points=[p32(x=float(x), y=float(y), z=0.0) for x, y in region.points],
                                              id=region.id)


def action_suggestion(ts: Any, stamp_ns: int, frame_id: str, region: Region, task: str, text: str) -> Any:
    return ts.types[T.ACTION_SUGGESTION](header=_header(ts, stamp_ns, frame_id), region=region_msg(ts, region),
                                         task=task, steps=parse_steps(text) if text else [], text=text)


def rgb_image(ts: Any, rgb: np.ndarray, stamp_ns: int, frame_id: str) -> Any:
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    return ts.types[T.IMAGE](header=_header(ts, stamp_ns, frame_id), height=int(rgb.shape[0]),
                             width=int(rgb.shape[1]), encoding="rgb8", is_bigendian=0, step=int(rgb.shape[1]) * 3,
                             data=rgb.reshape(-1))


class OutputBag:
    """A rosbag2 folder with MCAP storage: the input messages copied as recorded (ROS 1 ones
    converted to CDR) and the replay's outputs."""

    def __init__(self, path: Path, to_cdr: Any) -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer

        self.path = path
        self._writer = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP)
        self._writer.open()
        self._to_cdr = to_cdr  # recording.CdrConverter
        self._ts = T.typestore()
        self._connections: dict[tuple[str, str], Any] = {}
        self.count = 0

    def _connection(self, topic: str, msgtype: str, ts: Any) -> Any:
        key = (topic, msgtype)
        if key not in self._connections:
            self._connections[key] = self._writer.add_connection(topic, msgtype, typestore=ts)
        return self._connections[key]

    def copy(self, topic: str, msgtype: str, time_ns: int, raw: bytes) -> None:
        """An input message, as recorded (ROS 1 messages in their ROS 2 layout)."""
        data = self._to_cdr(msgtype, raw)
        self._writer.write(self._connection(topic, msgtype, self._to_cdr.typestore), time_ns, data)
        self.count += 1

    def write(self, topic: str, msgtype: str, time_ns: int, msg: Any) -> None:
        self._writer.write(self._connection(topic, msgtype, self._ts), time_ns, self._ts.serialize_cdr(msg, msgtype))
        self.count += 1

    def close(self) -> None:
        self._writer.close()


class AnswerLog:
    """answers.jsonl, appended and flushed one request at a time (so an interrupted run resumes)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = open(path, "a", encoding="utf-8")

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        self._file.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_answers(path: Path) -> tuple[dict[str, list[dict[str, Any]]], int]:
    """The complete requests of an answers.jsonl (key -> rows in plan order) and how many lines
    were unusable (a line cut by the interruption, a request with rows missing)."""
    rows: dict[str, list[dict[str, Any]]] = {}
    bad = 0
    if not path.is_file():
        return {}, 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
            rows.setdefault(str(row["request"]), []).append(row)
        except (ValueError, KeyError, TypeError):
            bad += 1
    complete = {}
    for key, group in rows.items():
        group.sort(key=lambda r: int(r["index"]))
        if [int(r["index"]) for r in group] == list(range(int(group[0]["count"]))):
            complete[key] = group
        else:
            bad += len(group)
    return complete, bad


def write_csv(jsonl: Path, out: Path) -> int:
    """answers.csv from answers.jsonl (the region as JSON in one column); returns the row count."""
    count = 0
    with open(out, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(ANSWER_FIELDS), extrasaction="ignore")
        writer.writeheader()
        if jsonl.is_file():
            for line in jsonl.read_text(encoding="utf-8").splitlines():
                row = json.loads(line)
                row["region"] = json.dumps(row.get("region"))
                writer.writerow(row)
                count += 1
    return count


def summary_markdown(summary: dict[str, Any]) -> str:
    """summary.md: the counts of summary.json as tables."""
    lines = [f"# Replay of {summary['recording']}", "",
             f"Model: `{summary['model']}`; started {summary['started']}; {summary['elapsed_s']:.1f} s "
             f"(model loaded in {summary['load_s']:.1f} s before).", ""]
    for section in ("frames", "detections", "regions", "clicks", "reading"):
        values = summary.get(section) or {}
        if not values:
            continue
        lines += [f"## {section}", "", "| count | value |", "|---|---|"]
        lines += [f"| {k} | {json.dumps(v) if isinstance(v, (dict, list)) else v} |" for k, v in values.items()]
        lines.append("")
    for key in ("accuracy", "accuracy_coco"):
        acc: Optional[dict[str, Any]] = summary.get(key)
        if acc:
            rate = f"{acc['rate']:.3f}" if acc.get("rate") is not None else "n/a"
            lines += [f"## {key.replace('_', ' ')}", "",
                      f"Answers that name the region's labelled class ({acc['source']}, matcher `{acc['matcher']}`): "
                      f"{acc['correct']} of {acc['labelled']} = {rate}.", ""]
    t = summary.get("throughput") or {}
    if t:
        lines += ["## throughput", "", f"{t['frames_per_s']:.2f} answered frames/s, {t['regions_per_s']:.2f} "
                  f"regions/s over {t['wall_s']:.1f} s ({t['model_calls']} model calls, "
                  f"{t['resumed_requests']} requests taken from a previous run).", ""]
    if summary.get("errors"):
        lines += ["## errors (first ones)", ""] + [f"- {e}" for e in summary["errors"]] + [""]
    return "\n".join(lines)
