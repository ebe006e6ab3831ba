"""Every kind of bad input gets a clear error, is counted, and leaves the agent answering.

Ends with a seeded fuzz run over all inputs, after which the counters must add up.
"""
from __future__ import annotations

import math
import random
import time

import numpy as np
from action_msgs.msg import GoalStatus
from geometry_msgs.msg import Point32, PointStamped
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import String
from vision_msgs.msg import Detection2DArray

from chatspot_ros.action import Describe
from chatspot_ros.msg import Region as RegionMsg
from chatspot_ros.msg import RegionDescriptionArray
from chatspot_ros.srv import AskRegion, SuggestActions
from ros_harness import (
    RosClient,
    box_region,
    detection,
    detections_msg,
    image_msg,
    point_region,
    publish_frames_reliably,
    scene,
    stamp,
)

NODE = "/test_node_bad_input/chatspot_agent"
FRAME = "camera_optical"
# Reliable image input here, so that every malformed frame sent is received and can be counted.
AGENT_PARAMS = {"generation.max_new_tokens": 6, "frames.wait_s": 0.3, "limits.max_regions_per_frame": 4,
                "queues.max_pending_detections": 2, "qos.image_reliability": "reliable",
                "diagnostics.period_s": 0.2}


def settle(client: RosClient, timeout: float = 30.0, before: dict[str, int] | None = None,
           arrived: dict[str, int] | None = None) -> dict[str, int]:
    """Counters once the agent's queues are empty and its worker idle.

    With ``arrived``, also wait until each named counter has grown by at least that much since ``before``:
    a message published a moment ago may not have reached the agent yet, and idle queues alone cannot tell.
    """
    end = time.monotonic() + timeout
    while True:
        values = client.diagnostics(NODE)
        idle = (values["queue.requests"] == "0" and values["queue.detections"] == "0"
                and values["queue.awaiting_frame"] == "0" and values["worker.busy"] == "False")
        numbers = {k: int(v) for k, v in values.items() if v.lstrip("-").isdigit()}
        if arrived:
            idle = idle and all(delta(before or {}, numbers, key) >= n for key, n in arrived.items())
        if idle or time.monotonic() > end:
            assert idle, f"agent queues did not drain or messages did not arrive: {arrived}"
            return numbers


def delta(before: dict[str, int], after: dict[str, int], key: str) -> int:
    return after.get(key, 0) - before.get(key, 0)


def assert_still_answers(client: RosClient) -> None:
    response = client.call(AskRegion, "ask", AskRegion.Request(question="What is this?", regions=[box_region(5, 5, 50, 40)]))
    assert response.success, response.message


def send_frame(client: RosClient, sec: int, width: int = 160, height: int = 120) -> None:
    client.wait_for_subscriber("image", Image)
    publish_frames_reliably(client, NODE, "image", [image_msg(scene(width, height, sec), stamp(sec), FRAME)])


# ------------------------------------------------------------------------------------------------


def test_requests_before_any_frame_fail_with_a_reason(client: RosClient) -> None:
    ask = client.call(AskRegion, "ask", AskRegion.Request(question="What is this?"))
    assert not ask.success and "no image received yet" in ask.message
    suggest = client.call(SuggestActions, "suggest_actions", SuggestActions.Request(task="pick it up"))
    assert not suggest.success and "no image received yet" in suggest.message
    action = client.action_client(Describe, "describe")
    handle = client.wait_future(action.send_goal_async(Describe.Goal(question="What is this?")), 10)
    result = client.wait_future(handle.get_result_async(), 10)
    assert result.status == GoalStatus.STATUS_ABORTED and "no image received yet" in result.result.message


