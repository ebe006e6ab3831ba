"""Lifecycle: no autostart; configure failure with a reason; configure/activate/deactivate/cleanup cycles."""
from __future__ import annotations

from lifecycle_msgs.msg import State, Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters

from action_msgs.msg import GoalStatus

from chatspot_ros.action import Describe
from chatspot_ros.srv import AskRegion
from ros_harness import AgentProcess, RosClient, box_region, image_msg, publish_frames_reliably, scene, stamp
from sensor_msgs.msg import Image

NODE = "chatspot_agent"
AGENT_PARAMS = {"autostart": False, "generation.max_new_tokens": 4, "diagnostics.period_s": 0.2}
AGENT_WAIT_FOR = None


def state(client: RosClient) -> int:
    return client.call(GetState, f"{NODE}/get_state", GetState.Request(), timeout=90).current_state.id


def transition(client: RosClient, transition_id: int) -> bool:
    request = ChangeState.Request(transition=Transition(id=transition_id))
    return client.call(ChangeState, f"{NODE}/change_state", request, timeout=120).success


def set_string(client: RosClient, name: str, value: str):
    request = SetParameters.Request(parameters=[Parameter(
        name=name, value=ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=value))])
    return client.call(SetParameters, f"{NODE}/set_parameters", request).results[0]


def set_int(client: RosClient, name: str, value: int):
    request = SetParameters.Request(parameters=[Parameter(
        name=name, value=ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=value))])
    return client.call(SetParameters, f"{NODE}/set_parameters", request).results[0]


def ask_works(client: RosClient, sec: int) -> AskRegion.Response:
    client.wait_for_subscriber("image", Image)
    publish_frames_reliably(client, f"/test_node_lifecycle/{NODE}", "image", [image_msg(scene(96, 72, sec), stamp(sec))])
    response = client.call(AskRegion, "ask", AskRegion.Request(question="What?", regions=[box_region(5, 5, 40, 40)]))
    assert response.success, response.message
    assert response.header.stamp.sec == sec
    return response


def ask_is_offline(client: RosClient) -> None:
    ask = client.node.create_client(AskRegion, "ask")
    client.spin_for(1.0)
    assert client.spin_until(lambda: not ask.service_is_ready(), 10), "ask still served"
    client.node.destroy_client(ask)


def test_configure_failure_is_reported_and_the_node_recovers(agent: AgentProcess, client: RosClient, tiny_model_dir,
                                                              tmp_path) -> None:
    assert state(client) == State.PRIMARY_STATE_UNCONFIGURED
    assert set_string(client, "model.path", "/nonexistent/checkpoint").successful
    assert not transition(client, Transition.TRANSITION_CONFIGURE)
    assert state(client) == State.PRIMARY_STATE_UNCONFIGURED
    values = client.diagnostics(f"/{agent.namespace.strip('/')}/{NODE}")
    assert "/nonexistent/checkpoint" in values["last_error"]
    assert values["model.level"] == "2"  # ERROR
    assert "configure failed" in agent.log() and "/nonexistent/checkpoint" in agent.log()
    assert set_string(client, "model.path", str(tiny_model_dir)).successful
    # referring.templates: a missing file fails configure with the reason; a given one is live.
    assert set_string(client, "referring.templates", str(tmp_path / "missing.yaml")).successful
    assert not transition(client, Transition.TRANSITION_CONFIGURE)
    assert "missing.yaml" in client.diagnostics(f"/{agent.namespace.strip('/')}/{NODE}")["last_error"]
    templates = tmp_path / "instructions.yaml"
    templates.write_text('region_question: "Q: {question} R: {region}"\n')
    assert set_string(client, "referring.templates", str(templates)).successful
    assert transition(client, Transition.TRANSITION_CONFIGURE)
    assert state(client) == State.PRIMARY_STATE_INACTIVE
    assert transition(client, Transition.TRANSITION_ACTIVATE)
    assert ask_works(client, 3).instruction.startswith("Q: What? R: ")
    assert transition(client, Transition.TRANSITION_DEACTIVATE)
    assert transition(client, Transition.TRANSITION_CLEANUP)
    assert set_string(client, "referring.templates", "").successful  # the installed file again
    assert transition(client, Transition.TRANSITION_CONFIGURE)
    assert state(client) == State.PRIMARY_STATE_INACTIVE


