"""Readers of the standard annotation formats the evaluation takes (docs/evaluation.md, "Inputs").

* COCO instances JSON + image folder (region classification; GT boxes, clicks or box centres);
* COCO results JSON ``[{image_id, category_id, bbox, score}]`` (detector boxes);
* COCO-Text v2 JSON (``imgs``, ``anns`` with ``utf8_string``, ``bbox``, ``legibility``);
* JSONL files: region VQA ``{image, question, answers, box | point}``, referring expressions
  ``{image, expression, bbox}``, action tasks ``{image, task, category, bbox, destination}``;
  ``image`` is relative to the JSONL file's folder (or absolute);
* RefCOCO/+/g's original ``refs(unc).p`` + ``instances.json`` pair.

Every reader returns :class:`Item` rows: one ground-truth region (or expression) each, in source
pixels (boxes ``xyxy``). Errors name the file (and line) and say what is wrong.
"""
from __future__ import annotations

import json
import os
import pickle
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from chatspot_ros.evaluation.boxes import Box, xywh_to_xyxy
from chatspot_ros.evaluation.matching import Category

ImageKey = Hashable  # a COCO image id (int) or, for JSONL rows without one, the image path (str)


@dataclass(frozen=True)
class Item:
    """One ground-truth sample: a region (or an expression) of one image and what is true about it."""

    uid: str  # unique within its input: "ann12", "det3", "line7", "ref5.s9"
    image_id: ImageKey
    image: Path
    box: Box | None = None  # xyxy pixels: the GT region, the detector box, the REC target
    point: tuple[float, float] | None = None  # a click (classification, VQA point prompts)
    question: str = ""  # VQA question, REC expression or action task
    answers: tuple[str, ...] = ()  # VQA answers; OCR: the one GT text
    category_id: int | None = None  # classification GT
    category: str = ""  # actions: the target category name
    destination: str | None = None  # actions: the destination category ("put ... on ...")
    score: float | None = None  # detections: the detector's score


@dataclass
class CocoInstances:
    """A COCO instances file: the raw dict (for pycocotools) and what the evaluation needs of it."""

    dataset: dict[str, Any]
    categories: list[Category]
    images: dict[int, Path]  # image id -> file
    sizes: dict[int, tuple[int, int]]  # image id -> (width, height) as the file declares
    items: list[Item]  # non-crowd annotations with a box (and a click when the annotation has one)


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None


def _box(value: Any, where: str) -> Box:
    try:
        return xywh_to_xyxy(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: bad bbox {value!r}: {err}") from None


def _point(value: Any, where: str) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"{where}: a point must be [x, y], got {value!r}")
    return (float(value[0]), float(value[1]))


def load_coco_instances(path: str | Path, images_dir: str | Path) -> CocoInstances:
    """COCO instances JSON; annotations with ``iscrowd`` 1 are left out (COCOeval ignores them too)."""
    path, images_dir = Path(path), Path(images_dir).resolve()
    data = _read_json(path)
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{path}: a COCO instances file needs a list {key!r}")
    categories = [Category(int(c["id"]), str(c["name"])) for c in data["categories"]]
    images = {int(im["id"]): images_dir / str(im["file_name"]) for im in data["images"]}
    sizes = {int(im["id"]): (int(im["width"]), int(im["height"])) for im in data["images"]
             if "width" in im and "height" in im}
    known_categories = {c.id for c in categories}
    items = []
    for ann in data["annotations"]:
        where = f"{path}: annotation {ann.get('id')}"
        if ann.get("iscrowd", 0):
            continue
        image_id = int(ann["image_id"])
        if image_id not in images:
            raise ValueError(f"{where}: image_id {image_id} is not in 'images'")
        if int(ann["category_id"]) not in known_categories:
            raise ValueError(f"{where}: category_id {ann['category_id']} is not in 'categories'")
        click = _point(ann["click"], where) if ann.get("click") is not None else None
        items.append(Item(uid=f"ann{ann['id']}", image_id=image_id, image=images[image_id],
                          box=_box(ann["bbox"], where), point=click, category_id=int(ann["category_id"])))
    return CocoInstances(data, categories, images, sizes, items)


