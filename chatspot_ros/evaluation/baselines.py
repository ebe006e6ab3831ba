"""Baselines that need the model's insides: the stage-0 patch head alone (wired tabletop models).

A wired tabletop model (docs/training.md) names a region's category from the stage-0 patch
head's colour and shape logits, which the projector carries into the decoder unchanged
(``referring_path.wire_projector``). Averaging those logits over the patches the wired route
selects, with no decoder at all, is the baseline that says how much of region classification the
decoder adds. The region is read from the instruction the model was asked (its coordinate
tokens), so the baseline sees exactly the patches the route sees.
"""
from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from chatspot_ros.evaluation.samples import CLEAN

_REGION = re.compile(r"\[([0-9.,\s]+)\]")


def instruction_region(instruction: str) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """(first, last) coarse coordinates of the last ``[x1,y1,x2,y2]`` or ``[x,y]`` of a prompt, as the
    coordinate tokens carry them ("0.103" -> 0.10); None when the prompt holds no region."""
    found = _REGION.findall(instruction)
    if not found:
        return None
    values = [float(v.strip()[:4]) for v in found[-1].split(",") if v.strip()]
    if len(values) == 2:
        return (values[0], values[1]), (values[0], values[1])
    if len(values) == 4:
        return (values[0], values[1]), (values[2], values[3])
    return None


def stage0_head_baseline(model_dir: str, records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Accuracy of the stage-0 head alone on the clean region-classification records, per prompt
    kind ("box", "point"): {prompt: {"n", "correct", "accuracy"}}. ValueError for a model that
    does not carry the wired route (the baseline means nothing there)."""
    import torch

    from chatspot_ros.training import referring_path as rp
    from chatspot_ros.training.dataset import load_rgb
    from chatspot_ros.training.model_setup import from_checkpoint
    from chatspot_ros.training.tabletop_model import COORD_TOKENS
    from chatspot_ros.training.vision_pretrain import N_COLOURS, N_SHAPES
    from chatspot_ros.world.scene import COLOURS, SHAPES

    setup = from_checkpoint(model_dir, add_box_tokens=False)
    problems = rp.wiring_problems(setup.model, setup.tokenizer, COORD_TOKENS)
    if problems:
        raise ValueError(f"the stage-0 head baseline needs a wired tabletop model; {model_dir}: {problems[0]}")
    layout = rp.layout_for(setup.model.config)
    model = setup.model.eval()
    by_image: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for r in records:
        if r["task"] == "classification" and r["condition"] == CLEAN and r["prompt"] in ("box", "point") \
                and not r.get("error"):
            by_image[r["image"]].append(r)
    hits: dict[str, list[bool]] = defaultdict(list)
    colours, shapes = list(COLOURS), list(SHAPES)
    with torch.no_grad():
        for image, rows in by_image.items():
            pixels = setup.preprocess([load_rgb(image)])
            hidden = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states[-1][:, 1:]
            content = model.model.multi_modal_projector(hidden)[0][:, layout.image]  # (N, 32): 0.25 x head logits
            for r in rows:
                region = instruction_region(r["instruction"])
                correct = False
                if region is not None:
                    inside = torch.as_tensor(rp.inside_patches(region[0], region[1], layout.grid))
                    if bool(inside.any()):
                        mean = content[inside].mean(0)
                        colour = colours[int(mean[: N_COLOURS - 1].argmax())]
                        shape = shapes[int(mean[N_COLOURS: N_COLOURS + N_SHAPES - 1].argmax())]
                        correct = f"{colour} {shape}" == r.get("gt_category")
                hits[r["prompt"]].append(correct)
    return {p: {"n": len(v), "correct": sum(v), "accuracy": sum(v) / len(v) if v else None} for p, v in hits.items()}
