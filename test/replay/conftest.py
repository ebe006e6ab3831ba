"""Fixtures of the replay tests: world recordings (written once per session) and a replay runner."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ros"))  # ros_harness, for the live tests

SEED = 1000  # an evaluation split of the world: the shipped model never saw it
FRAMES = 3


@pytest.fixture(scope="session")
def world_bags(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same world frames as rosbag2 sqlite3 and MCAP (raw images), and MCAP with jpeg / png images."""
    from chatspot_ros.world.bag import write_world_bag

    root = tmp_path_factory.mktemp("bags")
    bags = {}
    sqlite3, mcap = write_world_bag(root / "raw", SEED, FRAMES, storage="both")
    bags["sqlite3"], bags["mcap"] = sqlite3, mcap
    for fmt in ("jpeg", "png"):
        bags[fmt] = write_world_bag(root / fmt, SEED, FRAMES, storage="mcap", image_format=fmt)[0]
    return bags


def replay(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """chatspot-replay in this process (torch is imported once per session): (exit code, stdout, stderr)."""
    from chatspot_ros.cli.replay import main

    code = main([*argv, "--quiet"])
    out, err = capsys.readouterr()
    return code, out, err


def answers(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "answers.jsonl").read_text(encoding="utf-8").splitlines()]


def summary(out: Path) -> dict[str, Any]:
    return json.loads((out / "summary.json").read_text(encoding="utf-8"))