def test_malformed_images_are_rejected_and_counted(client: RosClient) -> None:
    send_frame(client, 1)
    before = settle(client)

    def raw(width: int, height: int, step: int, encoding: str, size: int) -> Image:
        msg = Image(width=width, height=height, step=step, encoding=encoding)
        msg.header.frame_id = FRAME
        msg.header.stamp = stamp(2)
        msg.data = bytes(size)
        return msg

    bad = [
        raw(0, 0, 0, "rgb8", 0),  # zero size
        raw(64, 48, 192, "rgb8", 192 * 47),  # data shorter than step * height
        raw(64, 48, 100, "rgb8", 100 * 48),  # step < width * 3
        raw(64, 48, 192, "fancy16", 192 * 48),  # unknown encoding
        raw(16384, 16384, 16384 * 3, "rgb8", 16),  # 16k x 16k
        raw(8, 8, 48, "32FC1", 48 * 8),  # an encoding we do not take
    ]
    for msg in bad:
        client.publish("image", msg)
        client.spin_for(0.05)
    after = settle(client, before=before, arrived={"images.received": len(bad)})
    assert delta(before, after, "images.rejected") == len(bad)
    assert delta(before, after, "images.buffered") == 0
    assert_still_answers(client)


def test_malformed_detections_are_rejected_or_unmatched_and_counted(client: RosClient) -> None:
    send_frame(client, 10)
    out = client.collect(RegionDescriptionArray, "region_descriptions")
    client.wait_for_subscriber("detections", Detection2DArray)
    before = settle(client)
    nan, inf = math.nan, math.inf
    good = detection(40, 40, 20, 20, "ok")
    cases = {
        "empty": detections_msg(stamp(10), []),
        "nan": detections_msg(stamp(10), [detection(nan, 40, 20, 20, "n")]),
        "inf": detections_msg(stamp(10), [detection(40, 40, inf, 20, "i")]),
        "negative": detections_msg(stamp(10), [detection(40, 40, -5, 20, "neg")]),
        "far_outside": detections_msg(stamp(10), [detection(5000, 5000, 20, 20, "far")]),
        "unknown_frame": detections_msg(stamp(10), [good], frame_id="some_other_camera"),
        "future": detections_msg(stamp(10_000), [good]),
        "far_past": detections_msg(stamp(0, 1), [good]),
    }
    for msg in cases.values():
        client.publish("detections", msg)
        client.spin_for(0.4)  # one at a time: the pending-detections queue holds 2
    after = settle(client, before=before, arrived={"detections.received": len(cases)})
    assert delta(before, after, "detections.received") == len(cases)
    assert delta(before, after, "detections.empty") == 1
    assert delta(before, after, "detections.rejected") == 5  # nan, inf, negative, far outside, frame
    assert delta(before, after, "detections.unmatched") == 2  # future, far past
    assert delta(before, after, "regions.rejected") == 4
    assert not out, "no descriptions for bad detections"

    # Partly outside: clipped and answered. Thousands of boxes: the 4 best answered, the rest counted.
    client.publish("detections", detections_msg(stamp(10), [detection(150, 110, 40, 40, "edge")]))
    assert client.spin_until(lambda: len(out) >= 1, 30)
    edge = out[0].descriptions[0].region.points
    assert (edge[1].x, edge[1].y) == (160.0, 120.0)
    rng = np.random.default_rng(0)
    many = [detection(*rng.uniform(10, 100, 2), 10, 10, f"d{i}", score=float(rng.uniform())) for i in range(3000)]
    client.publish("detections", detections_msg(stamp(10), many))
    assert client.spin_until(lambda: len(out) >= 2, 60)
    assert len(out[1].descriptions) == 4
    final = settle(client)
    assert delta(after, final, "regions.overflow") == 2996
    assert_still_answers(client)


def test_bad_clicks_are_rejected(client: RosClient) -> None:
    send_frame(client, 20)
    client.wait_for_subscriber("clicked_point", PointStamped)
    before = settle(client)
    outside = PointStamped()
    outside.header.frame_id = FRAME
    outside.point.x, outside.point.y = 500.0, 20.0
    unknown = PointStamped()
    unknown.header.frame_id = "map"
    unknown.point.x, unknown.point.y, unknown.point.z = 1.0, 2.0, 0.5
    not_finite = PointStamped()
    not_finite.header.frame_id = FRAME
    not_finite.point.x = math.nan
    for msg in (outside, unknown, not_finite):
        client.publish("clicked_point", msg)
        client.spin_for(0.1)
    after = settle(client, before=before, arrived={"clicks.received": 3})
    assert delta(before, after, "clicks.rejected") == 3
    assert delta(before, after, "clicks.received") == 3


