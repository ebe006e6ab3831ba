#!/usr/bin/env python3
"""End-to-end demo of the chatspot_agent node on a synthetic scene (``make demo``).

1. the model: ``--model DIR`` (a local checkpoint), else a tiny LLaVA with RANDOM weights built
   once into ``--cache-dir``: its answers are meaningless text. The demo then shows the plumbing
   (topics, services, the action, headers, latencies), not what a trained model would say;
2. the node: ``python -m chatspot_ros.agent --ros-args --params-file config/agent.yaml
   -p model.path:=...`` as a subprocess;
3. a camera and a detector: frames with coloured shapes and matching Detection2DArray messages,
   published for a few seconds; the node's region_descriptions are printed as they come;
4. a planner: ``scripts/planner_client.py`` in its own process calls ``ask``, ``suggest_actions``
   and the ``describe`` action and prints answers with latencies.

Every process runs with ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST on a private ROS_DOMAIN_ID.
Exit status 0 only when the node came up, descriptions arrived, every planner call succeeded and
the node shut down cleanly; 1 otherwise (2 for a bad ``--model``).
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional, Sequence

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
# The working tree's chatspot_ros first (its interfaces come from the colcon install space).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("ROS_DOMAIN_ID", str(110 + os.getpid() % 100))  # away from the default 0

import numpy as np  # noqa: E402
import rclpy  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import QoSProfile, qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose  # noqa: E402

from chatspot_ros.msg import RegionDescriptionArray  # noqa: E402
from chatspot_ros.srv import AskRegion  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FRAME_ID = "camera_color_optical_frame"
WIDTH, HEIGHT = 320, 240
SHAPES = (  # (label, colour RGB, kind, size)
    ("red box", (220, 40, 40), "box", 50),
    ("green ball", (40, 190, 60), "disc", 26),
    ("blue block", (40, 80, 220), "box", 36),
)


def render(t: float) -> tuple[np.ndarray, list[tuple[str, float, float, float, float]]]:
    """One frame at time ``t`` and its ground-truth boxes (label, cx, cy, w, h)."""
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    frame = np.stack([120 + xx * 60 // WIDTH, 110 + yy * 50 // HEIGHT, np.full_like(xx, 100)], -1).astype(np.uint8)
    frame[HEIGHT * 3 // 4:, :] = (90, 70, 50)  # a table edge
    boxes = []
    for i, (label, colour, kind, size) in enumerate(SHAPES):
        cx = WIDTH * (0.2 + 0.3 * i) + 25 * np.sin(t * 0.8 + i)
        cy = HEIGHT * 0.55 + 15 * np.cos(t * 0.6 + 2 * i)
        if kind == "disc":
            frame[(xx - cx) ** 2 + (yy - cy) ** 2 <= size ** 2] = colour
            boxes.append((label, cx, cy, 2.0 * size, 2.0 * size))
        else:
            x0, y0 = int(cx - size / 2), int(cy - size / 2)
            frame[max(0, y0):y0 + size, max(0, x0):x0 + size] = colour
            boxes.append((label, cx, cy, float(size), float(size)))
    return frame, boxes


class ScenePlayer:
    """Publishes image, camera_info and detections at ``fps`` from a thread; prints descriptions."""

    def __init__(self, fps: float) -> None:
        self.context = rclpy.Context()
        rclpy.init(args=[], context=self.context)
        self.node = rclpy.create_node("demo_scene", context=self.context)
        self.image_pub = self.node.create_publisher(Image, "image", qos_profile_sensor_data)
        self.info_pub = self.node.create_publisher(CameraInfo, "camera_info", qos_profile_sensor_data)
        self.det_pub = self.node.create_publisher(Detection2DArray, "detections", QoSProfile(depth=10))
        self.node.create_subscription(RegionDescriptionArray, "region_descriptions", self._on_descriptions,
                                      QoSProfile(depth=10))
        self.descriptions = 0
        self.frames = 0
        self._start = time.monotonic()
        self.node.create_timer(1.0 / fps, self._tick)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _tick(self) -> None:
        frame, boxes = render(time.monotonic() - self._start)
        stamp = self.node.get_clock().now().to_msg()
        image = Image(width=WIDTH, height=HEIGHT, encoding="rgb8", step=WIDTH * 3, data=frame.tobytes())
        image.header.stamp, image.header.frame_id = stamp, FRAME_ID
        info = CameraInfo(width=WIDTH, height=HEIGHT, distortion_model="plumb_bob", d=[0.0] * 5,
                          k=[300.0, 0.0, WIDTH / 2, 0.0, 300.0, HEIGHT / 2, 0.0, 0.0, 1.0],
                          p=[300.0, 0.0, WIDTH / 2, 0.0, 0.0, 300.0, HEIGHT / 2, 0.0, 0.0, 0.0, 1.0, 0.0])
        info.header = image.header
        self.image_pub.publish(image)
        self.info_pub.publish(info)
        self.frames += 1
        if self.frames % 5 == 1:  # a slower detector: every 5th frame
            detections = Detection2DArray(header=image.header)
            for i, (label, cx, cy, w, h) in enumerate(boxes):
                det = Detection2D(header=image.header, id=f"{label.replace(' ', '_')}_{i}")
                det.bbox.center.position.x, det.bbox.center.position.y = float(cx), float(cy)
                det.bbox.size_x, det.bbox.size_y = w, h
                hypothesis = ObjectHypothesisWithPose()
                hypothesis.hypothesis.class_id, hypothesis.hypothesis.score = label, 0.9 - 0.1 * i
                det.results.append(hypothesis)
                detections.detections.append(det)
            self.det_pub.publish(detections)

    def _on_descriptions(self, msg: RegionDescriptionArray) -> None:
        self.descriptions += 1
        if self.descriptions <= 3:
            stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
            print(f"[scene] region_descriptions for the frame at {stamp:.3f} "
                  f"({msg.inference_time_s * 1000:.0f} ms, model {msg.model}):")
            for d in msg.descriptions:
                print(f"          {d.region.id:<14} {d.label:<11} {d.text[:70]!r}")

    def stop(self) -> None:
        self.executor.shutdown()
        self._thread.join(5.0)  # let a running timer callback finish before the node goes
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


RANDOM_WEIGHTS_NOTE = (
    "[demo] NOTE: no --model given, so the node runs a tiny LLaVA with RANDOM weights. Its answers\n"
    "[demo]       are meaningless text by design: this demo checks the plumbing (topics, services,\n"
    "[demo]       the action, headers, latencies), not answer quality. Pass --model DIR for real answers."
)


def tiny_model(cache_dir: Path) -> Path:
    if not (cache_dir / "config.json").exists():
        from chatspot_ros.testing.tiny_model import build_tiny_llava

        print(f"[demo] building the tiny random-weight model into {cache_dir}")
        build_tiny_llava(cache_dir, preset="tiny", seed=0)
    print(RANDOM_WEIGHTS_NOTE)
    return cache_dir


def stop_agent(agent: subprocess.Popen) -> int:
    """SIGINT the node and wait for it; its exit status (killed after 30 s: -9)."""
    if agent.poll() is None:
        agent.send_signal(signal.SIGINT)
        try:
            agent.wait(30)
        except subprocess.TimeoutExpired:
            print("[demo] the node did not stop within 30 s after SIGINT: killed", file=sys.stderr)
            agent.kill()
            agent.wait(5)
    return agent.returncode


def run_planner(env: dict[str, str], timeout: float) -> int:
    """scripts/planner_client.py in its own process; its exit status (1 when it timed out)."""
    planner_cmd = [sys.executable, str(REPO / "scripts" / "planner_client.py"), "--timeout", str(timeout),
                   "--box", "30", "90", "110", "170", "--task", "pick up the red box"]
    print("[demo] starting the planner client in its own process")
    try:
        return subprocess.run(planner_cmd, env=env, cwd=str(REPO), timeout=timeout * 2).returncode
    except subprocess.TimeoutExpired:
        print(f"[demo] the planner client did not finish within {timeout * 2:g} s", file=sys.stderr)
        return 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="local checkpoint folder (default: the tiny model)")
    parser.add_argument("--cache-dir", type=Path, default=REPO / "build" / "demo" / "tiny_llava")
    parser.add_argument("--seconds", type=float, default=4.0, help="how long the scene plays before the planner")
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=180.0)
    args = parser.parse_args(argv)

    model = args.model.resolve() if args.model else tiny_model(args.cache_dir)
    if not (model / "config.json").exists():
        print(f"[demo] {model} is not a checkpoint folder (no config.json)", file=sys.stderr)
        return 2
    env = dict(os.environ)
    print(f"[demo] ROS_DOMAIN_ID={env['ROS_DOMAIN_ID']} ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST")
    node_cmd = [sys.executable, "-m", "chatspot_ros.agent", "--ros-args",
                "--params-file", str(REPO / "config" / "agent.yaml"),
                "-p", f"model.path:={model}", "-p", "generation.max_new_tokens:=24"]
    print("[demo] starting the node:", " ".join(node_cmd[1:]))
    agent = subprocess.Popen(node_cmd, env=env, cwd=str(REPO))
    scene: Optional[ScenePlayer] = None
    ok = False
    try:
        scene = ScenePlayer(args.fps)
        ready = scene.node.create_client(AskRegion, "ask")
        scene.start()
        deadline = time.monotonic() + args.timeout
        while not ready.service_is_ready():
            if agent.poll() is not None or time.monotonic() > deadline:
                print("[demo] FAILED: the node did not come up", file=sys.stderr)
                return 1
            time.sleep(0.2)
        print(f"[demo] node active; playing the scene for {args.seconds:g} s")
        time.sleep(args.seconds)
        print(f"[demo] scene: {scene.frames} frames published, {scene.descriptions} description messages received")
        planner_status = run_planner(env, args.timeout)
        ok = planner_status == 0 and scene.descriptions > 0
        if not ok:
            print(f"[demo] planner exit {planner_status}, {scene.descriptions} description messages", file=sys.stderr)
    finally:
        if scene is not None:
            scene.stop()
        agent_status = stop_agent(agent)
    if agent_status != 0:
        print(f"[demo] the node exited with status {agent_status}", file=sys.stderr)
        ok = False
    if args.model is None:
        print("[demo] (the answers above come from random weights: meaningless text, as expected)")
    print(f"[demo] {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
