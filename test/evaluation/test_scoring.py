"""Per-sample rules (action plans, REC parsing) and the metrics built from records."""
from __future__ import annotations

import math

import pytest

from chatspot_ros.evaluation.datasets import Item
from chatspot_ros.evaluation.matching import Category, ExactMatcher
from chatspot_ros.evaluation.metrics import group_metrics, mcnemar_p, wilson_interval
from chatspot_ros.evaluation.samples import CLEAN, SWAP, Sample
from chatspot_ros.evaluation.scoring import Answered, ScoringContext, judge_plan, score_image
from chatspot_ros.referring import Region

IMAGE = {"red cube", "blue ball", "green triangle", "cube"}


@pytest.mark.parametrize("steps, target, destination, correct, reason", [
    (["Move above the red cube.", "Grasp the red cube.", "Lift it."], "red cube", None, True, ""),
    (["Pick up the red cube."], "red cube", None, False, "1 step"),
    ([], "red cube", None, False, "0 step"),
    (["Move the gripper.", "Lift it."], "red cube", None, False, "no step names the target"),
    (["Grasp the red cube.", "Put it on the blue ball."], "red cube", None, False, "'blue ball'"),
    (["Pick up the red cube.", "Lower the red cube onto the blue ball."], "red cube", "blue ball", True, ""),
    (["Pick up the red cube.", "Put it on the green triangle."], "red cube", "blue ball", False, "'green triangle'"),
    # "cube" is another category of the image, but here it is only part of the target's name.
    (["Grasp the Red-Cube.", "Lift the red cube."], "red cube", None, True, ""),
    (["Grasp the red cube.", "Then push the cube."], "red cube", None, False, "'cube'"),
])
def test_action_plan_rule(steps, target, destination, correct, reason) -> None:
    got, why = judge_plan(steps, target, destination, IMAGE)
    assert got is correct
    assert reason in why


@pytest.fixture(scope="module")
def ctx(chatspot):
    cats = [Category(1, "red cube"), Category(2, "blue ball")]
    return ScoringContext(matcher=ExactMatcher(cats), category_names={1: "red cube", 2: "blue ball"},
                          dialect=chatspot.builder.dialect, geometry=chatspot.runtime.geometry,
                          image_categories={1: {"red cube", "blue ball"}},
                          candidate_boxes={1: [(10.0, 10.0, 60.0, 60.0), (100.0, 20.0, 140.0, 90.0)]})


def _sample(task, prompt, item, condition=CLEAN, partner=None):
    return Sample(f"{task}/{prompt}/{condition}/{item.uid}", task, prompt, condition, item, 8, partner=partner)


def test_rec_answer_is_parsed_in_the_checkpoint_dialect(chatspot, ctx) -> None:
    size = (320, 240)
    target = Item("line1", 1, "x.png", box=(10.0, 10.0, 60.0, 60.0), question="the red cube")
    other = Item("line2", 1, "x.png", box=(100.0, 20.0, 140.0, 90.0), question="the blue ball")
    exact = chatspot.builder.region_text(Region.box(*target.box), size)
    near_other = chatspot.builder.region_text(Region.box(*other.box), size)
    answers = [Answered(_sample("rec", "expression", target), answer=f"It is here: {exact}."),
               Answered(_sample("rec", "expression", target), answer="It is on the left."),
               Answered(_sample("rec", "expression", target, SWAP, other), answer=near_other)]
    clean, unparsed, swap = score_image(answers, ctx, size)
    assert clean["parsed"] and clean["correct"] and clean["iou"] > 0.95
    assert clean["pred_bbox"] == pytest.approx([10, 10, 50, 50], abs=1.5)  # dialect rounding only
    assert not unparsed["parsed"] and unparsed["pred_bbox"] is None and unparsed["correct"] is False
    assert swap["expression"] == "the blue ball" and swap["answers_partner"] and not swap["correct"]
    assert clean["chance"] == 0.5  # two objects, one of them overlaps the target


def test_classification_and_text_records(ctx) -> None:
    size = (320, 240)
    a = Item("ann1", 1, "x.png", box=(10.0, 10.0, 60.0, 60.0), category_id=1)
    b = Item("ann2", 1, "x.png", box=(100.0, 20.0, 140.0, 90.0), category_id=2)
    qa = Item("line3", 1, "x.png", box=(10.0, 10.0, 60.0, 60.0), question="What colour?", answers=("red",))
    answers = [Answered(_sample("classification", "box", a), answer="A red cube."),
               Answered(_sample("classification", "box", a, SWAP, b), answer="a blue ball"),
               Answered(_sample("classification", "box", a), error="outside"),
               Answered(_sample("vqa", "box", qa), answer="It is red.")]
    cls, swap, invalid, vqa = score_image(answers, ctx, size)
    assert cls["pred_category"] == "red cube" and cls["correct"] and cls["bbox"] == [10.0, 10.0, 50.0, 50.0]
    assert swap["correct"] is False and swap["answers_partner"] is True and swap["partner"] == "ann2"
    assert invalid["correct"] is None and invalid["error"] == "outside"
    assert vqa["correct"] is True and vqa["answers"] == ["red"]


