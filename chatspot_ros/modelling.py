"""Build LLaVA-architecture checkpoints from shapes (CLIP vision tower + projector + LLaMA decoder).

One factory for every model the project makes itself: the random-weight presets of the tests, the
demo and the bench (:func:`build_random_llava`), and the tabletop ChatSpot the project trains
(:mod:`chatspot_ros.training.tabletop_model` builds on :class:`LlavaShapes`, :func:`train_bpe`,
:func:`llava_config` and :func:`clip_image_processor`). Nothing is downloaded: tokenizers are
byte-level BPEs trained here, with the special tokens of :mod:`chatspot_ros.tokens`.

A random checkpoint is written in the llava-hf layout (``config.json``, safetensors weights,
``generation_config.json``, tokenizer files, ``preprocessor_config.json``, processor files), so the
runtime loads it through the same ``from_pretrained(local_dir)`` code as a real checkpoint. Its
weights are drawn with a fixed seed and ``initializer_range`` 0.15 so that different prompts give
different greedy outputs (the default 0.02 makes every prompt repeat one token, which hides bugs).
"""
from __future__ import annotations

import functools
import json
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from chatspot_ros.tokens import (BOS_TOKEN, BOX_END, BOX_START, CLIP_MEAN, CLIP_STD, EOS_TOKEN, IMAGE_TOKEN,
                                 PAD_TOKEN, SPECIAL_TOKENS, UNK_TOKEN)

PRESETS: tuple[str, ...] = ("tiny", "small", "llava7b")
PROJECTORS: tuple[str, ...] = ("mlp2", "chatspot")
IMAGE_MODES: tuple[str, ...] = ("pad", "crop")


@dataclass(frozen=True)
class LlavaShapes:
    """Architecture of a LLaVA-style model: a CLIP ViT, a LLaMA decoder, the projector between."""

    image_size: int
    patch_size: int
    vision_hidden: int
    vision_layers: int
    vision_heads: int
    vision_intermediate: int
    text_hidden: int
    text_layers: int
    text_heads: int
    text_kv_heads: int
    text_intermediate: int
    vocab_size: int  # BPE target (a random preset's config uses the trained tokenizer's size, except llava7b)
    max_positions: int = 512
    rope_theta: Optional[float] = None  # None: LLaMA's default

    @property
    def num_image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


RANDOM_PRESETS: dict[str, LlavaShapes] = {
    # ~0.3 M parameters, 64 image tokens: the test suite's model.
    "tiny": LlavaShapes(112, 14, 32, 2, 2, 64, 64, 2, 4, 2, 128, 1200, 512),
    # ~25 M parameters, 336 px, 576 image tokens: the CPU bench's model.
    "small": LlavaShapes(336, 14, 256, 4, 4, 1024, 512, 6, 8, 8, 1376, 4000, 2048),
    # Shapes of CLIP ViT-L/14-336 + LLaMA-7B (random fp16; built on a GPU for the GPU bench).
    "llava7b": LlavaShapes(336, 14, 1024, 24, 16, 4096, 4096, 32, 32, 32, 11008, 32064, 4096),
}

# Words the random presets' tokenizer is trained on (the tabletop tokenizer adds them to its own).
WORDS = (
    "the a an this that these those is are was were be been has have had do does did can could will "
    "would should may might what which who whom where when why how there here it its they them their "
    "he she his her we our you your i me my of in on at by for with from to into onto over under "
    "above below between behind beside near left right top bottom middle center corner edge side "
    "region box point area object person man woman child dog cat car truck bus bicycle bike motorcycle "
    "tree road street sidewalk building house window door wall floor table chair cup bottle plate "
    "phone laptop screen keyboard book sign light traffic red green blue yellow white black gray brown "
    "orange purple pink small large big little tall short long wide round square wooden metal glass "
    "holding wearing sitting standing walking running looking riding eating reading playing parked "
    "describe detail image picture photo scene object color shape size number text written see shown "
    "please tell answer question robot arm gripper grasp pick place move push pull open close step "
    "first second third then next finally and or but not no yes one two three four five six seven "
    "eight nine ten chat between curious human artificial intelligence assistant gives helpful "
    "detailed polite answers humans questions given coordinates normalized"
).split()

_SENTENCES = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions.",
    "USER: <image>\nWhat is in the region <box>[0.12, 0.34, 0.56, 0.78]</box>? ASSISTANT:",
    "USER: <image>\nDescribe the image in detail. ASSISTANT: The image shows a street with cars.",
    "Given an image <image>, what is the object doing in the region <box>(0.1,0.2),(0.3,0.4)</box>?",
    "What can you see in this region? What text can you see in this region?",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n",
    "The robot should: 1. move the arm, 2. open the gripper, 3. grasp the cup; - then place it.",
)


