"""Answers -> prediction records: the per-sample rule of every task (docs/evaluation.md, "Tasks").

A record is one line of ``predictions.jsonl``. Every metric is computed from records alone, so a
resumed run scores old and new answers the same way.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from chatspot_ros.evaluation.boxes import Box, box_iou, xyxy_to_xywh
from chatspot_ros.evaluation.datasets import ImageKey, Item
from chatspot_ros.evaluation.matching import CategoryMatcher
from chatspot_ros.evaluation.normalize import contains_answer, find_phrase, normalize_words
from chatspot_ros.evaluation.samples import SWAP, Sample
from chatspot_ros.referring import Dialect, ImageGeometry, Region, RegionKind, parse_regions, parse_steps

REC_IOU = 0.5


@dataclass(frozen=True)
class Answered:
    """What the model was asked about one sample and what it said (or why it could not be asked)."""

    sample: Sample
    region: Region | None = None  # the region in the prompt, after the builder's clip
    instruction: str = ""
    answer: str = ""
    tokens: int = 0
    error: str = ""  # the sample could not be asked (e.g. its region lies outside the image)


@dataclass
class ScoringContext:
    matcher: CategoryMatcher | None
    category_names: Mapping[int, str]
    dialect: Dialect
    geometry: ImageGeometry
    image_categories: Mapping[ImageKey, set[str]]
    candidate_boxes: Mapping[ImageKey, Sequence[Box]]


def region_json(region: Region | None) -> dict[str, Any] | None:
    if region is None:
        return None
    if region.kind is RegionKind.POINT:
        return {"kind": "point", "point": [round(v, 2) for v in region.points[0]]}
    if region.kind is RegionKind.BOX:
        (x0, y0), (x1, y1) = region.points
        return {"kind": "box", "bbox": [round(v, 2) for v in xyxy_to_xywh((x0, y0, x1, y1))]}
    return {"kind": "polygon", "points": [[round(x, 2), round(y, 2)] for x, y in region.points]}


def _xywh(box: Box | None) -> list[float] | None:
    return None if box is None else [round(v, 3) for v in xyxy_to_xywh(box)]


def _base(a: Answered) -> dict[str, Any]:
    s = a.sample
    record: dict[str, Any] = {
        "key": s.key, "task": s.task, "prompt": s.prompt, "condition": s.condition,
        "image_id": s.item.image_id, "image": str(s.item.image), "region": region_json(a.region),
        "instruction": a.instruction, "answer": a.answer, "tokens": a.tokens,
    }
    if s.partner is not None:
        record["partner"] = s.partner.uid
    if a.error:
        record.update(error=a.error, correct=None)
    return record


def judge_plan(steps: Sequence[str], target: str, destination: str | None,
               image_categories: set[str]) -> tuple[bool, str]:
    """The action-plan rule: >= 2 steps, one names the target, none names another object of the image.

    "Another object" is any category of the image except the target and the task's destination.
    A step is checked for other names after the target's and destination's own words are masked,
    so a category whose name is part of the target's ("cube" in "red cube") does not count.
    """
    if len(steps) < 2:
        return False, f"{len(steps)} step(s); a plan needs at least 2"
    target_words = normalize_words(target)
    own = [target_words] + ([normalize_words(destination)] if destination else [])
    others = sorted(c for c in image_categories if c != target and c != destination)
    names_target = False
    for step in steps:
        words = normalize_words(step)
        names_target = names_target or find_phrase(words, target_words) >= 0
        masked = list(words)
        for phrase in own:
            while (pos := find_phrase(masked, phrase)) >= 0:
                masked[pos:pos + len(phrase)] = ["\0"] * len(phrase)
        for other in others:
            if find_phrase(masked, normalize_words(other)) >= 0:
                return False, f"a step names {other!r}, another object of the image"
    if not names_target:
        return False, f"no step names the target {target!r}"
    return True, ""


_KIND_WORDS = {"put": ("onto", "release"), "push": ("push",), "pick": ("grasp", "lift")}


def task_reading(task: str) -> tuple[str, str | None] | None:
    """(kind, direction) a task text asks for, in the world's task language ('pick up the X',
    'push the X to the left', 'put the X on the Y'); None for a text outside that language."""
    words = normalize_words(task)
    if words[:2] == ["pick", "up"]:
        return "pick", None
    if words[:1] == ["push"] and len(words) >= 3 and words[-2] == "to" and words[-1] in ("left", "right"):
        return "push", words[-1]
    if words[:1] == ["put"] and "on" in words[1:]:
        return "put", None
    return None


def judge_plan_strict(steps: Sequence[str], task: str, target: str, destination: str | None,
                      image_categories: set[str]) -> tuple[bool | None, str]:
    """The strict plan rule: the loose rule (``judge_plan``) and the plan's kind, direction and
    destination all those of the task. Kind: the plan's verbs ('onto'/'release': put, 'push':
    push, 'grasp'/'lift': pick), exactly one kind; direction (push): the step that pushes names
    the task's direction and no other; destination (put): a step names it. None (not judged) for
    a task outside the world's task language."""
    reading = task_reading(task)
    if reading is None:
        return None, "task outside the world's task language"
    kind, direction = reading
    correct, reason = judge_plan(steps, target, destination, image_categories)
    if not correct:
        return False, reason
    step_words = [normalize_words(s) for s in steps]
    kinds = {k for k, verbs in _KIND_WORDS.items() if any(v in w for w in step_words for v in verbs)}
    if kinds != {kind}:
        return False, f"the plan's kind is {'/'.join(sorted(kinds)) or 'none'}, the task's {kind}"
    if kind == "push":
        pushed = [w for w in step_words if "push" in w]
        said = {d for w in pushed for d in ("left", "right") if d in w}
        if said != {direction}:
            return False, f"the plan pushes {'/'.join(sorted(said)) or 'nowhere'}, the task {direction}"
    if kind == "put":
        if not destination or not any(find_phrase(w, normalize_words(destination)) >= 0 for w in step_words):
            return False, f"no step names the destination {destination!r}"
    return True, ""


