"""The agent between real processes over DDS: detections, services, the action, clicks, outputs."""
from __future__ import annotations

import time

import pytest
from action_msgs.msg import GoalStatus
from geometry_msgs.msg import PointStamped
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import String
from visualization_msgs.msg import MarkerArray

from chatspot_ros.action import Describe
from chatspot_ros.msg import ActionSuggestion, RegionDescriptionArray
from chatspot_ros.referring import parse_steps
from chatspot_ros.srv import AskRegion, SuggestActions
from ros_harness import (
    TIMEOUT_SCALE,
    RosClient,
    box_region,
    detection,
    detections_msg,
    image_msg,
    publish_frames_reliably,
    scene,
    stamp,
)

NODE = "chatspot_agent"
FRAME = "camera_optical"
AGENT_PARAMS = {"generation.max_new_tokens": 12, "frames.match_tolerance_s": 0.01, "diagnostics.period_s": 0.2}


def publish_frames(client: RosClient, secs: list[tuple[int, int]], width: int = 160, height: int = 120) -> None:
    client.wait_for_subscriber("image", Image)
    msgs = [image_msg(scene(width, height, seed=i), stamp(sec, nanosec), FRAME) for i, (sec, nanosec) in enumerate(secs)]
    publish_frames_reliably(client, f"/test_node/{NODE}", "image", msgs)


def wait_for(client: RosClient, received: list, count: int = 1, timeout: float = 30.0) -> None:
    timeout *= TIMEOUT_SCALE  # the first model call of the agent is slow on a loaded machine
    assert client.spin_until(lambda: len(received) >= count, timeout), f"got {len(received)} of {count} messages"


def test_detections_are_described_per_id_against_the_frame_with_their_stamp(client: RosClient) -> None:
    out = client.collect(RegionDescriptionArray, "region_descriptions")
    publish_frames(client, [(100, 0), (100, 100_000_000), (100, 200_000_000)])
    client.wait_for_subscriber("detections", detections_msg(stamp(0), []).__class__)
    dets = [detection(40, 30, 30, 20, "cup_1", "cup", 0.9), detection(100, 80, 40, 30, "box_2", "box", 0.8)]
    client.publish("detections", detections_msg(stamp(100, 100_000_000), dets, FRAME))
    wait_for(client, out)
    msg = out[0]
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (100, 100_000_000)
    assert msg.header.frame_id == FRAME
    assert [d.region.id for d in msg.descriptions] == ["cup_1", "box_2"]
    assert [d.label for d in msg.descriptions] == ["cup", "box"]
    assert all(d.text for d in msg.descriptions)
    assert all(d.region.type == 1 for d in msg.descriptions)
    first = msg.descriptions[0].region.points
    assert (first[0].x, first[0].y, first[1].x, first[1].y) == (25.0, 20.0, 55.0, 40.0)
    assert msg.descriptions[0].instruction != msg.descriptions[1].instruction
    assert msg.inference_time_s > 0 and msg.model

    # A stamp 4 ms off matches the nearest frame (tolerance 10 ms); the output carries that frame's header.
    client.publish("detections", detections_msg(stamp(100, 204_000_000), dets[:1], FRAME))
    wait_for(client, out, 2)
    assert (out[1].header.stamp.sec, out[1].header.stamp.nanosec) == (100, 200_000_000)


def test_ask_answers_about_the_latest_frame_or_the_one_with_a_stamp(client: RosClient) -> None:
    publish_frames(client, [(200, 0), (201, 0)])
    request = AskRegion.Request(question="What is in this region?", regions=[box_region(10, 10, 60, 50, "r1")])
    latest = client.call(AskRegion, "ask", request)
    assert latest.success, latest.message
    assert latest.answer and latest.instruction.startswith("What is in this region?")
    assert (latest.header.stamp.sec, latest.header.frame_id) == (201, FRAME)

    request.stamp = stamp(200)
    older = client.call(AskRegion, "ask", request)
    assert older.success, older.message
    assert older.header.stamp.sec == 200

    request.stamp = stamp(50)  # before every buffered frame
    missing = client.call(AskRegion, "ask", request)
    assert not missing.success and "older than the oldest" in missing.message

    own = AskRegion.Request(question="What is this?", image=image_msg(scene(64, 48, 7), stamp(5), "other"))
    answer = client.call(AskRegion, "ask", own)
    assert answer.success, answer.message
    assert answer.header.frame_id == "other" and answer.header.stamp.sec == 5


