"""The studio's ROS node over real DDS, without an agent: what it takes from the agent's topics.

The server and its RosBackend run in this process (their own rclpy Context); a test node plays
the agent's outputs: compressed camera frames, detections, region descriptions and /diagnostics
(of this agent and of another one). Questions without an agent fail with a clear message.
"""
from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ros"))

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue  # noqa: E402
from ros_harness import (RosClient, box_region, compressed_msg, detection, detections_msg, image_msg, scene,  # noqa: E402
                         stamp)

from chatspot_ros.msg import RegionDescription, RegionDescriptionArray  # noqa: E402
from chatspot_ros.studio.hub import Counters  # noqa: E402
from chatspot_ros.studio.ros_bridge import RosBackend  # noqa: E402
from chatspot_ros.studio.server import Studio, StudioConfig  # noqa: E402

from ws_client import connect, next_json, run  # noqa: E402

NAMESPACE = "/studio_bridge"

def diagnostics(name: str, state: str) -> DiagnosticArray:
    status = DiagnosticStatus(name=f"{name}: model", message=state,
                              values=[KeyValue(key="state", value=state), KeyValue(key="model", value="tabletop")])
    latency = DiagnosticStatus(name=f"{name}: latency", message="12 ms per answer, 80.0 tokens/s",
                               values=[KeyValue(key="tokens_per_s", value="80.0")])
    return DiagnosticArray(status=[status, latency])

def test_frames_overlays_and_agent_state_come_from_the_agents_topics_and_questions_need_the_agent() -> None:
    counters = Counters()
    backend = RosBackend(counters, ros_args=["-r", f"__ns:={NAMESPACE}"], transport="compressed", answer_timeout_s=5)
    studio = Studio(backend, StudioConfig(port=0, fps=20), counters=counters)
    rgb = scene(160, 120)
    frame_msg = compressed_msg(rgb, stamp(100, 5))
    bad = compressed_msg(rgb, stamp(100, 6))
    bad.data = b"\xff\xd8 not a jpeg"
    description = RegionDescription(region=box_region(10, 20, 60, 70, "object_0"), label="object", text="A red cube.")
    descriptions = RegionDescriptionArray(descriptions=[description])
    descriptions.header.stamp = stamp(100, 5)
    dets = detections_msg(stamp(100, 5), [detection(35, 45, 50, 50, "object_0", "object")])

    async def go() -> None:
        # the test node is made before and destroyed after the studio's executor spins (see
        # test_browser_ros.py: destroying a node while another Context's executor waits has crashed)
        client = RosClient(NAMESPACE)
        await studio.start()
        try:
            async with aiohttp.ClientSession() as s:
                ws = await connect(s, studio)
                await next_json(ws, "hello")
                # best effort: publish until the page has a frame
                jpeg = None
                end = time.monotonic() + 20
                while jpeg is None and time.monotonic() < end:
                    client.publish("image/compressed", bad, reliable=False)
                    client.publish("image/compressed", frame_msg, reliable=False)
                    try:
                        msg = await ws.receive(timeout=0.3)
                    except asyncio.TimeoutError:
                        continue
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        from chatspot_ros.studio.protocol import unpack_frame

                        header, jpeg = unpack_frame(msg.data)
                assert jpeg is not None, "no frame reached the page"
                assert jpeg == bytes(frame_msg.data)  # a JPEG camera frame is passed through, not re-encoded
                assert header["stamp"] == {"sec": 100, "nanosec": 5}
                assert (header["width"], header["height"]) == (160, 120)
                assert counters.get("frames.rejected") >= 1  # the broken frames are counted, never shown
                for topic, msg, source in (("region_descriptions", descriptions, "region_descriptions"),
                                           ("detections", dets, "detections")):
                    client.wait_for_subscriber(topic, type(msg))
                    client.publish(topic, msg)
                    overlay = await next_json(ws, "overlay")
                    assert overlay["source"] == source and overlay["stamp"] == {"sec": 100, "nanosec": 5}
                    region = overlay["regions"][0]
                    assert region["kind"] == "box" and region["points"] == [[10.0, 20.0], [60.0, 70.0]]
                    assert region["id"] == "object_0" and region["label"] == "object"
                    assert region["text"] == ("A red cube." if source == "region_descriptions" else "")
                client.wait_for_subscriber("/diagnostics", DiagnosticArray)
                end = time.monotonic() + 10
                while time.monotonic() < end:
                    client.publish("/diagnostics", diagnostics("/other/chatspot_agent", "unconfigured"))
                    client.publish("/diagnostics", diagnostics(f"{NAMESPACE}/chatspot_agent", "active"))
                    status = (await next_json(ws, "status"))["agent"]
                    if status.get("state") == "active":
                        break
                assert status["state"] == "active" and status["model"] == "tabletop", status
                assert status["latency"] == "12 ms per answer, 80.0 tokens/s"
                assert status["agent"] == f"{NAMESPACE}/chatspot_agent" and status["describe"] == "not available"
                await ws.send_json({"type": "freeze", "frame": header["frame"]})
                await ws.send_json({"type": "ask", "id": "q", "frame": header["frame"], "question": "What is this?",
                                    "region": {"kind": "point", "points": [[5, 5]]}})
                answer = await next_json(ws, "answer")
                assert not answer["ok"] and "describe action is not available" in answer["message"], answer
                await ws.send_json({"type": "suggest", "id": "s", "frame": header["frame"], "task": "pick it up"})
                answer = await next_json(ws, "answer")
                assert not answer["ok"] and "suggest_actions service is not available" in answer["message"]
        finally:
            await studio.stop()
            client.close()

    run(go(), 90)

