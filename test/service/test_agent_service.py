"""AgentService policies with plain inputs and a stand-in runtime (no rclpy, no torch model)."""
from __future__ import annotations

import threading
from typing import Any

import pytest

from chatspot_ros.referring import Region
from chatspot_ros.service.agent_service import Answer, ConfigureError, Query
from chatspot_ros.service.inputs import DetectionRegion
from chatspot_ros.service.requests import RequestKind
from service_helpers import StandInRuntime, frame, make_service, wait_until

BOX = Region.box(4, 4, 30, 30, id="cup")


def detection(region: Region = BOX, label: str = "cup") -> DetectionRegion:
    return DetectionRegion(region, label, 0.9)


def run_in_thread(call: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(call()), daemon=True)
    thread.start()
    return thread, out


# ---------------------------------------------------------------- frames


def test_a_request_uses_its_own_image_else_the_stamped_frame_else_the_latest() -> None:
    service, runtime, _ = make_service()
    try:
        refused = service.ask(Query("What?"))
        assert not refused.success and refused.message == "no image received yet on 'image'"
        first, second = frame(1.0, frame_id="a"), frame(2.0, frame_id="b")
        assert service.push_frame(first) and service.push_frame(second)
        assert service.ask(Query("What?")).frame is second  # stamp 0: the latest
        assert service.ask(Query("What?", stamp_ns=first.stamp_ns)).frame is first
        own = frame(9.0, width=32, height=32)
        assert service.ask(Query("What?", stamp_ns=first.stamp_ns, frame=own)).frame is own
        assert service.stats.get("requests.served") == 3 and service.stats.get("requests.rejected") == 1
    finally:
        service.stop("test over")


def test_a_stamp_whose_frame_never_comes_is_refused_after_frames_wait_s() -> None:
    service, _, _ = make_service(frames__wait_s=0.05)
    try:
        service.push_frame(frame(1.0))
        answer = service.ask(Query("What?", stamp_ns=int(5e9)))
        assert not answer.success and answer.message.startswith("no frame for stamp 5.000000000")
    finally:
        service.stop("test over")


def test_a_click_takes_the_frame_with_its_stamp_else_the_latest() -> None:
    service, _, collected = make_service()
    try:
        assert not service.click(0, (10.0, 10.0))
        assert service.stats.get("clicks.unmatched") == 1
        first, second = frame(1.0), frame(2.0)
        service.push_frame(first)
        service.push_frame(second)
        seen: list[Any] = []

        def place(f: Any) -> tuple[float, float]:
            seen.append(f)
            return 10.0, 12.0

        assert service.click(first.stamp_ns, place) and service.click(int(7e9), place)
        assert seen == [first, second]
        assert collected.wait_for(lambda: len(collected.descriptions) == 2)
        assert {d.frame.stamp_ns for d in collected.descriptions} == {first.stamp_ns, second.stamp_ns}
        assert not service.click(0, lambda f: (500.0, 10.0))  # outside the image: refused with the reason
        assert service.stats.get("clicks.rejected") == 1
    finally:
        service.stop("test over")


# ---------------------------------------------------------------- request limits, timeout, busy


def test_request_limits_are_refusals_with_the_parameter_named() -> None:
    service, _, _ = make_service(limits__max_regions_per_request=1, generation__max_new_tokens_limit=64)
    try:
        service.push_frame(frame())
        too_many = service.ask(Query("What?", (BOX, BOX)))
        assert not too_many.success and "limits.max_regions_per_request" in too_many.message
        assert service.ask(Query("  ")).message == "the question is empty"
        assert "generation.max_new_tokens_limit" in service.ask(Query("What?", max_new_tokens=65)).message
        assert service.suggest(Query("")).message == "the task is empty"

        def bad_message(config: Any) -> Query:
            raise ValueError("region 0: a polygon needs 3 points")

        assert service.ask(bad_message).message == "region 0: a polygon needs 3 points"
        assert service.stats.get("requests.rejected") == 5 and service.stats.balance("requests") == 0
    finally:
        service.stop("test over")


def test_a_request_that_waits_past_the_timeout_fails_and_a_full_queue_is_busy() -> None:
    runtime = StandInRuntime()
    runtime.hold.set()
    service, _, _ = make_service(runtime, queues__request_timeout_s=0.2, queues__max_pending_requests=1)
    try:
        service.push_frame(frame())
        running, out = run_in_thread(lambda: service.ask(Query("first?")))
        assert runtime.started.wait(5)
        queued, queued_out = run_in_thread(lambda: service.ask(Query("second?")))
        assert wait_until(lambda: service.status().queue_requests == 1)
        busy = service.ask(Query("third?"))
        assert not busy.success and busy.message == ("busy: 1 requests are already waiting "
                                                     "(queues.max_pending_requests)")
        running.join(5)
        queued.join(5)
        assert out[0].message == "timed out after 0.2 s (queues.request_timeout_s)"
        assert queued_out[0].message == "timed out after 0.2 s (queues.request_timeout_s)"
    finally:
        runtime.release.set()
        service.stop("test over")
    assert service.stats.balance("requests") == 0