def load_detections(path: str | Path, images: Mapping[int, Path], *, max_per_image: int = 100,
                    min_score: float = 0.0) -> list[Item]:
    """COCO results JSON; per image the ``max_per_image`` best-scored boxes with score >= ``min_score``.

    100 per image is COCOeval's ``maxDets``: boxes beyond it cannot change AP.
    """
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, list):
        raise ValueError(f"{path}: a COCO results file is a JSON list of {{image_id, category_id, bbox, score}}")
    per_image: dict[int, list[tuple[float, int, Box]]] = defaultdict(list)
    for index, det in enumerate(data):
        where = f"{path}: result {index}"
        try:
            image_id, score = int(det["image_id"]), float(det["score"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{where}: needs image_id and score") from None
        if image_id not in images:
            raise ValueError(f"{where}: image_id {image_id} is not in the COCO instances file")
        if score >= min_score:
            per_image[image_id].append((score, index, _box(det.get("bbox"), where)))
    items = []
    for image_id in sorted(per_image):
        best = sorted(per_image[image_id], key=lambda t: (-t[0], t[1]))[:max_per_image]
        for score, index, box in sorted(best, key=lambda t: t[1]):
            items.append(Item(uid=f"det{index}", image_id=image_id, image=images[image_id], box=box, score=score))
    return items


def load_coco_text(path: str | Path, images_dir: str | Path, *, split: str = "val"
                   ) -> tuple[list[Item], dict[int, tuple[int, int]]]:
    """COCO-Text v2: legible annotations with a non-empty ``utf8_string`` of images in ``split``.

    ``split`` is the images' ``set`` ("train", "val") or "all". Returns (items, declared sizes).
    """
    path, images_dir = Path(path), Path(images_dir).resolve()
    data = _read_json(path)
    if not isinstance(data.get("imgs"), Mapping) or not isinstance(data.get("anns"), Mapping):
        raise ValueError(f"{path}: a COCO-Text v2 file needs the objects 'imgs' and 'anns'")
    imgs = {int(k): v for k, v in data["imgs"].items()}
    items = []
    for key, ann in sorted(data["anns"].items(), key=lambda kv: int(kv[0])):
        where = f"{path}: ann {key}"
        image = imgs.get(int(ann["image_id"]))
        if image is None:
            raise ValueError(f"{where}: image_id {ann['image_id']} is not in 'imgs'")
        if split != "all" and image.get("set", split) != split:
            continue
        text = str(ann.get("utf8_string", "")).strip()
        if ann.get("legibility", "legible") != "legible" or not text:
            continue
        items.append(Item(uid=f"ann{ann.get('id', key)}", image_id=int(ann["image_id"]),
                          image=images_dir / str(image["file_name"]), box=_box(ann["bbox"], where), answers=(text,)))
    sizes = {i: (int(v["width"]), int(v["height"])) for i, v in imgs.items() if "width" in v and "height" in v}
    return items, sizes


def read_jsonl(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not valid JSON: {err}") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object")
            rows.append((number, row))
    return rows


def _jsonl_image(row: Mapping[str, Any], folder: Path, where: str) -> tuple[ImageKey, Path]:
    if not isinstance(row.get("image"), str) or not row["image"]:
        raise ValueError(f"{where}: needs 'image' (a path relative to the JSONL file's folder)")
    image = Path(row["image"])
    image = Path(os.path.normpath(image if image.is_absolute() else folder / image))
    key = row["image_id"] if row.get("image_id") is not None else str(image)
    return key, image


def _text(row: Mapping[str, Any], field: str, where: str) -> str:
    value = row.get(field)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: needs a non-empty string {field!r}")
    return value.strip()


def load_vqa_jsonl(path: str | Path) -> list[Item]:
    """Region VQA ``{image, question, answers, box | point}`` (box xywh, point [x, y], pixels)."""
    path = Path(path)
    folder = path.resolve().parent
    items = []
    for number, row in read_jsonl(path):
        where = f"{path}:{number}"
        key, image = _jsonl_image(row, folder, where)
        answers = row.get("answers")
        if isinstance(answers, str):
            answers = [answers]
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
            raise ValueError(f"{where}: 'answers' must be a non-empty list of strings")
        has_box, has_point = row.get("box") is not None, row.get("point") is not None
        if has_box == has_point:
            raise ValueError(f"{where}: give exactly one of 'box' ([x, y, w, h]) and 'point' ([x, y])")
        items.append(Item(uid=f"line{number}", image_id=key, image=image,
                          box=_box(row["box"], where) if has_box else None,
                          point=_point(row["point"], where) if has_point else None,
                          question=_text(row, "question", where), answers=tuple(answers)))
    return items


def load_refs_jsonl(path: str | Path) -> list[Item]:
    """Referring expressions ``{image, expression, bbox}`` (bbox xywh pixels)."""
    path = Path(path)
    folder = path.resolve().parent
    items = []
    for number, row in read_jsonl(path):
        where = f"{path}:{number}"
        key, image = _jsonl_image(row, folder, where)
        items.append(Item(uid=f"line{number}", image_id=key, image=image, box=_box(row.get("bbox"), where),
                          question=_text(row, "expression", where)))
    return items


def load_tasks_jsonl(path: str | Path) -> list[Item]:
    """Action tasks ``{image, task, category, bbox, destination}`` (the world's tasks.jsonl)."""
    path = Path(path)
    folder = path.resolve().parent
    items = []
    for number, row in read_jsonl(path):
        where = f"{path}:{number}"
        key, image = _jsonl_image(row, folder, where)
        destination = row.get("destination")
        if destination is not None and not isinstance(destination, str):
            raise ValueError(f"{where}: 'destination' must be a category name or null")
        items.append(Item(uid=f"line{number}", image_id=key, image=image, box=_box(row.get("bbox"), where),
                          question=_text(row, "task", where), category=_text(row, "category", where),
                          destination=destination))
    return items


class _PlainDataUnpickler(pickle.Unpickler):
    """Loads only plain data (dicts, lists, strings, numbers): a pickle naming any class is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(
            f"the file refers to {module}.{name}; only plain data (dicts, lists, strings, numbers) is loaded "
            "from a refs pickle, since unpickling arbitrary classes can run code"
        )


def load_refcoco(refs_path: str | Path, instances_path: str | Path, images_dir: str | Path, *,
                 split: str = "val") -> tuple[list[Item], dict[int, tuple[int, int]]]:
    """RefCOCO/+/g from the original ``refs(unc).p`` (or ``refs(umd).p``...) + ``instances.json``.

    One item per sentence of every ref in ``split`` ("val", "testA", "testB", "test", ...); the
    target box is the ref's annotation box. Returns (items, declared image sizes).
    """
    refs_path, instances_path, images_dir = Path(refs_path), Path(instances_path), Path(images_dir).resolve()
    if not refs_path.is_file():
        raise FileNotFoundError(f"{refs_path} does not exist")
    with open(refs_path, "rb") as f:
        try:
            refs = _PlainDataUnpickler(f, encoding="utf-8").load()
        except pickle.UnpicklingError as err:
            raise ValueError(f"{refs_path}: {err}") from None
    if not isinstance(refs, list):
        raise ValueError(f"{refs_path}: expected a list of refs")
    data = _read_json(instances_path)
    anns = {int(a["id"]): a for a in data.get("annotations", [])}
    images = {int(im["id"]): im for im in data.get("images", [])}
    items = []
    for ref in refs:
        if ref.get("split") != split:
            continue
        where = f"{refs_path}: ref {ref.get('ref_id')}"
        ann = anns.get(int(ref["ann_id"]))
        image = images.get(int(ref["image_id"]))
        if ann is None or image is None:
            raise ValueError(f"{where}: ann_id {ref['ann_id']} or image_id {ref['image_id']} "
                             f"is not in {instances_path}")
        box = _box(ann["bbox"], where)
        for sentence in ref.get("sentences", []):
            text = str(sentence.get("sent") or sentence.get("raw") or "").strip()
            if text:
                items.append(Item(uid=f"ref{ref['ref_id']}.s{sentence.get('sent_id')}", image_id=int(ref["image_id"]),
                                  image=images_dir / str(image["file_name"]), box=box, question=text))
    if not items:
        splits = sorted({str(r.get("split")) for r in refs})
        raise ValueError(f"{refs_path}: no refs in split {split!r}; the file has {splits}")
    sizes = {i: (int(v["width"]), int(v["height"])) for i, v in images.items() if "width" in v and "height" in v}
    return items, sizes


def _key_order(key: ImageKey) -> tuple[int, Any]:
    return (0, key) if isinstance(key, int) else (1, str(key))


def select_images(keys: Iterable[ImageKey], max_images: int | None, seed: int) -> list[ImageKey]:
    """The paper's random subset (COCO-1000): ``max_images`` image keys drawn without replacement.

    The draw is ``numpy.random.default_rng(seed).choice(len(keys), max_images, replace=False)`` over
    the distinct keys in sorted order, returned sorted; all keys when ``max_images`` is None or
    not smaller than their number.
    """
    ordered = sorted(set(keys), key=_key_order)
    if max_images is None or max_images >= len(ordered):
        return ordered
    if max_images < 1:
        raise ValueError(f"max_images must be >= 1, got {max_images}")
    picked = np.random.default_rng(seed).choice(len(ordered), size=max_images, replace=False)
    return [ordered[i] for i in sorted(picked.tolist())]


def keep_images(items: Sequence[Item], keys: Iterable[ImageKey]) -> list[Item]:
    wanted = set(keys)
    return [it for it in items if it.image_id in wanted]
