#!/usr/bin/env python3
"""End-to-end demo of the chatspot_agent node on the tabletop world (``make demo``).

1. the model: by default the shipped tabletop model (chatspot_ros/models/tabletop, trained by
   ``chatspot-train`` on the world, docs/training.md), which the node loads when ``model.path``
   is empty; ``--model DIR`` for another checkpoint; ``--random`` for a tiny LLaVA with RANDOM
   weights (built once into ``--cache-dir``), whose answers are meaningless text: the plumbing only;
2. the node: ``python -m chatspot_ros.agent --ros-args --params-file config/agent.yaml
   -p model.path:=...`` as a subprocess;
3. a camera and a detector: frames of the tabletop world (docs/world.md, an evaluation seed the
   model never trained on) with Detection2DArray messages of the objects' boxes, labelled only
   "object"; a click on one object; every answer is printed beside the ground truth;
4. a planner: ``scripts/planner_client.py`` in its own process asks about an object's box, asks
   for an action plan for a task about it and streams a description.

Every process runs with ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST on a private ROS_DOMAIN_ID.
After the scene has played, the demo stops sending detections and waits (at most ``--answer-wait``
seconds) until every detection message and the click it sent was answered or dropped by the node,
and says which it was and why it stopped waiting. The node answers one message at a time; when
detections arrive faster than the model answers, it keeps the newest and drops an older one with a
"queue full" warning (counted here). Exit status 0 only when the node came up, answers arrived and
named objects were checked, every planner call succeeded and the node shut down cleanly; 1
otherwise (2 for a bad ``--model``). How many answers name the right object is printed, not enforced.
"""
from __future__ import annotations

import argparse
import os
import re
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
from geometry_msgs.msg import PointStamped  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose  # noqa: E402

from chatspot_ros.msg import RegionDescriptionArray  # noqa: E402
from chatspot_ros.srv import AskRegion  # noqa: E402

from chatspot_ros.world import render as render_world, sample_scene, sample_task  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FRAME_ID = "camera_color_optical_frame"
WIDTH, HEIGHT = 320, 240
DEMO_SEED = 2026  # an evaluation seed: never used in training (docs/world.md)


def demo_scene(index: int):  # noqa: ANN201 (a world Scene)
    """The first scene from ``index`` on with at least three objects (a fuller table to talk about)."""
    while len(sample_scene(DEMO_SEED, index).objects) < 3:
        index += 1
    return sample_scene(DEMO_SEED, index)


def names_object(answer: str, category: str) -> bool:
    return category in answer.lower()


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
        self.click_pub = self.node.create_publisher(PointStamped, "clicked_point", QoSProfile(depth=10))
        self.scene = demo_scene(0)
        self.frame = render_world(self.scene)
        self.truth = {f"object_{i}": o.category for i, o in enumerate(self.scene.objects)}
        self.truth["click"] = self.scene.objects[-1].category
        self.descriptions = 0
        self.detection_messages = 0  # sent
        self.clicks = 0  # sent
        self.send_detections = False  # set while the scene plays (node active); then only the camera runs
        self.live_frames = 0  # frames sent while detections are sent
        self.checked = 0
        self.correct = 0
        self.frames = 0
        self._start = time.monotonic()
        self.node.create_timer(1.0 / fps, self._tick)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _tick(self) -> None:
        frame = self.frame
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
        self.live_frames += 1 if self.send_detections else 0
        if self.live_frames % 10 == 1 and self.send_detections:  # a slower detector: every 10th frame, no names
            detections = Detection2DArray(header=image.header)
            for i, obj in enumerate(self.scene.objects):
                det = Detection2D(header=image.header, id=f"object_{i}")
                (cx, cy), s = obj.center, float(obj.size)
                det.bbox.center.position.x, det.bbox.center.position.y = float(cx), float(cy)
                det.bbox.size_x, det.bbox.size_y = s, s
                hypothesis = ObjectHypothesisWithPose()
                hypothesis.hypothesis.class_id, hypothesis.hypothesis.score = "object", 0.9
                det.results.append(hypothesis)
                detections.detections.append(det)
            self.det_pub.publish(detections)
            self.detection_messages += 1
        if self.live_frames == 15 and self.send_detections:  # a person clicks on the last object
            click = PointStamped(header=image.header)
            click.point.x, click.point.y = (float(v) for v in self.scene.objects[-1].inside_point(np.random.default_rng(0)))
            self.click_pub.publish(click)
            self.clicks += 1

    def _on_descriptions(self, msg: RegionDescriptionArray) -> None:
        self.descriptions += 1
        if self.descriptions <= 3:
            stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
            print(f"[scene] region_descriptions for the frame at {stamp:.3f} "
                  f"({msg.inference_time_s * 1000:.0f} ms, model {msg.model}):")
            for d in msg.descriptions:
                truth = self.truth.get(d.region.id, "")
                ok = names_object(d.text, truth) if truth else False
                self.checked += 1 if truth else 0
                self.correct += 1 if ok else 0
                mark = "ok   " if ok else "WRONG" if truth else "     "
                print(f"          {mark} {d.region.id:<9} truth: {truth:<16} answer: {d.text[:64]!r}")

    def stop(self) -> None:
        self.executor.shutdown()
        self._thread.join(5.0)  # let a running timer callback finish before the node goes
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


