"""``chatspot-train data build``: annotation files in standard formats -> training Samples.

Readers for COCO instances JSON (boxes, categories, polygon segmentations, optional caption /
expression / attributes / click fields per annotation, as the tabletop world writes them),
COCO-Text v2 style OCR JSON, region QA JSONL, referring-expression JSONL, task JSONL and image
caption JSONL. Each image's objects become ObjectRecords; ``sources.sample_turns`` draws
``conversations_per_image`` conversations per image (seeded).
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from chatspot_ros.referring import Region, RegionKind
from chatspot_ros.training.conversations import ANSWER_REGION, Sample, Turn
from chatspot_ros.training.sources import ObjectRecord, SampleMix, image_turns, sample_turns


def _read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{line_no}: not JSON ({err})") from None
    return rows


def _xyxy(bbox: Sequence[float]) -> tuple[float, float, float, float]:
    x, y, w, h = (float(v) for v in bbox)
    if w < 0 or h < 0:
        raise ValueError(f"bbox {list(bbox)} has a negative width or height (COCO boxes are [x, y, w, h])")
    return (x, y, x + w, y + h)


def _image_folder(json_path: Path, images: str | None) -> Path:
    if images:
        return Path(images)
    return json_path.parent / "images" if (json_path.parent / "images").is_dir() else json_path.parent


class ImageTable:
    """Objects and image-level text per image path, merged across sources."""

    def __init__(self) -> None:
        self.size: dict[str, tuple[int, int]] = {}
        self.objects: dict[str, list[ObjectRecord]] = defaultdict(list)
        self.image_level: dict[str, list[Turn]] = defaultdict(list)
        self.extra_turns: dict[str, list[Turn]] = defaultdict(list)  # QA, refs, tasks: fixed turns

    def add_size(self, image: str, width: int, height: int) -> None:
        self.size[image] = (int(width), int(height))

    def size_of(self, image: str) -> tuple[int, int]:
        if image not in self.size:
            from PIL import Image

            with Image.open(image) as im:
                self.size[image] = im.size
        return self.size[image]


def read_coco(table: ImageTable, path: str | Path, images: str | None = None) -> None:
    path = Path(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    folder = _image_folder(path, images)
    categories = {c["id"]: c["name"] for c in data.get("categories", [])}
    files = {}
    for im in data["images"]:
        files[im["id"]] = str(folder / im["file_name"])
        table.add_size(files[im["id"]], im["width"], im["height"])
    for ann in data.get("annotations", []):
        if ann.get("iscrowd", 0):
            continue
        polygon: tuple[tuple[float, float], ...] = ()
        seg = ann.get("segmentation")
        if isinstance(seg, list) and seg and isinstance(seg[0], list) and len(seg[0]) >= 6:
            flat = seg[0]
            polygon = tuple((float(flat[i]), float(flat[i + 1])) for i in range(0, len(flat) - 1, 2))
        click = ann.get("click")
        table.objects[files[ann["image_id"]]].append(ObjectRecord(
            box=_xyxy(ann["bbox"]), category=categories.get(ann["category_id"], ""), polygon=polygon,
            caption=str(ann.get("caption", "")), expression=str(ann.get("expression", "")),
            attributes={k: str(v) for k, v in ann.get("attributes", {}).items() if k in ("colour", "color", "shape")},
            click=(float(click[0]), float(click[1])) if click else None,
        ))


def read_ocr(table: ImageTable, path: str | Path, images: str | None = None) -> None:
    """COCO-Text v2: ``imgs`` (or ``images``) and ``anns`` (or ``annotations``) with utf8_string, bbox."""
    path = Path(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    folder = _image_folder(path, images)
    imgs = data.get("imgs") or {str(im["id"]): im for im in data.get("images", [])}
    anns = data.get("anns") or {str(a["id"]): a for a in data.get("annotations", [])}
    for im in imgs.values():
        table.add_size(str(folder / im["file_name"]), im["width"], im["height"])
    for ann in anns.values():
        text = str(ann.get("utf8_string", "")).strip()
        if not text or ann.get("legibility", "legible") != "legible":
            continue
        image = imgs[str(ann["image_id"])]
        table.objects[str(folder / image["file_name"])].append(ObjectRecord(box=_xyxy(ann["bbox"]), text=text))


def _row_image(path: Path, row: dict[str, Any]) -> str:
    image = Path(row["image"])
    return str(image if image.is_absolute() else path.parent / image)


def _row_region(row: dict[str, Any]) -> Region:
    if "box" in row or "bbox" in row:
        x0, y0, x1, y1 = _xyxy(row.get("box", row.get("bbox")))
        return Region(RegionKind.BOX, ((x0, y0), (x1, y1)))
    if "point" in row:
        return Region(RegionKind.POINT, ((float(row["point"][0]), float(row["point"][1])),))
    raise ValueError(f"a region row needs 'box', 'bbox' or 'point': {row}")


def read_qa(table: ImageTable, path: str | Path) -> None:
    path = Path(path)
    for row in _read_jsonl(path):
        answers = row.get("answers") or [row.get("answer", "")]
        table.extra_turns[_row_image(path, row)].append(
            Turn("region_question", str(answers[0]), (_row_region(row),), text=str(row["question"]), style="short"))


def read_refs(table: ImageTable, path: str | Path) -> None:
    path = Path(path)
    for row in _read_jsonl(path):
        x0, y0, x1, y1 = _xyxy(row["bbox"])
        box = Region(RegionKind.BOX, ((x0, y0), (x1, y1)))
        table.extra_turns[_row_image(path, row)].append(
            Turn("find_region", ANSWER_REGION, text=str(row["expression"]), answer_regions=(box,)))


def read_tasks(table: ImageTable, path: str | Path) -> None:
    path = Path(path)
    for row in _read_jsonl(path):
        steps = "\n".join(f"{i}. {s}" for i, s in enumerate(row["plan"], 1))
        table.extra_turns[_row_image(path, row)].append(
            Turn("suggest_actions", steps, (_row_region(row),), text=str(row["task"])))


def read_captions(table: ImageTable, path: str | Path) -> None:
    path = Path(path)
    for row in _read_jsonl(path):
        table.image_level[_row_image(path, row)] += image_turns(str(row["caption"]), ())


def read_world(table: ImageTable, folder: str | Path) -> None:
    """A folder written by ``chatspot_ros.world.annotations.write_split`` (COCO + refs + tasks)."""
    folder = Path(folder)
    read_coco(table, folder / "instances.json")
    if (folder / "tasks.jsonl").exists():
        read_tasks(table, folder / "tasks.jsonl")


def build_samples(*, coco: Iterable[str] = (), images: str | None = None, ocr: Iterable[str] = (),
                  qa: Iterable[str] = (), refs: Iterable[str] = (), tasks: Iterable[str] = (),
                  captions: Iterable[str] = (), world: Iterable[str] = (), conversations_per_image: int = 4,
                  max_turns: int = 3, seed: int = 0, mix: SampleMix | None = None) -> list[Sample]:
    """Samples from every given source, ``conversations_per_image`` drawn conversations per image."""
    table = ImageTable()
    for p in coco:
        read_coco(table, p, images)
    for p in ocr:
        read_ocr(table, p, images)
    for p in qa:
        read_qa(table, p)
    for p in refs:
        read_refs(table, p)
    for p in tasks:
        read_tasks(table, p)
    for p in captions:
        read_captions(table, p)
    for p in world:
        read_world(table, p)
    mix = mix or SampleMix(max_turns=max_turns)
    rng = np.random.default_rng(seed)
    samples: list[Sample] = []
    images_all = sorted(set(table.objects) | set(table.image_level) | set(table.extra_turns))
    for image in images_all:
        size = table.size_of(image)
        for k in range(conversations_per_image):
            turns = sample_turns(table.objects.get(image, []), rng, mix, table.image_level.get(image, []))
            extra = table.extra_turns.get(image, [])
            if extra and (not turns or rng.uniform() < 0.5):
                turns.append(extra[int(rng.integers(len(extra)))])
            if turns:
                samples.append(Sample(f"{Path(image).stem}-{k}", image, size, tuple(turns[:max_turns]), "data"))
    return samples
