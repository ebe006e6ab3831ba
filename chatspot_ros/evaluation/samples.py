"""Samples: the ground truth of every input, turned into prompts (clean, noisy, controls).

A :class:`Sample` is one prompt the model answers: a task, how the region is given (``prompt``),
the ``condition`` (clean, a box-noise scale, or a control) and the ground-truth :class:`Item` it
is scored against. Its ``key`` is stable across runs (``--resume`` skips keys already answered).
The region of a noisy or whole-image sample needs the image size, so it is resolved when the
image is loaded (:func:`resolve_region`), with the same seeded draw every time.
"""
from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from chatspot_ros.evaluation.boxes import box_iou, jitter_box
from chatspot_ros.evaluation.config import EvalConfig
from chatspot_ros.evaluation.datasets import (
    CocoInstances,
    ImageKey,
    Item,
    keep_images,
    load_coco_instances,
    load_coco_text,
    load_detections,
    load_refcoco,
    load_refs_jsonl,
    load_tasks_jsonl,
    load_vqa_jsonl,
    select_images,
)
from chatspot_ros.evaluation.matching import COCO_SYNONYMS, Category, load_synonyms, with_synonyms
from chatspot_ros.evaluation.normalize import normalize_answer
from chatspot_ros.referring import InstructionBuilder, ReferringInstruction, Region

CLEAN = "clean"
WHOLE_IMAGE = "whole_image"
SWAP = "swap"


def noise_condition(scale: float) -> str:
    return f"noise{scale:g}"


@dataclass(frozen=True)
class Sample:
    """One prompt to answer and the ground truth it is scored against."""

    key: str  # "<task>/<prompt>/<condition>/<item uid>"
    task: str  # classification | ocr | vqa | rec | actions
    prompt: str  # box | point | detection | expression
    condition: str  # clean | noise<s> | whole_image | swap
    item: Item  # the ground truth (object A)
    max_new_tokens: int
    noise: float = 0.0
    seed: int = 0
    partner: Item | None = None  # swap: object B, whose region (REC: expression) is asked about


@dataclass
class EvalData:
    """Everything read from the inputs, after the image subset."""

    categories: list[Category] = field(default_factory=list)
    coco: CocoInstances | None = None
    image_ids: list[int] = field(default_factory=list)  # the COCO images evaluated (AP)
    items: dict[str, list[Item]] = field(default_factory=dict)  # "classification", "detection", "ocr", ...
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # image path -> declared (w, h)
    image_categories: dict[ImageKey, set[str]] = field(default_factory=dict)  # actions: categories per image
    candidate_boxes: dict[ImageKey, list[tuple[float, float, float, float]]] = field(default_factory=dict)  # REC chance


def _subset(items: list[Item], config: EvalConfig) -> list[Item]:
    return keep_images(items, select_images((it.image_id for it in items), config.max_images, config.seed))


def load_data(config: EvalConfig) -> EvalData:
    """Read every input of ``config`` and draw the image subset (per input, same seed)."""
    data = EvalData()
    if config.coco is not None:
        coco = load_coco_instances(config.coco, config.images)
        data.coco = coco
        data.image_ids = select_images(coco.images, config.max_images, config.seed)
        synonyms = load_synonyms(config.synonyms) if config.synonyms else None
        cats = with_synonyms(coco.categories, COCO_SYNONYMS, strict=False)
        data.categories = with_synonyms(cats, synonyms) if synonyms else cats
        data.items["classification"] = keep_images(coco.items, data.image_ids)
        data.sizes.update({str(coco.images[i]): s for i, s in coco.sizes.items()})
        if config.detections is not None:
            dets = load_detections(config.detections, coco.images, max_per_image=config.det_max_per_image,
                                   min_score=config.det_min_score)
            data.items["detection"] = keep_images(dets, data.image_ids)
    if config.ocr is not None:
        items, sizes = load_coco_text(config.ocr, config.ocr_images or config.images, split=config.ocr_split)
        if not items:
            raise ValueError(f"{config.ocr}: no legible text with a non-empty utf8_string in images of set "
                             f"{config.ocr_split!r} (ocr_split 'all' takes every image)")
        data.items["ocr"] = _subset(items, config)
        data.sizes.update({str(it.image): sizes[it.image_id] for it in items if it.image_id in sizes})
    if config.vqa is not None:
        data.items["vqa"] = _subset(load_vqa_jsonl(config.vqa), config)
    if config.refs is not None:
        if config.refs.suffix == ".p":
            items, sizes = load_refcoco(config.refs, config.refs_instances, config.refs_images or config.images,
                                        split=config.refs_split)
            data.sizes.update({str(it.image): sizes[it.image_id] for it in items if it.image_id in sizes})
            candidates = _refcoco_candidates(config, items)
        else:
            items = load_refs_jsonl(config.refs)
            candidates = _boxes_per_image(items)
        data.items["rec"] = _subset(items, config)
        data.candidate_boxes = candidates
    if config.tasks is not None:
        items = load_tasks_jsonl(config.tasks)
        for it in items:  # every category the file names on an image, over the whole file
            data.image_categories.setdefault(it.image_id, set()).add(it.category)
            if it.destination:
                data.image_categories[it.image_id].add(it.destination)
        data.items["actions"] = _subset(items, config)
    return data


