"""Training samples drawn from the tabletop world: fresh turns about any frame of a seeded split.

The same records ``chatspot-train data build --world`` writes to a file, but drawn on the fly, so
a long run sees new questions about its frames at every step without gigabytes of PNGs. Frames
are rendered once (their pixels are cached by the trainer).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from chatspot_ros.training.conversations import Sample
from chatspot_ros.training.sources import ObjectRecord, SampleMix, image_turns, sample_turns
from chatspot_ros.world import language
from chatspot_ros.world.scene import Scene, render, sample_scene


def scene_records(scene: Scene, rng: np.random.Generator) -> list[ObjectRecord]:
    """ObjectRecords of a scene: the fields COCO annotations of the world carry (annotations.py)."""
    out = []
    for k, obj in enumerate(scene.objects):
        task = language.sample_task(scene, k, rng)
        out.append(ObjectRecord(
            box=obj.box, category=obj.category, polygon=obj.polygon, caption=language.region_caption(obj),
            expression=language.referring_expression(obj, scene), attributes={"colour": obj.colour, "shape": obj.shape},
            click=obj.inside_point(rng), task=task.text, plan=task.plan,
        ))
    return out


def scene_image_turns(scene: Scene) -> list:
    n = len(scene.objects)
    return image_turns(language.scene_caption(scene),
                       [("How many objects are on the table?", language.NUMBER_WORDS[n])])


@dataclass
class WorldSource:
    """Frames ``[start, start + frames)`` of world split ``seed``; turns drawn with the trainer's rng."""

    seed: int
    frames: int
    start: int = 0
    mix: SampleMix = field(default_factory=SampleMix)
    name: str = "world"

    def key(self, index: int) -> str:
        return f"world:{self.seed}:{index}"

    def draw(self, rng: np.random.Generator, n: int) -> list[Sample]:
        out = []
        for index in rng.integers(self.start, self.start + self.frames, size=n):
            scene = sample_scene(self.seed, int(index))
            turns = sample_turns(scene_records(scene, rng), rng, self.mix, scene_image_turns(scene))
            out.append(Sample(f"{self.seed}-{int(index)}", self.key(int(index)), scene.size, tuple(turns), "world"))
        return out

    def load_image(self, key: str) -> np.ndarray:
        _, seed, index = key.split(":")
        return render(sample_scene(int(seed), int(index)))
