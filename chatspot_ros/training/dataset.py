"""Training data: samples (from a JSONL file or generated from the world) -> encoded, batched tensors.

Images are preprocessed once with the checkpoint's own ImagePreprocessor (the runtime's class:
same padding, same resize, same normalization as at inference) and cached as half-precision pixel
tensors (the frames were uint8, so half precision loses nothing the model could see). Prompts are
rendered by the checkpoint's builder and encoded with ``tokenization.encode_pieces``; rejected
samples are counted by reason.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from chatspot_ros.referring import InstructionBuilder
from chatspot_ros.referring.conversation import ConversationTemplate
from chatspot_ros.training.conversations import Sample, render_prompt_and_answers
from chatspot_ros.training.tokenization import IGNORE_INDEX, Encoded, Rejected, encode_pieces
from chatspot_ros.tokens import IMAGE_TOKEN


def read_jsonl(path: str | Path) -> list[Sample]:
    """Samples of a dataset file written by ``chatspot-train data build``; image paths made absolute."""
    path = Path(path)
    samples = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                sample = Sample.from_json(json.loads(line))
            except (KeyError, ValueError, TypeError) as err:
                raise ValueError(f"{path}:{line_no}: not a training sample ({err})") from None
            image = Path(sample.image)
            if not image.is_absolute():
                image = path.parent / image
            samples.append(Sample(sample.id, str(image), sample.image_size, sample.turns, sample.source, sample.meta))
    return samples


@dataclass
class EncodeStats:
    """What encoding did to a dataset: kept, rejected by reason, truncated, supervised tokens."""

    kept: int = 0
    truncated: int = 0
    supervised_tokens: int = 0
    total_tokens: int = 0
    rejected: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)  # one example detail per rejection reason

    def add(self, sample: Sample, result: Encoded | Rejected) -> None:
        if isinstance(result, Rejected):
            self.rejected[result.reason] += 1
            self.examples.setdefault(result.reason, f"{sample.id}: {result.detail}")
            return
        self.kept += 1
        self.truncated += int(result.truncated)
        self.supervised_tokens += result.supervised
        self.total_tokens += len(result.input_ids)

    def summary(self) -> str:
        n = self.kept + sum(self.rejected.values())
        lines = [f"{n} samples: {self.kept} kept, {sum(self.rejected.values())} rejected, {self.truncated} truncated"]
        if self.kept:
            lines.append(f"supervised tokens: {self.supervised_tokens} ({self.supervised_tokens / self.kept:.1f} per "
                         f"sample, {100 * self.supervised_tokens / max(self.total_tokens, 1):.1f}% of all tokens)")
        for reason, count in sorted(self.rejected.items()):
            lines.append(f"rejected {reason}: {count}, e.g. {self.examples[reason]}")
        return "\n".join(lines)


class ConversationEncoder:
    """Renders and tokenizes samples for one checkpoint (its builder, template, tokenizer)."""

    def __init__(self, tokenizer: Any, builder: InstructionBuilder, conversation: ConversationTemplate,
                 num_image_tokens: int, max_length: int, image_token: str = IMAGE_TOKEN) -> None:
        self.tokenizer = tokenizer
        self.builder = builder
        self.conversation = conversation
        self.num_image_tokens = num_image_tokens
        self.max_length = max_length
        self.image_token = image_token

    def __call__(self, sample: Sample) -> Encoded | Rejected:
        try:
            pieces = render_prompt_and_answers(self.builder, self.conversation, sample)
        except ValueError as err:  # a region the builder refuses (outside the image, degenerate)
            return Rejected("bad_region", str(err))
        return encode_pieces(self.tokenizer, pieces, self.conversation.end_of_turn, image_token=self.image_token,
                             num_image_tokens=self.num_image_tokens, max_length=self.max_length)


class PixelCache:
    """pixel_values per image key, computed once with the checkpoint's preprocessing (half precision)."""

    def __init__(self, preprocess: Callable[[Sequence[np.ndarray]], Any], load: Callable[[str], np.ndarray]) -> None:
        self.preprocess = preprocess
        self.load = load
        self._cache: dict[str, Any] = {}

    def get(self, keys: Sequence[str]) -> Any:  # torch.Tensor (B, 3, S, S) float32
        import torch

        todo = [k for k in dict.fromkeys(keys) if k not in self._cache]
        for start in range(0, len(todo), 64):
            chunk = todo[start:start + 64]
            pixels = self.preprocess([self.load(k) for k in chunk])
            for k, p in zip(chunk, pixels):
                self._cache[k] = p.to(torch.float16)
        return torch.stack([self._cache[k] for k in keys]).float()

    def __len__(self) -> int:
        return len(self._cache)


def load_rgb(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def collate(items: Sequence[Encoded], pad_id: int) -> dict[str, Any]:
    """Right-padded input_ids / attention_mask / labels (B, T)."""
    import torch

    length = max(len(e.input_ids) for e in items)
    ids = torch.full((len(items), length), pad_id, dtype=torch.long)
    labels = torch.full((len(items), length), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(items), length), dtype=torch.long)
    for row, e in enumerate(items):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def encode_all(encoder: ConversationEncoder, samples: Iterable[Sample]) -> tuple[list[tuple[Sample, Encoded]], EncodeStats]:
    stats = EncodeStats()
    kept = []
    for sample in samples:
        result = encoder(sample)
        stats.add(sample, result)
        if isinstance(result, Encoded):
            kept.append((sample, result))
    return kept, stats