def test_bad_requests_fail_with_a_reason_and_the_agent_keeps_answering(client: RosClient) -> None:
    send_frame(client, 30)
    before = settle(client)

    def ask(**fields) -> AskRegion.Response:
        request = AskRegion.Request(question=fields.pop("question", "What is this?"), **fields)
        return client.call(AskRegion, "ask", request)

    cases = {
        "empty question": (ask(question="  "), "empty"),
        "100 kB question": (ask(question="why " * 25_000), "characters"),
        "10000 regions": (ask(regions=[point_region(5, 5)] * 10_000), "regions"),
        "bad region type": (ask(regions=[RegionMsg(type=7, points=[Point32(x=1.0, y=1.0)])]), "unknown type"),
        "box with 3 points": (ask(regions=[RegionMsg(type=RegionMsg.BOX, points=[Point32()] * 3)]), "2 corner"),
        "no points": (ask(regions=[RegionMsg(type=RegionMsg.POLYGON)]), "at least 3"),
        "nan point": (ask(regions=[point_region(math.nan, 3)]), "finite"),
        "outside": (ask(regions=[box_region(1000, 1000, 2000, 2000)]), "outside"),
        "absurd max_new_tokens": (ask(max_new_tokens=4_000_000_000), "max_new_tokens"),
        "bad own image": (ask(image=Image(width=10, height=10, encoding="rgb8", step=30)), "bytes"),
    }
    for name, (response, needle) in cases.items():
        assert not response.success, name
        assert needle in response.message, f"{name}: {response.message!r}"
    empty_task = client.call(SuggestActions, "suggest_actions", SuggestActions.Request(task=""))
    assert not empty_task.success and "task is empty" in empty_task.message
    action = client.action_client(Describe, "describe")
    handle = client.wait_future(action.send_goal_async(Describe.Goal(question="x" * 100_000)), 10)
    result = client.wait_future(handle.get_result_async(), 10)
    assert result.status == GoalStatus.STATUS_ABORTED and "characters" in result.result.message
    after = settle(client)
    assert delta(before, after, "requests.rejected") == len(cases) + 2
    assert_still_answers(client)


def test_tasks_and_camera_info_are_checked(client: RosClient) -> None:
    client.wait_for_subscriber("task", String)
    client.wait_for_subscriber("camera_info", CameraInfo)
    before = settle(client)
    client.publish("task", String(data="t" * 100_000))
    client.publish("camera_info", CameraInfo(width=160, height=120))  # all-zero K: uncalibrated
    after = settle(client, before=before, arrived={"tasks.received": 1, "camera_info.received": 1})
    assert delta(before, after, "tasks.rejected") == 1
    assert delta(before, after, "camera_info.rejected") == 1


# ------------------------------------------------------------------------------------------------
# Fuzz


def _random_image(rng: random.Random) -> Image:
    encodings = ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "rgb16", "bogus", "", "16UC1", "yuv422"]
    width, height = rng.choice([0, 1, 3, 16, 33, 70000]), rng.choice([0, 1, 2, 16, 70000])
    msg = Image(width=width, height=height, encoding=rng.choice(encodings), is_bigendian=rng.randint(0, 1),
                step=rng.choice([0, 1, width, width * 3, width * 6, 2**31]))
    msg.header.frame_id = rng.choice([FRAME, "", "x"])
    msg.header.stamp = stamp(rng.randint(0, 100), rng.randint(0, 999_999_999))
    msg.data = bytes(rng.getrandbits(8) for _ in range(rng.choice([0, 7, 48, 3 * 16 * 16, 6 * 16 * 16])))
    return msg


def _random_detections(rng: random.Random) -> Detection2DArray:
    values = [0.0, -1.0, 1e9, math.nan, math.inf, -math.inf, 5.0, 80.0]
    dets = [detection(rng.choice(values), rng.choice(values), rng.choice(values), rng.choice(values),
                      rng.choice(["", "a", "b" * 300]), rng.choice(["", "cup"]), rng.choice(values))
            for _ in range(rng.choice([0, 1, 2, 50]))]
    return detections_msg(stamp(rng.choice([0, 40, 41, 10**6]), rng.randint(0, 999_999_999)), dets,
                          rng.choice([FRAME, "", "nowhere"]))


