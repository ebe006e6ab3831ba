"""The skeptic's evaluation (issue 24): the strict plan rule, the stage-0 head baseline, the
world split in the report, and the hard splits through chatspot-eval."""
from __future__ import annotations

import json

import pytest

from chatspot_ros.evaluation.baselines import instruction_region
from chatspot_ros.evaluation.metrics import group_metrics
from chatspot_ros.evaluation.scoring import judge_plan_strict, task_reading
from chatspot_ros.world import language
from chatspot_ros.world.scene import WorldObject

IMAGE = {"red cube", "blue ball", "green triangle", "yellow ball", "yellow triangle", "purple triangle"}
RED_CUBE = WorldObject("red", "cube", (220, 40, 40), 30, 10, 10)
BLUE_BALL = WorldObject("blue", "ball", (40, 70, 220), 30, 100, 10)


@pytest.mark.parametrize("task, reading", [
    ("pick up the red cube", ("pick", None)),
    ("push the red cube to the left", ("push", "left")),
    ("Push the red cube to the RIGHT.", ("push", "right")),
    ("put the red cube on the blue ball", ("put", None)),
    ("wave at the red cube", None),
])
def test_task_reading(task, reading) -> None:
    assert task_reading(task) == reading


def test_the_worlds_own_plans_pass_the_strict_rule() -> None:
    for kind, kw in (("pick", {}), ("push", {"direction": "left"}), ("push", {"direction": "right"}),
                     ("put", {"destination": BLUE_BALL})):
        task = language.make_task(kind, RED_CUBE, **kw)
        dest = task.destination.category if task.destination else None
        assert judge_plan_strict(list(task.plan), task.text, "red cube", dest, IMAGE) == (True, "")


@pytest.mark.parametrize("plan_of, task, destination, reason", [
    # the demo's case: "put the yellow ball on the purple triangle" planned onto the yellow triangle
    (("put", {"destination": WorldObject("yellow", "triangle", (0, 0, 0), 30, 0, 0)}),
     "put the red cube on the purple triangle", "purple triangle", "'yellow triangle'"),
    (("push", {"direction": "left"}), "push the red cube to the right", None, "pushes left, the task right"),
    (("pick", {}), "push the red cube to the left", None, "kind is pick, the task's push"),
    (("push", {"direction": "left"}), "pick up the red cube", None, "kind is push, the task's pick"),
    (("pick", {}), "put the red cube on the blue ball", "blue ball", "kind is pick, the task's put"),
])
def test_strict_rule_checks_kind_direction_and_destination(plan_of, task, destination, reason) -> None:
    kind, kw = plan_of
    plan = list(language.make_task(kind, RED_CUBE, **kw).plan)
    strict, why = judge_plan_strict(plan, task, "red cube", destination, IMAGE)
    assert strict is False and reason in why


def test_strict_rule_needs_the_destination_named_where_the_loose_rule_does_not() -> None:
    plan = ["Pick up the red cube.", "Move the red cube up.", "Lower the red cube onto it.", "Release the red cube."]
    from chatspot_ros.evaluation.scoring import judge_plan

    assert judge_plan(plan, "red cube", "blue ball", IMAGE) == (True, "")
    strict, why = judge_plan_strict(plan, "put the red cube on the blue ball", "red cube", "blue ball", IMAGE)
    assert strict is False and "destination 'blue ball'" in why
    assert judge_plan_strict(plan, "wave at it", "red cube", None, IMAGE)[0] is None


def test_metrics_report_the_strict_rule_beside_the_loose_one() -> None:
    rows = [{"task": "actions", "prompt": "box", "condition": "clean", "correct": c, "strict": s, "key": f"a/b/c/{i}"}
            for i, (c, s) in enumerate([(True, True), (True, False), (True, None), (False, False)])]
    m = group_metrics("actions", "box", rows, 18)
    assert m["accuracy"] == 0.75
    assert m["strict"]["n"] == 3 and m["strict"]["accuracy"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("instruction, region", [
    ("What can you see in this region? <box>[0.103,0.200,0.552,0.800]</box>", ((0.10, 0.20), (0.55, 0.80))),
    ("What can you see in this region? <box>[0.999,0.005]</box>", ((0.99, 0.00), (0.99, 0.00))),
    ("Describe the image.", None),
])
def test_instruction_region_reads_the_coordinate_tokens(instruction, region) -> None:
    assert instruction_region(instruction) == region


def test_shipped_model_on_a_hard_split_with_baselines_and_strict_plans(tmp_path) -> None:
    """chatspot-eval on 3 frames of the same_category split: the report names the split, the
    stage-0 head baseline stands beside classification, the strict rule beside the plans, and a
    model without the wiring is refused the baseline."""
    from chatspot_ros.cli.eval import main
    from chatspot_ros.world.annotations import write_split

    world = write_split(tmp_path / "w", seed=3100, frames=3, variant="same_category", split="same_category")
    out = tmp_path / "eval"
    assert main(["--model", "chatspot_ros/models/tabletop", "--world", str(world), "--stage0-baseline",
                 "--out", str(out), "--no-progress", "--threads", "1"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run"]["world"]["split"] == "same_category"
    for prompt in ("box", "point"):
        assert 0.0 <= metrics["tasks"][f"classification/{prompt}"]["baselines"]["stage0_head"] <= 1.0
    assert metrics["tasks"]["actions/box"]["strict"]["n"] == metrics["tasks"]["actions/box"]["n"]
    refs = [json.loads(line) for line in open(world / "refs.jsonl")]
    assert any(r["expression"].endswith(("on the left", "on the right", "at the top", "at the bottom")) for r in refs)
    report = (out / "report.md").read_text()
    assert "world split: same_category (variant same_category, seed 3100" in report
    assert "Stage-0 head" in report and "strict rule" in report


def test_stage0_baseline_refuses_a_model_without_the_wiring(tiny_model_dir) -> None:
    from chatspot_ros.evaluation.baselines import stage0_head_baseline

    with pytest.raises(ValueError, match="needs a wired tabletop model"):
        stage0_head_baseline(str(tiny_model_dir), [])


def test_splits_table_puts_baselines_beside_every_figure(tmp_path) -> None:
    from chatspot_ros.evaluation.splits_table import main, tables

    group = {"n": 10, "accuracy": 0.9, "chance": 0.1, "controls": {"whole_image": {"accuracy": 0.2}},
             "baselines": {"stage0_head": 0.85}}
    metrics = {"run": {"world": {"split": "crowded", "seed": 3000, "frames": 5}},
               "tasks": {"classification/box": group, "classification/point": group,
                         "rec/expression": {"n": 10, "acc_at_0_5": 0.5, "chance": 0.3,
                                            "controls": {"swap": {"accuracy": 0.01}}},
                         "actions/box": {"n": 10, "accuracy": 0.9, "strict": {"accuracy": 0.4},
                                         "controls": {"whole_image": {"accuracy": 0.0}}}}}
    text = tables([("x/metrics.json", metrics)])
    assert "| crowded (seed 3000, 5 frames) | 90.0 | 85.0 | 20.0 | 10.0 | 90.0 | 85.0 | 20.0 | 10 |" in text
    assert "| crowded (seed 3000, 5 frames) | 50.0 | 30.0 | 1.0 | 90.0 | 40.0 | 0.0 | - | - | - | - |" in text
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(metrics))
    assert main([str(path)]) == 0 and main([]) == 2
