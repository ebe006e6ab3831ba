"""A model that raises (or runs out of CUDA memory mid-generation) fails that request, not the node.

The node runs in this process (its own Context, a MultiThreadedExecutor on a thread) with a fake
model in place of the checkpoint; the client is a separate Context, as a planner would be.
"""
from __future__ import annotations

import threading
from typing import Any, Iterator

import pytest
import rclpy
from rclpy.executors import MultiThreadedExecutor
from rclpy.parameter import Parameter

from chatspot_ros.pipeline import FrameAnswers, RegionAnswer
from chatspot_ros.referring import ImageGeometry, InstructionBuilder, get_dialect
from chatspot_ros.ros.node import ChatSpotAgentNode
from chatspot_ros.runtime import BatchTiming, Generation, ModelError, ModelOutOfMemory
from chatspot_ros.srv import AskRegion
from chatspot_ros.action import Describe
from action_msgs.msg import GoalStatus
from ros_harness import RosClient, box_region, image_msg, scene, stamp
from sensor_msgs.msg import Image

NAMESPACE = "/model_errors"


class FakeRuntime:
    model_name = "fake"
    family = "llava"
    backend_name = "torch"
    default_dialect = "llava"

    prompt_form = "conversation"

    def __init__(self) -> None:
        self.closed = False

    def status(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        self.closed = True


class FakeChatSpot:
    """Fails the way it is told to: ``failures`` is a list of exceptions raised after 2 tokens
    (what the runtime raises: typed model errors, or anything else for a bug)."""

    def __init__(self) -> None:
        self.runtime = FakeRuntime()
        self.builder = InstructionBuilder(get_dialect("llava"), ImageGeometry.stretch(224, 224))
        self.failures: list[BaseException] = []

    def set_limits(self, **limits: Any) -> None:
        self.builder = InstructionBuilder(self.builder.dialect, self.builder.geometry, **limits)

    def answer_frame(self, frame, frame_key, requests, gen, on_token=None, should_stop=None) -> FrameAnswers:
        if on_token is not None:
            on_token(0, "a")
            on_token(0, "a b")
        if self.failures:
            raise self.failures.pop(0)
        answers = tuple(RegionAnswer(r, "prompt", "fine", Generation("fine", 2, 1.0, 2.0, "eos"), 3.0)
                        for r in requests)
        return FrameAnswers(answers, 3.0, False, (BatchTiming(0, tuple(range(len(requests))), 1.0, 2.0,
                                                              2 * len(requests)),), 6.0)

    def close(self) -> None:
        self.runtime.close()


@pytest.fixture()
def node_and_model() -> Iterator[tuple[ChatSpotAgentNode, FakeChatSpot]]:
    context = rclpy.Context()
    rclpy.init(args=[], context=context)
    fake = FakeChatSpot()
    node = ChatSpotAgentNode(context=context, namespace=NAMESPACE, parameter_overrides=[
        Parameter("model.path", value="/fake/checkpoint"), Parameter("autostart", value=False)])

    node.service.loader = lambda config: fake  # type: ignore[assignment,return-value]
    executor = MultiThreadedExecutor(num_threads=4, context=context)
    executor.add_node(node)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    from rclpy.lifecycle import TransitionCallbackReturn
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    try:
        yield node, fake
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)
        thread.join(5)


def test_model_exceptions_and_oom_fail_the_request_not_the_node(node_and_model) -> None:
    node, fake = node_and_model
    node.trigger_activate()
    with RosClient(NAMESPACE) as client:
        client.wait_for_subscriber("image", Image)
        frame = image_msg(scene(64, 48), stamp(3))

        def buffered() -> bool:  # best-effort image QoS: publish until the node has one
            client.publish("image", frame)
            return node.stats.get("images.buffered") > 0

        assert client.spin_until(buffered, 10), "the node received no image"
        fake.failures = [ModelError("RuntimeError: boom"),
                         ModelOutOfMemory("OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB")]
        request = AskRegion.Request(question="What?", regions=[box_region(1, 1, 30, 30)])
        first = client.call(AskRegion, "ask", request)
        assert not first.success and first.message == "model error: RuntimeError: boom"
        action = client.action_client(Describe, "describe")
        handle = client.wait_future(action.send_goal_async(Describe.Goal(question="What?")), 10)
        result = client.wait_future(handle.get_result_async(), 10)
        assert result.status == GoalStatus.STATUS_ABORTED
        assert "OutOfMemoryError" in result.result.message
        ok = client.call(AskRegion, "ask", request)
        assert ok.success and ok.answer == "fine"
    assert node.stats.get("model.errors") == 2 and node.stats.get("model.oom") == 1
    assert node.stats.get("requests.failed") == 2 and node.stats.get("requests.served") == 1
    node.trigger_deactivate()
    node.trigger_cleanup()
    assert fake.runtime.closed


def test_a_bug_in_a_request_handler_fails_that_request_with_a_reason(node_and_model) -> None:
    node, fake = node_and_model
    node.trigger_activate()

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("bug")

    node.service._prepare = broken  # type: ignore[method-assign]
    with RosClient(NAMESPACE) as client:
        response = client.call(AskRegion, "ask", AskRegion.Request(question="What?"))
        assert not response.success and response.message == "internal error: KeyError: 'bug'"
        action = client.action_client(Describe, "describe")
        handle = client.wait_future(action.send_goal_async(Describe.Goal(question="What?")), 10)
        result = client.wait_future(handle.get_result_async(), 10)
        assert result.status == GoalStatus.STATUS_ABORTED and "internal error" in result.result.message
    assert node.stats.get("internal.errors") == 2 and node.stats.get("requests.failed") == 2
    assert node.stats.balance("requests") == 0


def test_stage_times_come_from_the_cores_report_once(node_and_model) -> None:
    node, _ = node_and_model
    answer = RegionAnswer(None, "p", "x", Generation("x", 3, 40.0, 200.0, "eos"), 7.0)
    report = FrameAnswers((answer,) * 3, 7.0, False, (BatchTiming(0, (0, 1, 2), 40.0, 200.0, 9),), 250.0)
    node.service.record_timings(report, 0.5)  # three answers decoded as one batch
    stages = node.stats.stages()
    assert (stages["vision"].last_ms, stages["prefill"].last_ms, stages["decode"].last_ms) == (7.0, 40.0, 200.0)
    assert node.stats.tokens_per_s() == pytest.approx(9 / 0.2)
