#!/usr/bin/env python3
"""A planner's side of chatspot_agent: ask about regions, get action suggestions, stream a description.

    python scripts/planner_client.py                       # the demo's questions
    python scripts/planner_client.py --question "What is on the table?" --box 100 80 300 240

Runs as its own process (its own DDS participant), as a robot's task planner would.
Exit status 0 when every call succeeded.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Optional, Sequence

# DDS discovery stays on this machine (shared/ENVIRONMENT.md); set before rclpy loads. Edit this
# line to reach an agent on another machine.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
# The working tree's chatspot_ros first (its interfaces come from the colcon install space).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import rclpy  # noqa: E402
from geometry_msgs.msg import Point32  # noqa: E402
from rclpy.action import ActionClient  # noqa: E402
from rclpy.node import Node  # noqa: E402

from chatspot_ros.action import Describe  # noqa: E402
from chatspot_ros.msg import Region  # noqa: E402
from chatspot_ros.srv import AskRegion, SuggestActions  # noqa: E402


def box(x0: float, y0: float, x1: float, y1: float, region_id: str = "") -> Region:
    return Region(type=Region.BOX, points=[Point32(x=float(x0), y=float(y0)), Point32(x=float(x1), y=float(y1))],
                  id=region_id)


class Planner:
    def __init__(self, node: Node, agent: str, timeout: float) -> None:
        self.node = node
        self.timeout = timeout
        prefix = agent.rstrip("/") + "/" if agent else ""
        self.ask_client = node.create_client(AskRegion, prefix + "ask")
        self.suggest_client = node.create_client(SuggestActions, prefix + "suggest_actions")
        self.describe_client = ActionClient(node, Describe, prefix + "describe")

    def wait_ready(self) -> bool:
        deadline = time.monotonic() + self.timeout
        for client in (self.ask_client, self.suggest_client):
            if not client.wait_for_service(timeout_sec=max(0.1, deadline - time.monotonic())):
                return False
        return self.describe_client.wait_for_server(timeout_sec=max(0.1, deadline - time.monotonic()))

    def _call(self, client: Any, request: Any) -> Optional[Any]:
        future = client.call_async(request)
        rclpy.spin_until_future_complete(self.node, future, timeout_sec=self.timeout)
        return future.result()

    def ask(self, question: str, regions: Sequence[Region] = ()) -> bool:
        start = time.perf_counter()
        response = self._call(self.ask_client, AskRegion.Request(question=question, regions=list(regions)))
        latency = time.perf_counter() - start
        if response is None:
            print(f"[planner] ask {question!r}: no response within {self.timeout:g} s")
            return False
        where = f" about {', '.join(r.id or 'region' for r in regions)}" if regions else ""
        print(f"[planner] ask{where}: {question!r}  ({latency * 1000:.0f} ms)")
        print(f"          instruction: {response.instruction}")
        print(f"          {'answer' if response.success else 'FAILED'}: {response.answer if response.success else response.message}")
        return response.success

    def suggest(self, task: str, region: Region) -> bool:
        start = time.perf_counter()
        response = self._call(self.suggest_client, SuggestActions.Request(task=task, region=region))
        latency = time.perf_counter() - start
        if response is None:
            print(f"[planner] suggest_actions {task!r}: no response within {self.timeout:g} s")
            return False
        print(f"[planner] suggest_actions: {task!r} on {region.id or 'region'}  ({latency * 1000:.0f} ms)")
        if not response.success:
            print(f"          FAILED: {response.message}")
            return False
        steps = list(response.suggestion.steps)
        print(f"          text: {response.suggestion.text}")
        print(f"          steps: {steps if steps else '(none parsed)'}")
        return True

    def describe(self, regions: Sequence[Region], max_new_tokens: int = 24) -> bool:
        partials: list[str] = []
        start = time.perf_counter()
        goal = Describe.Goal(regions=list(regions), max_new_tokens=max_new_tokens)
        sent = self.describe_client.send_goal_async(goal, feedback_callback=lambda f: partials.append(f.feedback.partial))
        rclpy.spin_until_future_complete(self.node, sent, timeout_sec=self.timeout)
        handle = sent.result()
        if handle is None or not handle.accepted:
            print("[planner] describe: goal not accepted")
            return False
        result_future = handle.get_result_async()
        rclpy.spin_until_future_complete(self.node, result_future, timeout_sec=self.timeout)
        result = result_future.result()
        latency = time.perf_counter() - start
        if result is None:
            print("[planner] describe: no result")
            return False
        print(f"[planner] describe (action, {len(partials)} feedback messages, {latency * 1000:.0f} ms): "
              f"{result.result.answer if result.result.success else 'FAILED: ' + result.result.message}")
        return bool(result.result.success)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agent", default="", help="namespace of the agent's services (default: none)")
    parser.add_argument("--question", default="What is in this region?")
    parser.add_argument("--box", type=float, nargs=4, metavar=("X0", "Y0", "X1", "Y1"), default=(40, 40, 140, 120))
    parser.add_argument("--task", default="pick up the red box")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args(argv)

    rclpy.init()
    node = rclpy.create_node("planner_client")
    try:
        planner = Planner(node, args.agent, args.timeout)
        if not planner.wait_ready():
            print(f"[planner] the agent's services are not available within {args.timeout:g} s", file=sys.stderr)
            return 1
        region = box(*args.box, region_id="target")
        ok = [
            planner.ask("Describe the image briefly."),
            planner.ask(args.question, [region]),
            planner.suggest(args.task, region),
            planner.describe([region]),
        ]
        return 0 if all(ok) else 1
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
