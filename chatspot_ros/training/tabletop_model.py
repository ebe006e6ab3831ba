"""The small ChatSpot the project trains on the tabletop world: tokenizer, shapes, initialization.

A CLIP-architecture vision tower, the llava-hf two-layer projector and a LLaMA-architecture
decoder, so the runtime (and vLLM) load it like any llava-hf checkpoint. Two choices make
precise referring learnable for a model this small on two CPU cores:

* **Coordinate tokens.** The tokenizer keeps every two-decimal coordinate ("0.00" ... "1.00") as
  one token and the third decimal as a digit token, so ``<box>[0.103,0.200,...]</box>`` is a
  short, regular sequence whose coarse values are single symbols.
* **A wired route for referring** (referring_path.py): the first four decoder layers are laid
  down so that the coordinates of a region select the image tokens inside it, and the region's
  content reaches the answer; the vision tower learns what lies in each patch (stage 0), the
  later layers learn to name it, describe it and plan for it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Optional

from chatspot_ros.modelling import LlavaShapes, clip_image_processor, special_token_ids, train_bpe
from chatspot_ros.modelling import llava_config as _llava_config

COORD_TOKENS: tuple[str, ...] = tuple(f"{v / 100:.2f}" for v in range(101))  # "0.00" ... "1.00"
# Pieces the byte-level BPE sees: a coarse coordinate, a single digit, a word with its leading
# space, one punctuation mark with its leading space, runs of whitespace.
PRETOKEN_PATTERN = r"\d\.\d\d|\d| ?[A-Za-z]+|'[a-z]+| ?[^\sA-Za-z\d]|\s+"


@dataclass(frozen=True)
class TabletopShapes(LlavaShapes):
    """Architecture of a tabletop ChatSpot (see PRESETS)."""

    rope_theta: Optional[float] = 1e6  # large: the slow RoPE pairs the referring path's markers use stay unrotated


PRESETS: dict[str, TabletopShapes] = {
    # The shipped model: 64 image tokens of a 128 px stretched frame; 4 wired + 2 trained decoder
    # layers; head size 64 (vLLM's CPU attention supports it).
    "tabletop": TabletopShapes(128, 16, 128, 3, 2, 512, 256, 6, 4, 4, 704, 1400),
    # The test suite's recipe: same tokenizer and token layout, a fraction of the width.
    "smoke": TabletopShapes(64, 16, 96, 2, 2, 192, 192, 5, 4, 4, 256, 1400),
}


def tokenizer_corpus(extra: Iterable[str] = ()) -> list[str]:
    """Text the tokenizer is trained on: the world's vocabulary, the templates, every coordinate."""
    from chatspot_ros.referring.conversation import VICUNA_SYSTEM
    from chatspot_ros.referring.instructions import InstructionTemplates
    from chatspot_ros.modelling import WORDS as _WORDS
    from chatspot_ros.world import language, scene

    t = InstructionTemplates()
    lines = [VICUNA_SYSTEM, " USER: ASSISTANT:", "\n"]
    lines += [getattr(t, name) for name in ("describe_image", "describe_region", "what_in_region",
                                             "text_in_region", "suggest_actions", "find_region")]
    lines += list(t.styles.values())
    words = list(_WORDS) + list(scene.COLOURS) + list(scene.SHAPES) + list(scene.TABLE_TONES)
    words += list(language.NUMBER_WORDS) + ["colour", "gripper", "lift", "lower", "raise", "release",
                                            "onto", "grasp", "object", "objects", "table"]
    lines += [" ".join(words), " ".join(w.capitalize() for w in words)]
    lines += [f"<box>[{a},{b}]</box> [{a}0,{b}5] {a}{b[-1]}" for a, b in zip(COORD_TOKENS, reversed(COORD_TOKENS))]
    for kind in language.TASK_KINDS:
        lines.append(kind)
    lines += list(extra)
    return lines * 8


def build_tokenizer(vocab_size: int = 1400, extra_corpus: Iterable[str] = ()) -> Any:  # PreTrainedTokenizerFast
    """Byte-level BPE over the pre-token pattern above; every COORD_TOKENS entry is one token."""
    from tokenizers import Regex, pre_tokenizers

    from chatspot_ros.modelling import wrap_fast_tokenizer

    pieces = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKEN_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer = wrap_fast_tokenizer(train_bpe(tokenizer_corpus(extra_corpus), vocab_size, pieces))
    missing = [c for c in COORD_TOKENS if len(tokenizer(c, add_special_tokens=False)["input_ids"]) != 1]
    if missing:
        raise RuntimeError(f"tokenizer vocabulary too small: coordinates {missing[:5]} are not single tokens")
    return tokenizer