def _corpus(seed: int, n_lines: int = 1500) -> list[str]:
    rng = random.Random(seed)
    lines = list(_SENTENCES) * 20
    for _ in range(n_lines):
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 14))]
        if rng.random() < 0.5:
            words[0] = words[0].capitalize()
        text = " ".join(words)
        r = rng.random()
        if r < 0.3:
            c = [f"{rng.random():.{rng.choice((2, 3))}f}" for _ in range(4)]
            text += f" <box>[{', '.join(c)}]</box>"
        elif r < 0.45:
            text += f" ({rng.randint(0, 999)},{rng.randint(0, 999)}),({rng.randint(0, 999)},{rng.randint(0, 999)})"
        elif r < 0.55:
            text += f" [{rng.randint(0, 1000)}, {rng.randint(0, 1000)}]"
        lines.append(text + rng.choice((".", "?", "!", ",", ";", ":")))
    return lines


# ------------------------------------------------------------------------------------ tokenizers


def train_bpe(corpus: Iterable[str], vocab_size: int, pre_tokenizer: Any) -> Any:  # tokenizers.Tokenizer
    """A byte-level BPE trained on ``corpus`` with the project's special tokens (first ids) and a
    ``<s>`` prefix on every encoding; ``pre_tokenizer`` decides how text is cut before merging."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A", pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B",
        special_tokens=[(BOS_TOKEN, tok.token_to_id(BOS_TOKEN))])
    return tok


@functools.lru_cache(maxsize=4)
def _trained_tokenizer_json(vocab_size: int, seed: int) -> str:
    """Train the random presets' BPE once per process and (vocab size, seed); returns its JSON."""
    from tokenizers import pre_tokenizers

    digits_then_bytes = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    return train_bpe(_corpus(seed), vocab_size, digits_then_bytes).to_str()


def build_tokenizer(vocab_size: int, seed: int = 0) -> Any:  # PreTrainedTokenizerFast
    """A byte-level BPE (digits split one by one, like LLaMA) wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer

    return wrap_fast_tokenizer(Tokenizer.from_str(_trained_tokenizer_json(vocab_size, seed)))


def wrap_fast_tokenizer(tok: Any) -> Any:  # tokenizers.Tokenizer -> PreTrainedTokenizerFast
    """The project's special tokens, left padding and no space clean-up, around a trained tokenizer."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS_TOKEN, eos_token=EOS_TOKEN, unk_token=UNK_TOKEN, pad_token=PAD_TOKEN,
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        additional_special_tokens=[IMAGE_TOKEN, BOX_START, BOX_END],
        padding_side="left", model_max_length=4096, clean_up_tokenization_spaces=False,
    )


def special_token_ids(tokenizer: Any) -> dict[str, int]:
    return {name: tokenizer.convert_tokens_to_ids(name) for name in SPECIAL_TOKENS}


# ------------------------------------------------------------------------------------ configs


def llava_config(shapes: LlavaShapes, vocab_size: int, special: dict[str, int], *, vision_feature_layer: int,
                 initializer_range: Optional[float] = None, **extra: Any) -> Any:  # LlavaConfig
    """The LlavaConfig of ``shapes`` (CLIP quick-gelu ViT, LLaMA decoder without tied embeddings,
    gelu projector, "default" feature selection); ``extra`` goes into the top-level config
    (e.g. ``image_aspect_ratio``, ``chatspot_dialect``)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    init = {} if initializer_range is None else {"initializer_range": initializer_range}
    rope = {} if shapes.rope_theta is None else {"rope_theta": shapes.rope_theta}
    vision = CLIPVisionConfig(
        hidden_size=shapes.vision_hidden, intermediate_size=shapes.vision_intermediate,
        num_hidden_layers=shapes.vision_layers, num_attention_heads=shapes.vision_heads,
        image_size=shapes.image_size, patch_size=shapes.patch_size, projection_dim=shapes.vision_hidden,
        hidden_act="quick_gelu", **init)
    text = LlamaConfig(
        vocab_size=vocab_size, hidden_size=shapes.text_hidden, intermediate_size=shapes.text_intermediate,
        num_hidden_layers=shapes.text_layers, num_attention_heads=shapes.text_heads,
        num_key_value_heads=shapes.text_kv_heads, max_position_embeddings=shapes.max_positions,
        bos_token_id=special[BOS_TOKEN], eos_token_id=special[EOS_TOKEN], pad_token_id=special[PAD_TOKEN],
        rms_norm_eps=1e-5, tie_word_embeddings=False, **init, **rope)
    return LlavaConfig(
        vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_index=special[IMAGE_TOKEN],
        image_seq_length=shapes.num_image_tokens, projector_hidden_act="gelu",
        vision_feature_select_strategy="default", vision_feature_layer=vision_feature_layer,
        pad_token_id=special[PAD_TOKEN], **extra)


def clip_image_processor(image_size: int, *, center_crop: bool, resample: int) -> Any:  # CLIPImageProcessorPil
    """CLIP preprocessing: resize the shortest edge and center-crop (``center_crop``), else
    stretch to image_size x image_size; CLIP's mean and std."""
    from transformers import CLIPImageProcessorPil

    size = {"shortest_edge": image_size} if center_crop else {"height": image_size, "width": image_size}
    crop = {"crop_size": {"height": image_size, "width": image_size}} if center_crop else {}
    return CLIPImageProcessorPil(
        size=size, do_center_crop=center_crop, do_resize=True, do_rescale=True, do_normalize=True,
        do_convert_rgb=True, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD), resample=resample, **crop)


