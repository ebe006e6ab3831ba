"""Helpers of the evaluation tests: OCR images with drawn text, an oracle ChatSpot, COCOeval on files.

The tiny random-weight checkpoint answers gibberish, which checks mechanics but scores 0 on
everything; :class:`OracleChatSpot` answers from the ground truth through the real prompts, so
the metrics are also checked at values other than 0 (tests that can fail).
"""
from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

OCR_TEXTS = (("STOP", "val"), ("EXIT 12", "val"), ("OPEN", "train"))


def write_ocr_fixture(out: Path) -> Path:
    """Three 160x64 images with one word each (PIL), as COCO-Text v2: one per set, one illegible extra ann."""
    from PIL import Image, ImageDraw, ImageFont

    (out / "images").mkdir(parents=True, exist_ok=True)
    font = ImageFont.load_default(size=20)
    imgs, anns = {}, {}
    for index, (text, split) in enumerate(OCR_TEXTS):
        image_id = 100 + index
        name = f"COCO_train2014_{image_id:012d}.jpg"
        im = Image.new("RGB", (160, 64), (235, 235, 235))
        draw = ImageDraw.Draw(im)
        draw.text((20, 20), text, fill=(10, 10, 10), font=font)
        x0, y0, x1, y1 = draw.textbbox((20, 20), text, font=font)
        im.save(out / "images" / name, quality=95)
        imgs[str(image_id)] = {"id": image_id, "file_name": name, "width": 160, "height": 64, "set": split}
        anns[str(2 * index + 1)] = {"id": 2 * index + 1, "image_id": image_id, "bbox": [x0, y0, x1 - x0, y1 - y0],
                                    "utf8_string": text, "legibility": "legible", "language": "english",
                                    "class": "machine printed", "area": float((x1 - x0) * (y1 - y0))}
        anns[str(2 * index + 2)] = {"id": 2 * index + 2, "image_id": image_id, "bbox": [2, 2, 10, 10],
                                    "utf8_string": "", "legibility": "illegible", "language": "na",
                                    "class": "others", "area": 100.0}
    data = {"info": {"description": "test fixture in COCO-Text v2 layout"}, "imgs": imgs, "anns": anns,
            "imgToAnns": {}, "cats": {}}
    path = out / "cocotext.v2.json"
    path.write_text(json.dumps(data))
    return path


def cocoeval_from_files(tmp_path, gt, results, image_ids=None) -> list[float]:
    """pycocotools' own pipeline on files, as its README shows it."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt_path, res_path = tmp_path / "gt.json", tmp_path / "res.json"
    gt_path.write_text(json.dumps({"info": {}, "licenses": [], **gt}))
    res_path.write_text(json.dumps(results))
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(gt_path))
        dt = coco.loadRes(str(res_path))
        ev = COCOeval(coco, dt, "bbox")
        if image_ids is not None:
            ev.params.imgIds = list(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return list(ev.stats[:6])


# -- an oracle that answers from the ground truth ----------------------------------------------------

@dataclass
class _Generation:
    tokens: int


@dataclass
class _Answer:
    text: str
    generation: _Generation


class OracleChatSpot:
    """A ChatSpot whose ``answer`` looks (frame key, prompt) up in a table; builder and runtime are the real ones."""

    def __init__(self, real: Any, table: dict[tuple[str, str], str], default: str = "I do not know.") -> None:
        self.builder = real.builder
        self.runtime = real.runtime
        self.table = table
        self.default = default
        self.calls: list[int] = []

    def answer(self, frame: np.ndarray, frame_key: Any, requests: Sequence[Any], gen: Any) -> list[_Answer]:
        self.calls.append(len(requests))
        return [_Answer(self.table.get((str(frame_key), r.text), self.default), _Generation(3)) for r in requests]


def oracle_table(real: Any, config: Any, answer_for: Callable[[Any, tuple[int, int]], str | None]
                 ) -> dict[tuple[str, str], str]:
    """(image path, instruction text) -> answer, for every sample of ``config`` that ``answer_for`` answers."""
    from chatspot_ros.evaluation.runner import read_image
    from chatspot_ros.evaluation.samples import build_instruction, load_data, make_samples, resolve_region

    table: dict[tuple[str, str], str] = {}
    sizes: dict[str, tuple[int, int]] = {}
    for s in make_samples(load_data(config), config):
        key = str(s.item.image)
        if key not in sizes:
            frame = read_image(s.item.image)
            sizes[key] = (frame.shape[1], frame.shape[0])
        text = answer_for(s, sizes[key])
        if text is not None:
            instruction = build_instruction(real.builder, s, resolve_region(s, sizes[key]), sizes[key])
            table[(key, instruction.text)] = text
    return table