def llava_config(shapes: TabletopShapes, tokenizer: Any) -> Any:  # LlavaConfig
    # The input embeddings carry the path's markers and stay fixed: embeddings are not tied.
    return _llava_config(shapes, len(tokenizer), special_token_ids(tokenizer), vision_feature_layer=-1,
                         tie_word_embeddings=False, chatspot_dialect="chatspot", chatspot_conversation="vicuna_v1")


def image_processor(shapes: TabletopShapes) -> Any:  # CLIPImageProcessorPil
    """Stretch the frame to image_size x image_size (no crop: every pixel of the frame is seen)."""
    return clip_image_processor(shapes.image_size, center_crop=False, resample=2)


def build_model(shapes: TabletopShapes, tokenizer: Any, seed: int = 0, wired: bool = True) -> Any:  # Llava...
    """A freshly initialized tabletop ChatSpot (seeded) with the referring path wired, not yet
    calibrated (``calibrate_path``: it needs the prompt builder and rendered frames); ``wired=False``:
    transformers' default initialization alone (the plain recipe)."""
    import torch
    from transformers import LlavaForConditionalGeneration

    from chatspot_ros.training import referring_path as rp

    config = llava_config(shapes, tokenizer)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    if wired:
        layout = rp.layout_for(config)
        rp.check_shapes(config, layout)
        rp.wire_vision(model, layout)
        rp.wire_projector(model, layout, seed=seed)
        rp.wire_decoder(model, layout, tokenizer, COORD_TOKENS, seed=seed)
    gen = model.generation_config
    gen.pad_token_id = config.text_config.pad_token_id
    gen.bos_token_id = config.text_config.bos_token_id
    gen.eos_token_id = config.text_config.eos_token_id
    gen.do_sample = False
    return model


def path_probe(setup: Any, frames: int = 12) -> Any:  # referring_path.Probe
    """Calibration prompts for ``setup`` (a model_setup.ModelSetup of a tabletop preset)."""
    from chatspot_ros.training import referring_path as rp

    layout = rp.layout_for(setup.model.config)
    return rp.build_probe(setup.tokenizer, setup.builder, setup.conversation, setup.preprocess,
                          setup.num_image_tokens, layout.grid, COORD_TOKENS, frames=frames)


def box_probe(setup: Any, frames: int = 24, seed: int = 998) -> Any:  # referring_path.BoxProbe
    """REC calibration prompts (teacher-forced box answers) for ``setup``."""
    from chatspot_ros.training import referring_path as rp

    return rp.build_box_probe(setup.tokenizer, setup.builder, setup.conversation, setup.preprocess,
                              setup.num_image_tokens, frames=frames, seed=seed)


def calibrate_path(setup: Any) -> dict[str, float]:
    """Scale the wired heads on rendered world frames (again after stage 0 changes the patches):
    the region route, then the answer-box route."""
    from chatspot_ros.training import referring_path as rp

    layout = rp.layout_for(setup.model.config)
    factors = rp.calibrate(setup.model, path_probe(setup), layout)
    return factors | rp.calibrate_answer_box(setup.model, box_probe(setup), layout)


def check_in_dtype(setup: Any, dtype: str) -> float:
    """Run the REC and region probes in ``dtype`` (the exported weights' precision) and fail
    loudly on overflow; first re-fit the find head's text penalty (idempotent for runs calibrated by this
    version; earlier ones set it high enough to overflow float16). Returns the factor applied."""
    import copy

    import torch

    from chatspot_ros.training import referring_path as rp

    layout = rp.layout_for(setup.model.config)
    probe = box_probe(setup, frames=6)
    factor = rp.fit_find_text_penalty(setup.model, probe, layout)
    torch_dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    model = copy.deepcopy(setup.model).to(torch_dtype).eval()
    for name, p in (("REC", probe), ("region", path_probe(setup, frames=6))):
        with torch.no_grad():
            logits = model(input_ids=p.input_ids, attention_mask=p.attention_mask,
                           pixel_values=p.pixel_values.to(torch_dtype)).logits
        if not bool(torch.isfinite(logits[p.attention_mask.bool()]).all()):
            raise RuntimeError(f"the model overflows in {dtype} on the {name} probe: export it as float32")
    return factor
