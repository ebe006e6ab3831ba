"""Offline replay: a recording's detections and clicks answered as the node answers them.

The node's shared, ROS-free pieces do the work: :class:`~chatspot_ros.service.frames.FrameMatcher`
matches every detection message and click to its frame by stamp (the node's ``frames.*`` wait
rule, with recording time as the clock: a detection waits ``frames.wait_s`` of *recorded* time for
a frame that has not arrived yet), :class:`~chatspot_ros.service.planning.InstructionPlanner`
makes the instructions, :mod:`chatspot_ros.ros.convert`'s duck-typed helpers turn detections,
images and clicks into regions and frames (they read rosbags' messages as they read rclpy's, and
import no rclpy), and :class:`~chatspot_ros.pipeline.ChatSpot` answers one request per call, as the
node's worker does. Nothing waits on a wall clock, so a greedy replay is deterministic.
"""
from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Optional

from chatspot_ros.replay import types as T
from chatspot_ros.replay.outputs import (
    OUTPUT_TOPICS,
    AnswerLog,
    OutputBag,
    action_suggestion,
    region_descriptions,
    rgb_image,
)
from chatspot_ros.replay.recording import ReadStats, Selected, iter_messages, resolve_topic
from chatspot_ros.service.frames import Arrival, FrameMatcher, MatchPolicy, MatchResult, format_ns
from chatspot_ros.service.planning import InstructionPlanner, Plan, Role

MAX_ERRORS_LISTED = 20


class _Pending(NamedTuple):
    """A detection message waiting in the matcher for its frame."""
    key: str
    stamp_ns: int
    regions: list  # convert.DetectionRegion


@dataclass
class Counts:
    frames: Counter = field(default_factory=Counter)
    detections: Counter = field(default_factory=Counter)
    unmatched_reasons: Counter = field(default_factory=Counter)
    regions: Counter = field(default_factory=Counter)
    clicks: Counter = field(default_factory=Counter)
    errors: list = field(default_factory=list)
    model_calls: int = 0
    resumed: int = 0

    def error(self, text: str) -> None:
        if len(self.errors) < MAX_ERRORS_LISTED:
            self.errors.append(text)


