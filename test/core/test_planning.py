"""Instruction planning (ROS-free): which instructions a request gets, tagged by role, answers by role."""
from __future__ import annotations

import pytest

from chatspot_ros.service.planning import InstructionPlanner, Role
from chatspot_ros.referring import ImageGeometry, InstructionBuilder, Region, get_dialect

SIZE = (200, 100)


@pytest.fixture()
def planner() -> InstructionPlanner:
    return InstructionPlanner(InstructionBuilder(get_dialect("chatspot"), ImageGeometry.stretch(224, 224)))


def test_detections_describe_each_valid_region_then_suggest_for_the_first_ones(planner) -> None:
    regions = [Region.box(10, 10, 50, 50, id="a"), Region.box(5000, 5000, 6000, 6000, id="far"),
               Region.box(60, 20, 90, 80, id="b"), Region.point(150, 50, id="c")]
    plan = planner.for_detections(regions, SIZE, task="pick it up", suggest_for=2)
    assert [(p.role, p.source) for p in plan.items] == [
        (Role.DESCRIBE, 0), (Role.DESCRIBE, 2), (Role.DESCRIBE, 3), (Role.SUGGEST, 0), (Role.SUGGEST, 2)]
    assert [i for i, _ in plan.rejected] == [1] and "outside" in plan.rejected[0][1]
    texts = [f"t{i}" for i in range(len(plan))]
    assert [(a.source, a.text) for a in plan.by_role(texts, Role.DESCRIBE)] == [(0, "t0"), (2, "t1"), (3, "t2")]
    assert [(a.source, a.text) for a in plan.by_role(texts, Role.SUGGEST)] == [(0, "t3"), (2, "t4")]
    assert plan.items[3].instruction.template == "suggest_actions"
    assert "pick it up" in plan.items[3].instruction.text


def test_detections_without_a_task_or_any_valid_region(planner) -> None:
    plan = planner.for_detections([Region.box(1, 1, 20, 20)], SIZE, task="", suggest_for=3)
    assert [p.role for p in plan.items] == [Role.DESCRIBE]
    empty = planner.for_detections([Region.box(5000, 5000, 6000, 6000)], SIZE, task="x", suggest_for=1)
    assert empty.first(Role.DESCRIBE) is None and len(empty) == 0 and len(empty.rejected) == 1


def test_a_refused_suggestion_is_reported_not_raised(planner) -> None:
    plan = planner.for_detections([Region.box(1, 1, 20, 20)], SIZE, task="x" * 100_000, suggest_for=1)
    assert [p.role for p in plan.items] == [Role.DESCRIBE] and plan.suggestions_rejected[0][0] == 0


def test_a_click_describes_or_asks_and_suggests_with_a_task(planner) -> None:
    click = Region.point(100, 50, id="click")
    assert [p.role for p in planner.for_click(click, SIZE).items] == [Role.DESCRIBE]
    plan = planner.for_click(click, SIZE, question="What is it?", task="push it")
    assert [p.role for p in plan.items] == [Role.ASK, Role.SUGGEST]
    assert plan.items[0].instruction.text.startswith("What is it?")
    with pytest.raises(ValueError):
        planner.for_click(Region.point(9000, 9000), SIZE)


def test_service_requests(planner) -> None:
    regions = [Region.box(1, 1, 20, 20), Region.box(30, 30, 60, 60)]
    assert planner.for_ask("What?", regions, SIZE).items[0].role is Role.ASK
    assert planner.for_describe("", [], SIZE).items[0].instruction.template == "describe_image"
    assert planner.for_describe("", regions[:1], SIZE).items[0].instruction.template == "describe_region"
    several = planner.for_describe("", regions, SIZE).items[0]
    assert several.role is Role.DESCRIBE and several.source == -1 and several.instruction.text.startswith("Describe these")
    assert planner.for_describe("Why?", regions, SIZE).items[0].role is Role.ASK
    whole = planner.for_suggest("open it", None, SIZE).items[0]
    assert whole.role is Role.SUGGEST and whole.instruction.regions[0].id == "image" and whole.source == -1
    assert planner.for_suggest("open it", regions[0], SIZE).items[0].source == 0


def test_answers_must_match_the_plan(planner) -> None:
    plan = planner.for_click(Region.point(1, 1), SIZE, task="t")
    with pytest.raises(ValueError, match="2 instructions"):
        plan.answers(["only one"])
