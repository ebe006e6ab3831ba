"""Stage 0 of the from-scratch recipe: teach the vision tower what lies in each patch.

A vision tower trained from random weights only through the LLM gets almost no gradient at the
start (the path image -> answer runs through random attention), and a small model then learns
nothing about the image for hundreds of steps. A dense objective fixes that cheaply: from each
patch's final hidden state, a temporary linear head predicts the colour and the shape of what
covers the patch (soft targets from the world's exact object masks; "table" where nothing is)
and the box of the object that covers most of it (loss weighted by that share): patches are
coarser than objects, so a box answer (REC) needs the box from the tower, not from patch places.
The head then becomes the content the projector hands the decoder (referring_path.wire_projector),
so the LLM reads what lies in a region, and where an object's edges are, from step one.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import numpy as np

from chatspot_ros.world.scene import COLOURS, SHAPES, Scene, object_masks, render, sample_scene

LOGGER = logging.getLogger("chatspot_ros.training")
N_COLOURS = len(COLOURS) + 1  # + table
N_SHAPES = len(SHAPES) + 1
N_BOX = 4  # x1, y1, x2, y2 normalized by the frame (the stretched model image)
BOX_LOSS_WEIGHT = 10.0  # L1 in frame units: 0.02 off costs 0.2, like a confident class error


def patch_targets(scene: Scene, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """(colour (G*G, 7), shape (G*G, 4)) soft targets: the share of each patch every object covers.

    Patches tile the frame as the model's stretched input does (G x G equal cells of the frame).
    """
    height, width = scene.size[1], scene.size[0]
    colour = np.zeros((grid * grid, N_COLOURS), np.float32)
    shape = np.zeros((grid * grid, N_SHAPES), np.float32)
    ys = np.linspace(0, height, grid + 1).round().astype(int)
    xs = np.linspace(0, width, grid + 1).round().astype(int)
    covered = np.zeros(grid * grid, np.float32)
    colour_index = {c: i for i, c in enumerate(COLOURS)}
    shape_index = {s: i for i, s in enumerate(SHAPES)}
    for obj, mask in zip(scene.objects, object_masks(scene)):
        cells = np.add.reduceat(np.add.reduceat(mask.astype(np.float32), ys[:-1], axis=0), xs[:-1], axis=1)
        area = np.outer(np.diff(ys), np.diff(xs))
        share = (cells / area).reshape(-1)
        colour[:, colour_index[obj.colour]] += share
        shape[:, shape_index[obj.shape]] += share
        covered += share
    colour[:, -1] = np.clip(1.0 - covered, 0.0, 1.0)
    shape[:, -1] = colour[:, -1]
    return colour, shape


def patch_box_targets(scene: Scene, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """(box (G*G, 4), weight (G*G,)): per patch, the normalized box of the object covering most
    of it, and that object's share of the patch (0 where only table shows)."""
    height, width = scene.size[1], scene.size[0]
    ys = np.linspace(0, height, grid + 1).round().astype(int)
    xs = np.linspace(0, width, grid + 1).round().astype(int)
    area = np.outer(np.diff(ys), np.diff(xs)).reshape(-1)
    box = np.zeros((grid * grid, N_BOX), np.float32)
    weight = np.zeros(grid * grid, np.float32)
    for obj, mask in zip(scene.objects, object_masks(scene)):
        cells = np.add.reduceat(np.add.reduceat(mask.astype(np.float32), ys[:-1], axis=0), xs[:-1], axis=1)
        share = cells.reshape(-1) / area
        wins = share > weight
        x0, y0, x1, y1 = obj.box
        box[wins] = (x0 / width, y0 / height, x1 / width, y1 / height)
        weight[wins] = share[wins]
    return box, weight