RANDOM_WEIGHTS_NOTE = (
    "[demo] NOTE: --random: the node runs a tiny LLaVA with RANDOM weights. Its answers\n"
    "[demo]       are meaningless text by design: this demo checks the plumbing (topics, services,\n"
    "[demo]       the action, headers, latencies), not answer quality. Drop --random for real answers."
)


def tiny_model(cache_dir: Path) -> Path:
    if not (cache_dir / "config.json").exists():
        from chatspot_ros.testing.tiny_model import build_tiny_llava

        print(f"[demo] building the tiny random-weight model into {cache_dir}")
        build_tiny_llava(cache_dir, preset="tiny", seed=0)
    print(RANDOM_WEIGHTS_NOTE)
    return cache_dir


class NodeLog:
    """Relays the node's output line by line ("[node] ...") and counts the messages it did not answer, by reason
    (its warnings: "detections at T dropped: queue full: ...", "detections at T: no frame: ...", "click ...")."""

    UNANSWERED = re.compile(r"(detections at \S+?|click):? (?:(rejected|dropped|failed|ignored|refused)\b:? ?"
                            r"([^:(]*)|(no frame))")
    MORE = re.compile(r"and (\d+) more like it")  # the node folds repeated warnings into one line

    def __init__(self, agent: subprocess.Popen) -> None:
        self.reasons: dict[str, int] = {}
        self._thread = threading.Thread(target=self._relay, args=(agent,), daemon=True)
        self._thread.start()

    def _relay(self, agent: subprocess.Popen) -> None:
        assert agent.stdout is not None
        for line in agent.stdout:
            match = self.UNANSWERED.search(line)
            if match:
                more = self.MORE.search(line)
                reason = match.group(4) or f"{match.group(2)}: {match.group(3).strip()}".rstrip(": ")
                self.reasons[reason] = self.reasons.get(reason, 0) + 1 + (int(more.group(1)) if more else 0)
                if "queue full" in reason and self.reasons[reason] == 1:
                    print("[demo] (the node answers one detection message at a time; when the next arrives before "
                          "the model is done, it keeps the newest and drops an older one: 'queue full'. Expected "
                          "when the CPU is busy; the drops are counted below.)", flush=True)
            sys.stdout.write(f"[node] {line}")
            sys.stdout.flush()

    @property
    def drops(self) -> int:
        return sum(self.reasons.values())

    def summary(self) -> str:
        return ", ".join(f"{reason}: {n}" for reason, n in sorted(self.reasons.items())) or "none"

    def join(self) -> None:
        self._thread.join(5.0)


def wait_for_answers(scene: "ScenePlayer", log: NodeLog, limit: float) -> str:
    """Wait until every detection message and click sent was answered or dropped; why the wait ended."""
    scene.send_detections = False
    started = time.monotonic()
    while True:
        sent = scene.detection_messages + scene.clicks
        if scene.descriptions + log.drops >= sent:
            return f"all {sent} answered or dropped after {time.monotonic() - started:.1f} s"
        if time.monotonic() - started > limit:
            return (f"--answer-wait {limit:g} s passed with {sent - scene.descriptions - log.drops} of {sent} "
                    "still unanswered")
        time.sleep(0.2)


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


