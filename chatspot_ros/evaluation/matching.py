"""Free-text answer -> one category: the pluggable matchers of region classification.

* ``exact``: a category name or a listed synonym contained (whole words, after
  :func:`~chatspot_ros.evaluation.normalize.normalize_answer`) in the answer. Simple plurals of
  the last word ("dogs", "buses", "berries") count too. When several match, the longest phrase
  (most words) wins, then the earliest in the answer, then the category listed first. No phrase
  contained: no category (the sample is wrong, and has no AP result).
* ``clip:DIR``: the paper's method. Cosine similarity between the CLIP text embedding of the
  answer and that of every category name, from a local transformers ``CLIPModel`` folder; the
  most similar category wins. Only an empty answer has no category.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from chatspot_ros.evaluation.normalize import find_phrase, normalize_words


@dataclass(frozen=True)
class Category:
    """A dataset category: its id (COCO ``category_id``), name and extra names."""

    id: int
    name: str
    synonyms: tuple[str, ...] = ()


class CategoryMatcher(Protocol):
    """Maps answers to category ids (None: no category)."""

    name: str  # how the report names the matcher, e.g. "exact" or "clip:/models/clip-vit-l-14"

    def match(self, answers: Sequence[str]) -> list[int | None]: ...


# Extra names for COCO categories, used by the exact matcher for categories of these names.
COCO_SYNONYMS: dict[str, tuple[str, ...]] = {
    "person": ("man", "men", "woman", "women", "people", "boy", "girl", "child", "children", "kid", "kids",
               "player", "lady", "guy", "skier", "surfer", "skateboarder", "baby", "human"),
    "bicycle": ("bike",),
    "car": ("automobile", "taxi", "sedan"),
    "motorcycle": ("motorbike", "motor bike", "scooter"),
    "airplane": ("plane", "aeroplane", "aircraft", "jet", "airliner"),
    "bus": ("double decker",),
    "train": ("locomotive",),
    "boat": ("ship", "sailboat", "canoe", "kayak"),
    "traffic light": ("traffic signal", "stoplight"),
    "fire hydrant": ("hydrant",),
    "cow": ("cattle", "bull", "calf"),
    "handbag": ("purse", "bag"),
    "sports ball": ("ball", "football", "soccer ball", "tennis ball"),
    "wine glass": ("glass",),
    "cup": ("mug",),
    "donut": ("doughnut",),
    "couch": ("sofa",),
    "potted plant": ("plant", "houseplant", "flower pot"),
    "dining table": ("table",),
    "tv": ("television", "tv monitor"),
    "remote": ("remote control",),
    "cell phone": ("phone", "mobile phone", "smartphone", "cellphone"),
    "hair drier": ("hair dryer", "blow dryer"),
    "teddy bear": ("teddy", "stuffed animal"),
    "laptop": ("notebook computer",),
}


def load_synonyms(path: str | Path) -> dict[str, tuple[str, ...]]:
    """A JSON file ``{"category name": ["synonym", ...]}``."""
    data: Any = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, Mapping) or not all(
        isinstance(k, str) and isinstance(v, list) and all(isinstance(s, str) for s in v) for k, v in data.items()
    ):
        raise ValueError(f"{path}: expected a JSON object mapping category names to lists of strings")
    return {k: tuple(v) for k, v in data.items()}


def with_synonyms(categories: Sequence[Category], synonyms: Mapping[str, Sequence[str]], *,
                  strict: bool = True) -> list[Category]:
    """The categories with ``synonyms[name]`` added to those of the same name.

    ``strict``: a synonym entry for a name the dataset lacks is an error (a user's file); without
    it such entries are skipped (the built-in COCO table on another dataset).
    """
    unknown = sorted(set(synonyms) - {c.name for c in categories})
    if strict and unknown:
        raise ValueError(f"synonyms given for categories the dataset does not have: {unknown}")
    return [Category(c.id, c.name, tuple(dict.fromkeys(c.synonyms + tuple(synonyms.get(c.name, ())))))
            for c in categories]


def _plurals(words: list[str]) -> list[list[str]]:
    last = words[-1]
    forms = {last + "s", last + "es"}
    if len(last) > 1 and last.endswith("y") and last[-2] not in "aeiou":
        forms.add(last[:-1] + "ies")
    return [words[:-1] + [f] for f in sorted(forms)]


class ExactMatcher:
    """The ``exact`` matcher (module docstring)."""

    name = "exact"

    def __init__(self, categories: Sequence[Category]) -> None:
        if not categories:
            raise ValueError("the exact matcher needs at least one category")
        self.categories = list(categories)
        # phrase words -> (category index); a phrase of two categories is a dataset error.
        explicit: dict[tuple[str, ...], int] = {}
        for index, cat in enumerate(self.categories):
            for text in (cat.name, *cat.synonyms):
                words = tuple(normalize_words(text))
                if not words:
                    raise ValueError(f"category {cat.name!r}: the name or synonym {text!r} normalizes to nothing")
                other = explicit.setdefault(words, index)
                if other != index:
                    raise ValueError(f"{text!r} names both {self.categories[other].name!r} and {cat.name!r}")
        phrases = dict(explicit)
        for words, index in explicit.items():
            for plural in _plurals(list(words)):
                phrases.setdefault(tuple(plural), index)  # a real name of that spelling wins
        self._phrases = list(phrases.items())

    def match_one(self, answer: str) -> int | None:
        words = normalize_words(answer)
        best: tuple[int, int, int] | None = None  # (-words, position, category index)
        for phrase, index in self._phrases:
            pos = find_phrase(words, list(phrase))
            if pos < 0:
                continue
            key = (-len(phrase), pos, index)
            if best is None or key < best:
                best = key
        return None if best is None else self.categories[best[2]].id

    def match(self, answers: Sequence[str]) -> list[int | None]:
        return [self.match_one(a) for a in answers]


class ClipMatcher:
    """The ``clip:DIR`` matcher: CLIP text embeddings of answer and category names (paper, Sec. 4.2)."""

    def __init__(self, model_dir: str | Path, categories: Sequence[Category], *, device: str = "cpu",
                 batch_size: int = 256) -> None:
        import torch
        from transformers import AutoTokenizer, CLIPModel

        folder = Path(model_dir)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"clip matcher: {folder} is not a local transformers CLIPModel folder "
                                    "(no config.json)")
        if not categories:
            raise ValueError("the clip matcher needs at least one category")
        self.name = f"clip:{folder}"
        self.categories = list(categories)
        self.batch_size = batch_size
        self._torch = torch
        self.device = torch.device(device)
        self.model = CLIPModel.from_pretrained(str(folder), local_files_only=True).to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        # CLIP's text tower is causal and pools at the end-of-text token: padding goes on the right,
        # so a text embeds the same alone and in a batch.
        self.tokenizer.padding_side = "right"
        self.max_length = int(self.model.config.text_config.max_position_embeddings)
        self._category_embeddings = self.embed([c.name for c in self.categories])  # (C, D), unit norm

    def embed(self, texts: Sequence[str]) -> Any:
        """Unit-norm text embeddings (N, D)."""
        torch = self._torch
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(list(texts[start:start + self.batch_size]), padding=True, truncation=True,
                                       max_length=self.max_length, return_tensors="pt").to(self.device)
                out = self.model.get_text_features(input_ids=batch["input_ids"],
                                                   attention_mask=batch["attention_mask"])
                features = out if isinstance(out, torch.Tensor) else out.pooler_output  # (B, D)
                chunks.append(torch.nn.functional.normalize(features.float(), dim=-1))
        return torch.cat(chunks) if chunks else torch.empty(0)

    def match(self, answers: Sequence[str]) -> list[int | None]:
        texts = [a.strip() for a in answers]
        keep = [i for i, t in enumerate(texts) if t]
        result: list[int | None] = [None] * len(texts)
        if keep:
            sims = self.embed([texts[i] for i in keep]) @ self._category_embeddings.T  # (N, C)
            for i, best in zip(keep, sims.argmax(dim=1).tolist()):
                result[i] = self.categories[best].id
        return result


def make_matcher(spec: str, categories: Sequence[Category], *, device: str = "cpu") -> CategoryMatcher:
    """``"exact"`` or ``"clip:DIR"`` -> a matcher over ``categories``."""
    if spec == "exact":
        return ExactMatcher(categories)
    if spec.startswith("clip:") and len(spec) > len("clip:"):
        return ClipMatcher(spec[len("clip:"):], categories, device=device)
    raise ValueError(f"unknown matcher {spec!r}; use 'exact' or 'clip:DIR' (a local CLIPModel folder)")
