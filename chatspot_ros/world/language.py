"""What the tabletop world says about its scenes: captions, referring expressions, tasks, plans.

Deterministic functions of a scene (and, for tasks, of a seeded generator), so the training data,
the evaluation's ground truth and the demo use one wording (docs/world.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from chatspot_ros.world.scene import Scene, WorldObject

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five")  # the standard world (the tokenizer's corpus)
COUNT_WORDS = NUMBER_WORDS + ("six", "seven", "eight")  # the crowded split counts further
TASK_KINDS: tuple[str, ...] = ("pick", "push", "put")


def region_caption(obj: WorldObject) -> str:
    """'the small red cube on the left': size word (if any), category, position words."""
    words = ["the"]
    if obj.size_word:
        words.append(obj.size_word)
    words.append(obj.category)
    h, v = obj.horizontal_word, obj.vertical_word
    if h == "middle" and v == "middle":
        words.append("in the middle")
    elif v == "middle":
        words.append(f"on the {h}")
    elif h == "middle":
        words.append(f"at the {v}")
    else:
        words.append(f"at the {v} {h}")
    return " ".join(words)


def relative_position(obj: WorldObject, other: WorldObject) -> str:
    """Where ``obj`` lies against ``other``: 'on the left'/'on the right' when their centres are
    further apart across than down, else 'at the top'/'at the bottom'."""
    dx = obj.center[0] - other.center[0]
    dy = obj.center[1] - other.center[1]
    if abs(dx) >= abs(dy):
        return "on the left" if dx < 0 else "on the right"
    return "at the top" if dy < 0 else "at the bottom"


def referring_expression(obj: WorldObject, scene: Scene | None = None) -> str:
    """'the red cube', unique in its scene; where the scene holds a second object of the same
    category (the same_category split), the position word against it: 'the red cube on the left'."""
    if scene is not None:
        twins = [o for o in scene.objects if o is not obj and o.category == obj.category]
        if len(twins) == 1:
            return f"the {obj.category} {relative_position(obj, twins[0])}"
        if twins:
            raise ValueError(f"{len(twins) + 1} objects of category {obj.category!r}: no expression names one")
    return f"the {obj.category}"


def scene_caption(scene: Scene) -> str:
    """'There are two objects on the wood table: a red cube and a blue ball.'"""
    n = len(scene.objects)
    names = [f"a {o.category}" for o in scene.objects]
    listed = names[0] if n == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    noun = "object" if n == 1 else "objects"
    verb = "is" if n == 1 else "are"
    return f"There {verb} {COUNT_WORDS[n]} {noun} on the {scene.table} table: {listed}."


@dataclass(frozen=True)
class Task:
    """A manipulation task about one target object, and its action plan."""

    kind: str  # "pick" | "push" | "put"
    target: WorldObject
    text: str  # "pick up the red cube"
    plan: tuple[str, ...]  # the steps, without numbers
    destination: WorldObject | None = None  # the object "put ... on" puts the target on
    direction: str = ""  # "left" | "right" for push


def make_task(kind: str, target: WorldObject, *, destination: WorldObject | None = None, direction: str = "") -> Task:
    t = target.category
    if kind == "pick":
        text = f"pick up the {t}"
        plan = (
            f"Move the gripper above the {t}.",
            "Open the gripper.",
            f"Lower the gripper and grasp the {t}.",
            f"Lift the {t}.",
        )
    elif kind == "push":
        if direction not in ("left", "right"):
            raise ValueError(f"push needs direction 'left' or 'right', got {direction!r}")
        other = "right" if direction == "left" else "left"
        text = f"push the {t} to the {direction}"
        plan = (
            f"Move the gripper to the {other} side of the {t}.",
            "Lower the gripper to the table.",
            f"Push the {t} to the {direction}.",
            "Raise the gripper.",
        )
    elif kind == "put":
        if destination is None:
            raise ValueError("put needs a destination object")
        d = destination.category
        text = f"put the {t} on the {d}"
        plan = (
            f"Pick up the {t}.",
            f"Move the {t} above the {d}.",
            f"Lower the {t} onto the {d}.",
            f"Open the gripper to release the {t}.",
        )
    else:
        raise ValueError(f"unknown task kind {kind!r}; known: {', '.join(TASK_KINDS)}")
    return Task(kind, target, text, plan, destination, direction)


def sample_task(scene: Scene, target_index: int, rng: np.random.Generator) -> Task:
    """A task about ``scene.objects[target_index]`` ("put" only when there is a second object)."""
    target = scene.objects[target_index]
    kinds = list(TASK_KINDS) if len(scene.objects) > 1 else ["pick", "push"]
    kind = kinds[int(rng.integers(len(kinds)))]
    if kind == "put":
        others = [o for i, o in enumerate(scene.objects) if i != target_index and o.category != target.category]
        if not others:  # only a twin of the target: "put the red cube on the red cube" names nothing
            return make_task("pick", target)
        return make_task(kind, target, destination=others[int(rng.integers(len(others)))])
    if kind == "push":
        return make_task(kind, target, direction=("left", "right")[int(rng.integers(2))])
    return make_task(kind, target)


def numbered(steps: tuple[str, ...] | list[str]) -> str:
    """The plan as the model writes it: '1. ...' one step per line."""
    return "\n".join(f"{i}. {s}" for i, s in enumerate(steps, 1))
