"""The replay against the live node over DDS (real processes, DDS on loopback): the same answers,
token for token; --play answers every detection message once; chatspot-publish drives the node."""
from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from conftest import answers, replay
from ros_harness import AgentProcess, RosClient

NAMESPACE = "/test_replay_live"


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    from chatspot_ros.models import shipped_model

    proc = AgentProcess(shipped_model(), tmp_path_factory.mktemp("agent") / "agent.log", NAMESPACE,
                        {"diagnostics.period_s": 0.5})
    try:
        yield proc
    finally:
        code = proc.stop()
        assert code == 0, proc.log()


@pytest.fixture(scope="module")
def client(agent: AgentProcess) -> Iterator[tuple[RosClient, list]]:
    """A client and the region_descriptions it receives (subscribed before the node answers anything)."""
    from chatspot_ros.msg import RegionDescriptionArray

    with RosClient(NAMESPACE) as c:
        received = c.collect(RegionDescriptionArray, "region_descriptions")
        c.wait_publisher("region_descriptions", 90.0)
        yield c, received


def _cli(args: list[str], timeout: float = 120.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout)


def test_play_into_the_node_gives_the_offline_answers_token_for_token(
        agent: AgentProcess, client: tuple[RosClient, list], world_bags: dict[str, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    client, received = client
    before = len(received)
    proc = _cli(["chatspot_ros.cli.replay", str(world_bags["sqlite3"]), "--play", "--target-namespace", NAMESPACE])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "published 9 messages" in proc.stdout
    assert client.spin_until(lambda: len(received) >= before + 3, 60.0), agent.log()[-3000:]
    client.spin_for(1.0)  # nothing answered twice
    live = received[before:]
    stamps = Counter(m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in live)
    assert len(stamps) == 3 and set(stamps.values()) == {1}, stamps  # every detection message answered once
    by_key = {(m.header.stamp.sec * 10**9 + m.header.stamp.nanosec, d.region.id): (d.label, d.instruction, d.text)
              for m in live for d in m.descriptions}
    for storage in ("sqlite3", "mcap"):
        out = tmp_path / storage
        assert replay([str(world_bags[storage]), "--out", str(out)], capsys)[0] == 0
        offline = {(r["stamp_ns"], r["detection_id"]): (r["label"], r["instruction"], r["answer"])
                   for r in answers(out) if r["role"] == "describe"}
        assert offline == by_key


def test_chatspot_publish_sends_an_image_file_with_boxes(agent: AgentProcess, client: tuple[RosClient, list],
                                                         tmp_path: Path) -> None:
    client, received = client
    from PIL import Image

    from chatspot_ros.world import render, sample_scene

    scene = sample_scene(1000, 0)
    Image.fromarray(render(scene)).save(tmp_path / "frame.png")
    x0, y0, x1, y1 = scene.objects[0].box
    before = len(received)
    proc = _cli(["chatspot_ros.cli.publish", "--image", str(tmp_path / "frame.png"), "--box",
                 f"{x0},{y0},{x1},{y1}={scene.objects[0].category}", "--rate", "4", "--count", "2",
                 "--namespace", NAMESPACE])
    assert proc.returncode == 0 and "published 2 frames" in proc.stdout, proc.stderr[-3000:]
    assert client.spin_until(lambda: len(received) >= before + 2, 60.0), agent.log()[-3000:]
    got = received[before:before + 2]
    assert all(m.descriptions[0].region.id == "box0" and m.descriptions[0].label == scene.objects[0].category
               and m.descriptions[0].text for m in got)
    assert got[0].header.stamp != got[1].header.stamp and np.isclose(got[0].descriptions[0].region.points[1].x, x1)
