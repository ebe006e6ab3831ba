"""Test harness: the agent as a real process, and rclpy clients that each own a Context.

Every process gets the session's ROS_DOMAIN_ID and ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST from
``os.environ`` (test/conftest.py sets both before anything imports rclpy). Each test module runs
its agent in its own namespace so that modules never see each other's topics.
"""
from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import rclpy
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point32
from rclpy.action import ActionClient
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose

from chatspot_ros.service import imaging
from chatspot_ros.msg import Region as RegionMsg

REPO = Path(__file__).resolve().parents[2]
PARAMS_FILE = REPO / "config" / "agent.yaml"
_client_ids = itertools.count()
TIMEOUT_SCALE = max(1.0, float(os.environ.get("CHATSPOT_TEST_TIMEOUT_SCALE", "1")))


def agent_command(model_dir: Path, params: Optional[dict[str, Any]] = None, namespace: str = "") -> list[str]:
    cmd = [sys.executable, "-m", "chatspot_ros.agent", "--ros-args", "--params-file", str(PARAMS_FILE),
           "-p", f"model.path:={model_dir}"]
    for name, value in (params or {}).items():
        if isinstance(value, bool):
            value = "true" if value else "false"
        cmd += ["-p", f"{name}:={value}"]
    if namespace:
        cmd += ["-r", f"__ns:={namespace}"]
    return cmd


class AgentProcess:
    """``python -m chatspot_ros.agent`` in a subprocess, its output in a log file."""

    def __init__(self, model_dir: Path, log_path: Path, namespace: str,
                 params: Optional[dict[str, Any]] = None) -> None:
        self.namespace = namespace
        self.log_path = log_path
        env = dict(os.environ)
        assert env.get("ROS_AUTOMATIC_DISCOVERY_RANGE") == "LOCALHOST"
        assert env.get("ROS_DOMAIN_ID")
        env["PYTHONUNBUFFERED"] = "1"
        env["RCUTILS_LOGGING_BUFFERED_STREAM"] = "0"
        self._log = open(log_path, "w")
        self.cmd = agent_command(model_dir, params, namespace)
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     cwd=str(REPO))
        self._stop_requested = False

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def request_stop(self) -> None:
        """Send SIGINT and return at once; :meth:`stop` waits for the exit."""
        if self.proc.poll() is None and not self._stop_requested:
            self.proc.send_signal(signal.SIGINT)
            self._stop_requested = True

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.request_stop()
            try:
                self.proc.wait(timeout * TIMEOUT_SCALE)
            except subprocess.TimeoutExpired:
                # the agent dumps every thread's stack on SIGUSR1 (agent.py): the log says where it hangs
                self.proc.send_signal(signal.SIGUSR1)
                time.sleep(1.0)
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode


class RosClient:
    """A test's own rclpy Context, node and executor."""

    def __init__(self, namespace: str = "", name: str = "") -> None:
        self.context = rclpy.Context()
        rclpy.init(args=[], context=self.context)
        self.node = rclpy.create_node(name or f"test_client_{os.getpid()}_{next(_client_ids)}",
                                      namespace=namespace or "/", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._publishers: dict[tuple[str, Any], Any] = {}
        self._clients: dict[tuple[Any, str], Any] = {}

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)

    def __enter__(self) -> RosClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- spinning -------------------------------------------------------------------------------

    def spin_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=min(0.05, max(0.0, end - time.monotonic())))

    def spin_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return True
            self.executor.spin_once(timeout_sec=0.05)
        return predicate()

    def wait_future(self, future: Any, timeout: float) -> Any:
        assert self.spin_until(future.done, timeout), "timed out waiting for a future"
        return future.result()

    # -- topics ---------------------------------------------------------------------------------

    def publish(self, topic: str, msg: Any, reliable: bool = True) -> None:
        key = (topic, type(msg))
        pub = self._publishers.get(key)
        if pub is None:
            qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE if reliable
                             else ReliabilityPolicy.BEST_EFFORT)
            pub = self._publishers[key] = self.node.create_publisher(type(msg), topic, qos)
        pub.publish(msg)

    def wait_for_subscriber(self, topic: str, msg_type: Any, timeout: float = 10.0) -> None:
        key = (topic, msg_type)
        if key not in self._publishers:
            self._publishers[key] = self.node.create_publisher(msg_type, topic, QoSProfile(depth=50))
        pub = self._publishers[key]
        assert self.spin_until(lambda: pub.get_subscription_count() > 0, timeout), f"no subscriber on {topic}"

    def collect(self, msg_type: Any, topic: str, depth: int = 100) -> list[Any]:
        """Subscribe; returns the list the messages are appended to."""
        received: list[Any] = []
        self.node.create_subscription(msg_type, topic, received.append, QoSProfile(depth=depth))
        return received

    def wait_publisher(self, topic: str, timeout: float = 10.0) -> None:
        assert self.spin_until(lambda: self.node.count_publishers(self._resolve(topic)) > 0, timeout), \
            f"no publisher on {topic}"

    def _resolve(self, topic: str) -> str:
        return self.node.resolve_topic_name(topic)

    # -- services and actions -------------------------------------------------------------------

    def call(self, srv_type: Any, name: str, request: Any, timeout: float = 60.0) -> Any:
        """Call a service with a client kept for the next calls: a fresh client per call can send
        its request before the server has discovered the client's response reader, and rmw then
        drops the response ("failed to send response (timeout)"), mostly on a loaded machine."""
        key = (srv_type, name)
        client = self._clients.get(key)
        if client is None:
            client = self._clients[key] = self.node.create_client(srv_type, name)
        assert self.spin_until(client.service_is_ready, timeout), f"service {name} not available"
        return self.wait_future(client.call_async(request), timeout)

    def action_client(self, action_type: Any, name: str) -> ActionClient:
        client = ActionClient(self.node, action_type, name)
        assert self.spin_until(client.server_is_ready, 15.0), f"action {name} not available"
        return client

    # -- diagnostics ----------------------------------------------------------------------------

    def diagnostics(self, node_name: str, timeout: float = 5.0) -> dict[str, str]:
        """Values of the next /diagnostics array from ``node_name`` (status name prefix)."""
        from diagnostic_msgs.msg import DiagnosticArray

        got: list[Any] = []

        def on_msg(msg: DiagnosticArray) -> None:
            if any(s.name.startswith(node_name + ":") for s in msg.status):
                got.append(msg)

        sub = self.node.create_subscription(DiagnosticArray, "/diagnostics", on_msg, 10)
        try:
            assert self.spin_until(lambda: bool(got), timeout), "no /diagnostics from the agent"
        finally:
            self.node.destroy_subscription(sub)
        values: dict[str, str] = {}
        for status in got[-1].status:
            if status.name.startswith(node_name + ":"):
                for kv in status.values:
                    values[kv.key] = kv.value
                values[status.name.split(":", 1)[1].strip() + ".level"] = str(int.from_bytes(
                    status.level, "little") if isinstance(status.level, bytes) else int(status.level))
        return values


