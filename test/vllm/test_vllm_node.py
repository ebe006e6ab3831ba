"""The node with ``model.backend: vllm`` over real DDS against the session's real vLLM server.

``python -m chatspot_ros.agent`` runs as a subprocess (test/ros/ros_harness.py) with ``server.url``
pointing at the session server: detections on region_descriptions, the ``ask`` service and the
``describe`` action (streamed feedback, cancel). Then the server is killed mid-answer (SIGKILL of
its process group, a crash): the goal fails with the reason, a request while it is down fails
with the reason, the node stays up, and after the server is restarted on the same port the next
``ask`` succeeds. Every wait is on a condition (a message, a future, /health), none is a fixed sleep.

The kill + restart test costs one more server start-up (~100 s on a loaded 2-core CPU; printed),
so it is one test and runs last in the session (it leaves the server serving again).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ros"))
# Camera frames through shared memory (as test/ros/conftest.py does), set before rclpy starts here.

from action_msgs.msg import GoalStatus  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from chatspot_ros.action import Describe  # noqa: E402
from chatspot_ros.msg import RegionDescriptionArray  # noqa: E402
from chatspot_ros.srv import AskRegion  # noqa: E402
from ros_harness import (  # noqa: E402
    TIMEOUT_SCALE,
    AgentProcess,
    RosClient,
    box_region,
    detection,
    detections_msg,
    image_msg,
    publish_frames_reliably,
    scene,
    stamp,
)

pytestmark = pytest.mark.vllm

NAMESPACE = "/test_vllm_node"
NODE = "chatspot_agent"
FRAME = "camera_optical"
STARTUP_TIMEOUT_S = 120.0 * TIMEOUT_SCALE
REQUEST_TIMEOUT_S = 90.0 * TIMEOUT_SCALE
# An answer that cannot end before the test cancels it or kills the server: the smoke model never stops
# early, and 3800 tokens take seconds even on a fast CPU (400 once ended within the 0.1 s before a kill).
# Prompt (~90 tokens) + 3800 < the served context (conftest.CONTEXT_TOKENS).
LONG_TOKENS = 3800


@pytest.fixture(scope="module")
def agent(vllm_server: Any, tmp_path_factory: pytest.TempPathFactory,
          request: pytest.FixtureRequest) -> Iterator[AgentProcess]:
    params = {"model.backend": "vllm", "server.url": vllm_server.url, "server.model": vllm_server.name,
              "server.timeout_s": 30.0, "generation.max_new_tokens": 12,
              "generation.max_new_tokens_limit": LONG_TOKENS, "frames.match_tolerance_s": 0.01,
              "diagnostics.period_s": 0.2}
    log_path = tmp_path_factory.mktemp("agent") / "test_vllm_node.log"
    proc = AgentProcess(Path(vllm_server.model_dir), log_path, NAMESPACE, params)
    try:
        with RosClient(NAMESPACE) as client:
            ask = client.node.create_client(AskRegion, "ask")
            ready = client.spin_until(lambda: ask.service_is_ready() or not proc.alive(), STARTUP_TIMEOUT_S)
            assert ready and proc.alive(), f"agent did not come up:\n{proc.log()}"
        yield proc
    finally:
        code = proc.stop()
        if request.session.testsfailed:
            sys.stderr.write(f"\n---- agent log ({log_path}) ----\n{log_path.read_text(errors='replace')}\n")
        assert code == 0, f"agent exited with {code}; log: {log_path}"


@pytest.fixture()
def client(agent: AgentProcess) -> Iterator[RosClient]:
    with RosClient(NAMESPACE) as c:
        yield c


def publish_frames(client: RosClient, secs: list[int]) -> None:
    client.wait_for_subscriber("image", Image)
    msgs = [image_msg(scene(160, 120, seed=i), stamp(sec), FRAME) for i, sec in enumerate(secs)]
    publish_frames_reliably(client, f"{NAMESPACE}/{NODE}", "image", msgs)


def ask(client: RosClient, question: str = "What is in this region?") -> Any:
    request = AskRegion.Request(question=question, regions=[box_region(10, 10, 60, 50, "r1")])
    return client.call(AskRegion, "ask", request, timeout=REQUEST_TIMEOUT_S)


def start_long_goal(client: RosClient, action: Any, feedback: list) -> Any:
    goal = Describe.Goal(question="Describe the image in detail.", max_new_tokens=LONG_TOKENS)
    handle = client.wait_future(action.send_goal_async(goal, feedback_callback=lambda f: feedback.append(f.feedback)),
                                30)
    assert handle.accepted
    assert client.spin_until(lambda: len(feedback) >= 2, REQUEST_TIMEOUT_S), "no feedback: the stream did not start"
    return handle


def test_detections_are_described_through_the_server(client: RosClient, agent: AgentProcess) -> None:
    out = client.collect(RegionDescriptionArray, "region_descriptions")
    publish_frames(client, [100, 101])
    client.wait_for_subscriber("detections", detections_msg(stamp(0), []).__class__)
    dets = [detection(40, 30, 30, 20, "cup_1", "cup", 0.9), detection(100, 80, 40, 30, "box_2", "box", 0.8)]
    client.publish("detections", detections_msg(stamp(100), dets, FRAME))
    assert client.spin_until(lambda: len(out) >= 1, REQUEST_TIMEOUT_S), f"no region_descriptions:\n{agent.log()}"
    msg = out[0]
    assert (msg.header.stamp.sec, msg.header.frame_id) == (100, FRAME)
    assert [d.region.id for d in msg.descriptions] == ["cup_1", "box_2"]
    assert [d.label for d in msg.descriptions] == ["cup", "box"]
    assert all(d.text for d in msg.descriptions)
    assert msg.descriptions[0].instruction != msg.descriptions[1].instruction
    assert msg.inference_time_s > 0 and msg.model
    diag = client.diagnostics(f"{NAMESPACE}/{NODE}", timeout=10.0)
    assert diag.get("server.backend") == "vllm", diag
    assert diag.get("server.server", "").startswith("http://127.0.0.1:"), diag


def test_ask_is_answered_by_the_server(client: RosClient) -> None:
    publish_frames(client, [200])
    response = ask(client)
    assert response.success, response.message
    assert response.answer and response.instruction.startswith("What is in this region?")
    assert (response.header.stamp.sec, response.header.frame_id) == (200, FRAME)


def test_describe_streams_the_server_tokens(client: RosClient) -> None:
    publish_frames(client, [300])
    action = client.action_client(Describe, "describe")
    feedback: list = []
    goal = Describe.Goal(regions=[box_region(5, 5, 80, 60, "a")], max_new_tokens=10)
    handle = client.wait_future(action.send_goal_async(goal, feedback_callback=lambda f: feedback.append(f.feedback)),
                                30)
    assert handle.accepted
    result = client.wait_future(handle.get_result_async(), REQUEST_TIMEOUT_S)
    assert result.status == GoalStatus.STATUS_SUCCEEDED, result.result.message
    assert result.result.success and result.result.answer
    assert len(feedback) >= 2, "no streamed feedback"
    assert [f.tokens for f in feedback] == list(range(1, len(feedback) + 1))
    assert result.result.answer.startswith(feedback[-1].partial.strip()[:5])


def test_describe_cancel_closes_the_stream(client: RosClient) -> None:
    publish_frames(client, [400])
    action = client.action_client(Describe, "describe")
    feedback: list = []
    handle = start_long_goal(client, action, feedback)
    start = time.monotonic()
    cancel = client.wait_future(handle.cancel_goal_async(), 30)
    assert cancel.goals_canceling
    result = client.wait_future(handle.get_result_async(), REQUEST_TIMEOUT_S)
    assert result.status == GoalStatus.STATUS_CANCELED, result.result.message
    assert not result.result.success and "cancel" in result.result.message
    print(f"cancelled after {len(feedback)} feedback messages, {time.monotonic() - start:.1f} s after the cancel")
    assert len(feedback) < LONG_TOKENS
    # the node and the server still serve
    assert ask(client).success


def test_server_killed_mid_answer_then_restarted(client: RosClient, agent: AgentProcess, vllm_process: Any) -> None:
    """One test: the kill, the failures while down and the recovery (one more server start-up)."""
    publish_frames(client, [500])
    action = client.action_client(Describe, "describe")
    feedback: list = []
    handle = start_long_goal(client, action, feedback)
    t0 = time.monotonic()
    vllm_process.kill()  # mid-answer: the stream is open and tokens are arriving
    result = client.wait_future(handle.get_result_async(), REQUEST_TIMEOUT_S)
    failed_after = time.monotonic() - t0
    message = result.result.message
    print(f"killed after {len(feedback)} tokens; goal failed {failed_after:.1f} s later: {message!r}")
    assert result.status == GoalStatus.STATUS_ABORTED, message
    assert not result.result.success
    assert message.startswith("model error: ") and vllm_process.url in message, message
    assert "broke mid-answer" in message or "cannot connect" in message, message
    assert len(feedback) < LONG_TOKENS
    assert agent.alive(), agent.log()

    # While the server is down: a request fails at once with the reason (after the bounded retries).
    t1 = time.monotonic()
    down = ask(client)
    print(f"ask while down: {time.monotonic() - t1:.1f} s: {down.message!r}")
    assert not down.success and "cannot connect" in down.message, down.message
    assert agent.alive(), agent.log()
    diag = client.diagnostics(f"{NAMESPACE}/{NODE}", timeout=10.0)
    assert "unreachable" in diag.get("server.failures", ""), diag
    assert diag.get("server.last_error"), diag

    # Restart on the same port; the node needs nothing: the next ask succeeds.
    vllm_process.start()
    restart_s = vllm_process.wait_healthy()
    print(f"server restarted (pid {vllm_process.pid}) in {restart_s:.0f} s")
    t2 = time.monotonic()
    recovered = ask(client)
    print(f"first ask after the restart: {time.monotonic() - t2:.1f} s")
    assert recovered.success, recovered.message
    assert recovered.answer
    assert agent.alive(), agent.log()