def _random_click(rng: random.Random) -> PointStamped:
    msg = PointStamped()
    msg.header.frame_id = rng.choice([FRAME, "", "map"])
    msg.point.x = rng.choice([0.0, -5.0, 50.0, 1e12, math.nan])
    msg.point.y = rng.choice([0.0, 60.0, -math.inf, 119.0])
    msg.point.z = rng.choice([0.0, 0.0, 1.0, -1.0])
    return msg


def _random_region(rng: random.Random) -> RegionMsg:
    count = rng.choice([0, 1, 2, 3, 4])
    return RegionMsg(type=rng.choice([0, 1, 2, 3, 255]),
                     points=[Point32(x=rng.choice([0.0, 10.0, 100.0, -50.0, math.nan]),
                                     y=rng.choice([0.0, 20.0, 90.0, 1e30])) for _ in range(count)])


def test_fuzz_all_inputs_then_the_counters_add_up(client: RosClient) -> None:
    rng = random.Random(1234)
    send_frame(client, 40)
    ask_client = client.node.create_client(AskRegion, "ask")
    assert client.spin_until(ask_client.service_is_ready, 10)
    futures = []
    sent = {"images": 0, "detections": 0, "clicks": 0, "tasks": 0, "camera_info": 0, "requests": 0}
    deadline = time.monotonic() + 25.0
    count = 0
    while count < 3000 and time.monotonic() < deadline:
        kind = rng.choice(["images", "detections", "clicks", "tasks", "camera_info", "requests"])
        if kind == "images":
            client.publish("image", _random_image(rng))
        elif kind == "detections":
            client.publish("detections", _random_detections(rng))
        elif kind == "clicks":
            client.publish("clicked_point", _random_click(rng))
        elif kind == "tasks":
            client.publish("task", String(data=rng.choice(["", "pick", "x" * 5000, "\u00e9\u2603 \x00"])))
        elif kind == "camera_info":
            info = CameraInfo(width=rng.choice([0, 160]), height=rng.choice([0, 120]),
                              k=[rng.choice([0.0, 100.0, math.nan]), 0.0, 80.0, 0.0, 100.0, 60.0, 0.0, 0.0, 1.0],
                              d=[rng.choice([0.0, 0.1])] * rng.choice([0, 5, 8]),
                              distortion_model=rng.choice(["plumb_bob", "weird", ""]))
            info.header.frame_id = FRAME
            client.publish("camera_info", info)
        elif len([f for f in futures if not f.done()]) < 4:
            request = AskRegion.Request(
                question=rng.choice(["", "What?", "y" * 3000]),
                regions=[_random_region(rng) for _ in range(rng.choice([0, 1, 2, 40]))],
                max_new_tokens=rng.choice([0, 1, 3, 10**6]),
                stamp=stamp(rng.choice([0, 40, 7])),
            )
            futures.append(ask_client.call_async(request))
        else:
            continue
        sent[kind] += 1
        count += 1
        client.executor.spin_once(timeout_sec=0.0)
    assert count >= 500, f"only {count} messages in the time bound"
    assert client.spin_until(lambda: all(f.done() for f in futures), 60), "a fuzzed request got no response"
    final = settle(client, timeout=60)
    for kind in ("images", "detections", "clicks", "requests"):
        received = final.get(f"{kind}.received", 0)
        from chatspot_ros.service.stats import OUTCOMES

        outcomes = sum(final.get(f"{kind}.{o}", 0) for o in OUTCOMES[kind])
        assert received == outcomes, f"{kind}: received {received} != outcomes {outcomes}: {final}"
    assert final["requests.received"] >= len(futures)
    assert final.get("worker.errors", 0) == 0
    send_frame(client, 50)  # the fuzz may have left a 1x1 frame as the latest
    assert_still_answers(client)
