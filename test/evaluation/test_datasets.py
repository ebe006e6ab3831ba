"""Readers of the standard formats: COCO, COCO results, COCO-Text v2, JSONL, RefCOCO pickles; the subset."""
from __future__ import annotations

import json
import os
import pickle

import pytest

from chatspot_ros.evaluation.datasets import (
    load_coco_instances,
    load_coco_text,
    load_detections,
    load_refcoco,
    load_refs_jsonl,
    load_tasks_jsonl,
    load_vqa_jsonl,
    select_images,
)


def test_world_files_read_back(world_dir) -> None:
    coco = load_coco_instances(world_dir / "instances.json", world_dir / "images")
    raw = json.loads((world_dir / "instances.json").read_text())
    assert len(coco.items) == len(raw["annotations"]) and len(coco.categories) == 18
    first, ann = coco.items[0], raw["annotations"][0]
    x, y, w, h = ann["bbox"]
    assert first.box == (x, y, x + w, y + h) and first.point == tuple(ann["click"])
    assert first.image.is_file() and first.category_id == ann["category_id"]
    refs = load_refs_jsonl(world_dir / "refs.jsonl")
    vqa = load_vqa_jsonl(world_dir / "region_qa.jsonl")
    tasks = load_tasks_jsonl(world_dir / "tasks.jsonl")
    # JSONL image paths resolve to the same files as the COCO file's (one encode per image).
    assert refs[0].image == vqa[0].image == tasks[0].image == first.image
    assert {it.box is None for it in vqa} == {True, False}
    assert all(t.category and t.question for t in tasks)


def test_coco_crowd_annotations_are_left_out(tmp_path) -> None:
    data = {"images": [{"id": 1, "file_name": "a.png", "width": 10, "height": 10}],
            "categories": [{"id": 3, "name": "cat"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [0, 0, 5, 5], "iscrowd": 1},
                            {"id": 2, "image_id": 1, "category_id": 3, "bbox": [1, 1, 5, 5], "iscrowd": 0}]}
    path = tmp_path / "i.json"
    path.write_text(json.dumps(data))
    assert [it.uid for it in load_coco_instances(path, tmp_path).items] == ["ann2"]
    data["annotations"][1]["category_id"] = 9
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="category_id 9"):
        load_coco_instances(path, tmp_path)


def test_detections_keep_the_best_per_image(tmp_path) -> None:
    images = {1: tmp_path / "a.png", 2: tmp_path / "b.png"}
    dets = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": s} for s in (0.1, 0.9, 0.5, 0.05)]
    dets.append({"image_id": 2, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.3})
    path = tmp_path / "d.json"
    path.write_text(json.dumps(dets))
    items = load_detections(path, images, max_per_image=2, min_score=0.06)
    assert [(it.uid, it.score) for it in items] == [("det1", 0.9), ("det2", 0.5), ("det4", 0.3)]
    path.write_text(json.dumps([{"image_id": 7, "bbox": [0, 0, 1, 1], "score": 1.0}]))
    with pytest.raises(ValueError, match="image_id 7"):
        load_detections(path, images)


def test_coco_text_v2_filters_legibility_and_set(ocr_file) -> None:
    items, sizes = load_coco_text(ocr_file, ocr_file.parent / "images", split="val")
    assert [it.answers for it in items] == [("STOP",), ("EXIT 12",)]
    assert all(it.image.is_file() and it.box[2] > it.box[0] for it in items)
    assert sizes[100] == (160, 64)
    every, _ = load_coco_text(ocr_file, ocr_file.parent / "images", split="all")
    assert [it.answers[0] for it in every] == ["STOP", "EXIT 12", "OPEN"]


