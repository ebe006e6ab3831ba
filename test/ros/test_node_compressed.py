"""image.transport = compressed: JPEG and PNG frames are answered; corrupt data is refused and counted."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from sensor_msgs.msg import CompressedImage, Image
from vision_msgs.msg import Detection2DArray

from chatspot_ros.service import imaging
from chatspot_ros.msg import RegionDescriptionArray
from chatspot_ros.referring import ImageGeometry
from chatspot_ros.srv import AskRegion
from ros_harness import (
    RosClient,
    box_region,
    compressed_msg,
    detection,
    detections_msg,
    publish_frames_reliably,
    scene,
    stamp,
)

NODE = "/test_node_compressed/chatspot_agent"
AGENT_PARAMS = {"image.transport": "compressed", "generation.max_new_tokens": 4,
                "qos.image_reliability": "reliable", "diagnostics.period_s": 0.2}


def counters(client: RosClient) -> dict[str, int]:
    return {k: int(v) for k, v in client.diagnostics(NODE).items() if v.isdigit()}


def test_jpeg_and_png_frames_are_answered(client: RosClient) -> None:
    out = client.collect(RegionDescriptionArray, "region_descriptions")
    client.wait_for_subscriber("image/compressed", CompressedImage)
    publish_frames_reliably(client, NODE, "image/compressed", [
        compressed_msg(scene(160, 120, 1), stamp(1), fmt="jpeg"), compressed_msg(scene(128, 96, 2), stamp(2), fmt="png")])
    client.wait_for_subscriber("detections", Detection2DArray)
    client.publish("detections", detections_msg(stamp(1), [detection(50, 50, 30, 30, "a")]))
    assert client.spin_until(lambda: bool(out), 30)
    assert out[0].header.stamp.sec == 1 and out[0].descriptions[0].region.id == "a"
    response = client.call(AskRegion, "ask", AskRegion.Request(question="What?", regions=[box_region(5, 5, 60, 60)]))
    assert response.success and response.header.stamp.sec == 2


def test_corrupt_compressed_images_are_rejected(client: RosClient) -> None:
    client.wait_for_subscriber("image/compressed", CompressedImage)
    before = counters(client)
    jpeg = imaging.encode_compressed(scene(64, 48), "jpeg")
    png_header = bytearray(imaging.encode_compressed(scene(8, 8), "png"))
    png_header[16:24] = (16384).to_bytes(4, "big") * 2  # claims 16k x 16k
    bad = [b"", bytes(np.random.default_rng(0).integers(0, 255, 5000, dtype=np.uint8)), jpeg[: len(jpeg) // 2],
           bytes(png_header), b"\xff\xd8\xff\xe0garbage\xff\xd9"]
    for i, data in enumerate(bad):
        msg = CompressedImage(format="jpeg")
        msg.header.stamp = stamp(10 + i)
        msg.header.frame_id = "camera_optical"
        msg.data = data
        client.publish("image/compressed", msg)
        client.spin_for(0.05)
    depth = compressed_msg(scene(16, 16), stamp(20), fmt="png")
    depth.format = "16UC1; compressedDepth png"
    client.publish("image/compressed", depth)
    client.spin_for(0.5)
    after = counters(client)
    assert after["images.rejected"] - before.get("images.rejected", 0) == len(bad) + 1
    assert after["images.buffered"] == before["images.buffered"]
    response = client.call(AskRegion, "ask", AskRegion.Request(question="What?"))
    assert response.success and response.header.stamp.sec == 2


def test_jpeg_is_decoded_reduced_and_the_debug_image_follows(client: RosClient, tiny_model_dir: Path) -> None:
    geometry = ImageGeometry.from_checkpoint_configs(
        json.loads((tiny_model_dir / "preprocessor_config.json").read_text()),
        json.loads((tiny_model_dir / "config.json").read_text()))
    reduction = geometry.max_reduction(640, 480)
    assert reduction > 1  # the tiny model's input is small: the reduced path is the one under test
    images = client.collect(Image, "debug/image")
    client.wait_publisher("debug/image")
    client.spin_for(0.5)  # let the agent see the subscription
    publish_frames_reliably(client, NODE, "image/compressed",
                            [compressed_msg(scene(640, 480, 3), stamp(30), fmt="jpeg")])
    # Regions stay in source pixels: a box near the far corner is valid on the 640x480 frame.
    response = client.call(AskRegion, "ask", AskRegion.Request(question="What?", regions=[box_region(500, 380, 630, 470)]))
    assert response.success and response.header.stamp.sec == 30, response.message
    assert client.spin_until(lambda: any(m.header.stamp.sec == 30 for m in images), 20)
    debug = next(m for m in images if m.header.stamp.sec == 30)
    assert (debug.width, debug.height) == imaging.reduced_size(640, 480, reduction)
