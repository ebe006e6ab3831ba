"""The agent's ``/diagnostics`` statuses, built from a snapshot of its state (no rclpy).

Four statuses, named ``<node>: model``, ``<node>: inputs``, ``<node>: requests`` and
``<node>: latency`` (docs/node.md lists their keys). The node takes a :class:`NodeSnapshot` and
publishes :func:`build_statuses`; tests build snapshots by hand.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

from chatspot_ros.service.frames import format_ns
from chatspot_ros.service.stats import OUTCOMES, STAGES, StageSummary

# Counters shown in the "inputs" status besides the per-kind outcomes.
INPUT_COUNTERS = ("images.decode_failed", "frames.time_jumps", "camera_info.received", "camera_info.rejected",
                  "tasks.received", "tasks.rejected", "regions.answered", "regions.rejected", "regions.overflow",
                  "suggestions.rejected", "detections.share_turns")
# Counters shown in the "requests" status besides the request outcomes.
REQUEST_COUNTERS = ("model.errors", "model.oom", "worker.errors", "internal.errors",
                    "executor.errors", "configure.failed")
# Inputs that did not lead to an answer: any of these makes the "inputs" status WARN.
UNANSWERED_INPUTS = ("detections.dropped", "detections.unmatched", "images.rejected", "clicks.dropped")


@dataclass(frozen=True)
class NodeSnapshot:
    name: str  # fully qualified node name
    state: str  # lifecycle state label
    model_info: Mapping[str, str]  # model, family, backend, device, dtype, dialect
    last_error: str
    counters: Mapping[str, int]
    stages: Mapping[str, StageSummary]
    tokens_per_s: float
    frames_buffered: int
    frames_capacity: int
    newest_stamp_ns: Optional[int]
    queue_requests: int
    queue_detections: int
    worker_busy: bool
    task: str
    awaiting_frame: int = 0  # detection messages waiting for their frame (frames.wait_s)


def _values(pairs: Mapping[str, Any]) -> list[KeyValue]:
    return [KeyValue(key=k, value=str(v)) for k, v in pairs.items()]


def model_status(s: NodeSnapshot) -> DiagnosticStatus:
    info = s.model_info
    if s.last_error:
        level, message = DiagnosticStatus.ERROR, s.last_error
    elif s.state == "active":
        level, message = DiagnosticStatus.OK, f"active: {info.get('model', '')}"
    else:
        level, message = DiagnosticStatus.WARN, s.state
    values = {"state": s.state}
    values.update({k: info.get(k, "") for k in ("model", "family", "backend", "device", "dtype", "dialect")})
    values.update({k: v for k, v in info.items() if k == "server" or k.startswith("server.")})  # vllm backend
    values["last_error"] = s.last_error
    return DiagnosticStatus(level=level, name=f"{s.name}: model", message=message,
                            hardware_id=info.get("device", ""), values=_values(values))


def inputs_status(s: NodeSnapshot) -> DiagnosticStatus:
    c = s.counters
    keys = [f"{kind}.{o}" for kind in ("images", "detections", "clicks") for o in ("received",) + OUTCOMES[kind]]
    values: dict[str, Any] = {k: c.get(k, 0) for k in keys + list(INPUT_COUNTERS)}
    values.update({
        "frames.buffered": s.frames_buffered, "frames.capacity": s.frames_capacity,
        "frames.newest_stamp": format_ns(s.newest_stamp_ns) if s.newest_stamp_ns is not None else "",
        "queue.detections": s.queue_detections, "queue.awaiting_frame": s.awaiting_frame, "task": s.task,
    })
    unanswered = sum(c.get(k, 0) for k in UNANSWERED_INPUTS)
    return DiagnosticStatus(
        level=DiagnosticStatus.WARN if unanswered else DiagnosticStatus.OK, name=f"{s.name}: inputs",
        message=f"{c.get('images.buffered', 0)} frames, {c.get('detections.answered', 0)} detection messages "
                f"answered, {unanswered} dropped/unmatched/rejected",
        hardware_id=s.model_info.get("device", ""), values=_values(values))


def requests_status(s: NodeSnapshot) -> DiagnosticStatus:
    c = s.counters
    keys = ["requests.received"] + [f"requests.{o}" for o in OUTCOMES["requests"]] + list(REQUEST_COUNTERS)
    values: dict[str, Any] = {k: c.get(k, 0) for k in keys}
    values.update({"queue.requests": s.queue_requests, "worker.busy": s.worker_busy})
    errors = sum(c.get(k, 0) for k in ("model.errors", "worker.errors", "internal.errors", "executor.errors"))
    return DiagnosticStatus(
        level=DiagnosticStatus.WARN if errors else DiagnosticStatus.OK, name=f"{s.name}: requests",
        message=f"{c.get('requests.served', 0)} served, {c.get('requests.failed', 0)} failed",
        hardware_id=s.model_info.get("device", ""), values=_values(values))


def latency_status(s: NodeSnapshot) -> DiagnosticStatus:
    values: dict[str, Any] = {}
    for stage in ("receive",) + STAGES + ("drawing",):
        summary = s.stages.get(stage)
        if summary is not None:
            values[f"{stage}.mean_ms"] = f"{summary.mean_ms:.2f}"
            values[f"{stage}.max_ms"] = f"{summary.max_ms:.2f}"
            values[f"{stage}.last_ms"] = f"{summary.last_ms:.2f}"
    values["tokens_per_s"] = f"{s.tokens_per_s:.1f}"
    total = s.stages.get("total")
    message = (f"{total.mean_ms:.0f} ms per answer, {s.tokens_per_s:.1f} tokens/s" if total
               else "no answers yet")
    return DiagnosticStatus(level=DiagnosticStatus.OK, name=f"{s.name}: latency", message=message,
                            hardware_id=s.model_info.get("device", ""), values=_values(values))


def build_statuses(snapshot: NodeSnapshot) -> list[DiagnosticStatus]:
    return [model_status(snapshot), inputs_status(snapshot), requests_status(snapshot),
            latency_status(snapshot)]
