"""The random-weight checkpoints of :mod:`chatspot_ros.modelling` under the names the tests and
scripts use (``build_tiny_llava``). Production code imports :mod:`chatspot_ros.modelling` and
:mod:`chatspot_ros.tokens` directly; nothing outside tests and scripts imports this module."""
from __future__ import annotations

from chatspot_ros.modelling import (IMAGE_MODES, PRESETS, PROJECTORS, RANDOM_PRESETS, LlavaShapes,  # noqa: F401
                                    build_tokenizer, llava7b_parameter_count, wrap_fast_tokenizer)
from chatspot_ros.modelling import build_random_llava as build_tiny_llava  # noqa: F401
from chatspot_ros.tokens import CLIP_MEAN, CLIP_STD, IMAGE_TOKEN, SPECIAL_TOKENS  # noqa: F401

# The preset table itself (a test may swap a preset's shapes for one build).
_PRESET_SHAPES = RANDOM_PRESETS


def _Shapes(image_size: int, vision_hidden: int, vision_layers: int, vision_heads: int, vision_intermediate: int,
            text_hidden: int, text_layers: int, text_heads: int, text_kv_heads: int, text_intermediate: int,
            vocab_size: int, max_positions: int) -> LlavaShapes:  # noqa: N802 - the old dataclass's name
    """Random-preset shapes in the field order of the former ``_Shapes`` (patch size 14)."""
    return LlavaShapes(image_size, 14, vision_hidden, vision_layers, vision_heads, vision_intermediate, text_hidden,
                       text_layers, text_heads, text_kv_heads, text_intermediate, vocab_size, max_positions)