def test_mcnemar_and_wilson_goldens() -> None:
    assert mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(6, 0) == pytest.approx(2 / 64)  # 2 * 0.5**6
    assert mcnemar_p(5, 0) == pytest.approx(2 / 32)
    assert mcnemar_p(3, 3) == 1.0
    assert mcnemar_p(10, 2) == pytest.approx(2 * sum(math.comb(12, k) for k in range(3)) / 2**12)
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    assert wilson_interval(0, 0) is None


def _record(uid, condition, correct, **extra):
    return {"key": f"vqa/box/{condition}/{uid}", "task": "vqa", "prompt": "box", "condition": condition,
            "correct": correct, **extra}


def test_group_metrics_controls_noise_and_prior() -> None:
    questions = [("What colour?", ["red"])] * 6 + [("What colour?", ["blue"])] * 2 + [("What shape?", ["ball"])] * 2
    records = []
    for i, (q, answers) in enumerate(questions):
        records.append(_record(f"l{i}", "clean", i < 8, question=q, answers=answers))
        records.append(_record(f"l{i}", "whole_image", i < 2, question=q, answers=answers))
        records.append(_record(f"l{i}", "swap", False, question=q, answers=answers, answers_partner=i < 5))
        records.append(_record(f"l{i}", "noise0.2", i < 4, question=q, answers=answers))
    records.append({**_record("bad", "clean", None), "error": "outside"})
    m = group_metrics("vqa", "box", records, n_categories=0)
    assert m["n"] == 10 and m["invalid"] == 1 and m["accuracy"] == 0.8
    # Always "red" for colour questions (6 of 8) and "ball" for shape ones (2 of 2).
    assert m["chance"] == pytest.approx(0.8)
    whole, swap = m["controls"]["whole_image"], m["controls"]["swap"]
    assert whole["accuracy"] == 0.2 and whole["mcnemar_p"] == pytest.approx(2 / 64)
    assert swap["accuracy"] == 0.0 and swap["answers_partner"] == 0.5
    assert swap["mcnemar_p"] == pytest.approx(2 / 256)
    assert m["region_skill"]["claimed"] is True
    assert m["noise"]["0.2"]["accuracy"] == 0.4
    # The same model with a control that is as good: no region skill.
    tied = [dict(r, correct=int(r["key"].split("/")[-1][1:]) < 8) if r["condition"] == "whole_image" else r
            for r in records if not r.get("error")]
    assert group_metrics("vqa", "box", tied, n_categories=0)["region_skill"]["claimed"] is False


def test_swap_partner_has_a_different_truth_and_is_seeded() -> None:
    from chatspot_ros.evaluation.samples import swap_partner

    a = Item("ann1", 1, "x.png", box=(0.0, 0.0, 10.0, 10.0), category_id=1)
    same = Item("ann2", 1, "x.png", box=(20.0, 0.0, 30.0, 10.0), category_id=1)
    others = [Item(f"ann{i}", 1, "x.png", box=(40.0 + 10 * i, 0.0, 45.0 + 10 * i, 10.0), category_id=i)
              for i in range(3, 9)]
    picks = {swap_partner("classification", a, [a, same, *others], seed).uid for seed in range(40)}
    assert picks == {o.uid for o in others}  # never A itself, never a same-category object; all others drawn
    assert swap_partner("classification", a, [a, same], 0) is None
    assert swap_partner("classification", a, [a, *others], 3) == swap_partner("classification", a, [*others, a], 3)
    # VQA: the same question with disjoint answers; REC: another expression at IoU < 0.5.
    q = Item("l1", 1, "x.png", box=(0.0, 0.0, 10.0, 10.0), question="What colour?", answers=("red",))
    q_same = Item("l2", 1, "x.png", box=(20.0, 0.0, 30.0, 10.0), question="What colour?", answers=("Red",))
    q_other = Item("l3", 1, "x.png", box=(40.0, 0.0, 50.0, 10.0), question="What shape?", answers=("ball",))
    q_ok = Item("l4", 1, "x.png", box=(60.0, 0.0, 70.0, 10.0), question="what colour", answers=("blue",))
    assert swap_partner("vqa", q, [q, q_same, q_other, q_ok], 0) == q_ok
    r = Item("l1", 1, "x.png", box=(0.0, 0.0, 10.0, 10.0), question="the red cube")
    r_overlap = Item("l2", 1, "x.png", box=(1.0, 0.0, 11.0, 10.0), question="the blue ball")
    r_ok = Item("l3", 1, "x.png", box=(50.0, 0.0, 60.0, 10.0), question="the green ball")
    assert swap_partner("rec", r, [r, r_overlap, r_ok], 0) == r_ok
