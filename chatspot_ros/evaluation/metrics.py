"""Records -> metrics: accuracy, AP (pycocotools), Acc@0.5, controls, noise curve, significance.

Everything here reads prediction records (``predictions.jsonl`` lines) and nothing else, except
AP, which pycocotools computes from the COCO results the records make against the GT file.
"""
from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from chatspot_ros.evaluation.cocoeval import AP_KEYS, coco_box_ap
from chatspot_ros.evaluation.normalize import contains_answer, normalize_answer
from chatspot_ros.evaluation.samples import CLEAN, SWAP, WHOLE_IMAGE

CONTROLS: tuple[str, ...] = (WHOLE_IMAGE, SWAP)
SIGNIFICANCE = 0.05  # a region skill needs McNemar p below this against every control
PRIOR_CANDIDATES = 20  # the question-prior baseline tries this many most frequent answers per question


def wilson_interval(correct: int, n: int, z: float = 1.959964) -> tuple[float, float] | None:
    """95% Wilson score interval of a proportion; None for n = 0."""
    if n == 0:
        return None
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def mcnemar_p(only_first: int, only_second: int) -> float:
    """Exact two-sided McNemar p-value of paired outcomes (counts of the two kinds of disagreement)."""
    n = only_first + only_second
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(only_first, only_second) + 1))
    return min(1.0, 2 * tail / 2**n)


def coco_results(records: Iterable[Mapping[str, Any]], prompt: str) -> list[dict[str, Any]]:
    """COCO results of clean classification records of ``prompt`` ("box": score 1.0, "detection": its score).

    A record whose answer matched no category has no result (the box predicts nothing).
    """
    out = []
    for r in records:
        if r["task"] != "classification" or r["prompt"] != prompt or r["condition"] != CLEAN or r.get("error"):
            continue
        if r.get("pred_category_id") is None:
            continue
        out.append({"image_id": r["image_id"], "category_id": int(r["pred_category_id"]), "bbox": r["bbox"],
                    "score": float(r["score"]) if prompt == "detection" else 1.0})
    return out


def _uid(record: Mapping[str, Any]) -> str:
    return record["key"].split("/", 3)[3]


