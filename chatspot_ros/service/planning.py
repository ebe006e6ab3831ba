"""Instruction planning: which referring instructions a request needs, and its answers by role (no ROS).

One policy for every caller, so that the prompts the node builds at run time are the ones the
training and evaluation code build (they call the same planner):

* **detections** (regions of a detector + an optional task): one ``describe`` instruction per valid
  region, in order; with a task, one ``suggest`` instruction for each of the first
  ``suggest_for`` described regions;
* **click** (a point or box + an optional question + an optional task): ``ask`` the question, or
  ``describe`` the region without one; with a task, also ``suggest``;
* **ask** (a question about regions, or the whole image without any): ``ask``;
* **describe** (an optional question about regions): the question as ``ask``, else ``describe``
  the one region, the image (no region) or the regions ("Describe these regions.");
* **suggest** (a task on a region, or the whole image without one): ``suggest``.

A :class:`Plan` holds the instructions, each tagged with its :class:`Role` and the index of the
input region it is about; :meth:`Plan.answers` pairs the model's texts back with them, and
:meth:`Plan.by_role` picks one role, so no caller does index arithmetic.
"""
from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from chatspot_ros.referring import InstructionBuilder, ReferringInstruction, Region

DESCRIBE_REGIONS_QUESTION = "Describe these regions."


class Role(str, enum.Enum):
    DESCRIBE = "describe"  # a description of a region (or of the image)
    SUGGEST = "suggest"  # steps for a task on a region
    ASK = "ask"  # the answer to a question


@dataclass(frozen=True)
class Planned:
    role: Role
    instruction: ReferringInstruction
    source: int  # index of the input region it is about; -1 for the whole request (image, several regions)


@dataclass(frozen=True)
class Answered:
    planned: Planned
    text: str

    @property
    def role(self) -> Role:
        return self.planned.role

    @property
    def instruction(self) -> ReferringInstruction:
        return self.planned.instruction

    @property
    def source(self) -> int:
        return self.planned.source


@dataclass(frozen=True)
class Plan:
    """The instructions of one request, in the order they go to the model, and what was left out."""

    items: tuple[Planned, ...]
    rejected: tuple[tuple[int, str], ...] = ()  # (input region index, why) of regions that got no describe
    suggestions_rejected: tuple[tuple[int, str], ...] = ()  # (input region index, why) of refused suggestions

    @property
    def instructions(self) -> list[ReferringInstruction]:
        return [p.instruction for p in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def answers(self, texts: Sequence[str]) -> list[Answered]:
        """The model's texts (one per instruction, in order) paired with what they answer."""
        if len(texts) != len(self.items):
            raise ValueError(f"{len(texts)} answers for a plan of {len(self.items)} instructions")
        return [Answered(p, t) for p, t in zip(self.items, texts)]

    def by_role(self, texts: Sequence[str], role: Role) -> list[Answered]:
        return [a for a in self.answers(texts) if a.role is role]

    def first(self, role: Role) -> Planned | None:
        return next((p for p in self.items if p.role is role), None)


class InstructionPlanner:
    """Plans requests with one checkpoint's InstructionBuilder (its dialect, geometry, templates, limits)."""

    def __init__(self, builder: InstructionBuilder) -> None:
        self.builder = builder

    def for_detections(self, regions: Sequence[Region], image_size: tuple[int, int], *, task: str = "",
                       suggest_for: int = 0) -> Plan:
        """``describe`` each valid region (an invalid one is listed in ``rejected``, never raised);
        with a task, ``suggest`` for the first ``suggest_for`` described ones, after every describe."""
        items: list[Planned] = []
        rejected: list[tuple[int, str]] = []
        for index, region in enumerate(regions):
            try:
                items.append(Planned(Role.DESCRIBE, self.builder.describe_region(region, image_size), index))
            except ValueError as exc:
                rejected.append((index, str(exc)))
        suggestions_rejected: list[tuple[int, str]] = []
        if task:
            for described in list(items)[: max(0, suggest_for)]:
                try:
                    items.append(Planned(Role.SUGGEST, self.builder.suggest_actions(
                        task, regions[described.source], image_size), described.source))
                except ValueError as exc:
                    suggestions_rejected.append((described.source, str(exc)))
        return Plan(tuple(items), tuple(rejected), tuple(suggestions_rejected))

    def for_click(self, region: Region, image_size: tuple[int, int], *, question: str = "",
                  task: str = "") -> Plan:
        """``ask`` the question about the clicked region, or ``describe`` it; with a task, ``suggest``
        too. ValueError when the region or the texts are refused."""
        if question.strip():
            first = Planned(Role.ASK, self.builder.ask(question, [region], image_size), 0)
        else:
            first = Planned(Role.DESCRIBE, self.builder.describe_region(region, image_size), 0)
        items = [first]
        if task:
            items.append(Planned(Role.SUGGEST, self.builder.suggest_actions(task, region, image_size), 0))
        return Plan(tuple(items))

    def for_ask(self, question: str, regions: Sequence[Region], image_size: tuple[int, int]) -> Plan:
        return Plan((Planned(Role.ASK, self.builder.ask(question, regions, image_size), _source(regions)),))

    def for_describe(self, question: str, regions: Sequence[Region], image_size: tuple[int, int]) -> Plan:
        """The instruction of a describe goal: its question, else a description of its region(s),
        or of the whole image when it names none."""
        if question:
            return self.for_ask(question, regions, image_size)
        if len(regions) == 1:
            instruction = self.builder.describe_region(regions[0], image_size)
        elif not regions:
            instruction = self.builder.describe_image(image_size)
        else:
            instruction = self.builder.ask(DESCRIBE_REGIONS_QUESTION, regions, image_size)
        return Plan((Planned(Role.DESCRIBE, instruction, _source(regions)),))

    def for_suggest(self, task: str, region: Region | None, image_size: tuple[int, int]) -> Plan:
        """``suggest`` steps for the task on the region, or on the whole image (a box named "image")."""
        target = region if region is not None else Region.box(0, 0, image_size[0], image_size[1], id="image")
        return Plan((Planned(Role.SUGGEST, self.builder.suggest_actions(task, target, image_size),
                             0 if region is not None else -1),))


def _source(regions: Sequence[Region]) -> int:
    return 0 if len(regions) == 1 else -1
