"""The evaluation loop: per image, one encode and batched decodes of all its prompts.

Samples arrive ordered by image. For each image the frame is read once; every sample's prompt
is built with the checkpoint's InstructionBuilder; identical prompts (a box and a point sample
asking about the whole image, say) are answered once, since decoding is greedy; the rest go to
:meth:`ChatSpot.answer` in batches of ``batch_regions`` under one frame key, so the image is
encoded once and its prefix prefilled once. The records of an image are appended to
``predictions.jsonl`` (and flushed) before the next image starts, so ``--resume`` loses at most
one image of work.
"""
from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from chatspot_ros.evaluation.samples import Sample, build_instruction, resolve_region
from chatspot_ros.evaluation.scoring import Answered, ScoringContext, score_image
from chatspot_ros.runtime import GenerationConfig

if TYPE_CHECKING:
    from chatspot_ros.pipeline import ChatSpot
    from chatspot_ros.referring import ReferringInstruction


@dataclass
class RunStats:
    samples: int = 0  # samples answered (or marked invalid) in this run
    prompts: int = 0  # distinct prompts decoded (samples minus duplicates)
    images: int = 0
    answer_calls: int = 0  # ChatSpot.answer calls
    wall_s: float = 0.0  # the whole loop: image reads, prompts, generation, scoring
    generate_s: float = 0.0  # inside ChatSpot.answer

    @property
    def regions_per_s(self) -> float:
        return self.samples / self.wall_s if self.wall_s > 0 else 0.0


def read_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB; pixels as stored (no EXIF rotation: COCO annotations ignore it too)."""
    from PIL import Image

    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist (check the images folder of the input)")
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _by_image(samples: Sequence[Sample]) -> Iterator[tuple[Path, list[Sample]]]:
    groups: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        groups[str(s.item.image)].append(s)
    for path, group in groups.items():
        yield Path(path), group


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _prepare(chatspot: ChatSpot, samples: Sequence[Sample], size: tuple[int, int]
             ) -> list[tuple[Sample, ReferringInstruction | None, str]]:
    prepared = []
    for s in samples:
        try:
            region = resolve_region(s, size)
            prepared.append((s, build_instruction(chatspot.builder, s, region, size), ""))
        except ValueError as err:  # e.g. a GT box entirely outside its image: reported, not asked
            prepared.append((s, None, str(err)))
    return prepared


def answer_image(chatspot: ChatSpot, frame: np.ndarray, frame_key: str, samples: Sequence[Sample],
                 batch_regions: int, stats: RunStats) -> list[Answered]:
    """Every sample of one image answered: the frame encoded once, distinct prompts batched."""
    size = (frame.shape[1], frame.shape[0])
    prepared = _prepare(chatspot, samples, size)
    by_budget: dict[int, dict[str, ReferringInstruction]] = defaultdict(dict)
    for s, instruction, _ in prepared:
        if instruction is not None:
            by_budget[s.max_new_tokens].setdefault(instruction.text, instruction)
    answers: dict[tuple[int, str], tuple[str, int]] = {}
    for budget, unique in by_budget.items():
        gen = GenerationConfig(max_new_tokens=budget)
        for chunk in _chunks(list(unique.values()), batch_regions):
            start = time.perf_counter()
            outs = chatspot.answer(frame, frame_key, chunk, gen)
            stats.generate_s += time.perf_counter() - start
            stats.answer_calls += 1
            stats.prompts += len(chunk)
            for instruction, out in zip(chunk, outs):
                answers[(budget, instruction.text)] = (out.text, out.generation.tokens)
    result = []
    for s, instruction, error in prepared:
        if instruction is None:
            result.append(Answered(s, error=error))
            continue
        text, tokens = answers[(s.max_new_tokens, instruction.text)]
        region = instruction.regions[0] if instruction.regions else None
        result.append(Answered(s, region=region, instruction=instruction.text, answer=text, tokens=tokens))
    return result


def run_samples(chatspot: ChatSpot, samples: Sequence[Sample], ctx: ScoringContext, *, batch_regions: int,
                write: Callable[[list[dict[str, Any]]], None], expected_sizes: dict[str, tuple[int, int]],
                progress: bool = True) -> RunStats:
    """Answer and score ``samples`` image by image; ``write`` receives each image's records."""
    from tqdm import tqdm

    stats = RunStats()
    start = time.perf_counter()
    bar = tqdm(total=len(samples), unit="region", desc="chatspot-eval", disable=not progress, dynamic_ncols=True)
    try:
        for path, group in _by_image(samples):
            frame = read_image(path)
            size = (frame.shape[1], frame.shape[0])
            declared = expected_sizes.get(str(path))
            if declared is not None and tuple(declared) != size:
                raise ValueError(f"{path} is {size[0]}x{size[1]} but its annotation file says "
                                 f"{declared[0]}x{declared[1]}: wrong images folder?")
            answered = answer_image(chatspot, frame, str(path), group, batch_regions, stats)
            write(score_image(answered, ctx, size))
            stats.samples += len(group)
            stats.images += 1
            bar.update(len(group))
            bar.set_postfix(images=stats.images, prompts=stats.prompts, refresh=False)
    finally:
        bar.close()
        stats.wall_s = time.perf_counter() - start
    return stats


class PredictionsFile:
    """``predictions.jsonl``: records appended per image; on resume the complete lines are kept."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> list[dict[str, Any]]:
        """Records of an earlier run; a torn last line (the run was killed mid-write) is dropped."""
        if not self.path.is_file():
            return []
        records, lines = [], self.path.read_text(encoding="utf-8").splitlines(keepends=True)
        for number, line in enumerate(lines, 1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if number == len(lines):
                    break
                raise ValueError(f"{self.path}:{number}: not valid JSON; cannot resume from it") from None
        if lines and not lines[-1].endswith("\n") or len(records) < len(lines):
            self.rewrite(records)
        return records

    def rewrite(self, records: Sequence[dict[str, Any]]) -> None:
        tmp = self.path.with_suffix(".jsonl.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
        tmp.replace(self.path)

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
            f.flush()
