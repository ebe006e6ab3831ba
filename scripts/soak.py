"""Soak the chatspot_agent node as a user would: a 30 Hz camera, detections on every frame, asks.

    source scripts/env.sh
    python scripts/soak.py --minutes 10                 # 30 Hz 640x480 rgb8, 10 detections per frame
    python scripts/soak.py --minutes 2 --askers 4       # and 4 clients calling `ask` back to back

Starts the agent (``python -m chatspot_ros.agent``) on the tiny random-weight checkpoint in its own
process and namespace, publishes frames and detections (same stamps) from a second process's
context, and prints every ``--report-s`` seconds, then at the end: the agent's RSS at start, after
the ``--warmup-s`` warm-up and at the end, and its slope (least squares over the samples), queue
depths, drops by reason (from /diagnostics), and answers per second (region_descriptions messages
and served asks). DDS stays on loopback (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, a domain of its own).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "test" / "ros"))
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(100 + os.getpid() % 100))

from ros_harness import (  # noqa: E402
    AgentProcess, RosClient, box_region, detection, detections_msg, image_msg, scene, stamp,
)

NODE = "chatspot_agent"
COUNTERS = ("images.received", "images.buffered", "images.rejected", "detections.received",
            "detections.answered", "detections.dropped", "detections.unmatched", "detections.rejected",
            "detections.failed", "detections.share_turns", "requests.received", "requests.served",
            "requests.rejected", "requests.failed", "internal.errors", "worker.errors")
QUEUES = ("queue.detections", "queue.awaiting_frame", "queue.requests", "frames.buffered")


def agent_rss_mib(pid: int) -> float:
    """RSS of the agent: the deepest process under ``pid`` (the ROS wheels re-execute Python once)."""
    target = pid
    while True:
        try:
            children = Path(f"/proc/{target}/task/{target}/children").read_text().split()
        except OSError:
            break
        if not children:
            break
        target = int(children[0])
    try:
        for line in Path(f"/proc/{target}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def slope_per_min(samples: list[tuple[float, float]]) -> float:
    if len(samples) < 2:
        return 0.0
    n = len(samples)
    mt = sum(t for t, _ in samples) / n
    mv = sum(v for _, v in samples) / n
    den = sum((t - mt) ** 2 for t, _ in samples)
    return 60.0 * sum((t - mt) * (v - mv) for t, v in samples) / den if den else 0.0


class Camera(threading.Thread):
    """Publishes frames and their detections at ``rate`` Hz from its own context."""

    def __init__(self, namespace: str, rate: float, n_det: int, width: int, height: int) -> None:
        super().__init__(daemon=True, name="camera")
        self.namespace, self.rate, self.n_det = namespace, rate, n_det
        self.width, self.height = width, height
        self.sent = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image
        from vision_msgs.msg import Detection2DArray

        with RosClient(self.namespace) as client:
            images = client.node.create_publisher(
                Image, "image", QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT))
            dets = client.node.create_publisher(Detection2DArray, "detections", QoSProfile(depth=10))
            frames = [scene(self.width, self.height, seed) for seed in range(4)]
            w, h = self.width, self.height
            boxes = [detection(w * (0.1 + 0.08 * i), h * (0.2 + 0.06 * i), w * 0.1, h * 0.1, f"d{i}",
                               score=0.9 - 0.01 * i) for i in range(self.n_det)]
            start = time.monotonic()
            base = int(time.time())
            while not self.stop_event.is_set():
                i = self.sent
                t = stamp(base + i // 30, (i % 30) * 33_000_000)
                images.publish(image_msg(frames[i % len(frames)], t))
                dets.publish(detections_msg(t, boxes))
                self.sent += 1
                client.executor.spin_once(timeout_sec=0)
                delay = start + self.sent / self.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)


class Asker(threading.Thread):
    """Calls ``ask`` back to back (latest frame) from its own context."""

    def __init__(self, namespace: str, index: int) -> None:
        super().__init__(daemon=True, name=f"asker{index}")
        self.namespace = namespace
        self.ok = 0
        self.failed = 0
        self.last_error = ""
        self.stop_event = threading.Event()

    def run(self) -> None:
        from chatspot_ros.srv import AskRegion

        with RosClient(self.namespace) as client:
            ask = client.node.create_client(AskRegion, "ask")
            while not self.stop_event.is_set():
                if not ask.service_is_ready():
                    client.spin_for(0.1)
                    continue
                future = ask.call_async(AskRegion.Request(question="What is this?",
                                                          regions=[box_region(5, 5, 60, 60)]))
                client.spin_until(future.done, 30.0)
                response: Optional[Any] = future.result() if future.done() else None
                if response is not None and response.success:
                    self.ok += 1
                else:
                    self.failed += 1
                    self.last_error = response.message if response is not None else "no response"
                    client.spin_for(0.05)


def diagnostics(client: RosClient) -> dict[str, str]:
    try:
        return client.diagnostics(f"{client.node.get_namespace()}/{NODE}", timeout=5.0)
    except AssertionError:
        return {}


def build_model(out: Path) -> Path:
    from chatspot_ros.testing.tiny_model import build_tiny_llava

    return build_tiny_llava(out, preset="tiny", seed=0)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=30.0)
    parser.add_argument("--detections", type=int, default=10)
    parser.add_argument("--askers", type=int, default=0)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--report-s", type=float, default=30.0)
    parser.add_argument("--warmup-s", type=float, default=60.0,
                        help="growth is also reported from the RSS at this time (buffers and caches full)")
    parser.add_argument("--model", default="", help="checkpoint folder (default: build the tiny one)")
    parser.add_argument("-p", dest="params", action="append", default=[], help="extra name:=value")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="chatspot_soak_"))
    model = Path(args.model) if args.model else build_model(work / "model")
    params: dict[str, Any] = {"generation.max_new_tokens": 8, "diagnostics.period_s": 1.0, "debug.image": False}
    for item in args.params:
        name, _, value = item.partition(":=")
        params[name] = value
    namespace = "/soak"
    agent = AgentProcess(model, work / "agent.log", namespace, params)
    camera = Camera(namespace, args.rate, args.detections, args.width, args.height)
    askers = [Asker(namespace, i) for i in range(args.askers)]
    descriptions: list[float] = []
    samples: list[tuple[float, float]] = []
    try:
        with RosClient(namespace) as client:
            from chatspot_ros.msg import RegionDescriptionArray
            from chatspot_ros.srv import AskRegion

            client.node.create_subscription(RegionDescriptionArray, "region_descriptions",
                                            lambda m: descriptions.append(time.monotonic()), 100)
            ask = client.node.create_client(AskRegion, "ask")
            if not client.spin_until(lambda: ask.service_is_ready() or not agent.alive(), 400.0) or not agent.alive():
                print(agent.log()[-3000:])
                return 1
            camera.start()
            for asker in askers:
                asker.start()
            start = time.monotonic()
            end = start + 60.0 * args.minutes
            next_report = start + args.report_s
            rss0 = agent_rss_mib(agent.proc.pid)
            samples.append((0.0, rss0))
            print(f"soak: {args.minutes:g} min, {args.rate:g} Hz {args.width}x{args.height} rgb8, "
                  f"{args.detections} detections per frame, {args.askers} askers; agent RSS {rss0:.1f} MiB",
                  flush=True)
            while time.monotonic() < end and agent.alive():
                client.spin_for(min(5.0, max(0.0, end - time.monotonic())))
                samples.append((time.monotonic() - start, agent_rss_mib(agent.proc.pid)))
                if time.monotonic() >= next_report:
                    next_report += args.report_s
                    d = diagnostics(client)
                    print(f"  t={time.monotonic() - start:6.0f} s RSS {samples[-1][1]:.1f} MiB "
                          + " ".join(f"{q}={d.get(q, '?')}" for q in QUEUES), flush=True)
            elapsed = time.monotonic() - start
            d = diagnostics(client)
            alive = agent.alive()
    finally:
        camera.stop_event.set()
        for asker in askers:
            asker.stop_event.set()
        camera.join(5)
        for asker in askers:
            asker.join(35)
        code = agent.stop()
    rss1 = samples[-1][1]
    print(f"result after {elapsed / 60:.1f} min (agent {'alive' if alive else 'DIED'}, exit {code}):")
    print(f"  RSS start {rss0:.1f} MiB, end {rss1:.1f} MiB, slope {slope_per_min(samples[len(samples) // 5:]):+.2f} "
          f"MiB/min (fit over the last 80% of {len(samples)} samples)")
    warm = next(((t, rss) for t, rss in samples if t >= args.warmup_s), None)
    if warm is not None:
        print(f"  RSS after the {warm[0]:.0f} s warm-up {warm[1]:.1f} MiB; growth since then "
              f"{rss1 - warm[1]:+.1f} MiB over {(samples[-1][0] - warm[0]) / 60:.1f} min "
              "(frame buffer, feature cache and allocator filled first)")
    print("  queues at the end: " + " ".join(f"{q}={d.get(q, '?')}" for q in QUEUES))
    print("  counters: " + " ".join(f"{c}={d.get(c, '?')}" for c in COUNTERS))
    print(f"  frames sent {camera.sent}; region_descriptions {len(descriptions)} "
          f"({len(descriptions) / elapsed:.2f}/s); asks ok {sum(a.ok for a in askers)} "
          f"({sum(a.ok for a in askers) / elapsed:.2f}/s), failed {sum(a.failed for a in askers)}")
    print(f"  agent log: {agent.log_path}")
    return 0 if alive else 1


if __name__ == "__main__":
    sys.exit(main())
