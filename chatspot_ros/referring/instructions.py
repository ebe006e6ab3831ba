"""Precise referring instructions (paper, Sec. 3.2): question text + Φ(regions) in a dialect.

The templates live in config/instructions.yaml so that wording can change without code; the
defaults here mirror that file (a test checks it) so the library works without the file too.
Region text goes after the question unless the question places it with ``<region>`` (all
regions) or ``<region1>``, ``<region2>``, ... (one region each), the paper's own notation.
"""
from __future__ import annotations

import math
import re
import string
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

from chatspot_ros.referring.dialects import Dialect, get_dialect
from chatspot_ros.referring.geometry import ImageGeometry
from chatspot_ros.referring.regions import (
    DEFAULT_MAX_OUTSIDE,
    Region,
    check_image_size,
    clip_region,
)

DEFAULT_MAX_QUESTION_CHARS = 4096
DEFAULT_MAX_REGIONS = 32

# The placeholders a template must contain (all of them, and no others).
_TEMPLATE_FIELDS: dict[str, frozenset[str]] = {
    "describe_image": frozenset(),
    "image_question": frozenset({"question"}),
    "describe_region": frozenset({"region"}),
    "region_question": frozenset({"question", "region"}),
    "what_in_region": frozenset({"region"}),
    "text_in_region": frozenset({"region"}),
    "suggest_actions": frozenset({"task", "region"}),
    "find_region": frozenset({"expression"}),
    "multi_region_item": frozenset({"index", "region"}),
    "multi_region_separator": frozenset(),
    "styled": frozenset({"instruction", "style"}),
}

_QUESTION_PLACEHOLDER_RE = re.compile(r"<region(\d*)>")


def _default_styles() -> dict[str, str]:
    return {"short": "Answer in short.", "detail": "Answer in detail."}


def _template_fields(name: str, template: str) -> frozenset[str]:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise ValueError(f"instruction template {name!r} is not a valid format string: {err}") from None
    names = set()
    for _, field_name, spec, conversion in parsed:
        if field_name is None:
            continue
        if spec or conversion:
            raise ValueError(f"instruction template {name!r}: use plain {{{field_name}}}, no format spec")
        names.add(field_name)
    return frozenset(names)


@dataclass(frozen=True)
class InstructionTemplates:
    """Instruction wording (Python str.format templates); defaults equal config/instructions.yaml."""

    describe_image: str = "Describe the whole image in detail."
    image_question: str = "{question}"
    describe_region: str = "Describe this region in detail. {region}"
    region_question: str = "{question} {region}"
    what_in_region: str = "What can you see in this region? {region}"
    text_in_region: str = "What text can you see in this region? {region}"
    suggest_actions: str = (
        "Task: {task} The target of the task is in the region {region}. "
        "List the steps to do the task as a numbered list, one step per line."
    )
    find_region: str = "Where is {expression} in the image? Answer with its region."
    multi_region_item: str = "region {index} {region}"
    multi_region_separator: str = ", "
    styled: str = "{instruction} {style}"
    styles: Mapping[str, str] = field(default_factory=_default_styles)

    def __post_init__(self) -> None:
        for name, required in _TEMPLATE_FIELDS.items():
            value = getattr(self, name)
            if not isinstance(value, str):
                raise ValueError(f"instruction template {name!r} must be a string, got {type(value).__name__}")
            found = _template_fields(name, value)
            if found != required:
                want = ", ".join(f"{{{f}}}" for f in sorted(required)) or "no placeholders"
                raise ValueError(f"instruction template {name!r} must use {want}, got {value!r}")
        if not isinstance(self.styles, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in self.styles.items()
        ):
            raise ValueError(f"styles must map style names to non-empty strings, got {self.styles!r}")
        object.__setattr__(self, "styles", dict(self.styles))


def load_instruction_templates(path: str | Path) -> InstructionTemplates:
    """Templates from a YAML file; keys left out keep their defaults, unknown keys are an error."""
    import yaml  # PyYAML: only needed when a file is read

    with open(path, encoding="utf-8") as f:
        data: Any = yaml.safe_load(f)
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a mapping of template names to strings")
    known = {f.name for f in fields(InstructionTemplates)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path}: unknown instruction template keys {unknown}; known: {sorted(known)}")
    return InstructionTemplates(**data)


