#!/usr/bin/env python3
"""CPU thread settings side by side, with and without a competing process (docs/evaluation.md).

    python scripts/bench_threads.py [--frames 4] [--rounds 1] [--hogs 2] [--model DIR]

Runs the docs/evaluation.md quick start (``chatspot-eval`` on a small world split with the shipped
model) once per variant, interleaved, first on the machine as it is and then while ``--hogs``
busy-looping processes compete for the cores, and prints regions/s per run. Variants:

* ``torch default``: ``--threads`` unset and OMP_WAIT_POLICY unset (the old default: one OpenMP
  thread per core, threads spin while they wait at a barrier);
* ``cores, passive``: one thread per core with OMP_WAIT_POLICY=PASSIVE;
* ``chatspot default``: what the tools pick now (chatspot_ros.cli.threads);
* ``--threads 1``.

The figures are ratios taken in one run; on a shared machine the absolute numbers move.
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

REPO = Path(__file__).resolve().parents[1]

VARIANTS = {
    "torch default": ([], {"OMP_WAIT_POLICY": None, "CHATSPOT_THREADS": "torch"}),
    "cores, passive": ([], {"OMP_WAIT_POLICY": "PASSIVE", "CHATSPOT_THREADS": "torch"}),
    "chatspot default": ([], {"OMP_WAIT_POLICY": None, "CHATSPOT_THREADS": None}),
    "--threads 1": (["--threads", "1"], {"OMP_WAIT_POLICY": None, "CHATSPOT_THREADS": None}),
}


def run_eval(model: str, world: Path, out: Path, extra: list[str], env_changes: dict, timeout: float) -> str:
    env = dict(os.environ)
    for key, value in env_changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    cmd = ["chatspot-eval", "--model", model, "--world", str(world), "--out", str(out), "--no-progress",
           "--overwrite", *extra]
    started = time.monotonic()
    try:
        done = subprocess.run(cmd, env=env, timeout=timeout, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
    except subprocess.TimeoutExpired:
        return f"> {timeout:.0f} s (stopped)"
    if done.returncode != 0:
        return f"failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}"
    wall = time.monotonic() - started
    run = json.loads((out / "metrics.json").read_text())["run"]
    return f"{run['regions_per_s']:6.2f} regions/s ({run['prompts']} prompts, {wall:.0f} s wall with start-up)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=4, help="world frames (seed 1000)")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds per condition")
    parser.add_argument("--hogs", type=int, default=os.cpu_count() or 2, help="busy-looping competitors")
    parser.add_argument("--model", default=str(REPO / "chatspot_ros" / "models" / "tabletop"))
    parser.add_argument("--timeout", type=float, default=300.0, help="per run, seconds")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_threads_"))
    world = tmp / "world"
    subprocess.run(["chatspot-world", "render", "--seed", "1000", "--frames", str(args.frames), "--out", str(world)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(f"{os.cpu_count()} cores; load average before: {os.getloadavg()[0]:.2f}; {args.frames} frames", flush=True)
    for condition in ("as is", f"{args.hogs} busy loops competing"):
        hogs = []
        if condition != "as is":
            hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.hogs)]
        try:
            for r in range(args.rounds):
                for name, (extra, env_changes) in VARIANTS.items():
                    result = run_eval(args.model, world, tmp / "eval", extra, env_changes, args.timeout)
                    print(f"{condition:26s} {name:18s} {result}", flush=True)
        finally:
            for hog in hogs:
                hog.kill()
                hog.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
