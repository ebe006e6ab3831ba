"""The referring core (pure Python): regions, Φ normalization, dialects, instructions, parsing.

Nothing here imports ROS or torch, so the whole contract of docs/design.md ("referring") is
tested on plain data. See docs/referring.md for the coordinate conventions.
"""
from __future__ import annotations

from chatspot_ros.referring.conversation import (
    CONVERSATIONS,
    ConversationTemplate,
    get_conversation,
)
from chatspot_ros.referring.dialects import (
    DEFAULT_DIALECT,
    DIALECTS,
    Dialect,
    ParsedRegion,
    get_dialect,
)
from chatspot_ros.referring.geometry import ImageGeometry, ResizeMode, smart_resize
from chatspot_ros.referring.instructions import (
    DEFAULT_MAX_QUESTION_CHARS,
    DEFAULT_MAX_REGIONS,
    InstructionBuilder,
    InstructionTemplates,
    ReferringInstruction,
    load_instruction_templates,
)
from chatspot_ros.referring.parsing import parse_regions, parse_steps
from chatspot_ros.referring.regions import (
    DEFAULT_MAX_OUTSIDE,
    ClippedRegion,
    Region,
    RegionKind,
    clip_region,
)

__all__ = [
    "CONVERSATIONS",
    "DEFAULT_DIALECT",
    "DEFAULT_MAX_OUTSIDE",
    "DEFAULT_MAX_QUESTION_CHARS",
    "DEFAULT_MAX_REGIONS",
    "DIALECTS",
    "ClippedRegion",
    "ConversationTemplate",
    "Dialect",
    "ImageGeometry",
    "InstructionBuilder",
    "InstructionTemplates",
    "ParsedRegion",
    "ReferringInstruction",
    "Region",
    "RegionKind",
    "ResizeMode",
    "clip_region",
    "get_conversation",
    "get_dialect",
    "load_instruction_templates",
    "parse_regions",
    "parse_steps",
    "smart_resize",
]