# ---------------------------------------------------------------------------------------------
# Messages


def stamp(sec: int, nanosec: int = 0) -> Time:
    return Time(sec=sec, nanosec=nanosec)


def scene(width: int = 160, height: int = 120, seed: int = 0) -> np.ndarray:
    """A synthetic RGB frame: gradient background with a red box and a green disc."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.stack([xx * 255 // max(1, width - 1), yy * 255 // max(1, height - 1),
                    np.full_like(xx, 80)], -1).astype(np.uint8)
    x0, y0 = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
    rgb[y0:y0 + height // 4, x0:x0 + width // 4] = (220, 30, 30)
    cy, cx, r = height * 2 // 3, width * 2 // 3, max(3, height // 6)
    rgb[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = (30, 200, 30)
    return rgb


def image_msg(rgb: np.ndarray, stamp_msg: Time, frame_id: str = "camera_optical", encoding: str = "rgb8") -> Image:
    width, height, step, data = imaging.encode_raw(rgb, encoding)
    msg = Image(width=width, height=height, step=step, encoding=encoding, is_bigendian=0)
    msg.header.stamp = stamp_msg
    msg.header.frame_id = frame_id
    msg.data = data
    return msg


def compressed_msg(rgb: np.ndarray, stamp_msg: Time, frame_id: str = "camera_optical", fmt: str = "jpeg") -> CompressedImage:
    msg = CompressedImage(format=fmt)
    msg.header.stamp = stamp_msg
    msg.header.frame_id = frame_id
    msg.data = imaging.encode_compressed(rgb, fmt)
    return msg


def detection(cx: float, cy: float, w: float, h: float, det_id: str, label: str = "thing",
              score: float = 0.9) -> Detection2D:
    det = Detection2D(id=det_id)
    det.bbox.center.position.x = float(cx)
    det.bbox.center.position.y = float(cy)
    det.bbox.size_x = float(w)
    det.bbox.size_y = float(h)
    hyp = ObjectHypothesisWithPose()
    hyp.hypothesis.class_id = label
    hyp.hypothesis.score = float(score)
    det.results.append(hyp)
    return det


def detections_msg(stamp_msg: Time, dets: Sequence[Detection2D], frame_id: str = "camera_optical") -> Detection2DArray:
    msg = Detection2DArray(detections=list(dets))
    msg.header.stamp = stamp_msg
    msg.header.frame_id = frame_id
    return msg


def box_region(x0: float, y0: float, x1: float, y1: float, region_id: str = "") -> RegionMsg:
    return RegionMsg(type=RegionMsg.BOX, points=[Point32(x=float(x0), y=float(y0)),
                                                  Point32(x=float(x1), y=float(y1))], id=region_id)


def point_region(x: float, y: float, region_id: str = "") -> RegionMsg:
    return RegionMsg(type=RegionMsg.POINT, points=[Point32(x=float(x), y=float(y))], id=region_id)


def buffered_frames(client: RosClient, node_name: str) -> int:
    return int(client.diagnostics(node_name, timeout=10.0)["images.buffered"])


def publish_frames_reliably(client: RosClient, node_name: str, topic: str, msgs: Sequence[Any],
                            timeout: float = 20.0) -> None:
    """Publish frames until the agent has buffered them (its diagnostics say so).

    A new publisher sees the agent's subscription before the agent's (best-effort) subscription
    sees the publisher, so the first messages can be lost; they are sent again until they arrive.
    Re-sent frames carry the same stamps, so the agent's buffer holds each once.
    """
    before = buffered_frames(client, node_name)
    deadline = time.monotonic() + timeout
    while True:
        for msg in msgs:
            client.publish(topic, msg)
            client.spin_for(0.01)
        client.spin_for(0.1)
        if buffered_frames(client, node_name) >= before + len(msgs):
            return
        assert time.monotonic() < deadline, f"the agent did not receive the frames on {topic}"