def test_suggest_actions_returns_steps_for_a_task(client: RosClient) -> None:
    publish_frames(client, [(300, 0)])
    request = SuggestActions.Request(task="pick up the red box", region=box_region(20, 20, 60, 60, "box"))
    response = client.call(SuggestActions, "suggest_actions", request)
    assert response.success, response.message
    suggestion = response.suggestion
    assert suggestion.task == "pick up the red box"
    assert suggestion.text and suggestion.header.stamp.sec == 300
    assert suggestion.region.id == "box"
    assert list(suggestion.steps) == parse_steps(suggestion.text)  # the steps are parsed from the text


def test_describe_streams_feedback(client: RosClient) -> None:
    publish_frames(client, [(400, 0)])
    action = client.action_client(Describe, "describe")
    feedback: list[Describe.Feedback] = []
    goal = Describe.Goal(regions=[box_region(5, 5, 80, 60, "a")], max_new_tokens=10)
    handle = client.wait_future(action.send_goal_async(goal, feedback_callback=lambda f: feedback.append(f.feedback)), 10)
    assert handle.accepted
    result = client.wait_future(handle.get_result_async(), 60)
    assert result.status == GoalStatus.STATUS_SUCCEEDED, result.result.message
    assert result.result.success and result.result.answer
    assert feedback, "no feedback"
    assert [f.tokens for f in feedback] == list(range(1, len(feedback) + 1))
    assert result.result.answer.startswith(feedback[-1].partial.strip()[:5])


def _start_long_goal(client: RosClient, action, feedback: list):
    goal = Describe.Goal(question="Describe the image in detail.", max_new_tokens=500)
    handle = client.wait_future(action.send_goal_async(goal, feedback_callback=lambda f: feedback.append(f)), 10)
    assert handle.accepted
    assert client.spin_until(lambda: len(feedback) >= 2, 30), "no feedback"
    return handle


def test_describe_can_be_cancelled(client: RosClient) -> None:
    publish_frames(client, [(500, 0)])
    action = client.action_client(Describe, "describe")
    feedback: list = []
    handle = _start_long_goal(client, action, feedback)
    start = time.monotonic()
    cancel = client.wait_future(handle.cancel_goal_async(), 10)
    assert cancel.goals_canceling
    result = client.wait_future(handle.get_result_async(), 30)
    assert result.status == GoalStatus.STATUS_CANCELED
    assert not result.result.success and "cancel" in result.result.message
    assert time.monotonic() - start < 10
    assert len(feedback) < 500


def test_a_new_describe_goal_preempts_the_running_one(client: RosClient) -> None:
    publish_frames(client, [(600, 0)])
    action = client.action_client(Describe, "describe")
    first = _start_long_goal(client, action, [])
    second = client.wait_future(action.send_goal_async(Describe.Goal(question="What is this?", max_new_tokens=5)), 10)
    first_result = client.wait_future(first.get_result_async(), 30)
    assert first_result.status == GoalStatus.STATUS_ABORTED
    assert "preempted" in first_result.result.message
    second_result = client.wait_future(second.get_result_async(), 30)
    assert second_result.status == GoalStatus.STATUS_SUCCEEDED


