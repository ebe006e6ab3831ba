"""MGVLID-style samples from annotations: region classification, captions, attributes, REC, tasks.

Every function here turns plain annotation records (what COCO instances JSON, OCR JSON, QA JSONL
and the tabletop world hold) into structured Turns; ``conversations.render_turn`` writes them
with the checkpoint's own InstructionBuilder. The mix follows the paper's Sec. 3.3: regions as
boxes, clicks (points inside the object) and polygons; answer-style tags; the reverse direction
(expression -> region) and multi-turn conversations.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from chatspot_ros.referring import Region, RegionKind
from chatspot_ros.training.conversations import ANSWER_REGION, Turn

REGION_KINDS = ("box", "point", "polygon")


@dataclass(frozen=True)
class ObjectRecord:
    """One annotated object of an image (COCO instance, OCR word, world object)."""

    box: tuple[float, float, float, float]  # x_min, y_min, x_max, y_max, source pixels
    category: str = ""
    polygon: tuple[tuple[float, float], ...] = ()
    caption: str = ""  # region caption ("the small red cube on the left")
    expression: str = ""  # a referring expression that is unique in the image
    attributes: dict[str, str] = field(default_factory=dict)  # e.g. {"colour": "red", "shape": "cube"}
    text: str = ""  # OCR: the text written in the region
    click: tuple[float, float] | None = None  # a point known to be on the object
    task: str = ""  # a task about this object and its plan steps
    plan: tuple[str, ...] = ()


@dataclass(frozen=True)
class SampleMix:
    """How often each kind of turn and region appears (weights, normalized when drawn)."""

    classify: float = 4.0
    describe: float = 1.0
    attribute: float = 1.0
    locate: float = 3.0
    task: float = 1.5
    read_text: float = 2.0
    image_level: float = 0.5
    region_kinds: tuple[float, float, float] = (0.5, 0.35, 0.15)  # box, point, polygon
    styles: tuple[float, float, float] = (0.6, 0.3, 0.1)  # none, short, detail
    max_turns: int = 3

    def with_weights(self, spec: str) -> SampleMix:
        """A copy with turn weights from ``"classify=4,locate=1"`` (``chatspot-train run --mix``)."""
        from dataclasses import replace

        kinds = ("classify", "describe", "attribute", "locate", "task", "read_text", "image_level")
        changes: dict[str, float] = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            name, _, value = item.partition("=")
            if name not in kinds or not value:
                raise ValueError(f"--mix {item!r}: expected KIND=WEIGHT with KIND one of {', '.join(kinds)}")
            changes[name] = float(value)
        return replace(self, **changes)


def region_of(obj: ObjectRecord, kind: str, rng: np.random.Generator) -> Region:
    """The object's region as a box, a click inside it, or its polygon."""
    x0, y0, x1, y1 = obj.box
    if kind == "point":
        if obj.click is not None:
            return Region(RegionKind.POINT, (obj.click,))
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2  # no known click: near the box centre
        dx, dy = rng.uniform(-0.15, 0.15) * (x1 - x0), rng.uniform(-0.15, 0.15) * (y1 - y0)
        return Region(RegionKind.POINT, ((cx + dx, cy + dy),))
    if kind == "polygon" and len(obj.polygon) >= 3:
        return Region(RegionKind.POLYGON, tuple(obj.polygon))
    return Region(RegionKind.BOX, ((x0, y0), (x1, y1)))


def _pick(rng: np.random.Generator, weights: Sequence[float]) -> int:
    w = np.asarray(weights, dtype=np.float64)
    return int(rng.choice(len(w), p=w / w.sum()))


def _article(name: str) -> str:
    return ("an " if name[:1].lower() in "aeiou" else "a ") + name


def classify_turn(obj: ObjectRecord, rng: np.random.Generator, mix: SampleMix) -> Turn:
    region = region_of(obj, REGION_KINDS[_pick(rng, mix.region_kinds)], rng)
    style = (None, "short", "detail")[_pick(rng, mix.styles)]
    if style == "short":
        answer = obj.category
    elif style == "detail" and obj.caption:
        answer = f"It is {obj.caption}."
    else:
        answer = f"{_article(obj.category).capitalize()}."
    return Turn("what_in_region", answer, (region,), style=style)


