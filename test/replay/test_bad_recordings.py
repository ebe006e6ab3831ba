"""Bad recordings: one clear line and a non-zero exit, never a traceback; bad messages counted."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer

from chatspot_ros.replay.types import typestore
from chatspot_ros.world import render, sample_scene
from chatspot_ros.world.bag import BagMessage, T0_NS, image_message, scene_detections, write_bag
from conftest import replay, summary


def _error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("chatspot-replay: error: "), err
    return lines[0]


def _world_messages(stamps_s: list[float], image=None) -> list[BagMessage]:
    ts = typestore()
    out = []
    for i, s in enumerate(stamps_s):
        stamp = T0_NS + int(s * 1e9)
        scene = sample_scene(1000, i)
        msgtype, msg = image if image is not None else image_message(ts, render(scene), stamp)
        if image is not None:
            msg.header.stamp = ts.types["builtin_interfaces/msg/Time"](sec=stamp // 10**9, nanosec=stamp % 10**9)
        out.append(BagMessage("/image", msgtype, T0_NS + i * 500_000_000, msg))
        out.append(BagMessage("/detections", "vision_msgs/msg/Detection2DArray", T0_NS + i * 500_000_000 + 1,
                              scene_detections(ts, scene, stamp)))
    return out


def test_missing_paths_and_files_that_are_not_bags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = replay([str(tmp_path / "nothing"), "--out", str(tmp_path / "o1")], capsys)
    assert code == 2 and "does not exist" in _error_line(err)
    (tmp_path / "empty").mkdir()
    code, _, err = replay([str(tmp_path / "empty"), "--out", str(tmp_path / "o2")], capsys)
    assert code == 2 and "cannot open recording" in _error_line(err)
    garbage = tmp_path / "garbage.bag"
    garbage.write_bytes(bytes(np.random.default_rng(0).integers(0, 255, 4000, dtype=np.uint8)))
    code, _, err = replay([str(garbage), "--out", str(tmp_path / "o3")], capsys)
    assert code == 2 and "cannot open recording" in _error_line(err)
    code, _, err = replay([str(tmp_path / "empty"), "--out", str(tmp_path / "o4"), "--topics", "camera=/x"], capsys)
    assert code == 2 and "KEY=TOPIC" in _error_line(err)


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_truncated_recordings(storage: str, world_bags: dict[str, Path], tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    bag = tmp_path / "cut"
    shutil.copytree(world_bags[storage], bag)
    data = next(p for p in bag.iterdir() if p.suffix in (".mcap", ".db3"))
    data.write_bytes(data.read_bytes()[: data.stat().st_size * 6 // 10])
    code, out, err = replay([str(bag), "--out", str(tmp_path / "out")], capsys)
    assert code in (1, 2), (out, err)
    assert "Traceback" not in err
    if code == 2:  # refused at opening
        assert "cannot open recording" in _error_line(err)
    else:  # read up to the damage: what came before is answered and the summary says where it stopped
        assert "damaged" in err and summary(tmp_path / "out")["reading"]["read_error"]


def test_wrong_topic_types_and_missing_topics_list_what_the_recording_has(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    ts = typestore()
    rgb = render(sample_scene(1000, 0))
    msgtype, image = image_message(ts, rgb, T0_NS)
    bag = write_bag(tmp_path / "wrong", [BagMessage("/image", msgtype, T0_NS, image),
                                         BagMessage("/detections", msgtype, T0_NS + 1, image)], "mcap")
    code, _, err = replay([str(bag), "--out", str(tmp_path / "o1")], capsys)
    line = _error_line(err)
    assert code == 2 and "/detections (detections) is sensor_msgs/msg/Image" in line
    assert "/image (sensor_msgs/msg/Image)" in line and "--topics detections=TOPIC" in line
    code, _, err = replay([str(bag), "--out", str(tmp_path / "o2"), "--topics", "image=/camera/color/image_raw",
                           "detections=/nope"], capsys)
    line = _error_line(err)
    assert code == 2 and "no image topic /camera/color/image_raw" in line
    assert "/detections (sensor_msgs/msg/Image)" in line


def test_unsupported_encoding_and_out_of_order_messages_are_counted(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    ts = typestore()
    float_image = ts.types["sensor_msgs/msg/Image"](
        header=ts.types["std_msgs/msg/Header"](stamp=ts.types["builtin_interfaces/msg/Time"](sec=0, nanosec=0),
                                               frame_id="camera_optical"),
        height=4, width=4, encoding="32FC1", is_bigendian=0, step=16, data=np.zeros(64, dtype=np.uint8))
    bag = write_bag(tmp_path / "float", _world_messages([0.0, 0.5], image=("sensor_msgs/msg/Image", float_image)))
    code, out, err = replay([str(bag), "--out", str(tmp_path / "o1")], capsys)
    s = summary(tmp_path / "o1")
    assert code == 0 and "Traceback" not in err
    assert s["frames"]["read"] == 2 and s["frames"]["rejected"] == 2
    assert s["detections"]["unmatched"] == 2 and any("no frame received yet" in e for e in s["errors"])
    assert any("32FC1" in e for e in s["errors"])
    # header stamps that go back on their topic (logged in order): counted, and still matched by stamp
    bag = write_bag(tmp_path / "order", _world_messages([1.0, 0.5, 1.5]))
    code, _, _ = replay([str(bag), "--out", str(tmp_path / "o2")], capsys)
    s = summary(tmp_path / "o2")
    assert code == 0 and s["reading"]["out_of_order"] == {"image": 1, "detections": 1}
    assert s["detections"]["answered"] == 3


def test_the_console_script_prints_one_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "chatspot_ros.cli.replay", str(tmp_path / "missing"), "--out",
                           str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and _error_line(proc.stderr)