def test_activate_deactivate_cleanup_cycles(agent: AgentProcess, client: RosClient) -> None:
    if state(client) == State.PRIMARY_STATE_UNCONFIGURED:
        assert transition(client, Transition.TRANSITION_CONFIGURE)
    for cycle in range(2):
        assert transition(client, Transition.TRANSITION_ACTIVATE)
        assert state(client) == State.PRIMARY_STATE_ACTIVE
        ask_works(client, 10 + cycle)
        # Topic/QoS parameters apply at activation: refused while active, taken while inactive.
        refused = set_int(client, "qos.image_depth", 3)
        assert not refused.successful and "deactivate" in refused.reason
        assert transition(client, Transition.TRANSITION_DEACTIVATE)
        assert state(client) == State.PRIMARY_STATE_INACTIVE
        ask_is_offline(client)
        assert set_int(client, "qos.image_depth", 3 + cycle).successful
        assert transition(client, Transition.TRANSITION_CLEANUP)
        assert state(client) == State.PRIMARY_STATE_UNCONFIGURED
        assert transition(client, Transition.TRANSITION_CONFIGURE)
    assert transition(client, Transition.TRANSITION_ACTIVATE)
    ask_works(client, 20)
    assert "model released" in agent.log()


def test_deactivating_fails_the_running_goal_with_a_reason(agent: AgentProcess, client: RosClient) -> None:
    if state(client) != State.PRIMARY_STATE_ACTIVE:
        if state(client) == State.PRIMARY_STATE_UNCONFIGURED:
            assert transition(client, Transition.TRANSITION_CONFIGURE)
        assert transition(client, Transition.TRANSITION_ACTIVATE)
    ask_works(client, 30)
    action = client.action_client(Describe, "describe")
    feedback: list = []
    goal = Describe.Goal(question="Describe the image in detail.", max_new_tokens=500)
    handle = client.wait_future(action.send_goal_async(goal, feedback_callback=feedback.append), 10)
    assert client.spin_until(lambda: len(feedback) >= 2, 30)
    future = client.node.create_client(ChangeState, f"{NODE}/change_state").call_async(
        ChangeState.Request(transition=Transition(id=Transition.TRANSITION_DEACTIVATE)))
    result = client.wait_future(handle.get_result_async(), 30)
    assert result.status == GoalStatus.STATUS_ABORTED
    assert "deactivated" in result.result.message
    assert client.wait_future(future, 30).success
    assert state(client) == State.PRIMARY_STATE_INACTIVE
    assert agent.alive()


def test_deactivating_drops_and_counts_detections_waiting_for_their_frame(agent: AgentProcess,
                                                                           client: RosClient) -> None:
    from rcl_interfaces.msg import ParameterValue as Value
    from vision_msgs.msg import Detection2DArray

    from chatspot_ros.service.stats import OUTCOMES
    from ros_harness import detection, detections_msg

    name = f"/test_node_lifecycle/{NODE}"
    if state(client) != State.PRIMARY_STATE_ACTIVE:
        if state(client) == State.PRIMARY_STATE_UNCONFIGURED:
            assert transition(client, Transition.TRANSITION_CONFIGURE)
        assert transition(client, Transition.TRANSITION_ACTIVATE)
    ask_works(client, 40)
    request = SetParameters.Request(parameters=[Parameter(
        name="frames.wait_s", value=Value(type=ParameterType.PARAMETER_DOUBLE, double_value=10.0))])
    assert client.call(SetParameters, f"{NODE}/set_parameters", request).results[0].successful
    client.wait_for_subscriber("detections", Detection2DArray)
    before = int(client.diagnostics(name).get("detections.dropped", "0"))
    client.publish("detections", detections_msg(stamp(41), [detection(20, 20, 10, 10, "later")], "camera_optical"))
    assert client.spin_until(lambda: client.diagnostics(name)["queue.awaiting_frame"] == "1", 10)
    assert transition(client, Transition.TRANSITION_DEACTIVATE)
    values = client.diagnostics(name)
    assert values["queue.awaiting_frame"] == "0"
    assert int(values["detections.dropped"]) == before + 1
    outcomes = sum(int(values[f"detections.{o}"]) for o in OUTCOMES["detections"])
    assert int(values["detections.received"]) == outcomes
    assert "node deactivated" in agent.log()


def test_an_empty_model_path_loads_the_shipped_demo_model_loudly(agent: AgentProcess, client: RosClient,
                                                                  tiny_model_dir) -> None:
    from chatspot_ros.models import shipped_model

    if state(client) == State.PRIMARY_STATE_ACTIVE:
        assert transition(client, Transition.TRANSITION_DEACTIVATE)
    if state(client) == State.PRIMARY_STATE_INACTIVE:
        assert transition(client, Transition.TRANSITION_CLEANUP)
    assert set_string(client, "model.path", "").successful
    assert transition(client, Transition.TRANSITION_CONFIGURE)
    assert state(client) == State.PRIMARY_STATE_INACTIVE
    assert "shipped DEMO model" in agent.log() and str(shipped_model()) in agent.log()
    assert transition(client, Transition.TRANSITION_CLEANUP)
    assert set_string(client, "model.path", str(tiny_model_dir)).successful