def set_generation_ids(model: Any, special: dict[str, int]) -> None:
    """Greedy by default, with the tokenizer's pad / bos / eos ids."""
    gen = model.generation_config
    gen.pad_token_id = special[PAD_TOKEN]
    gen.bos_token_id = special[BOS_TOKEN]
    gen.eos_token_id = special[EOS_TOKEN]
    gen.do_sample = False


# ------------------------------------------------------------------------------------ random presets


def _random_config(shapes: LlavaShapes, vocab_size: int, special: dict[str, int], projector: str,
                   image_mode: str) -> Any:  # LlavaConfig
    extra: dict[str, object] = {"image_aspect_ratio": "pad" if image_mode == "pad" else "square"}
    if projector == "chatspot":
        extra["projector_type"] = "linear"
        extra["chatspot_dialect"] = "chatspot"
    return llava_config(shapes, vocab_size, special, vision_feature_layer=-2, initializer_range=0.15, **extra)


def llava7b_parameter_count() -> int:
    """Parameters of the "llava7b" preset, counted on the meta device (no memory, no weights)."""
    import torch
    from transformers import LlavaForConditionalGeneration

    shapes = RANDOM_PRESETS["llava7b"]
    special = {name: i for i, name in enumerate(SPECIAL_TOKENS)}
    config = _random_config(shapes, shapes.vocab_size, special, "mlp2", "pad")
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    return sum(p.numel() for p in model.parameters())


def build_random_llava(
    out_dir: str | Path,
    *,
    preset: str = "tiny",
    seed: int = 0,
    projector: str = "mlp2",
    image_mode: str = "pad",
    dtype: str = "float32",
    device: str = "cpu",
) -> Path:
    """Build a random-weight LLaVA checkpoint of a preset (``tiny``, ``small``, ``llava7b``) in
    ``out_dir`` and return its path. Random weights: for tests, the demo plumbing and benches only.

    ``projector``: "mlp2" (LLaVA-1.5, linear_1 -> gelu -> linear_2) or "chatspot" (one linear layer,
    declared as ``"projector_type": "linear"`` in config.json). ``image_mode``: "pad" writes
    ``"image_aspect_ratio": "pad"`` into config.json like original LLaVA; "crop" resizes and center-crops.
    """
    import torch
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if projector not in PROJECTORS:
        raise ValueError(f"unknown projector {projector!r}; choose one of {', '.join(PROJECTORS)}")
    if image_mode not in IMAGE_MODES:
        raise ValueError(f"unknown image_mode {image_mode!r}; choose one of {', '.join(IMAGE_MODES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shapes = RANDOM_PRESETS[preset]

    tokenizer = build_tokenizer(min(shapes.vocab_size, 4000), seed=0)
    special = special_token_ids(tokenizer)
    vocab_size = shapes.vocab_size if preset == "llava7b" else len(tokenizer)
    config = _random_config(shapes, vocab_size, special, projector, image_mode)

    torch.manual_seed(seed)
    torch_dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    with torch.device(device):
        model = LlavaForConditionalGeneration(config)
        if projector == "chatspot":
            from chatspot_ros.runtime.projector import make_linear_projector

            model.model.multi_modal_projector = make_linear_projector(config)
    # post_init draws every weight with initializer_range; make a few norms non-trivial too.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name or "layer_norm" in name:
                if param.dim() == 1 and name.endswith("weight"):
                    param.uniform_(0.8, 1.2)
    model = model.to(torch_dtype).eval()
    set_generation_ids(model, special)
    model.save_pretrained(out, safe_serialization=True)

    # "pad": LLaVA-1.5 pads to a square with the mean colour (the runtime does that, reading
    # image_aspect_ratio from config.json), then resizes; the processor itself resizes and crops.
    image_processor = clip_image_processor(shapes.image_size, center_crop=True, resample=3)
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=shapes.patch_size,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               image_token=IMAGE_TOKEN)
    processor.save_pretrained(out)
    image_processor.save_pretrained(out)
    tokenizer.save_pretrained(out)
    meta = {"preset": preset, "seed": seed, "projector": projector, "image_mode": image_mode,
            "built_by": "chatspot_ros.modelling.build_random_llava"}
    (out / "chatspot_tiny_model.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out
