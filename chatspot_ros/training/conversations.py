"""Training conversations as structured turns, rendered by the runtime's own InstructionBuilder.

A dataset stores what to ask (template name, regions in source pixels, question/task/expression,
answer style) and what to answer, never pre-rendered coordinates. Rendering happens against the
checkpoint being trained (its dialect, its Φ geometry, its conversation template), with the same
builder the node and ``chatspot-eval`` use, so train-time and run-time prompts are identical by
construction (docs/training.md).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from chatspot_ros.referring import InstructionBuilder, Region, RegionKind
from chatspot_ros.referring.conversation import ConversationTemplate

REGION_TEMPLATES: tuple[str, ...] = ("what_in_region", "describe_region", "text_in_region", "region_question",
                                     "suggest_actions")
IMAGE_TEMPLATES: tuple[str, ...] = ("describe_image", "image_question", "find_region")
TEMPLATES: tuple[str, ...] = REGION_TEMPLATES + IMAGE_TEMPLATES
ANSWER_REGION = "{region}"  # in an answer: where the answer's region text goes (REC, grounded captions)


@dataclass(frozen=True)
class Turn:
    """One question and its answer. ``answer`` may hold ``{region}`` once per ``answer_regions`` entry."""

    template: str
    answer: str
    regions: tuple[Region, ...] = ()
    text: str = ""  # the question (region_question, image_question), task (suggest_actions) or expression
    style: str | None = None
    answer_regions: tuple[Region, ...] = ()

    def __post_init__(self) -> None:
        if self.template not in TEMPLATES:
            raise ValueError(f"unknown turn template {self.template!r}; known: {', '.join(TEMPLATES)}")
        if self.answer.count(ANSWER_REGION) != len(self.answer_regions):
            raise ValueError(
                f"answer has {self.answer.count(ANSWER_REGION)} {ANSWER_REGION} placeholders but "
                f"{len(self.answer_regions)} answer_regions"
            )
        if self.template in REGION_TEMPLATES and not self.regions:
            raise ValueError(f"a {self.template} turn needs a region")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"template": self.template, "answer": self.answer}
        if self.regions:
            out["regions"] = [region_to_json(r) for r in self.regions]
        if self.text:
            out["text"] = self.text
        if self.style:
            out["style"] = self.style
        if self.answer_regions:
            out["answer_regions"] = [region_to_json(r) for r in self.answer_regions]
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Turn:
        return cls(
            template=str(data["template"]),
            answer=str(data["answer"]),
            regions=tuple(region_from_json(r) for r in data.get("regions", ())),
            text=str(data.get("text", "")),
            style=data.get("style"),
            answer_regions=tuple(region_from_json(r) for r in data.get("answer_regions", ())),
        )


def region_to_json(region: Region) -> dict[str, Any]:
    return {"kind": region.kind.name.lower(), "points": [[round(x, 2), round(y, 2)] for x, y in region.points]}


def region_from_json(data: Mapping[str, Any]) -> Region:
    kind = RegionKind[str(data["kind"]).upper()]
    return Region(kind, tuple((float(p[0]), float(p[1])) for p in data["points"]))


@dataclass(frozen=True)
class Sample:
    """One image and a conversation about it (one or more turns)."""

    id: str
    image: str  # path, relative to the dataset file's folder or absolute
    image_size: tuple[int, int]  # (width, height) of the source image
    turns: tuple[Turn, ...]
    source: str = ""  # which annotation source made it ("coco", "ocr", "qa", "captions", "world")
    meta: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self, builder: InstructionBuilder | None = None,
                conversation: ConversationTemplate | None = None) -> dict[str, Any]:
        """The JSONL record: structured turns, plus LLaVA's ``conversations`` when a builder is given."""
        out: dict[str, Any] = {"id": self.id, "image": self.image, "width": self.image_size[0],
                               "height": self.image_size[1], "source": self.source,
                               "turns": [t.to_json() for t in self.turns]}
        if builder is not None and conversation is not None:
            out["conversations"] = llava_conversations(builder, conversation, self)
        if self.meta:
            out["meta"] = dict(self.meta)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Sample:
        return cls(
            id=str(data["id"]), image=str(data["image"]),
            image_size=(int(data["width"]), int(data["height"])),
            turns=tuple(Turn.from_json(t) for t in data["turns"]),
            source=str(data.get("source", "")), meta=dict(data.get("meta", {})),
        )


def render_turn(builder: InstructionBuilder, turn: Turn, image_size: tuple[int, int]) -> tuple[str, str]:
    """(instruction text, answer text) of one turn, coordinates written by ``builder``."""
    t = turn.template
    if t == "what_in_region":
        instruction = builder.what_is_in_region(turn.regions[0], image_size, style=turn.style)
    elif t == "describe_region":
        instruction = builder.describe_region(turn.regions[0], image_size, style=turn.style)
    elif t == "text_in_region":
        instruction = builder.read_text(turn.regions[0], image_size, style=turn.style)
    elif t == "region_question":
        instruction = builder.ask(turn.text, turn.regions, image_size, style=turn.style)
    elif t == "suggest_actions":
        instruction = builder.suggest_actions(turn.text, turn.regions[0], image_size)
    elif t == "describe_image":
        instruction = builder.describe_image(image_size, style=turn.style)
    elif t == "image_question":
        instruction = builder.ask(turn.text, (), image_size, style=turn.style)
    else:  # find_region
        instruction = builder.find_region(turn.text, image_size, style=turn.style)
    answer = turn.answer
    for region in turn.answer_regions:
        answer = answer.replace(ANSWER_REGION, builder.region_text(region, image_size), 1)
    return instruction.text, answer


def llava_conversations(builder: InstructionBuilder, conversation: ConversationTemplate,
                        sample: Sample) -> list[dict[str, str]]:
    """LLaVA's ``conversations`` list: human/gpt turns, ``<image>`` before the first question."""
    out = []
    for k, turn in enumerate(sample.turns):
        question, answer = render_turn(builder, turn, sample.image_size)
        if k == 0:
            question = conversation.image_placeholder + conversation.after_image + question
        out.append({"from": "human", "value": question})
        out.append({"from": "gpt", "value": answer})
    return out


def render_prompt_and_answers(builder: InstructionBuilder, conversation: ConversationTemplate,
                              sample: Sample) -> list[tuple[str, str]]:
    """The conversation as (context up to the answer, answer) pieces whose concatenation is the text.

    The first piece is exactly ``conversation.render(instruction)``: the prompt the runtime sends
    for a one-turn question. Later turns continue Vicuna-style: ``"</s>USER: ... ASSISTANT:"``.
    """
    pieces = []
    for k, turn in enumerate(sample.turns):
        question, answer = render_turn(builder, turn, sample.image_size)
        context = conversation.render(question) if k == 0 else conversation.next_turn(question)
        pieces.append((context, " " + answer))
    return pieces


def sequence_texts(pieces: Sequence[tuple[str, str]]) -> str:
    return "".join(c + a for c, a in pieces)