class Replayer:
    """Feeds one recording through the node's matching, planning and model call (module docstring).

    ``chatspot``: a loaded :class:`~chatspot_ros.pipeline.ChatSpot` whose builder limits follow
    ``config`` (see :func:`apply_limits`); ``done``: answers of a previous run by request key
    (``--resume``), reused instead of asking the model again."""

    def __init__(self, chatspot: Any, config: Any, model_name: str, bag: OutputBag, log: AnswerLog,
                 namespace: str = "/", done: Optional[dict[str, list[dict]]] = None,
                 debug_image: bool = True) -> None:
        from chatspot_ros.runtime import GenerationConfig

        self.chatspot = chatspot
        self.config = config
        self.model_name = model_name
        self.bag = bag
        self.log = log
        self.done = done or {}
        self.debug_image = debug_image and bool(config.debug_image)
        self.out_topics = {k: resolve_topic(v, namespace) for k, v in OUTPUT_TOPICS.items()}
        self.gen = GenerationConfig(
            max_new_tokens=int(config.generation_max_new_tokens), temperature=config.generation_temperature,
            top_p=config.generation_top_p, seed=None if config.generation_seed < 0 else config.generation_seed)
        self.now_s = 0.0  # recording time of the message being handled: the matcher's clock
        self.matcher: FrameMatcher[Any, _Pending] = FrameMatcher(
            capacity=config.frames_buffer_size, policy=MatchPolicy(config.match_tolerance_ns, config.frames_wait_s),
            max_waiting=config.queues_max_pending_detections,
            max_backward_jump_ns=int(config.frames_max_backward_jump_s * 1e9), clock=lambda: self.now_s)
        self.counts = Counts()
        self.task = ""
        self.camera: Any = None
        self.image_frame_id = ""
        self._time_ns = 0
        self._det_ordinal = 0
        self._click_ordinal = 0

    # -- the loop ---------------------------------------------------------------------------------

    def run(self, reader: Any, selected: Selected, read: ReadStats, *, start_ns: Optional[int] = None,
            stop_ns: Optional[int] = None, max_frames: int = 0,
            progress: Optional[Callable[[int], None]] = None) -> None:
        handlers = {"image": self._on_image, "image_compressed": self._on_compressed, "detections": self._on_detections,
                    "camera_info": self._on_camera_info, "clicked_point": self._on_click, "task": self._on_task}
        for key, conn, time_ns, raw, msg in iter_messages(reader, selected, read, start_ns=start_ns, stop_ns=stop_ns):
            if max_frames and key in ("image", "image_compressed") and self.counts.frames["read"] >= max_frames:
                break
            self._time_ns = time_ns
            self.now_s = time_ns / 1e9
            self.bag.copy(conn.topic, conn.msgtype, time_ns, raw)
            handlers[key](msg)
            self._release(self.matcher.poll())
            if progress is not None:
                progress(1)
        self.now_s = math.inf  # the recording ended: whatever still waits for its frame is unmatched
        self._release(self.matcher.poll())

    # -- inputs (the node's callbacks, on recorded messages) ----------------------------------------

    def _on_image(self, msg: Any) -> None:
        from chatspot_ros.ros import convert

        self._frame(lambda: convert.frame_from_image(msg, self.config.image_limits, use_cv_bridge=False))

    def _on_compressed(self, msg: Any) -> None:
        from chatspot_ros.ros import convert

        reduction = self.chatspot.builder.geometry.max_reduction if self.config.image_reduced_decode else None
        self._frame(lambda: convert.frame_from_compressed(msg, self.config.image_limits, reduction))

    def _frame(self, make: Callable[[], Any]) -> None:
        from chatspot_ros.service.imaging import ImageDecodeError

        self.counts.frames["read"] += 1
        try:
            frame = make()
        except ImageDecodeError as exc:
            self.counts.frames["rejected"] += 1
            self.counts.error(f"image at {format_ns(self._time_ns)} rejected: {exc}")
            return
        pushed = self.matcher.push(frame.stamp_ns, frame)
        if pushed.time_jump:
            self.counts.frames["time_jumps"] += 1
        self.image_frame_id = frame.frame_id
        self.counts.frames["buffered"] += 1
        self._release(pushed.released)

    def _on_camera_info(self, msg: Any) -> None:
        from chatspot_ros.ros import convert

        try:
            self.camera = convert.camera_from_info(msg)
        except ValueError as exc:
            self.counts.error(f"camera_info rejected: {exc}")

    def _on_task(self, msg: Any) -> None:
        text = str(msg.data).strip()
        if len(text) > self.config.limits_max_question_chars:
            self.counts.error(f"task rejected: {len(text)} characters (limits.max_question_chars)")
            return
        self.task = text

    def _on_detections(self, msg: Any) -> None:
        from chatspot_ros.ros import convert

        c = self.counts.detections
        c["messages"] += 1
        self._det_ordinal += 1
        stamp_ns = convert.time_to_ns(msg.header.stamp)
        where = f"detections at {format_ns(stamp_ns)}"
        if not len(msg.detections):
            c["empty"] += 1
            return
        frame_id = msg.header.frame_id
        if frame_id and self.image_frame_id and frame_id != self.image_frame_id:
            c["rejected"] += 1
            self.counts.error(f"{where} rejected: frame '{frame_id}' is not the camera frame '{self.image_frame_id}'")
            return
        regions, errors, overflow = convert.detections_to_regions(list(msg.detections),
                                                                  self.config.limits_max_regions_per_frame)
        self.counts.regions["rejected"] += len(errors)
        self.counts.regions["overflow"] += overflow
        for err in errors[:1]:
            self.counts.error(f"{where}: {err}")
        if not regions:
            c["rejected"] += 1
            return
        pending = _Pending(f"det:{stamp_ns}:{self._det_ordinal}", stamp_ns, regions)
        submitted = self.matcher.submit(stamp_ns, pending)
        for old in submitted.evicted:
            c["dropped"] += 1
            self.counts.error(f"detections at {format_ns(old.stamp_ns)} dropped: too many waiting for their frame "
                              "(queues.max_pending_detections)")
        if submitted.arrival is not Arrival.WAITING:
            assert submitted.result is not None
            self._answer_detections(pending, submitted.result)

    def _release(self, released: Any) -> None:
        for item in released:
            self._answer_detections(item.item, item.result)

    def _on_click(self, msg: Any) -> None:
        from chatspot_ros.ros import convert

        c = self.counts.clicks
        c["received"] += 1
        self._click_ordinal += 1
        stamp_ns = convert.time_to_ns(msg.header.stamp)
        match = self.matcher.lookup(stamp_ns) if stamp_ns else None
        frame = match.frame.item if match is not None and match.ok else None
        if frame is None:  # rviz stamps clicks with the time of the click: the latest frame then
            latest = self.matcher.latest()
            frame = latest.item if latest is not None else None
        if frame is None:
            c["unmatched"] += 1
            return
        try:
            p = msg.point
            u, v = convert.click_to_pixel((p.x, p.y, p.z), msg.header.frame_id, frame.frame_id, self.camera,
                                          rectified=self.config.projection_rectified, transform=None)
            region = convert.click_region(u, v, frame.width, frame.height, self.config.click_box_size)
            plan = InstructionPlanner(self.chatspot.builder).for_click(
                region, (frame.width, frame.height), question=self.config.click_question, task=self.task)
        except ValueError as exc:
            c["rejected"] += 1
            self.counts.error(f"click at {format_ns(self._time_ns)} rejected: {exc}")
            return
        key = f"click:{self._time_ns}:{self._click_ordinal}"
        answered = self._ask(key, frame, plan, ["" for _ in plan.items], ["click" for _ in plan.items], "clicked_point")
        if answered is None:
            c["failed"] += 1
            return
        texts, elapsed_s = answered
        c["answered"] += 1
        about = [a for a in plan.answers(texts) if a.role is not Role.SUGGEST]
        self._publish(frame, elapsed_s, plan, texts, [("", a.instruction, a.text) for a in about],
                      [(a.instruction.regions[0], a.text) for a in about])

    # -- answering ----------------------------------------------------------------------------------

    def _answer_detections(self, pending: _Pending, match: MatchResult[Any]) -> None:
        c = self.counts.detections
        if not match.ok:
            c["unmatched"] += 1
            self.counts.unmatched_reasons[match.status.value] += 1
            self.counts.error(f"detections at {format_ns(pending.stamp_ns)}: no frame: {match.message}")
            return
        c["matched"] += 1
        frame, detections = match.frame.item, pending.regions
        task = self.task if self.config.task_suggest_on_detections else ""
        plan = InstructionPlanner(self.chatspot.builder).for_detections(
            [d.region for d in detections], (frame.width, frame.height), task=task,
            suggest_for=self.config.task_max_detections)
        self.counts.regions["rejected"] += len(plan.rejected)
        if plan.first(Role.DESCRIBE) is None:
            c["rejected"] += 1
            return
        ids = [detections[p.source].region.id for p in plan.items]
        labels = [detections[p.source].label for p in plan.items]
        answered = self._ask(pending.key, frame, plan, labels, ids, "detections")
        if answered is None:
            c["failed"] += 1
            return
        texts, elapsed_s = answered
        c["answered"] += 1
        described = plan.by_role(texts, Role.DESCRIBE)
        self.counts.regions["answered"] += len(described)
        self._publish(frame, elapsed_s, plan, texts,
                      [(detections[a.source].label, a.instruction, a.text) for a in described],
                      [(a.instruction.regions[0],
                        f"{detections[a.source].label or detections[a.source].region.id}: {a.text}")
                       for a in described], task)

    def _ask(self, key: str, frame: Any, plan: Plan, labels: list[str], ids: list[str],
             source: str) -> Optional[tuple[list[str], float]]:
        """The plan's answers: from a previous run (--resume) or from the model (one call, as the
        node's worker makes it); None when the model or the image failed (counted)."""
        from chatspot_ros.service.imaging import ImageDecodeError

        previous = self.done.get(key)
        if previous is not None and len(previous) == len(plan.items) and \
                [r["instruction"] for r in previous] == [p.instruction.text for p in plan.items]:
            self.counts.resumed += 1
            return [r["answer"] for r in previous], float(previous[0]["latency_s"])
        start = time.perf_counter()
        try:
            rgb = frame.rgb()
            result = self.chatspot.answer_frame(rgb, (frame.frame_id, frame.stamp_ns), plan.instructions, self.gen)
        except ImageDecodeError as exc:
            self.counts.frames["decode_failed"] += 1
            self.counts.error(f"{source} at {format_ns(frame.stamp_ns)}: cannot decode the image: {exc}")
            return None
        except Exception as exc:  # noqa: BLE001 - a model error fails this request (counted), not the replay
            self.counts.detections["model_errors"] += 1
            self.counts.error(f"{source} at {format_ns(frame.stamp_ns)}: model error: {type(exc).__name__}: {exc}")
            return None
        elapsed_s = time.perf_counter() - start
        self.counts.model_calls += 1
        texts = list(result.texts)
        rows = []
        for i, (p, text) in enumerate(zip(plan.items, texts)):
            region = p.instruction.regions[0] if p.instruction.regions else None
            rows.append({
                "request": key, "source": source, "stamp": format_ns(frame.stamp_ns),
                "stamp_ns": frame.stamp_ns, "frame_stamp_ns": frame.stamp_ns, "detection_id": ids[i],
                "label": labels[i], "role": p.role.value, "index": i, "count": len(plan.items),
                "region_kind": region.kind.name.lower() if region is not None else "image",
                "region": [list(pt) for pt in region.points] if region is not None else None,
                "instruction": p.instruction.text, "answer": text, "latency_s": round(elapsed_s, 6)})
        self.log.write(rows)
        return texts, elapsed_s

    # -- outputs ------------------------------------------------------------------------------------

    def _publish(self, frame: Any, elapsed_s: float, plan: Plan, texts: list[str], described: list,
                 drawn: list, task: Optional[str] = None) -> None:
        from chatspot_ros.ros.drawing import Annotation, draw_annotations

        ts = T.typestore()
        stamp, frame_id, t = frame.stamp_ns, frame.frame_id, self._time_ns
        self.bag.write(self.out_topics["descriptions"], T.REGION_DESCRIPTIONS, t,
                       region_descriptions(ts, stamp, frame_id, elapsed_s, self.model_name, described))
        for s in plan.by_role(texts, Role.SUGGEST):
            self.bag.write(self.out_topics["suggestions"], T.ACTION_SUGGESTION, t,
                           action_suggestion(ts, stamp, frame_id, s.instruction.regions[0],
                                             self.task if task is None else task, s.text))
        if self.debug_image:
            canvas = draw_annotations(frame.rgb(), [Annotation(r, text) for r, text in drawn],
                                      max_width=self.config.debug_max_width, region_scale=frame.rgb_scale)
            self.bag.write(self.out_topics["debug_image"], T.IMAGE, t, rgb_image(ts, canvas, stamp, frame_id))


def apply_limits(chatspot: Any, config: Any) -> None:
    """The builder limits the node sets from its parameters (limits.*, referring.max_outside)."""
    chatspot.set_limits(max_question_chars=config.limits_max_question_chars,
                        max_regions=max(config.limits_max_regions_per_request, config.limits_max_regions_per_frame),
                        max_outside=config.referring_max_outside)
