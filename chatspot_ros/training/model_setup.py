"""Everything a training run needs about its checkpoint: model, tokenizer, preprocessing, builder.

Either a fresh tabletop preset (``from_preset``) or an existing llava-hf checkpoint folder
(``from_checkpoint``: LLaVA-1.5 or a ChatSpot-style model, for the paper's two stages). The
builder and conversation come from the same places the runtime takes them, so a trained model's
prompts are the prompts it is later asked.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chatspot_ros.referring import ImageGeometry, InstructionBuilder, get_dialect
from chatspot_ros.referring.conversation import ConversationTemplate, get_conversation

LOGGER = logging.getLogger("chatspot_ros.training")


@dataclass
class ModelSetup:
    model: Any
    tokenizer: Any
    image_processor: Any
    builder: InstructionBuilder
    conversation: ConversationTemplate
    preprocess: Any  # chatspot_ros.runtime.vision.ImagePreprocessor
    num_image_tokens: int
    origin: str  # "preset:tabletop" or the checkpoint path
    added_tokens: tuple[str, ...] = ()


def _num_image_tokens(config: Any) -> int:
    vision = config.vision_config
    n = (vision.image_size // vision.patch_size) ** 2
    return n if config.vision_feature_select_strategy == "default" else n + 1


def from_preset(preset: str, seed: int = 0, templates: Any = None, wired: bool = True) -> ModelSetup:
    """A fresh tabletop preset: wired and calibrated, or (``wired=False``, the plain recipe) with
    transformers' default initialization and nothing built by hand."""
    from chatspot_ros.runtime.vision import ImagePreprocessor
    from chatspot_ros.training import tabletop_model as tm

    if preset not in tm.PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(tm.PRESETS)}")
    shapes = tm.PRESETS[preset]
    tokenizer = tm.build_tokenizer(shapes.vocab_size)
    model = tm.build_model(shapes, tokenizer, seed=seed, wired=wired)
    processor = tm.image_processor(shapes)
    geometry = ImageGeometry.from_checkpoint_configs(processor.to_dict(), model.config.to_dict())
    builder = InstructionBuilder(get_dialect(model.config.chatspot_dialect), geometry, templates)
    conversation = get_conversation(model.config.chatspot_conversation)
    setup = ModelSetup(model, tokenizer, processor, builder, conversation, ImagePreprocessor(processor, False),
                       _num_image_tokens(model.config), f"preset:{preset}" + ("" if wired else " (plain)"))
    if wired:
        tm.calibrate_path(setup)
    return setup


def from_checkpoint(path: str | Path, *, dialect: str | None = None, templates: Any = None,
                    add_box_tokens: bool = True) -> ModelSetup:
    """A llava-hf checkpoint for stage 1/2 training; ``<box>``/``</box>`` added when missing."""
    from transformers import AutoImageProcessor, AutoTokenizer, LlavaForConditionalGeneration

    from chatspot_ros.runtime.config import RuntimeConfig
    from chatspot_ros.runtime.loading import inspect_checkpoint
    from chatspot_ros.runtime.vision import ImagePreprocessor
    from chatspot_ros.training.recipe import ensure_box_tokens

    info = inspect_checkpoint(RuntimeConfig(model_path=str(path)))
    model = LlavaForConditionalGeneration.from_pretrained(str(info.path), local_files_only=True, dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(str(info.path), local_files_only=True)
    processor = AutoImageProcessor.from_pretrained(str(info.path), local_files_only=True)
    added: list[str] = []
    name = dialect or info.default_dialect
    if add_box_tokens and name == "chatspot":
        added = ensure_box_tokens(model, tokenizer)
    builder = InstructionBuilder(get_dialect(name), info.geometry, templates)
    return ModelSetup(model, tokenizer, processor, builder, get_conversation(info.conversation),
                      ImagePreprocessor(processor, info.pad_to_square), _num_image_tokens(model.config),
                      str(info.path), tuple(added))