def _accuracy(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    n, correct = len(records), sum(1 for r in records if r.get("correct"))
    out: dict[str, Any] = {"n": n, "correct": correct, "accuracy": correct / n if n else None}
    ci = wilson_interval(correct, n)
    out["accuracy_ci95"] = [round(ci[0], 4), round(ci[1], 4)] if ci else None
    return out


def _question_prior(records: Sequence[Mapping[str, Any]], field: str) -> float | None:
    """Accuracy of answering, per distinct question, the one constant answer that is right most often."""
    if not records:
        return None
    by_question: dict[str, list[list[str]]] = defaultdict(list)
    for r in records:
        truths = [r[field]] if field == "gt_text" else list(r[field])
        by_question[normalize_answer(r.get("question", ""))].append(truths)
    hits = 0
    for truths_list in by_question.values():
        counts = Counter(normalize_answer(t) for truths in truths_list for t in truths)
        candidates = [c for c, _ in counts.most_common(PRIOR_CANDIDATES) if c]
        hits += max((sum(1 for truths in truths_list if any(contains_answer(c, t) for t in truths))
                     for c in candidates), default=0)
    return hits / len(records)


def _chance(task: str, prompt: str, clean: Sequence[Mapping[str, Any]], n_categories: int) -> dict[str, Any]:
    if not clean:
        return {}
    if task == "classification" and prompt != "detection":
        counts = Counter(r["gt_category_id"] for r in clean)
        return {"chance": counts.most_common(1)[0][1] / len(clean), "uniform": 1.0 / max(1, n_categories)}
    if task in ("vqa", "ocr"):
        return {"chance": _question_prior(clean, "gt_text" if task == "ocr" else "answers")}
    if task == "rec":
        return {"chance": sum(r["chance"] for r in clean) / len(clean)}
    return {"chance": None}


def _controls(clean: Sequence[Mapping[str, Any]], by_condition: Mapping[str, list[Mapping[str, Any]]]
              ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    clean_by_uid = {_uid(r): bool(r.get("correct")) for r in clean}
    controls: dict[str, Any] = {}
    tests: dict[str, float] = {}
    beats_all = True
    for name in CONTROLS:
        rows = by_condition.get(name)
        if not rows:
            continue
        stats = _accuracy(rows)
        if name == SWAP:
            stats["answers_partner"] = sum(1 for r in rows if r.get("answers_partner")) / len(rows)
        pairs = [(clean_by_uid[_uid(r)], bool(r.get("correct"))) for r in rows if _uid(r) in clean_by_uid]
        model_only = sum(1 for m, c in pairs if m and not c)
        control_only = sum(1 for m, c in pairs if c and not m)
        stats["paired_n"] = len(pairs)
        stats["mcnemar_p"] = mcnemar_p(model_only, control_only)
        tests[name] = stats["mcnemar_p"]
        beats_all = beats_all and model_only > control_only and stats["mcnemar_p"] < SIGNIFICANCE
        controls[name] = stats
    skill = {"claimed": beats_all, "against": sorted(tests), "significance": SIGNIFICANCE} if tests else None
    return controls, skill


def _rec(clean: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    ious = [r["iou"] for r in clean if r.get("iou") is not None]
    return {"acc_at_0_5": (sum(1 for r in clean if r.get("correct")) / len(clean)) if clean else None,
            "unparsed": sum(1 for r in clean if not r.get("parsed")),
            "mean_iou": sum(ious) / len(clean) if clean else None}


def group_metrics(task: str, prompt: str, records: Sequence[Mapping[str, Any]], n_categories: int) -> dict[str, Any]:
    """Metrics of one ``task/prompt`` group: clean accuracy (or Acc@0.5), chance, controls, noise."""
    valid = [r for r in records if not r.get("error")]
    by_condition: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for r in valid:
        by_condition[r["condition"]].append(r)
    clean = by_condition.get(CLEAN, [])
    out: dict[str, Any] = {"n": len(clean), "invalid": len(records) - len(valid)}
    if prompt != "detection":
        out.update(_accuracy(clean))
    if task == "rec":
        out.update(_rec(clean))
    if task == "actions":
        judged = [r for r in clean if r.get("strict") is not None]
        out["strict"] = _accuracy([{"correct": r["strict"]} for r in judged]) if judged else None
        controls_strict = {c: _accuracy([{"correct": r.get("strict")} for r in rows if r.get("strict") is not None])
                           for c, rows in by_condition.items() if c in CONTROLS}
        if controls_strict:
            out["strict_controls"] = controls_strict
    out.update(_chance(task, prompt, clean, n_categories))
    controls, skill = _controls(clean, by_condition)
    if controls:
        out["controls"] = controls
        out["region_skill"] = skill
    noise = {c[len("noise"):]: _accuracy(rows) for c, rows in sorted(by_condition.items()) if c.startswith("noise")}
    if noise:
        out["noise"] = noise
    return out


def compute_metrics(records: Sequence[Mapping[str, Any]], *, ground_truth: Mapping[str, Any] | None,
                    image_ids: Sequence[int], n_categories: int) -> dict[str, Any]:
    """Per-group metrics (``tasks``), AP from pycocotools, and the issue's flat summary keys."""
    groups: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for r in records:
        groups[f"{r['task']}/{r['prompt']}"].append(r)
    tasks: dict[str, Any] = {}
    for name in sorted(groups):
        task, prompt = name.split("/")
        tasks[name] = group_metrics(task, prompt, groups[name], n_categories)
        if task == "classification" and prompt in ("box", "detection") and ground_truth is not None:
            tasks[name].update(coco_box_ap(ground_truth, coco_results(groups[name], prompt), image_ids))
    gt_box = tasks.get("classification/box", {})
    rec = tasks.get("rec/expression", {})
    summary: dict[str, Any] = {"accuracy": gt_box.get("accuracy")}
    summary.update({k: gt_box.get(k) for k in AP_KEYS})
    summary.update(acc_at_0_5=rec.get("acc_at_0_5"), unparsed=rec.get("unparsed"))
    strict = tasks.get("actions/box", {}).get("strict")
    summary["plans_strict"] = strict.get("accuracy") if strict else None
    summary["samples"] = len(records)
    summary["samples_by_group"] = {name: len(rows) for name, rows in sorted(groups.items())}
    summary["tasks"] = tasks
    return summary