def pretrain_vision(model: Any, preprocess: Callable[[Sequence[np.ndarray]], Any], *, seed: int, frames: int,
                    steps: int, batch_size: int = 32, lr: float = 2e-3, layout: Any = None,
                    progress: bool = True) -> tuple[list[float], Any]:
    """Train ``model``'s vision tower on patch targets of world split ``seed``.

    ``layout`` (a referring_path.PathLayout): the tower's position dims are kept as wired.
    Returns the losses and the trained patch head (Linear: colours + table, shapes + table, box).
    """
    import torch
    from tqdm import tqdm

    tower = model.model.vision_tower
    config = tower.config
    grid = config.image_size // config.patch_size
    scenes = [sample_scene(seed, i) for i in range(frames)]
    pixels = torch.cat([preprocess([render(s) for s in scenes[i:i + 64]]) for i in range(0, frames, 64)])
    targets = [patch_targets(s, grid) for s in scenes]
    colour_t = torch.tensor(np.stack([t[0] for t in targets]))  # (F, N, 7)
    shape_t = torch.tensor(np.stack([t[1] for t in targets]))  # (F, N, 4)
    boxes = [patch_box_targets(s, grid) for s in scenes]
    box_t = torch.tensor(np.stack([b[0] for b in boxes]))  # (F, N, 4)
    box_w = torch.tensor(np.stack([b[1] for b in boxes]))  # (F, N)
    head = torch.nn.Linear(config.hidden_size, N_COLOURS + N_SHAPES + N_BOX)
    params = list(tower.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    hooks = []
    if layout is not None:
        from chatspot_ros.training.referring_path import protect_vision

        hooks = protect_vision(model, layout)
    rng = np.random.default_rng(seed)
    losses = []
    tower.train()
    bar = tqdm(range(steps), desc="stage 0: vision", unit="step", disable=not progress, dynamic_ncols=True)
    try:
        for step in bar:
            idx = torch.as_tensor(rng.integers(frames, size=batch_size))
            hidden = tower(pixels[idx], output_hidden_states=True).hidden_states[-1][:, 1:]  # (B, N, C)
            logits = head(hidden)
            classes = N_COLOURS + N_SHAPES
            box_error = (logits[..., classes:] - box_t[idx]).abs().sum(-1)  # (B, N)
            loss = -(colour_t[idx] * torch.log_softmax(logits[..., :N_COLOURS], -1)).sum(-1).mean() \
                   - (shape_t[idx] * torch.log_softmax(logits[..., N_COLOURS:classes], -1)).sum(-1).mean() \
                   + BOX_LOSS_WEIGHT * (box_error * box_w[idx]).sum() / box_w[idx].sum().clamp(min=1.0)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            for group in optimizer.param_groups:
                group["lr"] = lr * min(1.0, (step + 1) / 20)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}")
    finally:
        bar.close()
        for h in hooks:
            h.remove()
    tower.eval()
    LOGGER.info("stage 0 (vision): %d steps, loss %.3f -> %.3f", steps, np.mean(losses[:10]), np.mean(losses[-10:]))
    return losses, head


def region_readout_accuracy(model: Any, head: Any, preprocess: Callable[[Sequence[np.ndarray]], Any], *,
                            seed: int, frames: int) -> dict[str, float]:
    """Category accuracy of the patch head averaged over each object's region, as the wired path
    averages it (boxes, and clicks), and REC Acc@0.5 of the box the patches matching the
    object's colour and shape give (softmax over patches of the two logits, as the answer-box
    route reads it): the ceilings stage 0 leaves for the decoder, on split ``seed``."""
    import torch

    from chatspot_ros.training.referring_path import inside_patches

    tower = model.model.vision_tower
    grid = tower.config.image_size // tower.config.patch_size
    from chatspot_ros.evaluation.boxes import box_iou

    hits = {"box": [], "point": [], "rec": []}
    colour_index = {c: i for i, c in enumerate(COLOURS)}
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for start in range(0, frames, 64):
            scenes = [sample_scene(seed, i) for i in range(start, min(frames, start + 64))]
            hidden = tower(preprocess([render(s) for s in scenes]), output_hidden_states=True).hidden_states[-1][:, 1:]
            logits = head(hidden).numpy()  # (B, N, 11)
            for scene, lg in zip(scenes, logits):
                w, h = scene.size
                for obj in scene.objects:
                    x0, y0, x1, y1 = obj.box
                    px, py = obj.inside_point(rng)
                    for kind, (xa, ya, xb, yb) in (("box", (x0, y0, x1, y1)), ("point", (px, py, px, py))):
                        coarse = [np.floor(v * 100) / 100 for v in (xa / w, ya / h, xb / w, yb / h)]
                        inside = inside_patches((coarse[0], coarse[1]), (coarse[2], coarse[3]), grid)
                        mean = lg[inside].mean(0)
                        colour = list(COLOURS)[int(np.argmax(mean[: N_COLOURS - 1]))]
                        shape = SHAPES[int(np.argmax(mean[N_COLOURS: N_COLOURS + N_SHAPES - 1]))]
                        hits[kind].append(colour == obj.colour and shape == obj.shape)
                    score = lg[:, colour_index[obj.colour]] + lg[:, N_COLOURS + SHAPES.index(obj.shape)]
                    attention = np.exp(score - score.max())
                    found = (attention[:, None] * lg[:, N_COLOURS + N_SHAPES:]).sum(0) / attention.sum()
                    hits["rec"].append(box_iou(found * (w, h, w, h), obj.box) >= 0.5)
    return {k: float(np.mean(v)) for k, v in hits.items()}