def test_a_click_with_a_task_is_described_and_gets_suggestions(client: RosClient) -> None:
    descriptions = client.collect(RegionDescriptionArray, "region_descriptions")
    suggestions = client.collect(ActionSuggestion, "action_suggestions")
    publish_frames(client, [(700, 0)])
    client.wait_for_subscriber("task", String)
    client.publish("task", String(data="push the green ball"))
    client.spin_for(0.3)
    click = PointStamped()
    click.header.frame_id = FRAME
    click.point.x, click.point.y = 100.0, 70.0
    client.wait_for_subscriber("clicked_point", PointStamped)
    client.publish("clicked_point", click)
    wait_for(client, descriptions)
    wait_for(client, suggestions)
    assert descriptions[0].descriptions[0].region.id == "click"
    assert descriptions[0].descriptions[0].region.type == 0
    assert (descriptions[0].descriptions[0].region.points[0].x, descriptions[0].descriptions[0].region.points[0].y) == (100.0, 70.0)
    assert suggestions[0].task == "push the green ball"
    assert suggestions[0].header.stamp.sec == 700
    client.publish("task", String(data=""))
    client.spin_for(0.3)


def publish_camera_info(client: RosClient) -> None:
    """A 160 x 120 pinhole camera (f = 100 px, centre (80, 60)) in FRAME, until the agent has it."""
    info = CameraInfo(width=160, height=120, distortion_model="plumb_bob", d=[0.0] * 5,
                      k=[100.0, 0.0, 80.0, 0.0, 100.0, 60.0, 0.0, 0.0, 1.0],
                      p=[100.0, 0.0, 80.0, 0.0, 0.0, 100.0, 60.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    info.header.frame_id = FRAME
    client.wait_for_subscriber("camera_info", CameraInfo)
    name = f"/test_node/{NODE}"
    before = int(client.diagnostics(name).get("camera_info.received", "0"))

    def received() -> bool:
        client.publish("camera_info", info)
        return int(client.diagnostics(name, timeout=1.0).get("camera_info.received", "0")) > before

    assert client.spin_until(received, 10), "the agent did not receive camera_info"


def test_a_3d_click_in_the_optical_frame_is_projected_with_camera_info(client: RosClient) -> None:
    descriptions = client.collect(RegionDescriptionArray, "region_descriptions")
    publish_frames(client, [(800, 0)])
    publish_camera_info(client)
    click = PointStamped()
    click.header.frame_id = FRAME
    click.point.x, click.point.y, click.point.z = 0.2, -0.1, 1.0  # -> pixel (100, 50)
    client.publish("clicked_point", click)
    wait_for(client, descriptions)
    point = descriptions[0].descriptions[0].region.points[0]
    assert (point.x, point.y) == pytest.approx((100.0, 50.0))


def test_debug_image_and_markers_are_published(client: RosClient) -> None:
    images = client.collect(Image, "debug/image")
    markers = client.collect(MarkerArray, "debug/markers")
    client.wait_publisher("debug/image")
    client.spin_for(0.5)  # let the agent see the subscriptions
    publish_camera_info(client)  # markers need it; this test sends its own
    publish_frames(client, [(900, 0)])
    response = client.call(AskRegion, "ask", AskRegion.Request(question="What is it?", regions=[box_region(10, 10, 50, 50)]))
    assert response.success
    wait_for(client, images)
    assert images[0].header.stamp.sec == 900 and images[0].encoding == "rgb8"
    assert (images[0].width, images[0].height) == (160, 120)
    wait_for(client, markers)
    assert any(m.type == m.TEXT_VIEW_FACING for m in markers[0].markers)


def test_diagnostics_report_model_counters_and_latencies(client: RosClient) -> None:
    publish_frames(client, [(1000, 0)])
    assert client.call(AskRegion, "ask", AskRegion.Request(question="What?")).success
    values = client.diagnostics(f"/test_node/{NODE}")
    for key in ("state", "model", "backend", "device", "images.received", "detections.answered",
                "requests.served", "queue.requests", "queue.detections", "vision.mean_ms",
                "prefill.mean_ms", "decode.mean_ms", "conversion.mean_ms", "tokens_per_s"):
        assert key in values, key
    assert values["state"] == "active" and values["backend"] == "torch" and values["device"] == "cpu"
    assert int(values["images.received"]) == int(values["images.buffered"]) + int(values["images.rejected"])
    assert int(values["requests.served"]) >= 1
    assert float(values["decode.mean_ms"]) > 0 and float(values["tokens_per_s"]) > 0


def _set(client: RosClient, name: str, value: ParameterValue):
    request = SetParameters.Request(parameters=[Parameter(name=name, value=value)])
    return client.call(SetParameters, f"{NODE}/set_parameters", request).results[0]


def test_parameter_edits_are_validated_with_a_reason(client: RosClient) -> None:
    bad = _set(client, "generation.temperature", ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=-1.0))
    assert not bad.successful and bad.reason
    too_many = _set(client, "generation.max_new_tokens", ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=100000))
    assert not too_many.successful and "max_new_tokens" in too_many.reason
    model = _set(client, "model.path", ParameterValue(type=ParameterType.PARAMETER_STRING, string_value="/elsewhere"))
    assert not model.successful and "configure" in model.reason
    ok = _set(client, "generation.max_new_tokens", ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=8))
    assert ok.successful, ok.reason
    as_int = _set(client, "generation.temperature", ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=0))
    assert as_int.successful, as_int.reason


