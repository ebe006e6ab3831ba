"""The small ChatSpot the project trains on the tabletop world: tokenizer, shapes, initialization.

A CLIP-architecture vision tower, the llava-hf two-layer projector and a LLaMA-architecture
decoder, so the runtime (and vLLM) load it like any llava-hf checkpoint. Two choices make
precise referring learnable for a model this small on two CPU cores:

* **Coordinate tokens.** The tokenizer keeps every two-decimal coordinate ("0.00" ... "1.00") as
  one token and the third decimal as a digit token, so ``<box>[0.103,0.200,...]</box>`` is a
  short, regular sequence whose coarse values are single symbols.
* **A wired start for referring.** A small model trained from random weights learns colour and
  shape words quickly but stays at chance on *which* region is meant for thousands of steps:
  the path "coordinate text -> patches at that place" has no gradient until all of its parts
  exist. So the initialization lays that path down (``wire_referring_path``): patch position
  embeddings carry a sine-cosine code of the patch centre (x and y in their own dimensions),
  the vision layers and the projector carry it unchanged into the LLM (the projector through
  GELU(u) - GELU(-u) = u), coordinate tokens carry the same code of their value, and two
  attention heads of the LLM's first layer compare them (a "column" head against x, a "row"
  head against y) in the head dimensions RoPE barely rotates (rope_theta 1e6). A coordinate
  token then gathers what lies in its column or row, and the object a region's coordinates
  agree on stands out. Everything else starts random, and every weight is trained.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

# LLM residual dims the referring path uses, with d = position_dims = 32: [0, d) x code of image
# tokens, [d, 2d) y code, [2d, 3d) value code of coordinate tokens, then two marker dims, the
# votes written at coordinate tokens, the region content gathered at every other token; image
# content and everything else live from CONTENT on.
COORD, QUERY = 96, 97
VOTES = slice(98, 130)
REGION = slice(130, 162)
CONTENT = 98
COORD_TOKENS: tuple[str, ...] = tuple(f"{v / 100:.2f}" for v in range(101))  # "0.00" ... "1.00"
from chatspot_ros.testing.tiny_model import CLIP_MEAN, CLIP_STD, IMAGE_TOKEN, SPECIAL_TOKENS  # noqa: E402
# Pieces the byte-level BPE sees: a coarse coordinate, a single digit, a word with its leading
# space, one punctuation mark with its leading space, runs of whitespace.
PRETOKEN_PATTERN = r"\d\.\d\d|\d| ?[A-Za-z]+|'[a-z]+| ?[^\sA-Za-z\d]|\s+"


@dataclass(frozen=True)
class TabletopShapes:
    """Architecture of a tabletop ChatSpot (see PRESETS)."""

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
    vocab_size: int  # BPE target
    max_positions: int = 512
    position_dims: int = 32  # width of the sine-cosine position code (per axis)
    rope_theta: float = 1e6  # large: the head dimensions the referring path uses stay nearly unrotated

    @property
    def num_image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


PRESETS: dict[str, TabletopShapes] = {
    # The shipped model: 64 image tokens of a 128 px stretched frame; head size 64 (vLLM's CPU
    # attention supports it).
    "tabletop": TabletopShapes(128, 16, 128, 3, 2, 512, 256, 4, 4, 4, 704, 1400),
    # The test suite's recipe: same tokenizer and token layout, a fraction of the width.
    "smoke": TabletopShapes(64, 16, 96, 2, 2, 192, 192, 2, 3, 3, 256, 1400),
}


def tokenizer_corpus(extra: Iterable[str] = ()) -> list[str]:
    """Text the tokenizer is trained on: the world's vocabulary, the templates, every coordinate."""
    from chatspot_ros.referring.conversation import VICUNA_SYSTEM
    from chatspot_ros.referring.instructions import InstructionTemplates
    from chatspot_ros.testing.tiny_model import _WORDS
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
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    from chatspot_ros.testing.tiny_model import wrap_fast_tokenizer

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKEN_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(tokenizer_corpus(extra_corpus), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    tokenizer = wrap_fast_tokenizer(tok)
    missing = [c for c in COORD_TOKENS if len(tokenizer(c, add_special_tokens=False)["input_ids"]) != 1]
    if missing:
        raise RuntimeError(f"tokenizer vocabulary too small: coordinates {missing[:5]} are not single tokens")
    return tokenizer


def sincos_code(values: Any, dims: int, grid: int) -> Any:  # torch.Tensor (N, dims)
    """Sine-cosine code of values in [0, 1]: dims/2 frequencies evenly up to pi * grid rad per unit.

    The highest frequency sets the width of the match kernel code(v) . code(w): positive within
    about half a patch of a ``grid`` x ``grid`` patch grid, negative beyond, so a coordinate
    matches its own patch column (or row) and not the next.
    """
    import torch

    v = torch.as_tensor(values, dtype=torch.float32).reshape(-1, 1)
    k = torch.arange(dims // 2, dtype=torch.float32).reshape(1, -1)
    freq = math.pi * grid * (1.0 + k) / (dims // 2)
    return torch.cat([torch.cos(freq * v), torch.sin(freq * v)], dim=1) / math.sqrt(dims / 2)


def llava_config(shapes: TabletopShapes, tokenizer: Any) -> Any:  # LlavaConfig
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    special = {name: tokenizer.convert_tokens_to_ids(name) for name in SPECIAL_TOKENS}
    vision = CLIPVisionConfig(
        hidden_size=shapes.vision_hidden,
        intermediate_size=shapes.vision_intermediate,
        num_hidden_layers=shapes.vision_layers,
        num_attention_heads=shapes.vision_heads,
        image_size=shapes.image_size,
        patch_size=shapes.patch_size,
        projection_dim=shapes.vision_hidden,
        hidden_act="quick_gelu",
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shapes.text_hidden,
        intermediate_size=shapes.text_intermediate,
        num_hidden_layers=shapes.text_layers,
        num_attention_heads=shapes.text_heads,
        num_key_value_heads=shapes.text_kv_heads,
        max_position_embeddings=shapes.max_positions,
        bos_token_id=special["<s>"],
        eos_token_id=special["</s>"],
        pad_token_id=special["<pad>"],
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        rope_theta=shapes.rope_theta,
    )
    return LlavaConfig(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        image_token_index=special[IMAGE_TOKEN],
        image_seq_length=shapes.num_image_tokens,
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        pad_token_id=special["<pad>"],
        tie_word_embeddings=True,
        chatspot_dialect="chatspot",
        chatspot_conversation="vicuna_v1",
    )


def image_processor(shapes: TabletopShapes) -> Any:  # CLIPImageProcessorPil
    """Stretch the frame to image_size x image_size (no crop: every pixel of the frame is seen)."""
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(
        size={"height": shapes.image_size, "width": shapes.image_size},
        do_center_crop=False,
        do_resize=True,
        do_rescale=True,
        do_normalize=True,
        do_convert_rgb=True,
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
        resample=2,
    )


def wire_referring_path(model: Any, shapes: TabletopShapes, tokenizer: Any, match_score: float = 10.0) -> None:
    """Lay down the coordinate -> patch path described in the module docstring (in place).

    Vision dims [0, 2d): x code, y code of the patch centre; LLM dims [0, d) x code, [d, 2d) y
    code, [2d, 3d) the value code of coordinate tokens. Layer 0, head 0 matches value against x,
    head 1 against y, with a score of about ``match_score`` where they agree.
    """
    import torch

    d = shapes.position_dims
    dv, dt = shapes.vision_hidden, shapes.text_hidden
    head_dim = dt // shapes.text_heads
    if (d != 32 or 2 * d > dv or REGION.stop > dt or head_dim < 2 * d or shapes.text_heads < 2
            or shapes.text_layers < 2 or shapes.text_kv_heads != shapes.text_heads):
        raise ValueError(f"shapes too small for the referring path: need position_dims 32, vision width >= 64, "
                         f"text width >= {REGION.stop}, head size >= 64, >= 2 heads, >= 2 layers, no grouped KV heads")
    grid = shapes.image_size // shapes.patch_size
    code = sincos_code((torch.arange(grid, dtype=torch.float32) + 0.5) / grid, d, grid) * math.sqrt(d / 2)  # (G, d), |c| = 1 per freq
    vision = model.model.vision_tower
    projector = model.model.multi_modal_projector
    lm = model.model.language_model
    with torch.no_grad():
        # -- vision: position code in dims [0, 2d), nothing else writes there at the start
        emb = vision.embeddings
        pos = emb.position_embedding.weight  # (1 + G*G, Dv)
        pos[:, : 2 * d] = 0.0
        for row in range(grid):
            for col in range(grid):
                pos[1 + row * grid + col, :d] = code[col]
                pos[1 + row * grid + col, d:2 * d] = code[row]
        emb.patch_embedding.weight[: 2 * d] = 0.0
        for layer in vision.encoder.layers:
            for linear in (layer.self_attn.out_proj, layer.mlp.fc2):
                linear.weight[: 2 * d] = 0.0
                linear.bias[: 2 * d] = 0.0
        # -- projector: GELU(u) - GELU(-u) = u carries the 2d code dims into LLM dims [0, 2d)
        l1, l2 = projector.linear_1, projector.linear_2
        l1.weight[: 4 * d] = 0.0
        l1.bias[: 4 * d] = 0.0
        l1.weight[:, : 2 * d] = 0.0  # content units do not read the code
        eye = torch.eye(2 * d)
        l1.weight[: 2 * d, : 2 * d] = eye
        l1.weight[2 * d: 4 * d, : 2 * d] = -eye
        # content units at unit gain (default init leaves them ~50x below the code), written only
        # to the dims at and above CONTENT (the lower ones are the path's own)
        nn_init_unit(l1.weight[4 * d:, 2 * d:])
        nn_init_unit(l2.weight[CONTENT:, 4 * d:])
        l2.weight[:, : 4 * d] = 0.0
        l2.weight[:CONTENT] = 0.0
        l2.bias[:CONTENT] = 0.0
        l2.weight[: 2 * d, : 2 * d] = eye
        l2.weight[: 2 * d, 2 * d: 4 * d] = -eye
        # -- tokens: coordinate tokens carry their value code in [2d, 3d) and the COORD marker,
        # every other token the QUERY marker; nothing else lives below CONTENT
        tok = lm.get_input_embeddings().weight  # (V, Dt)
        typical = tok[:, CONTENT:].norm(dim=1).mean()
        tok[:, :CONTENT] = 0.0
        ids = tokenizer.convert_tokens_to_ids(list(COORD_TOKENS))
        values = torch.tensor([float(c) for c in COORD_TOKENS])
        tok[ids, 2 * d: 3 * d] = sincos_code(values, d, grid) * typical
        tok[:, QUERY] = typical
        tok[ids, QUERY] = 0.0
        tok[ids, COORD] = typical
        # -- layer 0: head 0 = value . x (column), head 1 = value . y (row), in the head dims RoPE
        # rotates least (the upper half of each rotate-half pair: frequency index >= head_dim / 4)
        attn = lm.layers[0].self_attn
        half = head_dim // 2
        low = list(range(half - d // 2, half)) + list(range(head_dim - d // 2, head_dim))  # d dims
        low_t = torch.tensor(low)
        gain = torch.ones(1)
        for head, key_dims in ((0, slice(0, d)), (1, slice(d, 2 * d))):
            q_rows = head * head_dim + low_t
            k_rows = head * head_dim + low_t
            attn.q_proj.weight[head * head_dim:(head + 1) * head_dim] = 0.0
            attn.k_proj.weight[head * head_dim:(head + 1) * head_dim] = 0.0
            attn.q_proj.weight[q_rows, 2 * d: 3 * d] = torch.eye(d) * gain
            attn.k_proj.weight[k_rows, key_dims] = torch.eye(d) * gain
            # what the head finds (image content) is written, as a vote, into the VOTES dims
            heads = slice(head * head_dim, (head + 1) * head_dim)
            attn.v_proj.weight[heads] = 0.0
            nn_init_unit(attn.v_proj.weight[heads, CONTENT:])
            attn.o_proj.weight[:, heads] = 0.0
            nn_init_unit(attn.o_proj.weight[VOTES, heads])
        # -- layer 1, head 0 ("gather"): every token that is not a coordinate reads the votes of
        # the coordinate tokens before it and writes them into the REGION dims
        attn1 = lm.layers[1].self_attn
        h0 = slice(0, head_dim)
        for proj in (attn1.q_proj, attn1.k_proj, attn1.v_proj):
            proj.weight[h0] = 0.0
        attn1.q_proj.weight[low[0], QUERY] = 1.0
        attn1.k_proj.weight[low[0], COORD] = 1.0
        width = VOTES.stop - VOTES.start
        attn1.v_proj.weight[torch.arange(width), torch.arange(VOTES.start, VOTES.stop)] = 1.0
        attn1.o_proj.weight[:, h0] = 0.0
        attn1.o_proj.weight[torch.arange(REGION.start, REGION.stop), torch.arange(width)] = 1.0
    calibrate_referring_path(model, shapes, tokenizer, match_score)
    calibrate_gather(model, shapes, tokenizer)


def nn_init_unit(weight: Any) -> None:
    """Gaussian weights that keep a unit-scale input at unit scale (std 1 / sqrt(fan in))."""
    import torch

    weight.copy_(torch.randn_like(weight) / math.sqrt(weight.shape[1]))


def _sample_hidden(model: Any, shapes: TabletopShapes, tokenizer: Any) -> tuple[Any, list[str]]:
    """Hidden states of a one-turn point question about a blank frame, and its tokens."""
    import torch

    from chatspot_ros.referring.conversation import get_conversation

    prompt = get_conversation("vicuna_v1").render("What can you see in this region? <box>[0.437,0.562]</box>")
    ids = tokenizer(prompt.replace(IMAGE_TOKEN, IMAGE_TOKEN * shapes.num_image_tokens), return_tensors="pt")["input_ids"]
    pixels = torch.zeros(1, 3, shapes.image_size, shapes.image_size)
    out = model(input_ids=ids, pixel_values=pixels, output_hidden_states=True)
    return out.hidden_states, tokenizer.convert_ids_to_tokens(ids[0])


def calibrate_gather(model: Any, shapes: TabletopShapes, tokenizer: Any, score: float = 8.0,
                     region_norm: float = 2.0) -> None:
    """Scale layer 1's gather head: ``score`` on coordinate tokens, the REGION write ~``region_norm``."""
    import torch

    head_dim = shapes.text_hidden // shapes.text_heads
    lm = model.model.language_model
    attn1 = lm.layers[1].self_attn
    with torch.no_grad():
        hidden, tokens = _sample_hidden(model, shapes, tokenizer)
        h = lm.layers[1].input_layernorm(hidden[1][0])  # (T, D) layer 1 input
        coord = [i for i, t in enumerate(tokens) if t in COORD_TOKENS]
        q = attn1.q_proj(h[-1:])[0, :head_dim]
        k = attn1.k_proj(h[coord])[:, :head_dim]
        raw = float((k @ q).mean()) / math.sqrt(head_dim)
        gain = math.sqrt(score / max(raw, 1e-6))
        attn1.q_proj.weight[:head_dim] *= gain
        attn1.k_proj.weight[:head_dim] *= gain
        votes = attn1.v_proj(h[coord])[:, :head_dim].norm(dim=1).mean()
        attn1.o_proj.weight[:, :head_dim] *= region_norm / max(float(votes), 1e-6)


def calibrate_referring_path(model: Any, shapes: TabletopShapes, tokenizer: Any, match_score: float) -> float:
    """Scale the two wired heads so a coordinate token scores ``match_score`` on its own column.

    Measured on the model's own normalized hidden states of a blank frame, so the scale follows
    whatever the RMSNorm and embedding sizes are. Returns the gain applied.
    """
    import torch

    head_dim = shapes.text_hidden // shapes.text_heads
    lm = model.model.language_model
    norm = lm.layers[0].input_layernorm
    with torch.no_grad():
        pixels = torch.zeros(1, 3, shapes.image_size, shapes.image_size)
        image = model.model.get_image_features(pixel_values=pixels)
        image = image.pooler_output if hasattr(image, "pooler_output") else image
        image = (image[0] if isinstance(image, (list, tuple)) else image).reshape(-1, shapes.text_hidden)
        grid = shapes.image_size // shapes.patch_size
        centre = f"{(grid // 2 + 0.5) / grid:.2f}"  # the coordinate token at a patch centre
        coord = lm.get_input_embeddings().weight[tokenizer.convert_tokens_to_ids([centre])]
        h_img, h_coord = norm(image), norm(coord)
        attn = lm.layers[0].self_attn
        q = attn.q_proj(h_coord)[0, :head_dim]
        k = attn.k_proj(h_img)[:, :head_dim]
        scores = (k @ q) / math.sqrt(head_dim)  # (N,)
        best = float(scores.max())
        if best <= 0:
            raise RuntimeError("referring path calibration failed: no patch matches the coordinate code")
        gain = math.sqrt(match_score / best)
        for head in (0, 1):
            attn.q_proj.weight[head * head_dim:(head + 1) * head_dim] *= gain
            attn.k_proj.weight[head * head_dim:(head + 1) * head_dim] *= gain
    return gain


def build_model(shapes: TabletopShapes, tokenizer: Any, seed: int = 0) -> Any:  # LlavaForConditionalGeneration
    """A freshly initialized tabletop ChatSpot (seeded), with the referring path wired."""
    import torch
    from transformers import LlavaForConditionalGeneration

    config = llava_config(shapes, tokenizer)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    wire_referring_path(model, shapes, tokenizer)
    gen = model.generation_config
    gen.pad_token_id = config.text_config.pad_token_id
    gen.bos_token_id = config.text_config.bos_token_id
    gen.eos_token_id = config.text_config.eos_token_id
    gen.do_sample = False
    return model


def freeze_referring_path(model: Any) -> list[str]:
    """Keep the wired path fixed while the rest learns to read it (``chatspot-train run --freeze-path``).

    Frozen: the vision tower (after stage 0), the projector, the LLM's first two layers (their
    attention is the path; their norms and MLPs would rescale and overwrite it), and the embedding
    dims below CONTENT (codes and markers; a gradient hook, since the rest of each embedding row,
    tied to the LM head, must learn). Returns the frozen names.
    """
    import torch

    lm = model.model.language_model
    frozen = []
    for prefix, module in (("vision_tower", model.model.vision_tower),
                           ("multi_modal_projector", model.model.multi_modal_projector),
                           ("layers.0", lm.layers[0]), ("layers.1", lm.layers[1])):
        for name, p in module.named_parameters():
            p.requires_grad_(False)
            frozen.append(f"{prefix}.{name}")
    emb = lm.get_input_embeddings().weight
    emb.register_hook(lambda g: torch.cat([torch.zeros_like(g[:, :CONTENT]), g[:, CONTENT:]], dim=1))
    return frozen
