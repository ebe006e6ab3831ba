"""Lifecycle cycling: configure -> activate -> ask -> deactivate -> cleanup, under load, N times.

    source scripts/env.sh
    python scripts/cycle_lifecycle.py --cycles 100 --askers 2

The agent (tiny model, ``autostart: false``) runs in its own process; a 30 Hz camera publishes frames
and detections and ``--askers`` clients call ``ask`` back to back the whole time (refusals while the
node is inactive are expected). Every cycle must answer one ``ask`` while active; the agent must
survive every transition. Prints the agent's RSS after each cycle and RSS after cycle 10 vs the last.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from soak import NODE, Asker, Camera, agent_rss_mib, build_model, diagnostics  # noqa: E402  (sets the env)
from ros_harness import AgentProcess, RosClient, box_region  # noqa: E402


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=100)
    parser.add_argument("--askers", type=int, default=2)
    parser.add_argument("--rate", type=float, default=30.0)
    parser.add_argument("--model", default="")
    parser.add_argument("--max-minutes", type=float, default=0.0, help="stop after this long (0 = no limit)")
    args = parser.parse_args(argv)

    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState

    from chatspot_ros.srv import AskRegion

    work = Path(tempfile.mkdtemp(prefix="chatspot_cycles_"))
    model = Path(args.model) if args.model else build_model(work / "model")
    namespace = "/cycles"
    agent = AgentProcess(model, work / "agent.log", namespace,
                         {"autostart": False, "generation.max_new_tokens": 4, "debug.image": False})
    camera = Camera(namespace, args.rate, 10, 320, 240)
    askers = [Asker(namespace, i) for i in range(args.askers)]
    rss: list[float] = []
    d: dict[str, str] = {}
    failures: list[str] = []
    start = time.monotonic()
    try:
        with RosClient(namespace) as client:
            def transition(tid: int) -> bool:
                request = ChangeState.Request(transition=Transition(id=tid))
                return client.call(ChangeState, f"{NODE}/change_state", request, timeout=400).success

            camera.start()
            for asker in askers:
                asker.start()
            for cycle in range(1, args.cycles + 1):
                if args.max_minutes and time.monotonic() - start > 60 * args.max_minutes:
                    print(f"time limit: stopping after {cycle - 1} cycles", flush=True)
                    break
                if not agent.alive():
                    failures.append(f"cycle {cycle}: the agent died")
                    break
                assert transition(Transition.TRANSITION_CONFIGURE), f"cycle {cycle}: configure failed"
                assert transition(Transition.TRANSITION_ACTIVATE), f"cycle {cycle}: activate failed"
                answered, message = False, ""
                deadline = time.monotonic() + 180
                while not answered and time.monotonic() < deadline:
                    try:
                        response = client.call(AskRegion, "ask", AskRegion.Request(
                            question="What?", regions=[box_region(5, 5, 40, 40)]), timeout=60)
                    except AssertionError as exc:  # no answer within the timeout: ask again
                        message = str(exc)
                        continue
                    answered, message = response.success, response.message
                    if not answered:
                        client.spin_for(0.2)  # e.g. no frame yet after activation
                if not answered:
                    failures.append(f"cycle {cycle}: ask not answered: {message}")
                assert transition(Transition.TRANSITION_DEACTIVATE), f"cycle {cycle}: deactivate failed"
                assert transition(Transition.TRANSITION_CLEANUP), f"cycle {cycle}: cleanup failed"
                rss.append(agent_rss_mib(agent.proc.pid))
                print(f"cycle {cycle:3d}: RSS {rss[-1]:.1f} MiB ({time.monotonic() - start:.0f} s)", flush=True)
            d = diagnostics(client)
    finally:
        camera.stop_event.set()
        for asker in askers:
            asker.stop_event.set()
        camera.join(5)
        for asker in askers:
            asker.join(35)
        alive = agent.alive()
        code = agent.stop()
    print(f"result: {len(rss)} cycles in {time.monotonic() - start:.0f} s, agent {'alive' if alive else 'DIED'} "
          f"(exit {code}); asks ok {sum(a.ok for a in askers)}, refused/failed {sum(a.failed for a in askers)}")
    if len(rss) >= 10:
        print(f"  RSS after cycle 10 {rss[9]:.1f} MiB, after cycle {len(rss)} {rss[-1]:.1f} MiB "
              f"({rss[-1] - rss[9]:+.1f} MiB, {(rss[-1] - rss[9]) / max(1, len(rss) - 10):+.2f} MiB/cycle)")
    print(f"  internal.errors={d.get('internal.errors', '?')}")
    for failure in failures:
        print("  FAILED " + failure)
    print(f"  agent log: {agent.log_path}")
    return 0 if alive and not failures else 1


if __name__ == "__main__":
    sys.exit(main())
