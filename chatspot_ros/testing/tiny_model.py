"""Random-weight LLaVA / ChatSpot checkpoints built offline, for tests, the demo and the bench.

``build_tiny_llava`` writes a folder in the llava-hf layout (``config.json``, safetensors weights,
``generation_config.json``, tokenizer files, ``preprocessor_config.json``, processor files) that the
runtime loads through the same ``from_pretrained(local_dir)`` code as a real checkpoint. Nothing is
downloaded: the tokenizer is a byte-level BPE trained here on a small built-in corpus, with the
special tokens ``<image>``, ``<box>``, ``</box>`` and ``<s>``, ``</s>``, ``<unk>``, ``<pad>``.

Weights are drawn with a fixed seed and ``initializer_range`` 0.15 so that different prompts give
different greedy outputs (the default 0.02 makes every prompt repeat one token, which hides bugs).
"""
from __future__ import annotations

import functools
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PRESETS: tuple[str, ...] = ("tiny", "small", "llava7b")
PROJECTORS: tuple[str, ...] = ("mlp2", "chatspot")
IMAGE_MODES: tuple[str, ...] = ("pad", "crop")

IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS: tuple[str, ...] = ("<unk>", "<s>", "</s>", "<pad>", IMAGE_TOKEN, "<box>", "</box>")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class _Shapes:
    image_size: int
    vision_hidden: int
    vision_layers: int
    vision_heads: int
    vision_intermediate: int
    text_hidden: int
    text_layers: int
    text_heads: int
    text_kv_heads: int
    text_intermediate: int
    vocab_size: int  # BPE target; the config uses the trained tokenizer's size (except llava7b)
    max_positions: int


_PRESET_SHAPES: dict[str, _Shapes] = {
    # ~0.3 M parameters, 64 image tokens: the test suite's model.
    "tiny": _Shapes(112, 32, 2, 2, 64, 64, 2, 4, 2, 128, 1200, 512),
    # ~25 M parameters, 336 px, 576 image tokens: the CPU bench's model.
    "small": _Shapes(336, 256, 4, 4, 1024, 512, 6, 8, 8, 1376, 4000, 2048),
    # Shapes of CLIP ViT-L/14-336 + LLaMA-7B (random fp16; built on a GPU for the GPU bench).
    "llava7b": _Shapes(336, 1024, 24, 16, 4096, 4096, 32, 32, 32, 11008, 32064, 4096),
}

_WORDS = (
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
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 14))]
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


@functools.lru_cache(maxsize=4)
def _trained_tokenizer_json(vocab_size: int, seed: int) -> str:
    """Train the BPE once per process and (vocab size, seed); returns its JSON."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    bos_id = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
    )
    return tok.to_str()


def build_tokenizer(vocab_size: int, seed: int = 0) -> Any:  # PreTrainedTokenizerFast
    """A byte-level BPE (digits split one by one, like LLaMA) wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer

    return wrap_fast_tokenizer(Tokenizer.from_str(_trained_tokenizer_json(vocab_size, seed)))


def wrap_fast_tokenizer(tok: Any) -> Any:  # tokenizers.Tokenizer -> PreTrainedTokenizerFast
    """The project's special tokens, left padding and no space clean-up, around a trained tokenizer."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        additional_special_tokens=[IMAGE_TOKEN, "<box>", "</box>"],
        padding_side="left",
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
    )


def _llava_config(shapes: _Shapes, vocab_size: int, special: dict[str, int], projector: str,
                  image_mode: str) -> Any:  # LlavaConfig
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    n_image_tokens = (shapes.image_size // 14) ** 2
    vision = CLIPVisionConfig(
        hidden_size=shapes.vision_hidden,
        intermediate_size=shapes.vision_intermediate,
        num_hidden_layers=shapes.vision_layers,
        num_attention_heads=shapes.vision_heads,
        image_size=shapes.image_size,
        patch_size=14,
        projection_dim=shapes.vision_hidden,
        hidden_act="quick_gelu",
        initializer_range=0.15,
    )
    text = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=shapes.text_hidden,
        intermediate_size=shapes.text_intermediate,
        num_hidden_layers=shapes.text_layers,
        num_attention_heads=shapes.text_heads,
        num_key_value_heads=shapes.text_kv_heads,
        max_position_embeddings=shapes.max_positions,
        initializer_range=0.15,
        bos_token_id=special["<s>"],
        eos_token_id=special["</s>"],
        pad_token_id=special["<pad>"],
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    )
    extra: dict[str, object] = {"image_aspect_ratio": "pad" if image_mode == "pad" else "square"}
    if projector == "chatspot":
        extra["projector_type"] = "linear"
        extra["chatspot_dialect"] = "chatspot"
    return LlavaConfig(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        image_token_index=special[IMAGE_TOKEN],
        image_seq_length=n_image_tokens,
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        pad_token_id=special["<pad>"],
        **extra,
    )


def _image_processor(image_size: int) -> Any:  # CLIPImageProcessorPil
    from transformers import CLIPImageProcessorPil

    # "pad": LLaVA-1.5 pads to a square with the mean colour (the runtime does that, reading
    # image_aspect_ratio from config.json), then resizes; the processor itself resizes and crops.
    return CLIPImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_center_crop=True,
        do_resize=True,
        do_rescale=True,
        do_normalize=True,
        do_convert_rgb=True,
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
        resample=3,
    )


def llava7b_parameter_count() -> int:
    """Parameters of the "llava7b" preset, counted on the meta device (no memory, no weights)."""
    import torch
    from transformers import LlavaForConditionalGeneration

    shapes = _PRESET_SHAPES["llava7b"]
    special = {name: i for i, name in enumerate(SPECIAL_TOKENS)}
    config = _llava_config(shapes, shapes.vocab_size, special, "mlp2", "pad")
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    return sum(p.numel() for p in model.parameters())


def build_tiny_llava(
    out_dir: str | Path,
    *,
    preset: str = "tiny",
    seed: int = 0,
    projector: str = "mlp2",
    image_mode: str = "pad",
    dtype: str = "float32",
    device: str = "cpu",
) -> Path:
    """Build a random-weight LLaVA checkpoint in ``out_dir`` and return its path.

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
    shapes = _PRESET_SHAPES[preset]

    tokenizer = build_tokenizer(min(shapes.vocab_size, 4000), seed=0)
    special = {name: tokenizer.convert_tokens_to_ids(name) for name in SPECIAL_TOKENS}
    vocab_size = shapes.vocab_size if preset == "llava7b" else len(tokenizer)
    config = _llava_config(shapes, vocab_size, special, projector, image_mode)

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
    model.generation_config.pad_token_id = special["<pad>"]
    model.generation_config.bos_token_id = special["<s>"]
    model.generation_config.eos_token_id = special["</s>"]
    model.generation_config.do_sample = False
    model.save_pretrained(out, safe_serialization=True)

    image_processor = _image_processor(shapes.image_size)
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        image_token=IMAGE_TOKEN,
    )
    processor.save_pretrained(out)
    image_processor.save_pretrained(out)
    tokenizer.save_pretrained(out)
    meta = {"preset": preset, "seed": seed, "projector": projector, "image_mode": image_mode,
            "built_by": "chatspot_ros.testing.tiny_model.build_tiny_llava"}
    (out / "chatspot_tiny_model.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out