def run_planner(env: dict[str, str], timeout: float, scene) -> int:  # noqa: ANN001 (a world Scene)
    """scripts/planner_client.py in its own process about the scene's first object; its exit status."""
    target = scene.objects[0]
    task = sample_task(scene, 0, np.random.default_rng(0))
    x0, y0, x1, y1 = target.box
    planner_cmd = [sys.executable, str(REPO / "scripts" / "planner_client.py"), "--timeout", str(timeout),
                   "--box", str(x0), str(y0), str(x1), str(y1), "--question", "What can you see in this region?",
                   "--task", task.text]
    print(f"[demo] starting the planner client in its own process; its target is the {target.category} "
          f"(truth), task {task.text!r}; expected plan:")
    for i, step in enumerate(task.plan, 1):
        print(f"          {i}. {step}")
    try:
        return subprocess.run(planner_cmd, env=env, cwd=str(REPO), timeout=timeout * 2).returncode
    except subprocess.TimeoutExpired:
        print(f"[demo] the planner client did not finish within {timeout * 2:g} s", file=sys.stderr)
        return 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", type=Path, help="local checkpoint folder (default: the shipped tabletop model)")
    parser.add_argument("--random", action="store_true", help="a tiny random-weight model instead (plumbing only)")
    parser.add_argument("--cache-dir", type=Path, default=REPO / "build" / "demo" / "tiny_llava")
    parser.add_argument("--seconds", type=float, default=6.0, help="how long the scene plays before the planner")
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--answer-wait", type=float, default=90.0,
                        help="after the scene, wait this long at most for the answers still due")
    parser.add_argument("--timeout", type=float, default=180.0, help="for the node to come up and for the planner")
    args = parser.parse_args(argv)

    from chatspot_ros.models import shipped_model

    model = args.model.resolve() if args.model else tiny_model(args.cache_dir) if args.random else shipped_model()
    if not (model / "config.json").exists():
        print(f"[demo] {model} is not a checkpoint folder (no config.json)", file=sys.stderr)
        return 2
    env = dict(os.environ)
    print(f"[demo] ROS_DOMAIN_ID={env['ROS_DOMAIN_ID']} ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST")
    node_cmd = [sys.executable, "-m", "chatspot_ros.agent", "--ros-args",
                "--params-file", str(REPO / "config" / "agent.yaml"), "-p", f"model.path:={model}",
                "-p", "generation.max_new_tokens:=48"]
    print("[demo] starting the node:", " ".join(node_cmd[1:]))
    agent = subprocess.Popen(node_cmd, env=env, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, bufsize=1)
    log = NodeLog(agent)
    scene: Optional[ScenePlayer] = None
    ok = False
    try:
        scene = ScenePlayer(args.fps)
        print(f"[demo] the scene: world seed {DEMO_SEED}, frame {scene.scene.index}: "
              + ", ".join(f"{o.category} at {tuple(int(v) for v in o.box)}" for o in scene.scene.objects))
        ready = scene.node.create_client(AskRegion, "ask")
        scene.start()
        deadline = time.monotonic() + args.timeout
        while not ready.service_is_ready():
            if agent.poll() is not None or time.monotonic() > deadline:
                print("[demo] FAILED: the node did not come up", file=sys.stderr)
                return 1
            time.sleep(0.2)
        print(f"[demo] node active; playing the scene for {args.seconds:g} s")
        scene.send_detections = True
        print(f"[demo] to watch it in a browser (docs/studio.md), run in another shell while the demo plays: "
              f"source scripts/env.sh && ROS_DOMAIN_ID={env['ROS_DOMAIN_ID']} chatspot-studio, then open "
              f"http://127.0.0.1:8765/ (make demo DEMO_ARGS='--seconds 120' plays longer)")
        time.sleep(args.seconds)
        print(f"[demo] scene played: {scene.frames} frames, {scene.detection_messages} detection messages and "
              f"{scene.clicks} click sent; waiting for their answers (at most {args.answer_wait:g} s)")
        ended = wait_for_answers(scene, log, args.answer_wait)
        print(f"[demo] scene: {scene.descriptions} description messages received, {log.drops} not answered by the "
              f"node ({log.summary()}); waited until {ended}; {scene.correct} of {scene.checked} region "
              f"descriptions name the right object")
        planner_status = run_planner(env, args.timeout, scene.scene)
        ok = planner_status == 0 and scene.descriptions > 0 and scene.checked > 0
        if not ok:
            print(f"[demo] not OK: planner exit {planner_status}, {scene.descriptions} description messages, "
                  f"{scene.checked} answers checked against the truth", file=sys.stderr)
    finally:
        if scene is not None:
            scene.stop()
        agent_status = stop_agent(agent)
        log.join()
    if agent_status != 0:
        print(f"[demo] the node exited with status {agent_status}", file=sys.stderr)
        ok = False
    if args.random:
        print("[demo] (the answers above come from random weights: meaningless text, as expected)")
    print(f"[demo] click-to-ask in a browser: source scripts/env.sh && chatspot-studio --model {model} "
          "--world-seed 2026, then open http://127.0.0.1:8765/ (docs/studio.md)")
    print(f"[demo] {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