def test_a_stopped_service_answers_that_it_is_deactivating() -> None:
    service, _, _ = make_service()
    service.push_frame(frame())
    service.stop("node deactivated")
    answer = service.ask(Query("What?", frame=frame()))
    assert not answer.success and answer.message == "the node is deactivating"
    service.start()
    assert service.ask(Query("What?", frame=frame())).success
    service.stop("test over")


def test_an_unconfigured_service_refuses_everything_and_counts_it() -> None:
    from chatspot_ros.service.agent_service import AgentService

    service = AgentService()
    assert not service.push_frame(frame())
    service.submit_detections(1, "camera", [detection()])
    assert not service.click(0, (1.0, 1.0))
    assert service.ask(Query("What?")).message == "the node is not configured"
    counters = service.stats.counters()
    assert (counters["images.rejected"], counters["detections.rejected"], counters["clicks.rejected"],
            counters["requests.rejected"]) == (1, 1, 1, 1)


# ---------------------------------------------------------------- detections


def test_detections_are_described_on_their_frame_and_suggestions_follow_the_task_gate() -> None:
    service, runtime, collected = make_service(task__max_detections=1)
    try:
        image = frame(1.0)
        service.push_frame(image)
        service.set_task("pick it up")
        second = Region.box(32, 4, 60, 40, id="ball")
        service.submit_detections(image.stamp_ns, "camera", [detection(), detection(second, "ball")])
        assert collected.wait_for(lambda: collected.annotations)
        (described,) = collected.descriptions
        assert described.frame is image and described.kind is RequestKind.DETECTIONS
        assert [(d.label, d.text) for d in described.items] == [("cup", "seen 0"), ("ball", "seen 1")]
        (suggestion,) = collected.suggestions  # task.max_detections = 1: the first region only
        assert suggestion.task == "pick it up" and suggestion.region.id == "cup" and suggestion.text == "seen 2"
        assert [text for _, text in collected.annotations[0].items] == ["cup: seen 0", "ball: seen 1"]
        service.reconfigure({"task.suggest_on_detections": False}, state="active")
        service.submit_detections(image.stamp_ns, "camera", [detection()])
        assert collected.wait_for(lambda: len(collected.descriptions) == 2)
        assert len(collected.suggestions) == 1 and len(runtime.calls[-1][0]) == 1  # no suggestion asked
    finally:
        service.stop("test over")
    assert service.stats.get("detections.answered") == 2


def test_a_message_without_a_describable_region_is_refused_not_answered() -> None:
    service, runtime, collected = make_service()
    try:
        image = frame(1.0)
        service.push_frame(image)
        outside = Region.box(500, 500, 600, 600, id="far")
        service.submit_detections(image.stamp_ns, "camera", [detection(outside)])
        assert wait_until(lambda: service.stats.get("detections.rejected") == 1)
        service.submit_detections(image.stamp_ns, "camera", [], invalid=["detection 0: non-finite bbox"])
        service.submit_detections(image.stamp_ns, "other_frame", [detection()])
        service.submit_detections(image.stamp_ns, "camera", [])
    finally:
        service.stop("test over")
    assert not collected.descriptions and not runtime.calls
    counters = service.stats.counters()
    assert counters["detections.rejected"] == 3 and counters["detections.empty"] == 1
    assert counters["regions.rejected"] == 2 and service.stats.balance("detections") == 0


def test_detections_wait_for_their_frame_and_are_unmatched_when_it_never_comes() -> None:
    service, _, collected = make_service(frames__wait_s=0.05)
    try:
        service.push_frame(frame(1.0))
        service.submit_detections(int(2e9), "camera", [detection()])
        assert service.status().awaiting_frame == 1
        service.push_frame(frame(2.0))  # its frame arrives: answered
        assert collected.wait_for(lambda: collected.descriptions)
        service.submit_detections(int(3e9), "camera", [detection()])
        assert wait_until(lambda: (service.poll(), service.stats.get("detections.unmatched"))[1] == 1)
    finally:
        service.stop("test over")
    assert service.stats.balance("detections") == 0