def _boxes_per_image(items: Sequence[Item]) -> dict[ImageKey, list[tuple[float, float, float, float]]]:
    boxes: dict[ImageKey, list[tuple[float, float, float, float]]] = defaultdict(list)
    for it in items:
        if it.box is not None and it.box not in boxes[it.image_id]:
            boxes[it.image_id].append(it.box)
    return dict(boxes)


def _refcoco_candidates(config: EvalConfig, items: Sequence[Item]) -> dict[ImageKey, list]:
    """RefCOCO: the chance baseline picks among all COCO objects of the image."""
    coco = load_coco_instances(config.refs_instances, config.refs_images or config.images)
    wanted = {it.image_id for it in items}
    return _boxes_per_image([it for it in coco.items if it.image_id in wanted])


# -- partners of the region-swap control --------------------------------------------------------

def _stable_hash(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def _answer_set(item: Item) -> set[str]:
    return {normalize_answer(a) for a in item.answers}


def _differs(task: str, a: Item, b: Item) -> bool:
    """Whether B's truth differs from A's, so that a model reading B's region is wrong for A."""
    if task == "classification":
        return a.category_id != b.category_id
    if task == "ocr":
        return _answer_set(a).isdisjoint(_answer_set(b))
    if task == "vqa":
        same_kind = (a.box is None) == (b.box is None)
        return same_kind and normalize_answer(a.question) == normalize_answer(b.question) and \
            _answer_set(a).isdisjoint(_answer_set(b))
    if task == "rec":
        return box_iou(a.box, b.box) < 0.5 and normalize_answer(a.question) != normalize_answer(b.question)
    if task == "actions":
        return a.category != b.category
    raise ValueError(f"unknown task {task!r}")


def swap_partner(task: str, item: Item, same_image: Sequence[Item], seed: int) -> Item | None:
    """Object B for A's swap control: another object of A's image whose truth differs (seeded)."""
    candidates = sorted((b for b in same_image if b.uid != item.uid and _differs(task, item, b)), key=lambda b: b.uid)
    if not candidates:
        return None
    rng = np.random.default_rng([seed, _stable_hash(f"{task}/{item.uid}")])
    return candidates[int(rng.integers(len(candidates)))]


# -- samples -----------------------------------------------------------------------------------

def _by_image(items: Sequence[Item]) -> dict[ImageKey, list[Item]]:
    groups: dict[ImageKey, list[Item]] = defaultdict(list)
    for it in items:
        groups[it.image_id].append(it)
    return groups


def _variants(task: str, prompt: str, items: Sequence[Item], config: EvalConfig, *, noise: bool,
              controls: Sequence[str]) -> list[Sample]:
    tokens = config.task_max_new_tokens(task)
    out = []
    groups = _by_image(items)
    for it in items:
        def sample(condition: str, **kw: object) -> Sample:
            return Sample(f"{task}/{prompt}/{condition}/{it.uid}", task, prompt, condition, it, tokens,
                          seed=config.seed, **kw)  # type: ignore[arg-type]

        out.append(sample(CLEAN))
        if noise:
            out.extend(sample(noise_condition(s), noise=s) for s in config.noise)
        if WHOLE_IMAGE in controls:
            out.append(sample(WHOLE_IMAGE))
        if SWAP in controls:
            partner = swap_partner(task, it, groups[it.image_id], config.seed)
            if partner is not None:
                out.append(sample(SWAP, partner=partner))
    return out


def make_samples(data: EvalData, config: EvalConfig) -> list[Sample]:
    """Every prompt of the run, ordered by image then task (one encode per image)."""
    controls = (WHOLE_IMAGE, SWAP) if config.controls else ()
    samples: list[Sample] = []
    cls_items = data.items.get("classification", [])
    for prompt in config.classification_prompts:
        samples += _variants("classification", prompt, cls_items, config, noise=prompt == "box", controls=controls)
    dets = data.items.get("detection", [])
    samples += _variants("classification", "detection", dets, config, noise=False, controls=())
    samples += _variants("ocr", "box", data.items.get("ocr", []), config, noise=False, controls=controls)
    vqa = data.items.get("vqa", [])
    samples += _variants("vqa", "box", [it for it in vqa if it.box is not None], config, noise=True, controls=controls)
    samples += _variants("vqa", "point", [it for it in vqa if it.box is None], config, noise=False,
                         controls=controls)
    samples += _variants("rec", "expression", data.items.get("rec", []), config, noise=False,
                         controls=(SWAP,) if config.controls else ())
    samples += _variants("actions", "box", data.items.get("actions", []), config, noise=False, controls=controls)
    keys = [s.key for s in samples]
    if len(set(keys)) != len(keys):
        raise ValueError("internal error: two samples share a key")
    order = {path: i for i, path in enumerate(dict.fromkeys(str(s.item.image) for s in samples))}
    return sorted(samples, key=lambda s: order[str(s.item.image)])  # stable: task order kept per image


# -- regions and instructions --------------------------------------------------------------------

def _item_region(item: Item, prompt: str) -> Region:
    """A's (or B's) region as the prompt kind gives it: a box, or a click (the box centre without one)."""
    if prompt == "point":
        if item.point is not None:
            return Region.point(*item.point)
        x0, y0, x1, y1 = item.box
        return Region.point((x0 + x1) / 2.0, (y0 + y1) / 2.0)
    return Region.box(*item.box)


def resolve_region(sample: Sample, image_size: tuple[int, int]) -> Region | None:
    """The region the prompt holds: A's, B's (swap), noisy (seeded), or the whole image; None for REC."""
    if sample.task == "rec":
        return None
    width, height = image_size
    if sample.condition == WHOLE_IMAGE:
        return Region.box(0.0, 0.0, float(width), float(height))
    source = sample.partner if sample.condition == SWAP else sample.item
    region = _item_region(source, sample.prompt)
    if sample.noise:
        rng = np.random.default_rng([sample.seed, round(sample.noise * 1000), _stable_hash(sample.item.uid),
                                     _stable_hash(sample.task + sample.prompt)])
        region = Region.box(*jitter_box(source.box, sample.noise, rng, image_size))
    return region


def build_instruction(builder: InstructionBuilder, sample: Sample, region: Region | None,
                      image_size: tuple[int, int]) -> ReferringInstruction:
    """The task's prompt through the checkpoint's InstructionBuilder (its dialect and geometry)."""
    if sample.task == "classification":
        return builder.what_is_in_region(region, image_size)
    if sample.task == "ocr":
        return builder.read_text(region, image_size)
    if sample.task == "vqa":
        return builder.ask(sample.item.question, [region], image_size)
    if sample.task == "rec":
        expression = sample.partner.question if sample.condition == SWAP else sample.item.question
        return builder.find_region(expression, image_size)
    if sample.task == "actions":
        return builder.suggest_actions(sample.item.question, region, image_size)
    raise ValueError(f"unknown task {sample.task!r}")
