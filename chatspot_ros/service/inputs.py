"""Input values the agent takes from any front end (ROS-free): a detection as a region, a click as
a region, and the limits every request is checked against (``ValueError`` with the reason).

:mod:`chatspot_ros.ros.convert` turns messages into these; the replay and the studio build them
directly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from chatspot_ros.referring.regions import Region


@dataclass(frozen=True)
class DetectionRegion:
    region: Region  # a BOX (a POLYGON when the box is rotated), id = Detection2D.id
    label: str  # class id of the best hypothesis, "" when none
    score: float  # its score, 0 when none


def click_region(u: float, v: float, width: int, height: int, box_size: int, *, id: str = "click") -> Region:
    """A region for a click at pixel (u, v): a point, or a box of ``box_size`` pixels around it
    (clamped to the image). ValueError when the click lies outside the image."""
    if not (math.isfinite(u) and math.isfinite(v)):
        raise ValueError(f"click ({u}, {v}) has a non-finite coordinate")
    if not (0.0 <= u <= width and 0.0 <= v <= height):
        raise ValueError(f"click ({u:.1f}, {v:.1f}) lies outside the {width}x{height} image")
    if box_size <= 0:
        return Region.point(u, v, id=id)
    half = box_size / 2.0
    return Region.box(max(0.0, u - half), max(0.0, v - half), min(float(width), u + half),
                      min(float(height), v + half), id=id)


def check_fields(regions: int, question: str, max_new_tokens: int, *, max_regions: int, max_question_chars: int,
                 max_new_tokens_limit: int, what: str = "question", require_question: bool = True) -> None:
    """The limits of one request (ask, describe, suggest); ValueError with the reason and the parameter."""
    if regions > max_regions:
        raise ValueError(f"{regions} regions in one request; the limit is {max_regions} "
                         "(limits.max_regions_per_request)")
    if require_question and not question.strip():
        raise ValueError(f"the {what} is empty")
    if len(question) > max_question_chars:
        raise ValueError(f"the {what} has {len(question)} characters; the limit is "
                         f"{max_question_chars} (limits.max_question_chars)")
    if max_new_tokens > max_new_tokens_limit:
        raise ValueError(f"max_new_tokens {max_new_tokens} exceeds the limit {max_new_tokens_limit} "
                         "(generation.max_new_tokens_limit)")
