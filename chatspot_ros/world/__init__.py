"""The synthetic tabletop world (docs/world.md): scenes, their language, their annotation files."""
from __future__ import annotations

from chatspot_ros.world.language import (
    Task,
    make_task,
    numbered,
    referring_expression,
    region_caption,
    sample_task,
    scene_caption,
)
from chatspot_ros.world.scene import (
    CATEGORIES,
    COLOURS,
    HEIGHT,
    SHAPES,
    WIDTH,
    Scene,
    WorldObject,
    category_id,
    render,
    sample_scene,
)

__all__ = [
    "CATEGORIES", "COLOURS", "HEIGHT", "SHAPES", "WIDTH", "Scene", "Task", "WorldObject", "category_id",
    "make_task", "numbered", "referring_expression", "region_caption", "render", "sample_scene",
    "sample_task", "scene_caption",
]
