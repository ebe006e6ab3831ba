"""Evaluation of region understanding (paper Sec. 4.2, 5.1; docs/evaluation.md). Pure Python, no ROS.

    from chatspot_ros.evaluation import EvalConfig, evaluate
    metrics = evaluate(chatspot, EvalConfig.for_world("data/world/val", "runs/eval", noise=(0.1, 0.2, 0.3),
                                                      controls=True))

Tasks: region classification (GT boxes, clicks, detector boxes; accuracy and pycocotools AP),
regional OCR, region VQA (boxes and points), referring expression comprehension (Acc@0.5), action
plans; box-noise robustness; chance, ignore-the-region and region-swap controls. Every prompt
goes through ``ChatSpot.answer``: all prompts of one image in one encode and batched decodes.
"""
from __future__ import annotations

from chatspot_ros.evaluation.boxes import accuracy_at_iou, box_iou, jitter_box, xywh_to_xyxy, xyxy_to_xywh
from chatspot_ros.evaluation.cocoeval import AP_KEYS, coco_box_ap
from chatspot_ros.evaluation.config import DEFAULT_MAX_NEW_TOKENS, DEFAULT_NOISE, TASKS, EvalConfig
from chatspot_ros.evaluation.evaluate import evaluate
from chatspot_ros.evaluation.matching import (
    COCO_SYNONYMS,
    Category,
    CategoryMatcher,
    ClipMatcher,
    ExactMatcher,
    make_matcher,
)
from chatspot_ros.evaluation.metrics import mcnemar_p, wilson_interval
from chatspot_ros.evaluation.normalize import contains_answer, normalize_answer
from chatspot_ros.evaluation.scoring import judge_plan

__all__ = [
    "AP_KEYS", "COCO_SYNONYMS", "DEFAULT_MAX_NEW_TOKENS", "DEFAULT_NOISE", "TASKS", "Category", "CategoryMatcher",
    "ClipMatcher", "EvalConfig", "ExactMatcher", "accuracy_at_iou", "box_iou", "coco_box_ap", "contains_answer",
    "evaluate", "jitter_box", "judge_plan", "make_matcher", "mcnemar_p", "normalize_answer", "wilson_interval",
    "xywh_to_xyxy", "xyxy_to_xywh",
]
