"""Write a split of the tabletop world in the standard formats the evaluation and training read.

``write_split(out, seed, frames)`` writes (docs/world.md):

* ``images/%06d.png``: the frames (320 x 240 RGB);
* ``instances.json``: COCO instances (boxes ``[x, y, w, h]``, polygon segmentations, areas,
  18 categories "<colour> <shape>" with ``supercategory`` = shape); each annotation also has
  ``caption`` (region caption), ``expression`` (a unique referring expression), ``attributes``
  (colour, shape, size word) and ``click`` (a point on the object, for point prompts);
* ``refs.jsonl``: referring expressions ``{image, image_id, ann_id, expression, bbox}``;
* ``region_qa.jsonl``: region VQA ``{image, image_id, ann_id, question, answers, box | point}``
  (colour and shape questions, one with a box and one with a click per object);
* ``tasks.jsonl``: ``{image, image_id, ann_id, task, kind, category, bbox, point, plan, destination}``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from chatspot_ros.world.language import referring_expression, region_caption, sample_task
from chatspot_ros.world.scene import (CATEGORIES, SHAPES, STANDARD, VARIANTS, Scene, Variant, category_id, render,
                                     sample_scene, visible_masks)

# The named splits (docs/world.md, docs/evaluation.md): (variant, seed). Seed 1 trains the shipped
# model; "val" (seed 1000) was used during its development; "test" (seed 2000) and the hard
# splits were first evaluated for the figures the README reports.
SPLITS: dict[str, tuple[str, int]] = {
    "train": ("standard", 1),
    "val": ("standard", 1000),
    "test": ("standard", 2000),
    "crowded": ("crowded", 3000),
    "same_category": ("same_category", 3100),
    "sizes": ("sizes", 3200),
    "overlap": ("overlap", 3300),
    "tables": ("tables", 3400),
}
CLICK_TRIES = 100  # partly hidden objects: clicks are redrawn until they land on visible pixels


def _xywh(box: tuple[float, float, float, float]) -> list[float]:
    return [box[0], box[1], box[2] - box[0], box[3] - box[1]]


def _area(polygon: tuple[tuple[float, float], ...]) -> float:
    xs = np.array([p[0] for p in polygon])
    ys = np.array([p[1] for p in polygon])
    return float(0.5 * abs(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1))))


def coco_categories() -> list[dict[str, Any]]:
    return [{"id": category_id(name), "name": name, "supercategory": name.split()[1]} for name in CATEGORIES]


def scene_annotations(scene: Scene, image_id: int, first_ann_id: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]],
                                                                               list[dict[str, Any]], list[dict[str, Any]]]:
    """(COCO annotations, refs, region QA, tasks) of one scene; draws from the scene's annotation stream."""
    rng = np.random.default_rng([scene.seed, scene.index, 2])
    image = f"images/{scene.index:06d}.png"
    overlapping = any(not _clear(a.box, b.box) for i, a in enumerate(scene.objects) for b in scene.objects[i + 1:])
    visible = visible_masks(scene) if overlapping else None
    anns, refs, qa, tasks = [], [], [], []
    for k, obj in enumerate(scene.objects):
        ann_id = first_ann_id + k
        bbox = _xywh(obj.box)
        click = [round(v, 2) for v in _visible_click(obj, rng, visible[k] if visible is not None else None)]
        anns.append({
            "id": ann_id, "image_id": image_id, "category_id": category_id(obj.category), "bbox": bbox,
            "area": _area(obj.polygon), "iscrowd": 0,
            "segmentation": [[round(v, 2) for p in obj.polygon for v in p]],
            "caption": region_caption(obj), "expression": referring_expression(obj, scene),
            "attributes": {"colour": obj.colour, "shape": obj.shape, "size": obj.size_word or "medium"},
            "click": click,
        })
        refs.append({"image": image, "image_id": image_id, "ann_id": ann_id,
                     "expression": referring_expression(obj, scene), "bbox": bbox})
        qa.append({"image": image, "image_id": image_id, "ann_id": ann_id,
                   "question": "What colour is the object in the region?", "answers": [obj.colour], "box": bbox})
        qa.append({"image": image, "image_id": image_id, "ann_id": ann_id,
                   "question": "What shape is the object in the region?", "answers": [obj.shape], "point": click})
        task = sample_task(scene, k, rng)
        tasks.append({"image": image, "image_id": image_id, "ann_id": ann_id, "task": task.text, "kind": task.kind,
                      "category": obj.category, "bbox": bbox, "point": click, "plan": list(task.plan),
                      "destination": task.destination.category if task.destination else None})
    return anns, refs, qa, tasks


def _clear(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def _visible_click(obj: Any, rng: np.random.Generator, visible: np.ndarray | None) -> tuple[float, float]:
    """A click on the object; where another object hides part of it, one on its visible pixels
    (standard frames draw exactly one point, as before)."""
    point = obj.inside_point(rng)
    if visible is None:
        return point
    for _ in range(CLICK_TRIES):
        if visible[min(int(point[1]), visible.shape[0] - 1), min(int(point[0]), visible.shape[1] - 1)]:
            return point
        point = obj.inside_point(rng)
    ys, xs = np.nonzero(visible)
    k = int(rng.integers(len(xs)))
    return (float(xs[k]) + 0.5, float(ys[k]) + 0.5)


def iter_scenes(seed: int, frames: int, start: int = 0, variant: Variant | str = STANDARD) -> Iterator[Scene]:
    for index in range(start, start + frames):
        yield sample_scene(seed, index, variant)


def split_settings(name: str) -> tuple[str, int]:
    """(variant, seed) of a named split; a clear error for an unknown name."""
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}; known: {', '.join(SPLITS)}")
    return SPLITS[name]


def write_split(out: str | Path, seed: int, frames: int, *, start: int = 0, progress: bool = False,
                variant: Variant | str = STANDARD, split: str | None = None) -> Path:
    """Render ``frames`` frames of split ``seed`` (drawn as ``variant``) into ``out`` with all
    annotation files; ``split`` names it in instances.json. Returns ``out``."""
    variant = VARIANTS[variant] if isinstance(variant, str) and variant in VARIANTS else variant
    if isinstance(variant, str):
        raise ValueError(f"unknown world variant {variant!r}; known: {', '.join(VARIANTS)}")
    from PIL import Image

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    images, anns, refs, qa, tasks = [], [], [], [], []
    scenes = iter_scenes(seed, frames, start, variant)
    if progress:
        from tqdm import tqdm

        scenes = tqdm(scenes, total=frames, desc=f"world seed {seed}", unit="frame")
    for scene in scenes:
        image_id = scene.index + 1  # COCO ids start at 1
        Image.fromarray(render(scene)).save(out / f"images/{scene.index:06d}.png", optimize=False, compress_level=1)
        images.append({"id": image_id, "file_name": f"{scene.index:06d}.png", "width": scene.size[0],
                       "height": scene.size[1], "table": scene.table})
        a, r, q, t = scene_annotations(scene, image_id, first_ann_id=1 + len(anns))
        anns += a
        refs += r
        qa += q
        tasks += t
    coco = {
        "info": {"description": "chatspot_ros tabletop world (docs/world.md)", "seed": seed, "start": start,
                 "frames": frames, "variant": variant.name, "split": split},
        "images": images, "annotations": anns, "categories": coco_categories(),
    }
    (out / "instances.json").write_text(json.dumps(coco) + "\n")
    for name, rows in (("refs.jsonl", refs), ("region_qa.jsonl", qa), ("tasks.jsonl", tasks)):
        with open(out / name, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    return out


SHAPE_NAMES = SHAPES
