"""chatspot-replay offline: outputs, determinism across storages and encodings, resume, the output folder rules."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from rosbags.highlevel import AnyReader

from chatspot_ros.replay.types import typestore
from conftest import answers, replay, summary


def _texts(out: Path) -> list[tuple]:
    return [(r["stamp_ns"], r["detection_id"], r["role"], r["instruction"], r["answer"]) for r in answers(out)]


def test_mcap_and_sqlite3_give_the_same_answers_and_the_outputs_open_as_a_bag(
        world_bags: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = {}
    for storage in ("mcap", "sqlite3"):
        out = tmp_path / storage
        code, stdout, _ = replay([str(world_bags[storage]), "--out", str(out)], capsys)
        assert code == 0 and "3 answered" in stdout
        runs[storage] = out
    assert _texts(runs["mcap"]) == _texts(runs["sqlite3"])  # greedy: two runs agree, whatever the storage
    rows = answers(runs["mcap"])
    s = summary(runs["mcap"])
    assert s["frames"]["read"] == 3 and s["detections"]["messages"] == 3 and s["detections"]["answered"] == 3
    assert s["detections"].get("unmatched", 0) == 0 and s["regions"]["answered"] == len(rows) > 3
    assert s["accuracy"]["labelled"] == len(rows) and s["accuracy"]["matcher"] == "exact"
    assert 0.0 <= s["accuracy"]["rate"] <= 1.0 and s["throughput"]["regions_per_s"] > 0
    assert all(r["answer"] and r["instruction"] and r["latency_s"] > 0 and r["label"] for r in rows)
    assert (runs["mcap"] / "answers.csv").read_text().count("\n") == len(rows) + 1
    assert "## accuracy" in (runs["mcap"] / "summary.md").read_text()
    with AnyReader([runs["mcap"] / "recording"], default_typestore=typestore()) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
        assert counts == {"/image": 3, "/detections": 3, "/camera_info": 3, "/region_descriptions": 3,
                          "/debug/image": 3}
        described = {}
        for conn, _, raw in reader.messages():
            if conn.topic == "/region_descriptions":
                msg = reader.deserialize(raw, conn.msgtype)
                stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
                for d in msg.descriptions:
                    described[(stamp, d.region.id)] = (d.label, d.instruction, d.text)
    assert described == {(r["stamp_ns"], r["detection_id"]): (r["label"], r["instruction"], r["answer"]) for r in rows}
    assert (runs["mcap"] / "recording" / "metadata.yaml").read_text().count("storage_identifier: mcap") == 1


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_compressed_recordings_are_answered(fmt: str, world_bags: dict[str, Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    code, _, _ = replay([str(world_bags[fmt]), "--out", str(tmp_path / fmt)], capsys)
    s = summary(tmp_path / fmt)
    assert code == 0 and s["topics"]["image_compressed"] == "/image/compressed"
    assert s["frames"]["read"] == 3 and s["detections"]["answered"] == 3
    if fmt == "png":  # lossless: the same pixels as the raw recording, so the same answers
        code, _, _ = replay([str(world_bags["mcap"]), "--out", str(tmp_path / "raw")], capsys)
        assert [r["answer"] for r in answers(tmp_path / fmt)] == [r["answer"] for r in answers(tmp_path / "raw")]


def test_resume_after_an_interruption_asks_only_what_is_missing(world_bags: dict[str, Path], tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert replay([str(world_bags["mcap"]), "--out", str(full)], capsys)[0] == 0
    assert replay([str(world_bags["mcap"]), "--out", str(cut)], capsys)[0] == 0
    lines = (cut / "answers.jsonl").read_text().splitlines(keepends=True)
    first = json.loads(lines[0])["request"]
    kept = [line for line in lines if json.loads(line)["request"] == first]
    # the interruption: the first request complete, the second cut in the middle of a line
    (cut / "answers.jsonl").write_text("".join(kept) + lines[len(kept)][:40])
    code, _, err = replay([str(world_bags["mcap"]), "--out", str(cut)], capsys)
    assert code == 2 and "not empty" in err and "--resume" in err
    code, _, _ = replay([str(world_bags["mcap"]), "--out", str(cut), "--resume"], capsys)
    assert code == 0
    s = summary(cut)
    assert s["throughput"]["resumed_requests"] == 1 and s["throughput"]["model_calls"] == 2
    assert _texts(cut) == _texts(full)
    assert {**s["detections"], "resumed": 0} == summary(full)["detections"] and s["detections"]["resumed"] == 1
    code, _, err = replay([str(world_bags["mcap"]), "--out", str(cut), "--resume", "-p", "generation.max_new_tokens=8"],
                          capsys)
    assert code == 2 and "other settings" in err


def test_window_and_max_frames(world_bags: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert replay([str(world_bags["mcap"]), "--out", str(tmp_path / "a"), "--max-frames", "1"], capsys)[0] == 0
    assert summary(tmp_path / "a")["frames"]["read"] == 1 and summary(tmp_path / "a")["detections"]["answered"] == 1
    # from 0.4 s on: frames 1 and 2 (stamped 0.5 s and 1.0 s after the first)
    argv = [str(world_bags["mcap"]), "--out", str(tmp_path / "b"), "--start", "0.4", "--end", "1.2"]
    assert replay(argv, capsys)[0] == 0
    assert sorted({r["stamp"] for r in answers(tmp_path / "b")}) == ["1700000000.500000000", "1700000001.000000000"]


def test_the_replay_imports_no_rclpy(world_bags: dict[str, Path], tmp_path: Path) -> None:
    argv = [str(world_bags["mcap"]), "--out", str(tmp_path / "o"), "--quiet", "--max-frames", "1"]
    code = ("import sys; from chatspot_ros.cli.replay import main; "
            f"rc = main({argv!r}); "
            "assert 'rclpy' not in sys.modules, 'rclpy imported'; sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_ros1_bag_gives_the_answers_of_its_rosbag2_original(world_bags: dict[str, Path], tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    ros1 = tmp_path / "world.bag"
    proc = subprocess.run([sys.executable, "-m", "rosbags.convert", "--src", str(world_bags["mcap"]),
                           "--dst", str(ros1)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert replay([str(ros1), "--out", str(tmp_path / "ros1")], capsys)[0] == 0
    assert replay([str(world_bags["mcap"]), "--out", str(tmp_path / "ros2")], capsys)[0] == 0
    assert _texts(tmp_path / "ros1") == _texts(tmp_path / "ros2")
    with AnyReader([tmp_path / "ros1" / "recording"]) as reader:  # the inputs copied in their ROS 2 layout
        conn = next(c for c in reader.connections if c.topic == "/image")
        image = reader.deserialize(next(reader.messages([conn]))[2], conn.msgtype)
        assert not hasattr(image.header, "seq") and image.encoding == "rgb8"


def test_clicks_and_a_task_give_descriptions_and_action_suggestions(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from chatspot_ros.world import render, sample_scene
    from chatspot_ros.world.bag import T0_NS, BagMessage, image_message, scene_detections, write_bag

    ts = typestore()
    scene = sample_scene(1000, 0)
    _, image = image_message(ts, render(scene), T0_NS)
    header = ts.types["std_msgs/msg/Header"](stamp=image.header.stamp, frame_id="camera_optical")
    cx, cy = scene.objects[0].center
    point, stamped = ts.types["geometry_msgs/msg/Point"], ts.types["geometry_msgs/msg/PointStamped"]
    click = stamped(header=header, point=point(x=cx, y=cy, z=0.0))
    outside = stamped(header=header, point=point(x=5000.0, y=1.0, z=0.0))  # outside the image: refused, counted
    task = f"pick up the {scene.objects[0].category}"
    bag = write_bag(tmp_path / "bag", [
        BagMessage("/task", "std_msgs/msg/String", T0_NS - 1, ts.types["std_msgs/msg/String"](data=task)),
        BagMessage("/image", "sensor_msgs/msg/Image", T0_NS, image),
        BagMessage("/detections", "vision_msgs/msg/Detection2DArray", T0_NS + 1, scene_detections(ts, scene, T0_NS)),
        BagMessage("/clicked_point", "geometry_msgs/msg/PointStamped", T0_NS + 2, click),
        BagMessage("/clicked_point", "geometry_msgs/msg/PointStamped", T0_NS + 3, outside)])
    assert replay([str(bag), "--out", str(tmp_path / "out")], capsys)[0] == 0
    rows = answers(tmp_path / "out")
    s = summary(tmp_path / "out")
    assert s["clicks"]["received"] == 2 and s["clicks"]["answered"] == 1 and s["clicks"]["rejected"] == 1
    suggest = [r for r in rows if r["role"] == "suggest"]
    assert len(suggest) == 2 and all(r["task"] == task and r["answer"] and r["instruction"] for r in suggest)
    clicked = [r for r in rows if r["source"] == "clicked_point"]
    assert [r["role"] for r in clicked] == ["describe", "suggest"] and clicked[0]["region_kind"] == "point"
    with AnyReader([tmp_path / "out" / "recording"]) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
    assert counts["/action_suggestions"] == 2 and counts["/region_descriptions"] == 2 and counts["/task"] == 1


def test_coco_ground_truth_gives_the_same_accuracy_as_the_world_hypotheses(
        world_bags: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    coco = world_bags["mcap"].parent / "instances.json"  # written beside the bags by chatspot-world bag
    assert replay([str(world_bags["mcap"]), "--out", str(tmp_path / "a"), "--coco", str(coco)], capsys)[0] == 0
    s = summary(tmp_path / "a")
    by_gt, by_hyp = s["accuracy_coco"], s["accuracy"]
    assert by_gt["labelled"] == by_hyp["labelled"] == s["regions"]["answered"] and by_gt["unlabelled"] == 0
    assert by_gt["correct"] == by_hyp["correct"]  # the world's first hypothesis is its ground truth
    code, _, err = replay([str(world_bags["mcap"]), "--out", str(tmp_path / "b"), "--coco", str(tmp_path / "no.json")],
                          capsys)
    assert code == 2 and "--coco" in err
