#!/usr/bin/env python3
"""Throughput of chatspot-replay against the live node, side by side on one machine (docs/replay.md).

    bash scripts/run_in_env.sh python scripts/replay_throughput.py [--frames 30] [--rounds 2]
        [--play-rate 6] [--model DIR]

One world recording (seed 1000, raw 320x240 frames, 1-5 detections each) is answered, in turns:

  replay  chatspot-replay BAG --out OUT --no-debug-image: answered frames and regions per second of
          its replay loop (summary.json; model loading excluded);
  live    the chatspot_agent node (its own process; reliable image QoS, queues and buffers as deep
          as the recording, queues.max_pending_detections 1000, so that no message is dropped),
          fed by chatspot-replay BAG --play --rate R (default 6: 12 frames/s, more than it answers
          on 2 CPUs): answered frames and regions per second between its first and last
          region_descriptions message (so neither start-up counts). A burst of the whole
          recording at once (--play-rate 100: 7 MB of 230 kB frames, reliable) gave 0.15 frames/s
          in a first run, a DDS delivery effect not analysed further: keep the feed near what the
          node answers.

The last column is the mean wall time of one model call (image decode to last token): the
replay's from answers.jsonl, the node's from its /diagnostics (latency status, total.mean_ms).
Both use the node's parameters (config/agent.yaml) and the same model (default: the shipped demo
model); nobody subscribes to debug/image, so neither draws. Each round runs both, so a load change
on a shared machine hits both sides alike; the table gives every round. The CLI tools and the
node's entry point both set OMP_WAIT_POLICY=PASSIVE (chatspot_ros/cli/threads.py) unless the
environment gives one; the table of docs/replay.md was measured with it set explicitly.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(60 + os.getpid() % 40))
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
NAMESPACE = "/replay_throughput"


def offline(bag: Path, out: Path, model: str) -> tuple[float, float, int, int]:
    cmd = [sys.executable, "-m", "chatspot_ros.cli.replay", str(bag), "--out", str(out), "--quiet",
           "--no-debug-image", "--overwrite"] + (["--model", model] if model else [])
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    s = json.loads((out / "summary.json").read_text())
    t = s["throughput"]
    calls = {}
    for line in (out / "answers.jsonl").read_text().splitlines():
        row = json.loads(line)
        calls[row["request"]] = row["latency_s"]
    mean_ms = 1e3 * sum(calls.values()) / max(1, len(calls))
    return t["frames_per_s"], t["regions_per_s"], s["detections"]["answered"], s["regions"]["answered"], mean_ms


def live(bag: Path, frames: int, model: str, log: Path, rate: float) -> tuple[float, float, int, int, float]:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray

    from chatspot_ros.msg import RegionDescriptionArray

    # Nothing may be lost while the node is saturated: reliable, deep image and detection queues.
    params = ["-p", "queues.max_pending_detections:=1000", "-p", "qos.image_reliability:=reliable",
              "-p", f"qos.image_depth:={frames}", "-p", f"qos.detections_depth:={frames}",
              "-p", f"frames.buffer_size:={max(30, frames)}"] + (["-p", f"model.path:={model}"] if model else [])
    agent = subprocess.Popen([sys.executable, "-m", "chatspot_ros.agent", "--ros-args", "--params-file",
                              str(REPO / "config" / "agent.yaml"), *params, "-r", f"__ns:={NAMESPACE}"],
                             cwd=REPO, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    context = rclpy.Context()
    rclpy.init(args=[], context=context)
    node = rclpy.create_node("replay_throughput", namespace=NAMESPACE, context=context)
    got: list[tuple[float, int]] = []
    node.create_subscription(RegionDescriptionArray, "region_descriptions",
                             lambda m: got.append((time.perf_counter(), len(m.descriptions))), 1000)
    latency: dict[str, str] = {}

    def on_diagnostics(msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.startswith(f"{NAMESPACE}/chatspot_agent: latency"):
                latency.update({kv.key: kv.value for kv in status.values})

    node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
    executor = rclpy.executors.SingleThreadedExecutor(context=context)
    executor.add_node(node)
    try:
        end = time.monotonic() + 120
        while node.count_publishers(f"{NAMESPACE}/region_descriptions") == 0 and time.monotonic() < end:
            executor.spin_once(timeout_sec=0.1)
        play = subprocess.Popen([sys.executable, "-m", "chatspot_ros.cli.replay", str(bag), "--play",
                                 "--rate", str(rate),
                                 "--target-namespace", NAMESPACE], cwd=REPO, stdout=subprocess.DEVNULL)
        quiet_until = time.monotonic() + 120
        while len(got) < frames and time.monotonic() < quiet_until:
            count = len(got)
            executor.spin_once(timeout_sec=0.05)
            if len(got) > count:
                quiet_until = time.monotonic() + 60  # the node is still answering
        play.wait(60)
        executor.spin_once(timeout_sec=0.1)
        end = time.monotonic() + 3  # the node's stage latencies (last 100 model calls) after the last answer
        while time.monotonic() < end:
            executor.spin_once(timeout_sec=0.1)
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)
        agent.terminate()
        agent.wait(30)
    if len(got) < 2:
        raise RuntimeError(f"the node answered {len(got)} of {frames} messages; see {log}")
    span = got[-1][0] - got[0][0]
    return ((len(got) - 1) / span, sum(n for _, n in got[1:]) / span, len(got), sum(n for _, n in got),
            float(latency.get("total.mean_ms", "nan")))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=30, help="frames in the recording")
    parser.add_argument("--rounds", type=int, default=2, help="replay/live pairs")
    parser.add_argument("--model", default="", help="checkpoint folder (default: the shipped demo model)")
    parser.add_argument("--play-rate", type=float, default=6.0,
                        help="--play speed factor for the live side (the recording has 2 frames/s)")
    args = parser.parse_args()
    from chatspot_ros.world.bag import write_world_bag

    tmp = Path(tempfile.mkdtemp(prefix="replay_throughput_"))
    bag = write_world_bag(tmp / "bag", 1000, args.frames, storage="mcap")[0]
    rows = []
    for r in range(args.rounds):
        rows.append(("replay", r) + offline(bag, tmp / "offline", args.model))
        rows.append(("live node", r) + live(bag, args.frames, args.model, tmp / f"agent{r}.log", args.play_rate))
    print(f"{args.frames} frames of world seed 1000 (320x240, raw), {os.cpu_count()} CPUs, "
          f"model {args.model or 'shipped tabletop'}; live side fed at {2 * args.play_rate:g} frames/s")
    print("| side | round | frames/s | regions/s | frames answered | regions answered | model call ms (mean) |")
    print("|---|---|---|---|---|---|---|")
    for side, r, fps, rps, n, regions, ms in rows:
        print(f"| {side} | {r + 1} | {fps:.2f} | {rps:.2f} | {n} | {regions} | {ms:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
