"""ROS-free parts of the adapter: the config table, stats, the worker's queues, drawing, diagnostics."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from chatspot_ros.referring import DIALECTS, Region
from chatspot_ros.service.config import (
    PARAMETERS,
    REFERRING_FORMATS,
    AgentConfig,
    changes_allowed,
)
from chatspot_ros.ros.drawing import Annotation, draw_annotations, scaled_size
from chatspot_ros.service.requests import Outcome, PendingRequest, RequestKind, RequestTracker
from chatspot_ros.service.stats import LogLimiter, Stats
from chatspot_ros.service.worker import InferenceWorker, Job


def test_every_parameter_has_a_description_and_a_valid_default() -> None:
    names = [spec.name for spec in PARAMETERS]
    assert len(names) == len(set(names))
    for spec in PARAMETERS:
        assert spec.description and spec.when in ("always", "activate", "configure", "startup")
        assert spec.name.split(".")[0] in ("autostart", "model", "vision", "referring", "generation", "image",
                                           "topics", "camera_info", "qos", "queues", "frames", "limits", "click",
                                           "task", "describe", "projection", "tf", "debug", "diagnostics", "server")
    AgentConfig.defaults()
    assert set(REFERRING_FORMATS) - {""} == set(DIALECTS)


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"generation.temperature": -0.1}, ">= 0"),
        ({"generation.temperature": "hot"}, "number"),
        ({"generation.max_new_tokens": 600}, "exceeds generation.max_new_tokens_limit"),
        ({"model.dtype": "float16"}, "cpu"),
        ({"model.device": "gpu0"}, "cuda:N"),
        ({"vision.backend": "magic"}, "one of"),
        ({"qos.image_reliability": "sometimes"}, "one of"),
        ({"topics.image": "bad topic"}, "not a valid topic"),
        ({"frames.buffer_size": 0}, ">= 1"),
        ({"generation.top_p": 0.0}, "top_p"),
        ({"autostart": 1}, "bool"),
        ({"no.such": 1}, "unknown parameters"),
    ],
)
def test_config_validation_names_the_parameter(changes, needle) -> None:
    with pytest.raises(ValueError, match=needle):
        AgentConfig.defaults().replace(changes)


def test_integers_are_accepted_for_floats() -> None:
    config = AgentConfig.defaults().replace({"generation.temperature": 1})
    assert config.generation_temperature == 1.0 and isinstance(config.generation_temperature, float)


def test_when_parameters_may_change() -> None:
    assert changes_allowed(["generation.max_new_tokens"], "active") is None
    assert "clean the node up" in changes_allowed(["model.path"], "inactive")
    assert changes_allowed(["model.path"], "unconfigured") is None
    assert "deactivate" in changes_allowed(["qos.image_depth"], "active")
    assert changes_allowed(["qos.image_depth"], "inactive") is None
    assert "start-up" in changes_allowed(["autostart"], "unconfigured")


def test_stats_balance() -> None:
    stats = Stats(window=3)
    stats.incr("detections.received", 5)
    for outcome in ("rejected", "answered", "answered", "dropped"):
        stats.incr(f"detections.{outcome}")
    assert stats.balance("detections") == 1 and stats.balance("detections", pending=1) == 0
    for ms in (1.0, 2.0, 3.0, 10.0):
        stats.observe("vision", ms)
    summary = stats.stages()["vision"]
    assert (summary.count, summary.last_ms, summary.max_ms) == (4, 10.0, 10.0)
    assert summary.mean_ms == pytest.approx(5.0)
    stats.observe_tokens(20, 1000.0)
    assert stats.tokens_per_s() == pytest.approx(20.0)


def test_log_limiter_is_per_kind_and_reports_what_it_held_back() -> None:
    now = [0.0]
    limiter = LogLimiter(2.0, clock=lambda: now[0])
    assert limiter.allow("images.rejected") == 0
    assert limiter.allow("images.rejected") is None and limiter.allow("images.rejected") is None
    assert limiter.allow("detections.dropped") == 0  # another kind is not hidden by the flood
    now[0] = 2.5
    assert limiter.allow("images.rejected") == 2


def test_a_pending_request_is_counted_once() -> None:
    stats = Stats()
    request = PendingRequest(stats, RequestKind.ASK, stop_check=lambda: "cancelled")
    assert request.should_stop() and request.stop_reason == "cancelled"
    assert request.finish("served", Outcome(True, ""))
    assert not request.finish("failed", Outcome(False, "late"))
    assert stats.counters() == {"requests.served": 1} and request.outcome.success


def test_request_kinds_are_typed_and_outcomes_checked() -> None:
    assert [k.counter for k in RequestKind] == ["detections", "clicks", "requests", "requests", "requests"]
    assert RequestKind.DESCRIBE.stopped_status == "cancelled" and RequestKind.CLICK.stopped_status == "failed"
    with pytest.raises(TypeError):
        PendingRequest(Stats(), "requests")  # a counter name is not a kind
    with pytest.raises(ValueError, match="not an outcome of click"):
        PendingRequest(Stats(), RequestKind.CLICK).finish("served", Outcome(True, ""))


def test_the_tracker_waits_for_open_requests_and_stops_them() -> None:
    tracker = RequestTracker()
    request = PendingRequest(Stats(), RequestKind.ASK)
    tracker.enter(request)
    assert not tracker.wait_idle(0.01) and tracker.stop_all("node deactivated") == 1
    assert request.should_stop() and request.stop_reason == "node deactivated"
    threading.Timer(0.05, tracker.leave, args=(request,)).start()
    assert tracker.wait_idle(5.0) and len(tracker) == 0


class Recorder:
    def __init__(self) -> None:
        self.ran: list[str] = []
        self.dropped: list[tuple[str, str]] = []
        self.errors: list[str] = []
        self.gate = threading.Event()

    def job(self, name: str, kind: str = "x", block: bool = False) -> Job:
        def run() -> None:
            if block:
                self.gate.wait(5)
            if name == "bad":
                raise RuntimeError("bug")
            self.ran.append(name)
        return Job(kind, run, lambda reason: self.dropped.append((name, reason)))


def test_worker_serves_requests_first_and_keeps_the_newest_stream_jobs() -> None:
    rec = Recorder()
    worker = InferenceWorker(2, 2, lambda job, exc: rec.errors.append(str(exc)))
    worker.start()
    assert worker.submit_request(rec.job("blocker", block=True))
    time.sleep(0.1)  # the blocker is running
    for name in ("s1", "s2", "s3"):
        worker.submit_stream(rec.job(name))
    assert rec.dropped == [("s1", "queue full: a newer message replaced it")]
    assert worker.submit_request(rec.job("r1")) and worker.submit_request(rec.job("bad"))
    assert not worker.submit_request(rec.job("r3"))  # full: refused, not queued
    assert worker.depths() == (2, 2, True)
    rec.gate.set()
    deadline = time.monotonic() + 5
    while worker.depths() != (0, 0, False) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert rec.ran == ["blocker", "r1", "s2", "s3"]
    assert rec.errors == ["bug"]
    assert ("bad", "internal error: RuntimeError: bug") in rec.dropped  # a raising job still gets an outcome
    worker.submit_stream(rec.job("s4", block=True))
    worker.submit_request(rec.job("r5"))
    assert worker.stop("deactivated")
    assert ("r5", "deactivated") in rec.dropped or "r5" in rec.ran
    assert worker.submit_stream(rec.job("late")) is not None and ("late", "stopped") in rec.dropped


def test_drawing_does_not_touch_the_frame_and_scales_down() -> None:
    frame = np.zeros((480, 640, 3), np.uint8)
    frame.flags.writeable = False
    annotations = [Annotation(Region.box(10, 10, 200, 100), "cup: a red cup " * 20),
                   Annotation(Region.point(300, 300), "here"),
                   Annotation(Region.polygon([(400, 400), (500, 420), (450, 470)]), "")]
    out = draw_annotations(frame, annotations, max_width=320)
    assert out.shape == (240, 320, 3) and out.any() and not frame.any()
    assert draw_annotations(frame, annotations, max_width=300).shape == (160, 213, 3)
    assert draw_annotations(frame, [], max_width=0).shape == (480, 640, 3)
    assert scaled_size(1920, 1080, 1280) == (960, 540, 0.5)
    assert scaled_size(640, 480, 1280) == (640, 480, 1.0)


def test_halving_the_debug_image_averages_like_area_resampling() -> None:
    import cv2

    frame = np.random.default_rng(0).integers(0, 256, (108, 192, 3), dtype=np.uint8)
    area = cv2.resize(frame, (96, 54), interpolation=cv2.INTER_AREA)
    assert np.array_equal(draw_annotations(frame, [], max_width=96), area)


def test_drawing_maps_source_regions_onto_a_reduced_frame() -> None:
    box = [Annotation(Region.box(800, 400, 1200, 800), "")]  # source (1920x1080) pixels
    full = draw_annotations(np.zeros((1080, 1920, 3), np.uint8), box, max_width=960)
    reduced = draw_annotations(np.zeros((270, 480, 3), np.uint8), box, max_width=960, region_scale=0.25)
    assert full.shape == (540, 960, 3) and reduced.shape == (270, 480, 3)
    for canvas, scale in ((reduced, 0.25), (full, 0.5)):  # the box lands at its source place
        ys, xs = np.nonzero(canvas.any(axis=2))
        drawn = np.array([xs.min(), ys.min(), xs.max(), ys.max()])
        assert np.abs(drawn - np.array([800, 400, 1200, 800]) * scale).max() <= 1  # line thickness
    with pytest.raises(ValueError, match="region_scale"):
        draw_annotations(np.zeros((4, 4, 3), np.uint8), box, region_scale=0.0)


def test_diagnostics_statuses_from_a_snapshot() -> None:
    from diagnostic_msgs.msg import DiagnosticStatus

    from chatspot_ros.ros.diagnostics import NodeSnapshot, build_statuses

    stats = Stats()
    stats.incr("images.received", 3)
    stats.incr("images.buffered", 2)
    stats.incr("images.rejected")
    stats.observe("decode", 10.0)
    snapshot = NodeSnapshot(
        name="/ns/agent", state="active", model_info={"model": "tiny", "device": "cpu"}, last_error="",
        counters=stats.counters(), stages=stats.stages(), tokens_per_s=12.0, frames_buffered=2,
        frames_capacity=30, newest_stamp_ns=5_000_000_001, queue_requests=1, queue_detections=0,
        worker_busy=True, task="pick")
    model, inputs, requests, latency = build_statuses(snapshot)
    values = {s.name: {kv.key: kv.value for kv in s.values} for s in (model, inputs, requests, latency)}
    assert model.name == "/ns/agent: model" and model.level == DiagnosticStatus.OK
    assert values["/ns/agent: model"]["model"] == "tiny" and values["/ns/agent: model"]["family"] == ""
    assert inputs.level == DiagnosticStatus.WARN  # an image was rejected
    assert values["/ns/agent: inputs"]["images.received"] == "3"
    assert values["/ns/agent: inputs"]["frames.newest_stamp"] == "5.000000001"
    assert values["/ns/agent: requests"]["queue.requests"] == "1" and requests.level == DiagnosticStatus.OK
    assert values["/ns/agent: latency"]["decode.mean_ms"] == "10.00" and latency.message == "no answers yet"
    failed = build_statuses(NodeSnapshot(**{**snapshot.__dict__, "last_error": "boom", "state": "unconfigured"}))
    assert failed[0].level == DiagnosticStatus.ERROR and failed[0].message == "boom"
    stats.incr("executor.errors")  # the agent's loop caught an exception and kept serving
    caught = build_statuses(NodeSnapshot(**{**snapshot.__dict__, "counters": stats.counters()}))
    assert caught[0].level == DiagnosticStatus.OK  # the model is fine
    assert caught[2].level == DiagnosticStatus.WARN
    assert {kv.key: kv.value for kv in caught[2].values}["executor.errors"] == "1"


def test_detections_get_their_share_under_back_to_back_requests() -> None:
    rec = Recorder()
    turns: list[int] = []
    worker = InferenceWorker(8, 2, lambda job, exc: rec.errors.append(str(exc)), requests_per_detection=2,
                             on_share_turn=lambda: turns.append(1))
    worker.start()
    assert worker.submit_request(rec.job("blocker", block=True))
    time.sleep(0.1)  # the blocker is running
    for name in ("s1", "s2"):
        worker.submit_stream(rec.job(name))
    for i in range(1, 7):
        assert worker.submit_request(rec.job(f"r{i}"))
    rec.gate.set()
    deadline = time.monotonic() + 5
    while worker.depths() != (0, 0, False) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert rec.ran == ["blocker", "r1", "r2", "s1", "r3", "r4", "s2", "r5", "r6"]
    assert worker.share_turns == 2 and len(turns) == 2
    assert worker.stop("done")


def test_the_tracker_counts_owed_responses_until_sent() -> None:
    tracker = RequestTracker()
    request = PendingRequest(Stats(), RequestKind.ASK)
    tracker.enter(request)
    tracker.leave(request)
    assert tracker.wait_idle(1.0) and tracker.owed == 1
    threading.Timer(0.05, tracker.sent).start()
    start = time.monotonic()
    assert tracker.wait_sent(5.0) == 0 and time.monotonic() - start < 2.0
    tracker.enter(request)  # a goal whose client never asks for its result: forgotten after the bound
    tracker.leave(request)
    assert tracker.wait_sent(0.05) == 1 and tracker.owed == 0