def test_the_node_declares_every_parameter_of_the_params_file(client: RosClient, agent) -> None:
    import yaml
    from rcl_interfaces.srv import GetParameters, ListParameters

    from ros_harness import PARAMS_FILE

    file_params = yaml.safe_load(PARAMS_FILE.read_text())["/**"]["ros__parameters"]
    listed = client.call(ListParameters, f"{NODE}/list_parameters", ListParameters.Request()).result.names
    declared = set(listed) - {"use_sim_time", "start_type_description_service"}
    assert declared == set(file_params)
    names = ["model.path", "frames.match_tolerance_s", "frames.buffer_size", "qos.image_reliability"]
    values = client.call(GetParameters, f"{NODE}/get_parameters", GetParameters.Request(names=names)).values
    assert values[0].string_value == agent.cmd[agent.cmd.index("-p") + 1].split(":=", 1)[1]
    assert values[1].double_value == AGENT_PARAMS["frames.match_tolerance_s"]  # from -p
    assert values[2].integer_value == file_params["frames.buffer_size"]
    assert values[3].string_value == file_params["qos.image_reliability"]
    assert "--params-file" in agent.cmd


def test_a_detection_waits_for_its_frame_without_holding_up_requests(client: RosClient) -> None:
    """A detection that overtakes its image waits for it off the worker: an ``ask`` meanwhile is
    answered while the detection still waits, and the detection is then described on its frame."""
    name = f"/test_node/{NODE}"
    double = lambda v: ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=v)  # noqa: E731
    out = client.collect(RegionDescriptionArray, "region_descriptions")
    publish_frames(client, [(1100, 0)])
    assert _set(client, "frames.wait_s", double(10.0)).successful
    try:
        client.wait_for_subscriber("detections", detections_msg(stamp(0), []).__class__)
        dets = [detection(40, 30, 30, 20, "early_1", "cup", 0.9)]
        client.publish("detections", detections_msg(stamp(1100, 500_000_000), dets, FRAME))  # before its frame
        assert client.spin_until(lambda: client.diagnostics(name)["queue.awaiting_frame"] == "1", 10)

        start = time.monotonic()
        response = client.call(AskRegion, "ask", AskRegion.Request(question="What is it?",
                                                                     regions=[box_region(10, 10, 50, 50)]))
        assert response.success, response.message
        assert response.header.stamp.sec == 1100
        assert time.monotonic() - start < 8.0
        assert client.diagnostics(name)["queue.awaiting_frame"] == "1", "the detection should still wait"
        assert not out

        publish_frames(client, [(1100, 500_000_000)])
        wait_for(client, out)
        assert (out[0].header.stamp.sec, out[0].header.stamp.nanosec) == (1100, 500_000_000)
        assert [d.region.id for d in out[0].descriptions] == ["early_1"]
        assert client.diagnostics(name)["queue.awaiting_frame"] == "0"
    finally:
        assert _set(client, "frames.wait_s", double(0.5)).successful