# ---------------------------------------------------------------- model: seed, stop, preemption


def test_the_seed_rule_negative_means_unseeded() -> None:
    service, runtime, _ = make_service()
    service.push_frame(frame())
    service.ask(Query("What?"))
    assert runtime.calls[-1][1].seed is None
    service.reconfigure({"generation.seed": 7}, state="active")
    service.ask(Query("What?", max_new_tokens=5))
    assert runtime.calls[-1][1].seed == 7 and runtime.calls[-1][1].max_new_tokens == 5
    service.stop("test over")


def test_a_stream_input_stopped_mid_generation_publishes_nothing() -> None:
    runtime = StandInRuntime()
    runtime.hold.set()
    service, _, collected = make_service(runtime)
    image = frame(1.0)
    service.push_frame(image)
    service.submit_detections(image.stamp_ns, "camera", [detection()])
    assert runtime.started.wait(5)
    assert service.stop("node deactivated")
    assert not collected.descriptions and not collected.annotations
    assert service.stats.get("detections.failed") == 1


def test_a_cancelled_request_returns_its_partial_answer() -> None:
    runtime = StandInRuntime("partial")
    runtime.hold.set()
    service, _, _ = make_service(runtime)
    service.push_frame(frame())
    cancel = threading.Event()
    thread, out = run_in_thread(lambda: service.ask(Query("What?"), should_cancel=cancel.is_set))
    assert runtime.started.wait(5)
    cancel.set()
    thread.join(5)
    answer: Answer = out[0]
    assert not answer.success and answer.cancelled and answer.message == "cancelled" and answer.text == "partial"
    assert service.stats.get("requests.cancelled") == 1
    service.stop("test over")


@pytest.mark.parametrize("preempt", [True, False])
def test_a_newer_describe_preempts_the_running_one(preempt: bool) -> None:
    runtime = StandInRuntime()
    runtime.hold.set()
    service, _, _ = make_service(runtime, describe__preempt=preempt, queues__request_timeout_s=5.0)
    service.push_frame(frame())
    tokens: list[str] = []
    first, first_out = run_in_thread(lambda: service.describe(Query(), lambda i, text: tokens.append(text)))
    assert runtime.started.wait(5)
    second, second_out = run_in_thread(lambda: service.describe(Query("What is it?")))
    if preempt:
        first.join(5)
        assert first_out[0].message == "preempted by a newer goal" and first_out[0].cancelled
    else:
        first.join(0.2)
        assert first.is_alive()  # the newer goal waits for it
    runtime.release.set()
    second.join(5)
    first.join(5)
    assert second_out[0].success and tokens[0] == "seen"
    assert first_out[0].success is not preempt
    service.stop("test over")


def test_cancel_stops_the_open_requests_of_a_kind() -> None:
    runtime = StandInRuntime("partial")
    runtime.hold.set()
    service, _, _ = make_service(runtime)
    service.push_frame(frame())
    thread, out = run_in_thread(lambda: service.ask(Query("What?")))
    assert runtime.started.wait(5)
    assert service.cancel(RequestKind.DESCRIBE) == 0
    assert service.cancel(RequestKind.ASK, "operator said stop") == 1
    thread.join(5)
    assert out[0].cancelled and out[0].message == "operator said stop"
    service.stop("test over")


# ---------------------------------------------------------------- lifecycle


def test_configure_fails_with_the_reason_and_counts_it() -> None:
    from chatspot_ros.service.agent_service import AgentService

    def broken(config: Any) -> Any:
        raise OSError("no such checkpoint")

    service = AgentService(loader=broken)
    with pytest.raises(ConfigureError, match=r"cannot load model '/nowhere': OSError: no such checkpoint"):
        service.configure({"model.path": "/nowhere"})
    with pytest.raises(ConfigureError, match=r"invalid parameters: unknown parameters: nope"):
        service.configure({"nope": 1})
    assert service.stats.get("configure.failed") == 2 and "no such checkpoint" not in service.last_error


def test_reconfigure_follows_the_lifecycle_rules_and_release_closes_the_model() -> None:
    service, runtime, _ = make_service()
    assert service.reconfigure({"model.path": "/other"}, state="active") == (
        "model.path applies at configure: clean the node up first (state is active)")
    assert "generation.top_p" in (service.reconfigure({"generation.top_p": 0.0}, state="active") or "")
    assert service.reconfigure({"limits.max_question_chars": 10}, state="active") is None
    assert service.config is not None and service.config.limits_max_question_chars == 10
    service.stop("done")
    service.release()
    assert runtime.closed and service.config is None and service.chatspot is None