def test_a_raw_frame_is_encoded_and_an_old_frozen_frame_travels_as_pixels() -> None:
    """RosBackend's choice between naming the frame by stamp and sending its pixels (no DDS needed)."""
    from sensor_msgs.msg import CompressedImage

    from chatspot_ros.studio.hub import HeldFrame, SourceFrame

    counters = Counters()
    backend = RosBackend(counters, ros_args=["-r", "__ns:=/studio_bridge_refer"], stamp_max_frames=10)
    backend._received = 20  # as if 20 camera frames had come
    try:
        rgb = scene(64, 48)
        raw = image_msg(rgb, stamp(7, 8))
        fresh = HeldFrame(1, SourceFrame(7, 8, "cam", 64, 48, raw, seq=10), b"")  # 10 newer frames: still by stamp
        old = HeldFrame(2, SourceFrame(7, 8, "cam", 64, 48, raw, seq=9), b"")
        when, image, how = backend._frame_fields(fresh)
        assert (when.sec, when.nanosec, how, image.width) == (7, 8, "stamp", 0)
        when, image, how = backend._frame_fields(old)
        assert how == "pixels" and image is raw and (when.sec, when.nanosec) == (7, 8)
        compressed = compressed_msg(rgb, stamp(7, 8), fmt="png")
        assert isinstance(compressed, CompressedImage)
        old_png = HeldFrame(3, SourceFrame(7, 8, "cam", 64, 48, compressed, seq=1), b"")
        _, image, how = backend._frame_fields(old_png)
        assert how == "pixels" and image.encoding == "rgb8" and (image.width, image.height) == (64, 48)
        assert image.header.stamp.sec == 7 and np.array_equal(
            np.frombuffer(bytes(image.data), np.uint8).reshape(48, 64, 3), rgb)  # PNG: lossless
        jpeg = backend.to_jpeg(fresh.source, 90)
        assert jpeg[:2] == b"\xff\xd8"
    finally:
        backend.close()


def test_without_the_describe_action_a_question_goes_to_the_ask_service() -> None:
    """An agent that offers ``ask`` but no ``describe`` (played by the test node): one answer, no stream."""
    import threading

    from chatspot_ros.srv import AskRegion

    namespace = "/studio_bridge_ask"
    counters = Counters()
    backend = RosBackend(counters, ros_args=["-r", f"__ns:={namespace}"], answer_timeout_s=10)
    studio = Studio(backend, StudioConfig(port=0), counters=counters)
    asked: list[Any] = []

    def on_ask(request: Any, response: Any) -> Any:
        asked.append(request)
        response.success, response.answer = True, f"seen: {request.question}"
        response.instruction = f"{request.question} <box>...</box>"
        response.header.stamp = request.stamp
        return response

    client = RosClient(namespace)
    client.node.create_service(AskRegion, "ask", on_ask)
    spinning = threading.Event()
    spinning.set()

    def spin() -> None:
        while spinning.is_set():
            client.executor.spin_once(timeout_sec=0.05)

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()

    async def go() -> None:
        await studio.start()
        try:
            async with aiohttp.ClientSession() as s:
                ws = await connect(s, studio)
                await next_json(ws, "hello")
                end = time.monotonic() + 20
                while not backend._ask.service_is_ready():
                    assert time.monotonic() < end, "the studio never saw the ask service"
                    await asyncio.sleep(0.1)
                end = time.monotonic() + 20
                frame = None
                while frame is None:
                    assert time.monotonic() < end, "no frame reached the studio"
                    client.publish("image", image_msg(scene(160, 120), stamp(42, 7)), reliable=False)
                    await asyncio.sleep(0.1)
                    frame = studio.held.latest()
                await ws.send_json({"type": "freeze", "frame": frame.id})
                await ws.send_json({"type": "ask", "id": "q", "frame": frame.id, "question": "What is this?",
                                    "region": {"kind": "box", "points": [[10, 10], [50, 40]]}})
                answer = await next_json(ws, "answer")
                assert answer["ok"] and answer["text"] == "seen: What is this?", answer
                assert answer["answered_stamp"] == {"sec": 42, "nanosec": 7} and answer["stamp_matches"]
                assert answer["referred_by"] == "stamp"
                request = asked[-1]
                assert [(p.x, p.y) for p in request.regions[0].points] == [(10.0, 10.0), (50.0, 40.0)]
                await ws.send_json({"type": "ask", "id": "d", "frame": frame.id, "question": ""})
                answer = await next_json(ws, "answer")
                assert not answer["ok"] and "needs a question" in answer["message"]
        finally:
            await studio.stop()

    try:
        run(go(), 90)
    finally:
        spinning.clear()
        spinner.join(5)
        client.close()