@dataclass(frozen=True)
class ReferringInstruction:
    """One instruction ready for a conversation template, and the regions it refers to."""

    text: str  # the exact instruction text (goes into RegionDescription.instruction)
    regions: tuple[Region, ...]  # after clipping, source pixels, in the order they are numbered
    notes: tuple[str, ...] = ()  # human-readable clip reports
    template: str = ""  # which template made it: "describe_image", "region_question", ...


class InstructionBuilder:
    """Builds referring instructions for one checkpoint: its dialect, its geometry, the templates."""

    def __init__(
        self,
        dialect: Dialect | str,
        geometry: ImageGeometry,
        templates: InstructionTemplates | None = None,
        *,
        max_question_chars: int = DEFAULT_MAX_QUESTION_CHARS,
        max_regions: int = DEFAULT_MAX_REGIONS,
        max_outside: float = DEFAULT_MAX_OUTSIDE,
    ) -> None:
        if max_question_chars <= 0 or max_regions <= 0:
            raise ValueError(
                f"max_question_chars and max_regions must be positive, got {max_question_chars}, {max_regions}"
            )
        if not (math.isfinite(max_outside) and max_outside >= 0):
            raise ValueError(f"max_outside must be a finite fraction >= 0, got {max_outside}")
        self.dialect = get_dialect(dialect) if isinstance(dialect, str) else dialect
        self.geometry = geometry
        self.templates = templates if templates is not None else InstructionTemplates()
        self.max_question_chars = max_question_chars
        self.max_regions = max_regions
        self.max_outside = max_outside

    # -- public instructions --------------------------------------------------------------------

    def describe_image(self, image_size: tuple[int, int], *, style: str | None = None) -> ReferringInstruction:
        check_image_size(image_size)
        return self._finish(self.templates.describe_image, (), (), style, "describe_image")

    def ask(
        self,
        question: str,
        regions: Sequence[Region],
        image_size: tuple[int, int],
        *,
        style: str | None = None,
    ) -> ReferringInstruction:
        """A free question about the image (no regions) or about one or more regions."""
        question = self._check_text(question, "question")
        width, height = check_image_size(image_size)
        regions = tuple(regions)
        if len(regions) > self.max_regions:
            raise ValueError(f"{len(regions)} regions given; at most {self.max_regions} per instruction")
        placeholders = _QUESTION_PLACEHOLDER_RE.findall(question)
        if not regions:
            if placeholders:
                raise ValueError("the question has a <region> placeholder but no region was given")
            text = self.templates.image_question.format(question=question)
            return self._finish(text, (), (), style, "image_question")
        final, texts, notes = self._prepare_all(regions, width, height)
        if placeholders:
            text = self._substitute(question, texts)
            return self._finish(text, final, notes, style, "question_placeholders")
        text = self.templates.region_question.format(question=question, region=self._join(texts))
        return self._finish(text, final, notes, style, "region_question")

    def describe_region(
        self, region: Region, image_size: tuple[int, int], *, style: str | None = None
    ) -> ReferringInstruction:
        return self._single("describe_region", region, image_size, style)

    def what_is_in_region(
        self, region: Region, image_size: tuple[int, int], *, style: str | None = None
    ) -> ReferringInstruction:
        """The paper's region-classification prompt: "What can you see in this region?"."""
        return self._single("what_in_region", region, image_size, style)

    def read_text(
        self, region: Region, image_size: tuple[int, int], *, style: str | None = None
    ) -> ReferringInstruction:
        """The paper's regional OCR prompt: "What text can you see in this region?"."""
        return self._single("text_in_region", region, image_size, style)

    def suggest_actions(self, task: str, region: Region, image_size: tuple[int, int]) -> ReferringInstruction:
        """Task + region -> a request for numbered steps (read them back with parse_steps)."""
        task = self._check_text(task, "task")
        if task[-1] not in ".!?":
            task += "."
        width, height = check_image_size(image_size)
        final, texts, notes = self._prepare_all((region,), width, height)
        text = self.templates.suggest_actions.format(task=task, region=texts[0])
        return self._finish(text, final, notes, None, "suggest_actions")

    def find_region(self, expression: str, image_size: tuple[int, int], *, style: str | None = None
                    ) -> ReferringInstruction:
        """The reverse direction (referring expression comprehension): the answer holds the region."""
        expression = self._check_text(expression, "expression")
        check_image_size(image_size)
        text = self.templates.find_region.format(expression=expression)
        return self._finish(text, (), (), style, "find_region")

    # -- helpers --------------------------------------------------------------------------------

    def region_text(self, region: Region, image_size: tuple[int, int]) -> str:
        """Φ(region) in this builder's dialect, e.g. "<box>[0.100,0.312,0.500,0.688]</box>"."""
        width, height = check_image_size(image_size)
        return self._prepare(region, width, height)[1]

    def _single(
        self, template: str, region: Region, image_size: tuple[int, int], style: str | None
    ) -> ReferringInstruction:
        width, height = check_image_size(image_size)
        final, texts, notes = self._prepare_all((region,), width, height)
        text = getattr(self.templates, template).format(region=texts[0])
        return self._finish(text, final, notes, style, template)

    def _check_text(self, text: str, what: str) -> str:
        if not isinstance(text, str):
            raise ValueError(f"{what} must be a string, got {type(text).__name__}")
        text = text.strip()
        if not text:
            raise ValueError(f"{what} is empty")
        if len(text) > self.max_question_chars:
            raise ValueError(f"{what} has {len(text)} characters; at most {self.max_question_chars}")
        return text

    def _prepare(self, region: Region, width: int, height: int) -> tuple[Region, str, list[str]]:
        """Clip to the image, then to what the model sees; format in the dialect."""
        if not isinstance(region, Region):
            raise ValueError(f"expected a Region, got {type(region).__name__}")
        clipped = clip_region(region, width, height, max_outside=self.max_outside)
        notes = [clipped.message] if clipped.clipped else []
        try:
            norm, cropped = self.geometry.to_model(clipped.region.points, width, height, kind=region.kind)
        except ValueError as err:
            raise ValueError(f"{region.name}: {err}") from None
        final = clipped.region
        if cropped:
            final = Region(region.kind, self.geometry.to_source(norm, width, height), region.id, region.label)
            notes.append(
                f"{region.name} clipped to the part of the image the model sees ({self.geometry.mode.value})"
            )
        text = self.dialect.format(region.kind, norm, self.geometry.model_size(width, height))
        return final, text, notes

    def _prepare_all(
        self, regions: Sequence[Region], width: int, height: int
    ) -> tuple[tuple[Region, ...], list[str], list[str]]:
        final, texts, notes = [], [], []
        for region in regions:
            r, t, n = self._prepare(region, width, height)
            final.append(r)
            texts.append(t)
            notes.extend(n)
        return tuple(final), texts, notes

    def _join(self, texts: Sequence[str]) -> str:
        """One region: its text; several: "region 1 <box>..</box>, region 2 <box>..</box>"."""
        if len(texts) == 1:
            return texts[0]
        items = (self.templates.multi_region_item.format(index=i, region=t) for i, t in enumerate(texts, 1))
        return self.templates.multi_region_separator.join(items)

    def _substitute(self, question: str, texts: Sequence[str]) -> str:
        used: set[int] = set()

        def replace(m: re.Match[str]) -> str:
            if not m.group(1):
                used.update(range(len(texts)))
                return self._join(texts)
            k = int(m.group(1))
            if not 1 <= k <= len(texts):
                raise ValueError(f"the question refers to <region{k}> but {len(texts)} region(s) were given")
            used.add(k - 1)
            return texts[k - 1]

        text = _QUESTION_PLACEHOLDER_RE.sub(replace, question)
        missing = sorted(set(range(len(texts))) - used)
        if missing:
            left_out = [i + 1 for i in missing]
            raise ValueError(f"the question places regions with <regionK> but leaves out region(s) {left_out}")
        return text

    def _finish(
        self, text: str, regions: tuple[Region, ...], notes: Sequence[str], style: str | None, template: str
    ) -> ReferringInstruction:
        if style is not None:
            if style not in self.templates.styles:
                raise ValueError(f"unknown answer style {style!r}; known: {', '.join(self.templates.styles)}")
            text = self.templates.styled.format(instruction=text, style=self.templates.styles[style])
        return ReferringInstruction(text, regions, tuple(notes), template)
