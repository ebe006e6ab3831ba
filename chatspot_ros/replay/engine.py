"""Offline replay: a recording's messages fed to the node's own ROS-free core, one at a time.

The replay is a front end of :class:`~chatspot_ros.service.agent_service.AgentService`, like the
ROS node: it turns recorded messages into the service's inputs with the same converters
(:mod:`chatspot_ros.ros.convert`, duck-typed: they read rosbags' messages as they read rclpy's and
import no rclpy) and writes the service's outputs into the output MCAP. So the frame matching
(FrameMatcher, ``frames.*``), the instruction planning (InstructionPlanner), the model loading and
every refusal are the node's. Two differences, both for determinism: the service's clock is the
*recording's* log time (a detection waits ``frames.wait_s`` of recorded time for its frame), and
the replay waits for the service to finish each message before it feeds the next (no message is
dropped because the model is slower than the recording).
"""
from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

from chatspot_ros.replay import types as T
from chatspot_ros.replay.outputs import OUTPUT_TOPICS, AnswerLog, OutputBag, rgb_image
from chatspot_ros.replay.recording import ReadStats, Selected, iter_messages, resolve_topic
from chatspot_ros.service.agent_service import (
    AgentService,
    Annotations,
    Descriptions,
    Outputs,
    Suggestion,
)
from chatspot_ros.service.frames import format_ns
from chatspot_ros.service.requests import RequestKind

MAX_ERRORS_LISTED = 20
IDLE_POLL_S = 0.002  # checks of the worker while it answers (it needs the GIL more than this loop)