def describe_turn(obj: ObjectRecord, rng: np.random.Generator, mix: SampleMix) -> Turn:
    region = region_of(obj, REGION_KINDS[_pick(rng, mix.region_kinds)], rng)
    caption = obj.caption or f"the {obj.category}"
    return Turn("describe_region", f"This is {caption}.", (region,))


def attribute_turn(obj: ObjectRecord, rng: np.random.Generator, mix: SampleMix) -> Turn | None:
    if not obj.attributes:
        return None
    name = sorted(obj.attributes)[int(rng.integers(len(obj.attributes)))]
    region = region_of(obj, REGION_KINDS[_pick(rng, mix.region_kinds)], rng)
    return Turn("region_question", obj.attributes[name], (region,), text=f"What {name} is this object?",
                style="short")


def locate_turn(obj: ObjectRecord, rng: np.random.Generator) -> Turn | None:
    """REC: the expression in the question, the box in the answer."""
    expression = obj.expression or (obj.caption if rng.uniform() < 0.5 else "")
    if not expression:
        return None
    box = Region(RegionKind.BOX, ((obj.box[0], obj.box[1]), (obj.box[2], obj.box[3])))
    return Turn("find_region", ANSWER_REGION, text=expression, answer_regions=(box,))


def task_turn(obj: ObjectRecord, rng: np.random.Generator, mix: SampleMix) -> Turn | None:
    if not obj.task or not obj.plan:
        return None
    region = region_of(obj, REGION_KINDS[_pick(rng, mix.region_kinds[:2])], rng)  # box or click
    steps = "\n".join(f"{i}. {s}" for i, s in enumerate(obj.plan, 1))
    return Turn("suggest_actions", steps, (region,), text=obj.task)


def read_text_turn(obj: ObjectRecord, rng: np.random.Generator) -> Turn | None:
    if not obj.text:
        return None
    box = Region(RegionKind.BOX, ((obj.box[0], obj.box[1]), (obj.box[2], obj.box[3])))
    return Turn("text_in_region", obj.text, (box,))


def image_turns(caption: str, questions: Sequence[tuple[str, str]]) -> list[Turn]:
    out = [Turn("describe_image", caption)] if caption else []
    out += [Turn("image_question", a, text=q) for q, a in questions]
    return out


def sample_turns(objects: Sequence[ObjectRecord], rng: np.random.Generator, mix: SampleMix = SampleMix(),
                 image_level: Sequence[Turn] = ()) -> list[Turn]:
    """A conversation of 1 to ``mix.max_turns`` turns about different objects of one image."""
    if not objects and not image_level:
        return []
    n = int(rng.integers(1, mix.max_turns + 1))
    order = rng.permutation(len(objects)) if len(objects) else np.array([], dtype=int)
    turns: list[Turn] = []
    kinds = ("classify", "describe", "attribute", "locate", "task", "read_text", "image_level")
    weights = [getattr(mix, k) for k in kinds]
    k = 0
    tries = 0
    while len(turns) < n and tries < 4 * n + 4:
        tries += 1
        kind = kinds[_pick(rng, weights)]
        if kind == "image_level":
            if image_level:
                turns.append(image_level[int(rng.integers(len(image_level)))])
            continue
        if not len(order):
            continue
        obj = objects[int(order[k % len(order)])]
        turn: Any
        if kind == "classify":
            turn = classify_turn(obj, rng, mix) if obj.category else None
        elif kind == "describe":
            turn = describe_turn(obj, rng, mix) if obj.category else None
        elif kind == "attribute":
            turn = attribute_turn(obj, rng, mix)
        elif kind == "locate":
            turn = locate_turn(obj, rng)
        elif kind == "task":
            turn = task_turn(obj, rng, mix)
        else:
            turn = read_text_turn(obj, rng)
        if turn is not None:
            turns.append(turn)
            k += 1
    return turns
