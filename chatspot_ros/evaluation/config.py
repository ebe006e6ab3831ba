"""EvalConfig: what to evaluate and how; validates itself (a bad value is a ValueError with the reason)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from chatspot_ros.evaluation.boxes import MAX_NOISE_SCALE

TASKS: tuple[str, ...] = ("classification", "ocr", "vqa", "rec", "actions")
CLASSIFICATION_PROMPTS: tuple[str, ...] = ("box", "point")
DEFAULT_NOISE: tuple[float, ...] = (0.1, 0.2, 0.3)

# Answer budgets per task: a category or a short answer, a region, a numbered plan.
DEFAULT_MAX_NEW_TOKENS: dict[str, int] = {"classification": 32, "ocr": 32, "vqa": 32, "rec": 48, "actions": 160}

# The files write_split (chatspot_ros.world) puts into a split folder.
WORLD_FILES: dict[str, str] = {"coco": "instances.json", "images": "images", "refs": "refs.jsonl",
                               "vqa": "region_qa.jsonl", "tasks": "tasks.jsonl"}


def _path(value: Any) -> Path | None:
    return None if value is None else Path(value)


@dataclass(frozen=True)
class EvalConfig:
    """Inputs (any subset), outputs and options of one evaluation run (docs/evaluation.md)."""

    out_dir: Path
    # -- inputs ----------------------------------------------------------------------------------
    coco: Path | None = None  # COCO instances JSON: region classification
    images: Path | None = None  # the COCO images folder (also the default of the other folders)
    detections: Path | None = None  # COCO results JSON of a detector, on the --coco images
    det_max_per_image: int = 100
    det_min_score: float = 0.0
    ocr: Path | None = None  # COCO-Text v2 JSON
    ocr_images: Path | None = None  # default: images
    ocr_split: str = "val"  # COCO-Text image "set", or "all"
    vqa: Path | None = None  # region VQA JSONL
    refs: Path | None = None  # REC: JSONL, or a refs(unc).p pickle (then refs_instances is needed)
    refs_instances: Path | None = None
    refs_images: Path | None = None  # default: images (pickle refs only; JSONL paths are per line)
    refs_split: str = "val"  # pickle refs only
    tasks: Path | None = None  # action tasks JSONL
    # -- what to run -----------------------------------------------------------------------------
    classification_prompts: tuple[str, ...] = ("box",)
    noise: tuple[float, ...] = ()  # box-noise scales (classification and VQA boxes)
    controls: bool = False  # ignore-the-region and region-swap controls
    stage0_baseline: bool = False  # classification by the stage-0 patch head alone (wired tabletop models)
    matcher: str = "exact"  # "exact" | "clip:DIR"
    synonyms: Path | None = None  # JSON {category: [synonyms]} for the exact matcher
    max_images: int | None = None  # random subset of images per input (the paper's COCO-1000)
    seed: int = 0  # the subset, the noise and the swap partners
    # -- how -------------------------------------------------------------------------------------
    batch_regions: int = 16  # prompts decoded together (all are of one image)
    max_new_tokens: int | None = None  # one budget for every task; None: DEFAULT_MAX_NEW_TOKENS
    resume: bool = False
    overwrite: bool = False
    progress: bool = True
    plot: bool = True
    notes: tuple[str, ...] = field(default=())  # extra lines for the report (e.g. "OCR: not applicable")

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name in ("out_dir", "coco", "images", "detections", "ocr", "ocr_images", "vqa", "refs",
                          "refs_instances", "refs_images", "tasks", "synonyms"):
                object.__setattr__(self, f.name, _path(getattr(self, f.name)))
        object.__setattr__(self, "noise", tuple(float(s) for s in self.noise))
        object.__setattr__(self, "classification_prompts", tuple(self.classification_prompts))
        if self.out_dir is None:
            raise ValueError("out_dir is required")
        if not any((self.coco, self.ocr, self.vqa, self.refs, self.tasks)):
            raise ValueError("nothing to evaluate: give at least one of coco, ocr, vqa, refs, tasks "
                             "(or a world folder)")
        if self.coco is not None and self.images is None:
            raise ValueError("coco needs images (the folder its file_name entries are in)")
        if self.detections is not None and self.coco is None:
            raise ValueError("detections are scored against a COCO instances file: give coco too")
        if self.ocr is not None and (self.ocr_images or self.images) is None:
            raise ValueError("ocr needs ocr_images (or images): the folder of its images")
        if self.refs is not None and self.refs.suffix == ".p":
            if self.refs_instances is None or (self.refs_images or self.images) is None:
                raise ValueError("a refs pickle needs refs_instances (its instances.json) and refs_images (or images)")
        bad = [p for p in self.classification_prompts if p not in CLASSIFICATION_PROMPTS]
        if bad or not self.classification_prompts:
            raise ValueError(f"classification_prompts must be some of {CLASSIFICATION_PROMPTS}, got "
                             f"{self.classification_prompts}")
        for s in self.noise:
            if not (math.isfinite(s) and 0.0 < s < MAX_NOISE_SCALE):
                raise ValueError(f"noise scales must be in (0, {MAX_NOISE_SCALE}), got {s}")
        if len(set(self.noise)) != len(self.noise):
            raise ValueError(f"noise scales repeat: {self.noise}")
        if not (self.matcher == "exact" or (self.matcher.startswith("clip:") and len(self.matcher) > 5)):
            raise ValueError(f"matcher must be 'exact' or 'clip:DIR', got {self.matcher!r}")
        for name in ("batch_regions", "det_max_per_image"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.max_images is not None and (isinstance(self.max_images, bool) or self.max_images < 1):
            raise ValueError(f"max_images must be >= 1 or None, got {self.max_images!r}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.resume and self.overwrite:
            raise ValueError("resume and overwrite exclude each other")
        if self.ocr_split not in ("train", "val", "all"):
            raise ValueError(f"ocr_split must be 'train', 'val' or 'all', got {self.ocr_split!r}")

    @classmethod
    def for_world(cls, world_dir: str | Path, out_dir: str | Path, **options: Any) -> EvalConfig:
        """Every task the tabletop world supports, on a folder written by ``write_split``.

        Region classification runs with box and point prompts (the annotations' clicks) unless
        ``classification_prompts`` is given. Regional OCR is not applicable (the world has no text)
        unless an ``ocr`` file of other images is given too.
        """
        world = Path(world_dir)
        missing = [name for name in WORLD_FILES.values() if not (world / name).exists()]
        if missing:
            raise FileNotFoundError(f"{world} is not a world split folder (written by chatspot-world render): "
                                    f"missing {', '.join(missing)}")
        inputs = {key: world / name for key, name in WORLD_FILES.items()}
        options.setdefault("classification_prompts", CLASSIFICATION_PROMPTS)
        notes = tuple(options.pop("notes", ()))
        if options.get("ocr") is None:
            notes += ("Regional OCR: not applicable on the tabletop world (it has no text).",)
        return cls(out_dir=Path(out_dir), **inputs, notes=notes, **options)

    def task_max_new_tokens(self, task: str) -> int:
        return self.max_new_tokens if self.max_new_tokens is not None else DEFAULT_MAX_NEW_TOKENS[task]

    def fingerprint(self) -> dict[str, Any]:
        """Settings that decide which samples exist and what their answers are (checked by resume)."""
        skip = {"out_dir", "resume", "overwrite", "progress", "plot", "notes", "batch_regions"}
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name in skip:
                continue
            value = getattr(self, f.name)
            out[f.name] = str(value.resolve()) if isinstance(value, Path) else (
                list(value) if isinstance(value, tuple) else value)
        out["max_new_tokens_per_task"] = {t: self.task_max_new_tokens(t) for t in TASKS}
        return out

    def with_options(self, **changes: Any) -> EvalConfig:
        return replace(self, **changes)
