"""COCO box AP through pycocotools' own COCOeval (no re-implementation), quietly."""
from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Mapping, Sequence
from typing import Any

AP_KEYS: tuple[str, ...] = ("ap", "ap50", "ap75", "aps", "apm", "apl")


def _coco_from_dict(dataset: Mapping[str, Any]) -> Any:
    from pycocotools.coco import COCO

    coco = COCO()
    data = copy.deepcopy(dict(dataset))
    data.setdefault("info", {})
    data.setdefault("licenses", [])
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_box_ap(ground_truth: Mapping[str, Any], results: Sequence[Mapping[str, Any]],
                image_ids: Sequence[int] | None = None) -> dict[str, float | None]:
    """AP, AP50, AP75, APs, APm, APl (fractions in [0, 1]) of box ``results`` on ``ground_truth``.

    ``ground_truth``: a COCO instances dict (``images``, ``annotations``, ``categories``);
    ``results``: COCO results ``{image_id, category_id, bbox: [x, y, w, h], score}``;
    ``image_ids``: the images evaluated (default: all of the ground truth). Values are
    ``COCOeval.stats[0:6]``; pycocotools' -1 (no ground truth in that area range) becomes None.
    With no results at all (pycocotools cannot load an empty list) an AP is 0.0 where its area
    range has ground truth and None where it has none, which is what COCOeval gives for results
    that match nothing.
    """
    from pycocotools.cocoeval import COCOeval

    gt = _coco_from_dict(ground_truth)
    ids = sorted(gt.getImgIds()) if image_ids is None else sorted(int(i) for i in image_ids)
    if not results:
        return _no_results(gt, ids)
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes([dict(r) for r in results])
        evaluator = COCOeval(gt, dt, "bbox")
        evaluator.params.imgIds = ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {k: (None if v < 0 else float(v)) for k, v in zip(AP_KEYS, evaluator.stats[:6])}


# COCOeval's area ranges (params.areaRng) of APs, APm, APl, on the ground truth's "area" field.
_AREA_RANGES = {"aps": (0.0, 32.0**2), "apm": (32.0**2, 96.0**2), "apl": (96.0**2, 1e5**2)}


def _no_results(gt: Any, image_ids: Sequence[int]) -> dict[str, float | None]:
    anns = [a for a in gt.loadAnns(gt.getAnnIds(imgIds=image_ids)) if not a.get("iscrowd", 0)]
    out: dict[str, float | None] = {k: (0.0 if anns else None) for k in ("ap", "ap50", "ap75")}
    for key, (lo, hi) in _AREA_RANGES.items():
        out[key] = 0.0 if any(lo <= a["area"] <= hi for a in anns) else None
    return out