class _ErrorLog:
    """The service's log: warnings and errors become the summary's error list (the first ones)."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def debug(self, message: str, /) -> None:
        pass

    def info(self, message: str, /) -> None:
        pass

    def warning(self, message: str, /) -> None:
        if len(self.errors) < MAX_ERRORS_LISTED:
            self.errors.append(message)

    error = warning


@dataclass
class _Open:
    """A detection message or click handed to the service and not yet answered."""
    key: str
    stamp_ns: int
    ids: frozenset = frozenset()


@dataclass
class _Group:
    """The outputs of one answered request: its descriptions, then its suggestions and annotations."""
    descriptions: Descriptions
    suggestions: list = field(default_factory=list)
    annotations: Optional[Annotations] = None


class Replayer:
    """Feeds one recording through an AgentService (module docstring).

    ``done``: rows of a previous run by request key (``--resume``); those detection messages are
    not handed to the model again, their recorded answers are written instead."""

    def __init__(self, config: Any, bag: OutputBag, log: AnswerLog, namespace: str = "/",
                 done: Optional[dict[str, list[dict]]] = None, debug_image: bool = True,
                 loader: Optional[Callable[[Any], Any]] = None) -> None:
        self.now_s = 0.0  # recording time of the message being handled: the service's clock
        self.errors = _ErrorLog()
        self._events: list[tuple[str, Any]] = []
        outputs = Outputs(descriptions=lambda d: self._events.append(("descriptions", d)),
                          suggestion=lambda s: self._events.append(("suggestion", s)),
                          annotations=lambda a: self._events.append(("annotations", a)))
        kwargs = {"loader": loader} if loader is not None else {}
        self.service = AgentService(log=self.errors, outputs=outputs, clock=lambda: self.now_s, **kwargs)
        self.config = self.service.configure(config)  # ConfigureError with the reason
        self.configure_notes, self.errors.errors = self.errors.errors, []  # e.g. "loading the shipped DEMO model"
        self.service.start()
        self.bag = bag
        self.log = log
        self.done = done or {}
        self.debug_image = debug_image and bool(self.config.debug_image)
        self.out_topics = {k: resolve_topic(v, namespace) for k, v in OUTPUT_TOPICS.items()}
        self.camera: Any = None
        self.camera_rejected = 0
        self.model_calls = 0
        self.resumed = {"requests": 0, "regions": 0}
        self.image_stamps: list[int] = []  # every accepted frame's stamp, in recording order (--coco)
        self._frames: OrderedDict[int, Any] = OrderedDict()  # recent frames by stamp (resumed debug images)
        self._open: list[_Open] = []
        self._open_clicks: list[str] = []
        self._time_ns = 0
        self._det_ordinal = 0
        self._click_ordinal = 0

    @property
    def model_name(self) -> str:
        return self.service.model_info.get("model", "")

    def close(self) -> None:
        self.service.stop("replay finished")
        self.service.release()

    # -- the loop ---------------------------------------------------------------------------------

    def run(self, reader: Any, selected: Selected, read: ReadStats, *, start_ns: Optional[int] = None,
            stop_ns: Optional[int] = None, max_frames: int = 0,
            progress: Optional[Callable[[int], None]] = None) -> float:
        """Replay; returns the wall time spent (model loading excluded)."""
        handlers = {"image": self._on_image, "image_compressed": self._on_compressed, "detections": self._on_detections,
                    "camera_info": self._on_camera_info, "clicked_point": self._on_click, "task": self._on_task}
        frames = 0
        start = time.perf_counter()
        for key, conn, time_ns, raw, msg in iter_messages(reader, selected, read, start_ns=start_ns, stop_ns=stop_ns):
            if key in ("image", "image_compressed"):
                if max_frames and frames >= max_frames:
                    break
                frames += 1
            self._time_ns = time_ns
            self.now_s = time_ns / 1e9
            self.bag.copy(conn.topic, conn.msgtype, time_ns, raw)
            handlers[key](msg)
            self._settle()
            if progress is not None:
                progress(1)
        # The recording ended: whatever still waits for its frame waits in vain.
        self.now_s += float(self.config.frames_wait_s) + 1.0
        self._settle()
        return time.perf_counter() - start

    def _settle(self) -> None:
        """Let the service release waiting detections, wait until its worker is idle, write what it answered."""
        self.service.poll()
        while True:
            status = self.service.status()
            if not (status.queue_detections or status.queue_requests or status.worker_busy):
                break
            time.sleep(IDLE_POLL_S)
        events, self._events = self._events, []
        group: Optional[_Group] = None
        for kind, value in events:
            if kind == "descriptions":
                if group is not None:
                    self._write_group(group)
                group = _Group(value)
            elif group is not None and kind == "suggestion":
                group.suggestions.append(value)
            elif group is not None:
                group.annotations = value
        if group is not None:
            self._write_group(group)
        if not self.service.status().awaiting_frame:
            # Nothing queued, running or waiting for its frame: an open request not answered by now
            # was refused or dropped (the service counted it) and can never be answered.
            self._open.clear()
            self._open_clicks.clear()

    # -- inputs: the node's conversions, on recorded messages --------------------------------------

    def _push(self, make: Callable[[Any], Any]) -> None:
        def made(config: Any) -> Any:
            frame = make(config)
            self.image_stamps.append(frame.stamp_ns)
            self._frames[frame.stamp_ns] = frame
            while len(self._frames) > 2 * config.frames_buffer_size:
                self._frames.popitem(last=False)
            return frame

        self.service.push_frame(made)

    def _on_image(self, msg: Any) -> None:
        from chatspot_ros.ros import convert

        # cv_bridge (when installed) reads rclpy messages only; the same pixels come from imaging.py
        self._push(lambda cfg: convert.frame_from_image(msg, cfg.image_limits, use_cv_bridge=False))

    def _on_compressed(self, msg: Any) -> None:
        from chatspot_ros.ros import convert

        def reduction(cfg: Any) -> Any:
            builder = self.service.builder
            return builder.geometry.max_reduction if cfg.image_reduced_decode and builder is not None else None

        self._push(lambda cfg: convert.frame_from_compressed(msg, cfg.image_limits, reduction(cfg)))

    def _on_camera_info(self, msg: Any) -> None:
        from chatspot_ros.ros import convert

        try:
            self.camera = convert.camera_from_info(msg)
        except ValueError as exc:
            self.camera_rejected += 1
            self.errors.warning(f"camera_info rejected: {exc}")

    def _on_task(self, msg: Any) -> None:
        self.service.set_task(str(msg.data))

    def _on_detections(self, msg: Any) -> None:
        from chatspot_ros.ros import convert

        self._det_ordinal += 1
        stamp_ns = convert.time_to_ns(msg.header.stamp)
        key = f"det:{stamp_ns}:{self._det_ordinal}"
        regions, errors, overflow = [], [], 0
        if len(msg.detections):
            regions, errors, overflow = convert.detections_to_regions(list(msg.detections),
                                                                      self.config.limits_max_regions_per_frame)
        previous = self.done.get(key)
        if previous is not None and self._write_previous(previous):
            return
        self._open.append(_Open(key, stamp_ns, frozenset(r.region.id for r in regions)))
        self.service.submit_detections(stamp_ns, msg.header.frame_id, regions, invalid=errors, overflow=overflow)

    def _on_click(self, msg: Any) -> None:
        from chatspot_ros.ros import convert

        self._click_ordinal += 1

        def to_pixel(frame: Any) -> tuple[float, float]:
            p = msg.point
            return convert.click_to_pixel((p.x, p.y, p.z), msg.header.frame_id, frame.frame_id, self.camera,
                                          rectified=self.config.projection_rectified, transform=None)  # no tf offline

        if self.service.click(convert.time_to_ns(msg.header.stamp), to_pixel):
            self._open_clicks.append(f"click:{self._time_ns}:{self._click_ordinal}")

    # -- outputs ------------------------------------------------------------------------------------

    def _request_of(self, d: Descriptions) -> tuple[str, int]:
        """The detection message (or click) an answer belongs to: the oldest open one with its
        region ids, within the matching tolerance of the answered frame's stamp."""
        if d.kind is RequestKind.CLICK:
            return (self._open_clicks.pop(0) if self._open_clicks else f"click:{self._time_ns}:?"), d.frame.stamp_ns
        ids = {item.instruction.regions[0].id for item in d.items}
        tolerance = self.config.match_tolerance_ns
        for index, item in enumerate(self._open):
            if ids <= item.ids and abs(item.stamp_ns - d.frame.stamp_ns) <= tolerance:
                found = self._open.pop(index)
                return found.key, found.stamp_ns
        return f"det:{d.frame.stamp_ns}:?", d.frame.stamp_ns

    def _write_group(self, group: _Group) -> None:
        d = group.descriptions
        self.model_calls += 1
        key, stamp_ns = self._request_of(d)
        frame = d.frame
        rows = [_row(key, stamp_ns, frame.stamp_ns, item.instruction.regions[0], item.label, "describe",
                     item.instruction.text, item.text, d.elapsed_s, "") for item in d.items]
        for s in group.suggestions:
            rows.append(_row(key, stamp_ns, frame.stamp_ns, s.region, "", "suggest", self._suggest_text(s, frame),
                             s.text, d.elapsed_s, s.task))
        source = "clicked_point" if key.startswith("click") else "detections"
        for index, row in enumerate(rows):
            row.update(index=index, count=len(rows), source=source)
        self.log.write(rows)
        self._write_outputs(frame, d.elapsed_s, rows, group.annotations.items if group.annotations else ())

    def _suggest_text(self, s: Suggestion, frame: Any) -> str:
        """The instruction of a suggestion (the Suggestion carries its region and task): the builder's."""
        try:
            return self.service.builder.suggest_actions(s.task, s.region, (frame.width, frame.height)).text
        except (AttributeError, ValueError):
            return ""

    def _write_previous(self, rows: list[dict]) -> bool:
        """Write a previous run's answers of one detection message; False when its frame is gone."""
        frame = self._frames.get(int(rows[0]["frame_stamp_ns"]))
        if frame is None:
            return False
        from chatspot_ros.referring.regions import Region, RegionKind

        def region(row: dict) -> Region:
            return Region(RegionKind[row["region_kind"].upper()], tuple(tuple(p) for p in row["region"]),
                          id=row["detection_id"])

        drawn = [(region(r), f"{r['label'] or r['detection_id']}: {r['answer']}") for r in rows
                 if r["role"] == "describe"]
        self.resumed["requests"] += 1
        self.resumed["regions"] += len(drawn)
        self._write_outputs(frame, float(rows[0]["latency_s"]), rows, drawn, regions={id(r): region(r) for r in rows})
        return True

    def _write_outputs(self, frame: Any, elapsed_s: float, rows: list[dict], drawn: Any,
                       regions: Optional[dict] = None) -> None:
        from chatspot_ros.referring.regions import Region, RegionKind
        from chatspot_ros.replay.outputs import action_suggestion, region_msg
        from chatspot_ros.ros.drawing import Annotation, draw_annotations

        ts = T.typestore()
        stamp, frame_id, t = frame.stamp_ns, frame.frame_id, self._time_ns

        def region_of(row: dict) -> Region:
            if regions is not None:
                return regions[id(row)]
            return Region(RegionKind[row["region_kind"].upper()], tuple(tuple(p) for p in row["region"]),
                          id=row["detection_id"])

        desc = ts.types["chatspot_ros/msg/RegionDescription"]
        header = ts.types["std_msgs/msg/Header"](
            stamp=ts.types["builtin_interfaces/msg/Time"](sec=stamp // 10**9, nanosec=stamp % 10**9), frame_id=frame_id)
        self.bag.write(self.out_topics["descriptions"], T.REGION_DESCRIPTIONS, t, ts.types[T.REGION_DESCRIPTIONS](
            header=header, inference_time_s=float(elapsed_s), model=self.model_name,
            descriptions=[desc(region=region_msg(ts, region_of(r)), label=r["label"], instruction=r["instruction"],
                               text=r["answer"]) for r in rows if r["role"] == "describe"]))
        for r in rows:
            if r["role"] == "suggest":
                self.bag.write(self.out_topics["suggestions"], T.ACTION_SUGGESTION, t,
                               action_suggestion(ts, stamp, frame_id, region_of(r), r["task"], r["answer"]))
        if self.debug_image:
            canvas = draw_annotations(frame.rgb(), [Annotation(r, text) for r, text in drawn],
                                      max_width=self.config.debug_max_width, region_scale=frame.rgb_scale)
            self.bag.write(self.out_topics["debug_image"], T.IMAGE, t, rgb_image(ts, canvas, stamp, frame_id))


def _row(key: str, stamp_ns: int, frame_stamp_ns: int, region: Any, label: str, role: str, instruction: str,
         answer: str, elapsed_s: float, task: str) -> dict:
    return {"request": key, "stamp": format_ns(stamp_ns), "stamp_ns": stamp_ns, "frame_stamp_ns": frame_stamp_ns,
            "detection_id": region.id, "label": label, "role": role,
            "region_kind": region.kind.name.lower(), "region": [list(p) for p in region.points],
            "instruction": instruction, "answer": answer, "task": task, "latency_s": round(float(elapsed_s), 6)}
