"""The tabletop world's contract (docs/world.md): determinism, constraints, annotation files."""
from __future__ import annotations

import json

import numpy as np
import pytest

from chatspot_ros.world import CATEGORIES, COLOURS, SHAPES, language, render, sample_scene, scene
from chatspot_ros.world.annotations import write_split


def test_a_frame_is_a_function_of_seed_and_index_alone() -> None:
    a = render(sample_scene(5, 17))
    b = render(sample_scene(5, 17))
    c = render(sample_scene(5, 18))
    assert a.shape == (scene.HEIGHT, scene.WIDTH, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    # frame 17 does not depend on the frames drawn before it
    for i in range(3):
        sample_scene(5, i)
    assert np.array_equal(render(sample_scene(5, 17)), a)


@pytest.mark.parametrize("seed", [0, 1, 1000])
def test_scenes_keep_the_distribution_rules(seed: int) -> None:
    counts = set()
    for index in range(150):
        s = sample_scene(seed, index)
        counts.add(len(s.objects))
        pairs = [(o.colour, o.shape) for o in s.objects]
        assert len(pairs) == len(set(pairs)), "a colour-shape pair occurs at most once per frame"
        for o in s.objects:
            assert scene.MIN_SIZE <= o.size <= scene.MAX_SIZE
            assert o.shape in SHAPES and o.colour in COLOURS
            assert all(abs(v - b) <= scene.COLOUR_JITTER for v, b in zip(o.rgb, COLOURS[o.colour]))
            x0, y0, x1, y1 = o.box
            assert 0 <= x0 and x1 <= scene.WIDTH and 0 <= y0 and y1 <= scene.HEIGHT
        for i, a in enumerate(s.objects):
            for b in s.objects[i + 1:]:
                assert scene._boxes_clear(a.box, b.box, scene.MIN_GAP), "objects must not overlap"
    assert counts == {1, 2, 3, 4, 5}


def test_objects_are_drawn_where_their_annotations_say() -> None:
    s = sample_scene(3, 4)
    frame = render(s).astype(int)
    for o in s.objects:
        cx, cy = (int(v) for v in o.center)
        assert np.abs(frame[cy, cx] - np.array(o.rgb)).max() <= 1, "the centre pixel has the object's colour"
        for _ in range(20):
            px, py = o.inside_point(np.random.default_rng(0))
            assert np.abs(frame[int(py), int(px)] - np.array(o.rgb)).max() <= 1, "a click lands on the object"


def test_language_names_the_category() -> None:
    s = sample_scene(2, 9)
    rng = np.random.default_rng(0)
    for k, o in enumerate(s.objects):
        assert o.category in CATEGORIES
        assert o.category in language.region_caption(o)
        task = language.sample_task(s, k, rng)
        assert o.category in task.text
        assert any(o.category in step for step in task.plan)
    assert language.scene_caption(s).startswith("There ")


def test_a_written_split_is_valid_coco_and_consistent(tmp_path) -> None:
    from pycocotools.coco import COCO

    out = write_split(tmp_path / "w", seed=11, frames=6)
    coco = COCO(str(out / "instances.json"))
    assert len(coco.getImgIds()) == 6
    assert sorted(c["name"] for c in coco.loadCats(coco.getCatIds())) == sorted(CATEGORIES)
    anns = coco.loadAnns(coco.getAnnIds())
    assert anns and all(len(a["bbox"]) == 4 and a["segmentation"][0] for a in anns)
    refs = [json.loads(line) for line in open(out / "refs.jsonl")]
    tasks = [json.loads(line) for line in open(out / "tasks.jsonl")]
    qa = [json.loads(line) for line in open(out / "region_qa.jsonl")]
    assert len(refs) == len(tasks) == len(anns) and len(qa) == 2 * len(anns)
    by_id = {a["id"]: a for a in anns}
    for r in refs:
        assert r["bbox"] == by_id[r["ann_id"]]["bbox"]
        assert (out / r["image"]).is_file()
    # the frame written to disk is the frame the scene renders
    from PIL import Image

    first = np.asarray(Image.open(out / "images/000000.png").convert("RGB"))
    assert np.array_equal(first, render(sample_scene(11, 0)))