def _first_box(text: str, ctx: ScoringContext, image_size: tuple[int, int]) -> Box | None:
    """The answer's first box (a polygon counts by its bounding box); None when it has neither."""
    for region in parse_regions(text, ctx.dialect, ctx.geometry, image_size):
        if region.kind is RegionKind.BOX:
            (x0, y0), (x1, y1) = region.points
            return (x0, y0, x1, y1)
        if region.kind is RegionKind.POLYGON:
            xs, ys = [p[0] for p in region.points], [p[1] for p in region.points]
            return (min(xs), min(ys), max(xs), max(ys))
    return None


def _rec_chance(item: Item, ctx: ScoringContext) -> float:
    boxes = ctx.candidate_boxes.get(item.image_id) or [item.box]
    return sum(1 for b in boxes if box_iou(b, item.box) >= REC_IOU) / len(boxes)


def _score_text(a: Answered, record: dict[str, Any]) -> None:
    item, partner = a.sample.item, a.sample.partner
    if a.sample.task == "ocr":
        record["gt_text"] = item.answers[0]
    else:
        record.update(question=item.question, answers=list(item.answers))
    record["correct"] = any(contains_answer(a.answer, t) for t in item.answers)
    if partner is not None:
        record["answers_partner"] = any(contains_answer(a.answer, t) for t in partner.answers)


def _score_rec(a: Answered, record: dict[str, Any], ctx: ScoringContext, image_size: tuple[int, int]) -> None:
    item, partner = a.sample.item, a.sample.partner
    pred = _first_box(a.answer, ctx, image_size)
    iou = box_iou(pred, item.box) if pred is not None else None
    record.update(expression=partner.question if partner is not None else item.question,
                  gt_bbox=_xywh(item.box), pred_bbox=_xywh(pred), parsed=pred is not None,
                  iou=None if iou is None else round(iou, 4), correct=iou is not None and iou >= REC_IOU,
                  chance=_rec_chance(item, ctx))
    if partner is not None:
        record["answers_partner"] = pred is not None and box_iou(pred, partner.box) >= REC_IOU


def _score_actions(a: Answered, record: dict[str, Any], ctx: ScoringContext) -> None:
    item, partner = a.sample.item, a.sample.partner
    steps = parse_steps(a.answer)
    categories = ctx.image_categories.get(item.image_id, set()) | {item.category}
    correct, reason = judge_plan(steps, item.category, item.destination, categories)
    strict, strict_reason = judge_plan_strict(steps, item.question, item.category, item.destination, categories)
    record.update(task_text=item.question, category=item.category, destination=item.destination, steps=steps,
                  correct=correct, reason=reason, strict=strict, strict_reason=strict_reason)
    if partner is not None:
        record["answers_partner"] = any(find_phrase(normalize_words(s), normalize_words(partner.category)) >= 0
                                        for s in steps)


def score_image(answered: Sequence[Answered], ctx: ScoringContext, image_size: tuple[int, int]) -> list[dict[str, Any]]:
    """One record per answered sample of one image, in order (classification answers matched in one batch)."""
    records = [_base(a) for a in answered]
    cls = [i for i, a in enumerate(answered) if a.sample.task == "classification" and not a.error]
    if cls and ctx.matcher is None:
        raise ValueError("region classification needs a category matcher")
    predicted = ctx.matcher.match([answered[i].answer for i in cls]) if cls else []
    for i, pred in zip(cls, predicted):
        s, record = answered[i].sample, records[i]
        record.update(bbox=_xywh(s.item.box), pred_category_id=pred,
                      pred_category=ctx.category_names.get(pred) if pred is not None else None)
        if s.prompt == "detection":
            record.update(score=s.item.score, correct=None)
            continue
        record.update(gt_category_id=s.item.category_id, gt_category=ctx.category_names.get(s.item.category_id),
                      correct=pred == s.item.category_id)
        if s.condition == SWAP:
            record["answers_partner"] = pred == s.partner.category_id
    for a, record in zip(answered, records):
        if a.error or a.sample.task == "classification":
            continue
        if a.sample.task in ("ocr", "vqa"):
            _score_text(a, record)
        elif a.sample.task == "rec":
            _score_rec(a, record, ctx, image_size)
        elif a.sample.task == "actions":
            _score_actions(a, record, ctx)
    return records
