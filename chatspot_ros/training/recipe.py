"""The paper's recipe (Sec. 4.1) as configuration: what trains in each stage, and how.

* ``projector``: stage 1, the projector alone (vision tower and LLM frozen);
* ``projector_llm``: stage 2, projector + LLM (vision tower frozen), optionally LoRA on the LLM;
* ``scratch``: everything, for small models trained from a fresh initialization.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from chatspot_ros.runtime.loading import BOX_TOKENS

LOGGER = logging.getLogger("chatspot_ros.training")
STAGES: tuple[str, ...] = ("projector", "projector_llm", "scratch")


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run (all of them land in the model card)."""

    stage: str = "scratch"
    steps: int = 1000
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * this
    warmup_steps: int = 100
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    clip_grad: float = 1.0
    max_length: int = 512  # tokens per sequence, image tokens included
    seed: int = 0
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    bf16: bool = False  # autocast to bfloat16 (GPUs with bf16; CPUs too, where it is often slower)
    workers: int = 0  # processes that draw, render, tokenize and collate batches ahead of the step (0: inline)
    fused: bool = True  # fused AdamW where torch supports it (falls back, with a warning)
    compile: bool = False  # torch.compile the model's forward
    max_minutes: float = 0.0  # > 0: stop (and save) after this much training time, even before ``steps``
    gradient_checkpointing: bool = False
    lora_r: int = 0  # > 0: LoRA adapters (peft) on the LLM's attention and MLP projections (stage 2)
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    log_every: int = 10
    save_every: int = 500
    device: str = "cpu"
    lora_targets: tuple[str, ...] = field(default=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                   "up_proj", "down_proj"))

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {', '.join(STAGES)}, got {self.stage!r}")
        for name in ("steps", "batch_size", "grad_accum", "max_length", "log_every", "save_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if not (self.lr > 0 and 0 <= self.min_lr_ratio <= 1 and self.warmup_steps >= 0):
            raise ValueError("need lr > 0, 0 <= min_lr_ratio <= 1 and warmup_steps >= 0")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.lora_r < 0:
            raise ValueError(f"lora_r must be >= 0, got {self.lora_r}")
        if self.lora_r and self.stage != "projector_llm":
            raise ValueError("LoRA adapts the LLM in stage 2: use it with stage='projector_llm'")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def lr_at(config: TrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to ``lr * min_lr_ratio`` at ``steps``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    floor = config.lr * config.min_lr_ratio
    return floor + (config.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def apply_stage(model: Any, stage: str) -> list[str]:
    """Set requires_grad for the stage; returns the names of the trainable parameters."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
    inner = model.model
    for p in model.parameters():
        p.requires_grad_(stage == "scratch")
    if stage in ("projector", "projector_llm"):
        for p in inner.multi_modal_projector.parameters():
            p.requires_grad_(True)
    if stage == "projector_llm":
        for p in inner.language_model.parameters():
            p.requires_grad_(True)
        for p in model.lm_head.parameters():
            p.requires_grad_(True)
    return [n for n, p in model.named_parameters() if p.requires_grad]


def ensure_box_tokens(model: Any, tokenizer: Any) -> list[str]:
    """Add ``<box>``/``</box>`` as special tokens when the checkpoint lacks them; resize embeddings.

    New rows start at the mean of the existing embeddings (a neutral start). Returns the added tokens.
    """
    import torch

    vocab = tokenizer.get_vocab()
    missing = [t for t in BOX_TOKENS if t not in vocab]
    if not missing:
        return []
    before = len(tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": list(missing)}, replace_extra_special_tokens=False)
    embeddings = model.get_input_embeddings()
    old_rows = embeddings.weight.shape[0]
    model.resize_token_embeddings(len(tokenizer))
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[old_rows:] = emb[:old_rows].mean(dim=0, keepdim=True)
        head = model.get_output_embeddings()
        if head is not None and head.weight.data_ptr() != emb.data_ptr():
            head.weight[old_rows:] = head.weight[:old_rows].mean(dim=0, keepdim=True)
    LOGGER.warning("added special tokens %s to the tokenizer (%d -> %d); embeddings resized from %d rows",
                   missing, before, len(tokenizer), old_rows)
    return missing


def apply_lora(model: Any, config: TrainConfig) -> Any:
    """Wrap the LLM's projections in LoRA adapters (peft); the projector stays fully trainable."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        target_modules=r".*language_model.*\.(" + "|".join(config.lora_targets) + r")$",
        modules_to_save=["multi_modal_projector"], bias="none",
    )
    return get_peft_model(model, lora)
