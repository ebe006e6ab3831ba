"""Reading model answers back: regions in a dialect -> source pixels, and action steps.

Model output is free text, so parsing is lenient where the text is ambiguous (a list that is no
region, a region entirely in LLaVA's padding) and skips those, but it never invents coordinates:
what it returns is what the model wrote, mapped through the inverse of Φ and clipped to the image.
"""
from __future__ import annotations

import re

from chatspot_ros.referring.dialects import Dialect, get_dialect
from chatspot_ros.referring.geometry import ImageGeometry
from chatspot_ros.referring.regions import (
    DEFAULT_MAX_OUTSIDE,
    Region,
    check_image_size,
)


def parse_regions(
    text: str,
    dialect: Dialect | str,
    geometry: ImageGeometry,
    image_size: tuple[int, int],
    *,
    max_outside: float = DEFAULT_MAX_OUTSIDE,
) -> list[Region]:
    """All regions the model wrote in ``dialect``, in source-image pixels, in order of appearance.

    Each point is snapped into the image (rounding, or LLaVA's padding, can put a model coordinate
    just outside it); snapping per point keeps the model's vertices one for one, where a polygon
    clip would invent new ones. A box drawn wholly in the padding thus comes back flat on the
    border, so the caller still sees that the model answered with a box. Matches that form no
    valid region are skipped: a value count that fits no kind, a point more than ``max_outside``
    x the image size (plus the dialect's rounding) outside, a polygon that collapses.
    """
    if isinstance(dialect, str):
        dialect = get_dialect(dialect)
    width, height = check_image_size(image_size)
    model_size = geometry.model_size(width, height)
    # The text's own rounding may add up to half a grid step (in source pixels) on top.
    qx, qy = dialect.quantization(model_size)
    ux, uy = geometry.source_per_unit(width, height)
    slack_x, slack_y = max_outside * width + qx * ux, max_outside * height + qy * uy
    lo_x, hi_x, lo_y, hi_y = -slack_x, width + slack_x, -slack_y, height + slack_y
    regions = []
    for parsed in dialect.parse(text, model_size):
        points = geometry.to_source(parsed.points, width, height)
        if not all(lo_x <= x <= hi_x and lo_y <= y <= hi_y for x, y in points):
            continue
        snapped = tuple((min(max(x, 0.0), float(width)), min(max(y, 0.0), float(height))) for x, y in points)
        try:
            regions.append(Region(parsed.kind, snapped, label=parsed.label))
        except ValueError:
            continue  # a polygon that collapsed onto the image border; see the docstring
    return regions


_NUMBERED_RE = re.compile(r"^\s*(?:step\s*)?(\d{1,3})\s*[.):]\s+(?P<body>\S.*)$", re.IGNORECASE)
_BULLET_RE = re.compile(r"^\s*[-*•‣◦]\s+(?P<body>\S.*)$")
_INLINE_NUMBER_RE = re.compile(r"(?:^|(?<=\s))(?:step\s*)?(\d{1,3})[.):]\s+", re.IGNORECASE)
_SENTENCE_RE = re.compile(r"(?<=[.!?])\s+")


def _clean(step: str) -> str:
    return re.sub(r"\s+", " ", step).strip()


def _line_steps(text: str) -> list[str]:
    """Steps that start lines ("1." "1)" "Step 1:" or a bullet); indented lines continue a step.

    Lines before the first step (a preamble) are dropped, and a blank line ends a step so that a
    closing remark after the list is not glued onto the last step.
    """
    steps: list[str] = []
    in_step = False
    for line in text.splitlines():
        m = _NUMBERED_RE.match(line) or _BULLET_RE.match(line)
        if m:
            steps.append(m.group("body"))
            in_step = True
        elif not line.strip():
            in_step = False
        elif in_step:
            steps[-1] += " " + line.strip()
    return [s for s in (_clean(s) for s in steps) if s]


def _inline_steps(text: str) -> list[str]:
    """Steps numbered 1, 2, 3, ... inside one paragraph: "1. Open the door. 2. Take the can."."""
    marks = [m for m in _INLINE_NUMBER_RE.finditer(text)]
    chain, expected = [], 1
    for m in marks:
        if int(m.group(1)) == expected:
            chain.append(m)
            expected += 1
    if len(chain) < 2:
        return []
    bounds = [m.end() for m in chain] + [len(text)]
    starts = [m.start() for m in chain[1:]] + [len(text)]
    return [s for s in (_clean(text[bounds[i]:starts[i]]) for i in range(len(chain))) if s]


def parse_steps(text: str) -> list[str]:
    """Steps of an action answer: numbered or bulleted lines, else inline numbering, else sentences."""
    steps = _line_steps(text)
    if len(steps) >= 2 or (steps and not _inline_steps(text)):
        return steps
    inline = _inline_steps(text)
    if inline:
        return inline
    return [s for s in (_clean(s) for s in _SENTENCE_RE.split(text.strip())) if s]