def test_jsonl_errors_name_file_and_line(tmp_path) -> None:
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps({"image": "a.png", "question": "q?", "answers": ["x"], "box": [0, 0, 1, 1]}) + "\n\n"
                    + json.dumps({"image": "a.png", "question": "q?", "answers": ["x"]}) + "\n")
    with pytest.raises(ValueError, match=r"qa.jsonl:3: give exactly one of 'box'"):
        load_vqa_jsonl(path)
    path.write_text(json.dumps({"image": "sub/../a.png", "question": "q?", "answers": "x", "point": [1, 2]}) + "\n")
    (item,) = load_vqa_jsonl(path)
    assert item.answers == ("x",) and item.point == (1.0, 2.0) and item.image == tmp_path.resolve() / "a.png"
    assert item.image_id == str(item.image)  # no image_id: the path identifies the image
    path.write_text("{not json\n")
    with pytest.raises(ValueError, match="qa.jsonl:1: not valid JSON"):
        load_vqa_jsonl(path)
    path.write_text(json.dumps({"image": os.path.abspath("x.png"), "expression": " ", "bbox": [0, 0, 1, 1]}) + "\n")
    with pytest.raises(ValueError, match="'expression'"):
        load_refs_jsonl(path)


def _refcoco_files(tmp_path, refs):
    instances = {"images": [{"id": 5, "file_name": "COCO_train2014_000000000005.jpg", "width": 64, "height": 48}],
                 "annotations": [{"id": 50, "image_id": 5, "category_id": 1, "bbox": [1, 2, 10, 20], "iscrowd": 0,
                                  "area": 200.0},
                                 {"id": 51, "image_id": 5, "category_id": 1, "bbox": [30, 2, 10, 20], "iscrowd": 0,
                                  "area": 200.0}],
                 "categories": [{"id": 1, "name": "person"}]}
    (tmp_path / "instances.json").write_text(json.dumps(instances))
    with open(tmp_path / "refs(unc).p", "wb") as f:
        pickle.dump(refs, f, protocol=2)
    return tmp_path / "refs(unc).p", tmp_path / "instances.json"


def test_refcoco_pickle(tmp_path) -> None:
    refs = [{"ref_id": 0, "ann_id": 50, "image_id": 5, "split": "val", "category_id": 1,
             "file_name": "COCO_train2014_000000000005_50.jpg", "sent_ids": [0, 1],
             "sentences": [{"sent_id": 0, "sent": "man on the left", "raw": "Man on the left.", "tokens": []},
                           {"sent_id": 1, "sent": "left guy", "raw": "left guy", "tokens": []}]},
            {"ref_id": 1, "ann_id": 51, "image_id": 5, "split": "testA", "category_id": 1, "sent_ids": [2],
             "file_name": "x", "sentences": [{"sent_id": 2, "sent": "right guy", "raw": "", "tokens": []}]}]
    refs_path, instances = _refcoco_files(tmp_path, refs)
    items, sizes = load_refcoco(refs_path, instances, tmp_path, split="val")
    assert [(it.uid, it.question, it.box) for it in items] == [
        ("ref0.s0", "man on the left", (1.0, 2.0, 11.0, 22.0)), ("ref0.s1", "left guy", (1.0, 2.0, 11.0, 22.0))]
    assert items[0].image.name == "COCO_train2014_000000000005.jpg" and sizes[5] == (64, 48)
    (test_a,), _ = load_refcoco(refs_path, instances, tmp_path, split="testA")
    assert test_a.question == "right guy"
    with pytest.raises(ValueError, match=r"no refs in split 'testB'; the file has \['testA', 'val'\]"):
        load_refcoco(refs_path, instances, tmp_path, split="testB")


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_refcoco_pickle_refuses_code(tmp_path) -> None:
    refs_path, instances = _refcoco_files(tmp_path, [_Evil()])
    with pytest.raises(ValueError, match="only plain data"):
        load_refcoco(refs_path, instances, tmp_path)


def test_select_images_is_a_seeded_subset() -> None:
    keys = list(range(1, 101)) * 3  # repeated keys count once
    a = select_images(keys, 10, seed=0)
    assert len(a) == 10 and a == sorted(a) and set(a) <= set(range(1, 101))
    assert a == select_images(reversed(keys), 10, seed=0)  # the order of the input does not matter
    assert a != select_images(keys, 10, seed=1)
    assert select_images(keys, None, 0) == list(range(1, 101)) == select_images(keys, 1000, 0)
    assert select_images(["b.png", 2, "a.png", 1], None, 0) == [1, 2, "a.png", "b.png"]
    with pytest.raises(ValueError):
        select_images(keys, 0, 0)
