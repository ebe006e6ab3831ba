"""chatspot-world bag: the world as a robot log, in both storages, read back with rosbags."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from rosbags.highlevel import AnyReader

from chatspot_ros.cli.world import main as world_main
from chatspot_ros.replay.types import typestore
from chatspot_ros.world import render, sample_scene
from chatspot_ros.world.bag import DETECTOR_LATENCY_NS, T0_NS


def read(path: Path) -> list[tuple[str, int, object]]:
    with AnyReader([path], default_typestore=typestore()) as reader:
        return [(c.topic, t, reader.deserialize(raw, c.msgtype)) for c, t, raw in reader.messages()]


def test_both_storages_hold_the_same_frames_detections_and_camera_info(world_bags: dict[str, Path]) -> None:
    sqlite3, mcap = read(world_bags["sqlite3"]), read(world_bags["mcap"])
    assert [(t, n) for t, n, _ in sqlite3] == [(t, n) for t, n, _ in mcap]
    images = [m for t, _, m in mcap if t == "/image"]
    detections = [(n, m) for t, n, m in mcap if t == "/detections"]
    assert len(images) == len(detections) == 3 and sum(t == "/camera_info" for t, _, _ in mcap) == 3
    for index, (image, (logged, dets)) in enumerate(zip(images, detections)):
        scene = sample_scene(1000, index)
        assert image.encoding == "rgb8" and (image.width, image.height) == scene.size
        assert np.array_equal(image.data.reshape(image.height, image.width, 3), render(scene))
        assert dets.header.stamp == image.header.stamp and logged == T0_NS + index * 500_000_000 + DETECTOR_LATENCY_NS
        assert [d.results[0].hypothesis.class_id for d in dets.detections] == [o.category for o in scene.objects]
        assert all(len(d.results) == 2 and d.results[0].hypothesis.score > d.results[1].hypothesis.score
                   for d in dets.detections)
        box = dets.detections[0].bbox
        x0, y0, x1, y1 = scene.objects[0].box
        assert (box.center.position.x, box.size_x) == ((x0 + x1) / 2, x1 - x0)


def test_compressed_bags_carry_jpeg_and_png(world_bags: dict[str, Path]) -> None:
    for fmt, magic in (("jpeg", b"\xff\xd8"), ("png", b"\x89PNG")):
        images = [m for t, _, m in read(world_bags[fmt]) if t == "/image/compressed"]
        assert len(images) == 3 and all(m.format == fmt and bytes(m.data[:len(magic)]) == magic for m in images)


def test_cli_refuses_a_non_empty_folder(tmp_path: Path, capsys) -> None:
    out = tmp_path / "bag"
    assert world_main(["bag", "--seed", "3", "--frames", "1", "--out", str(out)]) == 0
    assert world_main(["bag", "--seed", "3", "--frames", "1", "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert world_main(["bag", "--seed", "3", "--frames", "2", "--out", str(out), "--overwrite"]) == 0
    assert sum(t == "/image" for t, _, _ in read(out)) == 2
