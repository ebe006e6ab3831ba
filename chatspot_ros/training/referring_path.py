"""The wired referring path of the tabletop ChatSpot: region text -> the patches inside the region.

A model this small, trained from random weights on two CPU cores, learns colour and shape words
quickly but stays at chance on *which* region a prompt means for thousands of steps: the route
from coordinate text to the patches at that place only pays off once every part of it exists
(docs/training.md has the runs). So the tabletop model is built with that route laid down in its
first four decoder layers, and kept fixed; what the model has to *know* (what lies in a patch,
how to name it, how to answer and plan) is trained. For ``<box>[x1,y1,x2,y2]</box>`` (a click
``[x,y]`` reads as the box [x,y,x,y]):

* a coordinate token v carries LOW(v) and HIGH(v) in its embedding: for every patch column (or
  row) c, -1 where c's centre lies more than half a patch left of v (LOW) or right of v (HIGH);
  an image token carries the one-hot column and row of its patch, which the vision tower's
  position embedding writes and the tower and the projector carry through unchanged (the
  projector by GELU(u) - GELU(-u) = u), and its content (the stage-0 patch classifier's logits);
* layer 0 marks the first x and the first y of a region: heads that find "[" one and four
  tokens back;
* layer 1, at every token, copies LOW of the latest first x and y, and HIGH of the coordinates
  five and two tokens back (at "]" those are the last x and y);
* layer 2 attends, from "]", to the image tokens with the score -(number of bounds violated):
  uniformly over the patches inside the region, whose mean content it writes into REGION;
* layer 3 copies REGION from the latest "]" into every later token, the answer's included.

The reverse direction (REC: "Where is the red cube?" answered with its box) has a route of its
own in the same layers (``_wire_answer_box``): patches are coarser than objects, so the box comes
from the vision tower (stage 0 regresses, per patch, the box of the object over it), layer 2
averages the expression's colour and shape words into a query, layer 3 finds the patches whose
content matches it and reads their box, and layer 3's MLP hands the coordinate the current
token must write to rows of the LM head that turn a value into the nearest coordinate token.

Relative offsets come from RoPE (kernels over its fastest rotations), markers and bounds sit in
the pairs it barely rotates (rope_theta 1e6). All scales are calibrated on rendered world frames
(``calibrate``) and ``check_path`` measures the route. A polygon is read as the box spanned by its
first and last vertex, which the tabletop world never needs.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

LOGGER = logging.getLogger("chatspot_ros.training")
WIRED_LAYERS = 4
KERNEL_PAIRS = 6  # RoPE pairs (fastest first) that make an offset kernel; margins checked in tests
# the answer-box route's slot flags: (layer, head, offset after "[", name), for y1, x2, y2
SLOT_HEADS = ((0, 2, 3, "slot_y1"), (0, 3, 6, "slot_x2"), (2, 2, 9, "slot_y2"))


@dataclass(frozen=True)
class PathLayout:
    """Which residual dims of the decoder (and of the vision tower) the path owns."""

    grid: int  # patches per side
    image_dims: int = 32  # content an image token carries into the decoder

    TEXT, COORD, OPEN, CLOSE, FIRST_X, FIRST_Y, QWORD, COMMA = range(8)  # markers
    IMAGE_BOX, IMAGE_ONE = slice(11, 15), 15  # within ``image``: the stage-0 box (x1, y1, x2, y2), a constant
    WORDS = 9  # colour words, then shape words (world order)

    def _block(self, k: int) -> slice:
        start = 8 + k * self.grid
        return slice(start, start + self.grid)

    @property
    def low(self) -> slice:
        return self._block(0)

    @property
    def high(self) -> slice:
        return self._block(1)

    @property
    def qx(self) -> slice:
        return self._block(2)

    @property
    def qy(self) -> slice:
        return self._block(3)

    @property
    def col(self) -> slice:
        return self._block(4)

    @property
    def row(self) -> slice:
        return self._block(5)

    @property
    def image(self) -> slice:
        start = 8 + 6 * self.grid
        return slice(start, start + self.image_dims)

    @property
    def region(self) -> slice:
        return slice(self.image.stop, self.image.stop + self.image_dims)

    @property
    def answer_region(self) -> slice:
        return slice(self.region.stop, self.region.stop + self.image_dims)

    def _rec(self, offset: int, size: int) -> slice:
        start = self.answer_region.stop + offset
        return slice(start, start + size)

    @property
    def slots(self) -> slice:
        """Flags of the tokens that predict y1, x2, y2 of an answered box (3, 6, 9 after "[")."""
        return self._rec(0, 3)

    @property
    def word(self) -> slice:
        """A colour or shape word's one-hot (embeddings)."""
        return self._rec(3, self.WORDS)

    @property
    def query(self) -> slice:
        """The mean of the colour and shape words so far (layer 2)."""
        return self._rec(3 + self.WORDS, self.WORDS)

    @property
    def found(self) -> slice:
        """The box and the constant of the patches the query matches (layer 3)."""
        return self._rec(3 + 2 * self.WORDS, 5)

    @property
    def sel(self) -> int:
        """The found coordinate of the current slot (layer 3's MLP); ``sel + 1``: the constant."""
        return self.answer_region.stop + 8 + 2 * self.WORDS

    @property
    def content(self) -> int:
        """First dim of the token embeddings' own (random, fixed) content."""
        return self.sel + 2

    @property
    def vision_dims(self) -> int:
        """Vision residual dims [0, 4G): column +one-hot, column -one-hot, row +, row -."""
        return 4 * self.grid


def layout_for(config: Any, image_dims: int = 32) -> PathLayout:
    vision = config.vision_config
    return PathLayout(vision.image_size // vision.patch_size, image_dims)


def check_shapes(config: Any, layout: PathLayout) -> None:
    text = config.text_config
    head_dim = text.hidden_size // text.num_attention_heads
    problems = []
    if layout.content + 32 > text.hidden_size:
        problems.append(f"text width {text.hidden_size} < {layout.content + 32}")
    if text.num_attention_heads < 4 or text.num_key_value_heads != text.num_attention_heads:
        problems.append("needs >= 4 attention heads and no grouped KV heads")
    if head_dim // 2 < KERNEL_PAIRS + 2 * layout.grid + 2:
        problems.append(f"head size {head_dim} too small for a {layout.grid}x{layout.grid} grid")
    if text.num_hidden_layers <= WIRED_LAYERS:
        problems.append(f"needs more than {WIRED_LAYERS} decoder layers")
    if layout.vision_dims > config.vision_config.hidden_size // 2:
        problems.append("vision width too small")
    if problems:
        raise ValueError("shapes too small for the referring path: " + "; ".join(problems))


# --- vision side -------------------------------------------------------------------------------

def wire_vision(model: Any, layout: PathLayout) -> None:
    """Patch column/row one-hots (+ and -, so LayerNorm's mean cancels) in vision dims [0, 4G)."""
    import torch

    g, n = layout.grid, layout.vision_dims
    tower = model.model.vision_tower
    emb = tower.embeddings
    with torch.no_grad():
        pos = emb.position_embedding.weight
        pos[:, :n] = 0.0
        for r in range(g):
            for c in range(g):
                p = pos[1 + r * g + c]
                p[c], p[g + c], p[2 * g + r], p[3 * g + r] = 1.0, -1.0, 1.0, -1.0
        emb.patch_embedding.weight[:n] = 0.0
        emb.class_embedding[:n] = 0.0
        tower.pre_layrnorm.weight[:n] = 1.0
        tower.pre_layrnorm.bias[:n] = 0.0
        for layer in tower.encoder.layers:
            for linear in (layer.self_attn.out_proj, layer.mlp.fc2):
                linear.weight[:n] = 0.0
                linear.bias[:n] = 0.0


def protect_vision(model: Any, layout: PathLayout) -> list[Any]:
    """Gradient hooks that keep stage-0 training from touching the position dims; returns them."""
    n = layout.vision_dims
    tower = model.model.vision_tower

    def rows(g: Any) -> Any:
        g = g.clone()
        g[:n] = 0.0
        return g

    def cols(g: Any) -> Any:
        g = g.clone()
        g[:, :n] = 0.0
        return g

    hooks = [tower.embeddings.patch_embedding.weight.register_hook(rows),
             tower.embeddings.class_embedding.register_hook(rows),
             tower.embeddings.position_embedding.weight.register_hook(cols),
             tower.pre_layrnorm.weight.register_hook(rows), tower.pre_layrnorm.bias.register_hook(rows)]
    for layer in tower.encoder.layers:
        for linear in (layer.self_attn.out_proj, layer.mlp.fc2):
            hooks += [linear.weight.register_hook(rows), linear.bias.register_hook(rows)]
    return hooks


def wire_projector(model: Any, layout: PathLayout, patch_head: Any | None = None, seed: int = 0) -> None:
    """Projector: column/row one-hots and the image content into their decoder dims, linearly.

    Content: the stage-0 patch head's outputs (colour and shape logits, the box of the object
    over the patch) first, a constant at ``IMAGE_ONE``, then fixed random projections of the
    patch features. Each linear unit u is the pair GELU(u) - GELU(-u).
    """
    import torch

    g, dv = layout.grid, model.config.vision_config.hidden_size
    l1, l2 = model.model.multi_modal_projector.linear_1, model.model.multi_modal_projector.linear_2
    k = layout.image_dims
    gen = torch.Generator().manual_seed(seed)
    content_w = torch.randn(k, dv, generator=gen) / math.sqrt(dv)
    content_b = torch.zeros(k)
    if patch_head is not None:
        m = min(k, patch_head.weight.shape[0])
        content_w[:m] = patch_head.weight.detach()[:m] * 0.25
        content_b[:m] = patch_head.bias.detach()[:m] * 0.25
    content_w[layout.IMAGE_ONE], content_b[layout.IMAGE_ONE] = 0.0, 0.25  # found box = box dims / this
    if l1.weight.shape[0] < 2 * (2 * g + k):
        raise ValueError("projector too narrow for the referring path")
    with torch.no_grad():
        for lin in (l1, l2):
            lin.weight.zero_()
            lin.bias.zero_()
        unit = 0
        targets = []
        for c in range(g):  # column c: (h[c] - h[G + c]) / 2
            w = torch.zeros(dv)
            w[c], w[g + c] = 0.5, -0.5
            targets.append((w, 0.0, layout.col.start + c))
        for r in range(g):
            w = torch.zeros(dv)
            w[2 * g + r], w[3 * g + r] = 0.5, -0.5
            targets.append((w, 0.0, layout.row.start + r))
        for j in range(k):
            targets.append((content_w[j], float(content_b[j]), layout.image.start + j))
        for w, b, out in targets:
            l1.weight[unit], l1.bias[unit] = w, b
            l1.weight[unit + 1], l1.bias[unit + 1] = -w, -b
            l2.weight[out, unit], l2.weight[out, unit + 1] = 1.0, -1.0
            unit += 2


# --- decoder side ------------------------------------------------------------------------------

def bound_codes(values: Sequence[float], grid: int, level: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """LOW, HIGH (N, G): -level where a patch centre is over half a patch below / above the value."""
    v = np.asarray(values, np.float64).reshape(-1, 1)
    centres = (np.arange(grid) + 0.5) / grid
    half = 0.5 / grid
    low = np.where(centres < v - half - 1e-9, -level, 0.0)
    high = np.where(centres > v + half + 1e-9, -level, 0.0)
    return low, high


def inside_patches(first: tuple[float, float], last: tuple[float, float], grid: int) -> np.ndarray:
    """(G*G,) bool: the patches the route attends to for a region read as the box first..last
    (coarse coordinates, as the coordinate tokens carry them)."""
    low = bound_codes(first, grid)[0]  # (2, G): x, y
    high = bound_codes(last, grid)[1]
    cols = (low[0] == 0) & (high[0] == 0)
    rows = (low[1] == 0) & (high[1] == 0)
    return (rows.reshape(-1, 1) & cols.reshape(1, -1)).reshape(-1)


def rope_frequencies(text_config: Any) -> np.ndarray:
    head_dim = text_config.hidden_size // text_config.num_attention_heads
    theta = getattr(text_config, "rope_theta", None)
    if theta is None:
        theta = (getattr(text_config, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    return float(theta) ** (-np.arange(0, head_dim, 2) / head_dim)


def offset_kernel(omega: np.ndarray, deltas: Sequence[int], pairs: int = KERNEL_PAIRS) -> np.ndarray:
    """K(delta) = mean_j cos(omega_j * delta) over the ``pairs`` fastest rotations (K(0) = 1)."""
    d = np.asarray(deltas, np.float64).reshape(-1, 1)
    return np.cos(d * omega[:pairs].reshape(1, -1)).mean(axis=1)


def kernel_margins(omega: np.ndarray, horizon: int = 400, pairs: int = KERNEL_PAIRS) -> tuple[float, float]:
    """(offset margin over every other token within ``horizon``, over every third token)."""
    every = [d for d in range(-6, horizon) if d != 0]
    third = [3 * i for i in range(-30, 31) if i != 0]
    return (1.0 - float(offset_kernel(omega, every, pairs).max()),
            1.0 - float(offset_kernel(omega, third, pairs).max()))


class _Heads:
    """Write access to one attention layer's heads, pair by pair (RoPE rotates dims j, j + hd/2)."""

    def __init__(self, attn: Any, head_dim: int) -> None:
        self.attn, self.hd = attn, head_dim

    def row(self, head: int, dim: int) -> int:
        return head * self.hd + dim

    def slow(self, i: int) -> int:
        """The i-th slowest pair's first dim (its partner stays zero, so RoPE only scales it)."""
        return self.hd // 2 - 1 - i

    def kernel(self, head: int, query_dim: int, key_dim: int, offset: int, omega: np.ndarray, gain: float) -> None:
        """Score gain * mean_j cos(omega_j (delta - offset)) between query_dim and key_dim tokens."""
        half = self.hd // 2
        a = math.sqrt(gain / KERNEL_PAIRS)
        for j in range(KERNEL_PAIRS):
            psi = -offset * float(omega[j])
            self.attn.q_proj.weight[self.row(head, j), query_dim] = a * math.cos(psi)
            self.attn.q_proj.weight[self.row(head, j + half), query_dim] = a * math.sin(psi)
            self.attn.k_proj.weight[self.row(head, j), key_dim] = a

    def product(self, head: int, i: int, query_dim: int, key_dim: int, weight: float) -> None:
        """Score weight * q[query_dim] * k[key_dim] through slow pair i."""
        self.attn.q_proj.weight[self.row(head, self.slow(i)), query_dim] = weight
        self.attn.k_proj.weight[self.row(head, self.slow(i)), key_dim] = 1.0

    def copy(self, head: int, src: slice | Sequence[int], dst: slice | Sequence[int]) -> None:
        """Value = residual dims src, written to dims dst."""
        src = list(range(src.start, src.stop)) if isinstance(src, slice) else list(src)
        dst = list(range(dst.start, dst.stop)) if isinstance(dst, slice) else list(dst)
        for i, (s, d) in enumerate(zip(src, dst)):
            self.attn.v_proj.weight[self.row(head, i), s] = 1.0
            self.attn.o_proj.weight[d, self.row(head, i)] = 1.0

    def scale_query(self, head: int, factor: float) -> None:
        self.attn.q_proj.weight[self.row(head, 0):self.row(head + 1, 0)] *= factor


def wire_decoder(model: Any, layout: PathLayout, tokenizer: Any, coord_tokens: Sequence[str], seed: int = 0,
                 words: Sequence[str] | None = None) -> None:
    """Embeddings and layers 0-3 as the module docstring says (uncalibrated: see ``calibrate``);
    ``words``: the colour then shape words the answer-box route knows (default: the world's)."""
    import torch

    text = model.config.text_config
    hd = text.hidden_size // text.num_attention_heads
    omega = rope_frequencies(text)
    lm = model.model.language_model
    L = layout
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        emb = lm.get_input_embeddings().weight
        n_content = emb.shape[1] - L.content
        emb.zero_()
        emb[:, L.content:] = torch.randn(emb.shape[0], n_content, generator=gen) / math.sqrt(n_content)
        emb[:, L.TEXT] = 1.0
        ids = tokenizer.convert_tokens_to_ids(list(coord_tokens))
        low, high = bound_codes([float(t) for t in coord_tokens], L.grid)
        emb[ids, L.COORD] = 1.0
        emb[ids, L.low] = torch.tensor(low, dtype=emb.dtype)
        emb[ids, L.high] = torch.tensor(high, dtype=emb.dtype)
        for name, marker in (("[", L.OPEN), ("]", L.CLOSE)):
            token_id = tokenizer.convert_tokens_to_ids(name)
            if token_id is None or token_id == tokenizer.unk_token_id:
                raise ValueError(f"the tokenizer has no single token {name!r}; the referring path needs one")
            emb[token_id, marker] = 1.0
        for layer in lm.layers[:WIRED_LAYERS]:
            a = layer.self_attn
            for p in (a.q_proj.weight, a.k_proj.weight, a.v_proj.weight, a.o_proj.weight, layer.mlp.down_proj.weight):
                p.zero_()
        # layer 0: first x (the "[" one token back), first y (four back)
        h0 = _Heads(lm.layers[0].self_attn, hd)
        for head, offset, flag in ((0, 1, L.FIRST_X), (1, 4, L.FIRST_Y)):
            h0.kernel(head, L.TEXT, L.OPEN, offset, omega, gain=1.0)
            h0.product(head, 0, L.TEXT, L.OPEN, weight=-threshold(omega))
            h0.copy(head, [L.OPEN], [flag])
        # layer 1: bounds gathered at every token (at "]" they are the region's)
        h1 = _Heads(lm.layers[1].self_attn, hd)
        h1.product(0, 0, L.TEXT, L.FIRST_X, weight=1.0)
        h1.copy(0, L.low, L.qx)
        h1.product(1, 0, L.TEXT, L.FIRST_Y, weight=1.0)
        h1.copy(1, L.low, L.qy)
        for head, offset, dst in ((2, 5, L.qx), (3, 2, L.qy)):
            h1.kernel(head, L.TEXT, L.COORD, offset, omega, gain=1.0)
            h1.product(head, 0, L.TEXT, L.COORD, weight=1.0)
            h1.copy(head, L.high, dst)
        # layer 2: the lookup; score = sum of violated bounds (<= 0), text tokens far below
        h2 = _Heads(lm.layers[2].self_attn, hd)
        for i in range(L.grid):
            h2.product(0, i, L.qx.start + i, L.col.start + i, weight=1.0)
            h2.product(0, L.grid + i, L.qy.start + i, L.row.start + i, weight=1.0)
        h2.product(0, 2 * L.grid, L.TEXT, L.TEXT, weight=-1.0)
        h2.copy(0, L.image, L.region)
        # layer 3: every token reads REGION of the latest "]"
        h3 = _Heads(lm.layers[3].self_attn, hd)
        h3.product(0, 0, L.TEXT, L.CLOSE, weight=1.0)
        h3.copy(0, L.region, L.answer_region)
        _wire_answer_box(model, L, tokenizer, coord_tokens, h0, h2, h3, omega, words)


def world_words() -> list[str]:
    """The words the answer-box route knows by default: the world's colours, then its shapes."""
    from chatspot_ros.world.scene import COLOURS, SHAPES

    return list(COLOURS) + list(SHAPES)


def word_token_ids(tokenizer: Any, words: Sequence[str]) -> list[list[int]]:
    """Per word, the single tokens that spell it (with and without a leading space, capitalized)."""
    out = []
    for word in words:
        ids = set()
        for variant in (" " + word, word, " " + word.capitalize(), word.capitalize()):
            pieces = tokenizer(variant, add_special_tokens=False)["input_ids"]
            if len(pieces) == 1:
                ids.add(pieces[0])
        if len(tokenizer(" " + word, add_special_tokens=False)["input_ids"]) != 1:
            raise ValueError(f"the tokenizer splits {word!r}; the answer-box route needs it as one token")
        out.append(sorted(ids))
    return out


def _wire_answer_box(model: Any, L: PathLayout, tokenizer: Any, coord_tokens: Sequence[str], h0: _Heads,
                     h2: _Heads, h3: _Heads, omega: np.ndarray, words: Sequence[str] | None) -> None:
    """The REC route: expression words -> the patches they name -> their box -> coordinate tokens.

    Colour and shape words carry a one-hot; layer 2 (head 1) averages them into QUERY at every
    token; layer 3 (head 1) attends from every token to the image tokens whose colour and shape
    logits match QUERY and reads their stage-0 box and a constant (FOUND: box x const, so their
    ratio is the box whatever the attention's spread). Slot flags mark the tokens that predict a
    box's coordinates ("[" itself, and the tokens 3, 6, 9 after it: layer 0 heads 2-3, layer 2
    head 2); layer 3's MLP gates the slot's coordinate into SEL and the constant into SEL + 1, and
    the LM head's coordinate rows read them as G (2 t SEL + (1 - t^2) SEL1), largest at the
    coordinate t nearest SEL / SEL1 (``wire_box_readout``).
    """
    words = list(words) if words is not None else world_words()
    if len(words) != L.WORDS:
        raise ValueError(f"the answer-box route needs {L.WORDS} words (colours, then shapes), got {len(words)}")
    lm = model.model.language_model
    emb = lm.get_input_embeddings().weight
    for j, ids in enumerate(word_token_ids(tokenizer, words)):
        emb[ids, L.QWORD] = 1.0
        emb[ids, L.word.start + j] = 1.0
    comma = tokenizer.convert_tokens_to_ids(",")
    if comma is None or comma == tokenizer.unk_token_id:
        raise ValueError("the tokenizer has no single token ','; the answer-box route needs one")
    emb[comma, L.COMMA] = 1.0
    slots = list(range(L.slots.start, L.slots.stop))
    for (layer, head, offset, _), flag in zip(SLOT_HEADS, slots):
        heads = h0 if layer == 0 else h2
        heads.kernel(head, L.TEXT, L.OPEN, offset, omega, gain=1.0)
        heads.product(head, 0, L.TEXT, L.OPEN, weight=-threshold(omega))
        rows = slice(heads.row(head, 0), heads.row(head + 1, 0))  # "]" never asks: it stays unflagged
        heads.attn.q_proj.weight[rows, L.CLOSE] = -heads.attn.q_proj.weight[rows, L.TEXT]
        heads.copy(head, [L.OPEN], [flag])
    h2.product(1, 0, L.TEXT, L.QWORD, weight=1.0)
    h2.copy(1, L.word, L.query)
    n_colours = L.WORDS - 3
    for j in range(L.WORDS):  # patch head: colours, table, shapes, table
        key = L.image.start + (j if j < n_colours else j + 1)
        h3.product(1, j, L.query.start + j, key, weight=1.0)
    h3.product(1, L.WORDS, L.TEXT, L.TEXT, weight=-1.0)
    box = [L.image.start + d for d in range(L.IMAGE_BOX.start, L.IMAGE_BOX.stop)] + [L.image.start + L.IMAGE_ONE]
    h3.copy(1, box, L.found)
    mlp = lm.layers[3].mlp
    for k, flag in enumerate([L.OPEN] + slots):
        for j, src in enumerate((L.found.start + k, L.found.start + 4)):
            n = 2 * k + j
            mlp.gate_proj.weight[n] = 0.0
            mlp.up_proj.weight[n] = 0.0
            mlp.gate_proj.weight[n, flag] = SLOT_GATE
            if k == 0:  # the "[" itself
                mlp.gate_proj.weight[n, L.TEXT] = -SLOT_GATE / 2
            else:  # a "," with its slot flag
                mlp.gate_proj.weight[n, L.COMMA] = SLOT_GATE
                mlp.gate_proj.weight[n, L.TEXT] = -1.5 * SLOT_GATE
            mlp.up_proj.weight[n, src] = 1.0
            mlp.down_proj.weight[L.sel + j, n] = 1.0
    for layer in lm.layers[WIRED_LAYERS:]:
        layer.self_attn.o_proj.weight[L.sel:L.sel + 2] = 0.0
        layer.mlp.down_proj.weight[L.sel:L.sel + 2] = 0.0
    lm.norm.weight[L.sel:L.sel + 2] = 1.0
    wire_box_readout(model, L, tokenizer, coord_tokens, gain=1.0)


SLOT_GATE = 64.0  # gate of the slot neurons: +-32 (flag - TEXT / 2) / RMS, so off-slot neurons stay off


def wire_box_readout(model: Any, layout: PathLayout, tokenizer: Any, coord_tokens: Sequence[str],
                     gain: float) -> None:
    """LM head columns SEL, SEL + 1: coordinate t scores gain (2 t SEL + (1 - t^2) SEL1); others 0."""
    import torch

    weight = model.lm_head.weight
    ids = tokenizer.convert_tokens_to_ids(list(coord_tokens))
    t = torch.tensor([float(c) for c in coord_tokens], dtype=weight.dtype)
    with torch.no_grad():
        weight[:, layout.sel:layout.sel + 2] = 0.0
        weight[ids, layout.sel] = gain * 2 * t
        weight[ids, layout.sel + 1] = gain * (1 - t * t)


def threshold(omega: np.ndarray) -> float:
    """Kernel value halfway between the peak and the best other offset (flag heads)."""
    return 1.0 - kernel_margins(omega)[0] / 2


# --- calibration and measurement ---------------------------------------------------------------

@dataclass
class Probe:
    """Calibration prompts: token ids, pixel values, and where each region's tokens sit."""

    input_ids: Any  # (B, T) right-padded
    attention_mask: Any
    pixel_values: Any
    close: list[int]  # index of "]" per prompt
    first_x: list[int]  # index of the first coordinate token
    first_y: list[int]
    last_x: list[int]
    last_y: list[int]
    inside: list[np.ndarray]  # (G*G,) bool: patches the region covers
    answer: list[int]  # last prompt token (reads the region for the first answer token)


def build_probe(tokenizer: Any, builder: Any, conversation: Any, preprocess: Callable[[Sequence[np.ndarray]], Any],
                num_image_tokens: int, grid: int, coord_tokens: Sequence[str], *, frames: int = 12,
                seed: int = 999) -> Probe:
    """Box and click questions about world frames of split ``seed``."""
    import torch

    from chatspot_ros.referring import Region, RegionKind
    from chatspot_ros.tokens import IMAGE_TOKEN
    from chatspot_ros.world.scene import render, sample_scene

    coord = set(tokenizer.convert_tokens_to_ids(list(coord_tokens)))
    rows, images, meta = [], [], []
    rng = np.random.default_rng(seed)
    for i in range(frames):
        scene = sample_scene(seed, i)
        obj = scene.objects[int(rng.integers(len(scene.objects)))]
        x0, y0, x1, y1 = obj.box
        for kind in ("box", "point"):
            if kind == "box":
                region = Region(RegionKind.BOX, ((x0, y0), (x1, y1)))
            else:
                region = Region(RegionKind.POINT, (obj.inside_point(rng),))
            text = builder.what_is_in_region(region, scene.size, style="short" if i % 2 else None).text
            prompt = conversation.render(text).replace(IMAGE_TOKEN, IMAGE_TOKEN * num_image_tokens)
            ids = tokenizer(prompt)["input_ids"]
            coords = [k for k, t in enumerate(ids) if t in coord]
            close = max(k for k, t in enumerate(ids) if t == tokenizer.convert_tokens_to_ids("]"))
            # the region as the model reads it: coarse coordinates, bounds over patch centres
            values = [float(tokenizer.convert_ids_to_tokens(ids[k])) for k in coords]
            inside = inside_patches((values[0], values[1]), (values[-2], values[-1]), grid)
            rows.append(ids)
            images.append(render(scene))
            meta.append((close, coords[0], coords[1], coords[-2], coords[-1], inside, len(ids) - 1))
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return Probe(input_ids, mask, preprocess(images), *[list(x) for x in zip(*meta)])


def _hidden(model: Any, probe: Probe) -> tuple[Any, ...]:
    out = model(input_ids=probe.input_ids, attention_mask=probe.attention_mask, pixel_values=probe.pixel_values,
                output_hidden_states=True)
    return out.hidden_states


def head_scores(model: Any, hidden: tuple[Any, ...], layer: int, head: int) -> Any:
    """(B, T, T) pre-softmax scores of one head (causal entries only meaningful)."""
    import torch
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    lm = model.model.language_model
    text = model.config.text_config
    hd = text.hidden_size // text.num_attention_heads
    x = lm.layers[layer].input_layernorm(hidden[layer])
    attn = lm.layers[layer].self_attn
    b, t, _ = x.shape
    q = attn.q_proj(x).view(b, t, -1, hd).transpose(1, 2)[:, head:head + 1]
    k = attn.k_proj(x).view(b, t, -1, hd).transpose(1, 2)[:, head:head + 1]
    positions = torch.arange(t).unsqueeze(0).expand(b, t)
    cos, sin = lm.rotary_emb(x, positions)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    return (q @ k.transpose(-1, -2))[:, 0] / math.sqrt(hd)


def _image_span(model: Any, probe: Probe) -> tuple[int, int]:
    ids = probe.input_ids[0].tolist()
    token = model.config.image_token_index
    start = ids.index(token)
    return start, start + ids.count(token)


def calibrate(model: Any, probe: Probe, layout: PathLayout, *, margin: float = 12.0) -> dict[str, float]:
    """Scale every wired head's queries so its decisions win by about ``margin`` nats.

    Layer by layer, on the probe prompts; returns the factors applied (for the log and the card).
    """
    import torch

    lm = model.model.language_model
    text = model.config.text_config
    hd = text.hidden_size // text.num_attention_heads
    b = len(probe.close)
    img0, img1 = _image_span(model, probe)
    factors: dict[str, float] = {}
    rows = torch.arange(b)
    with torch.no_grad():
        hidden = _hidden(model, probe)
        # layer 0: the score of "[" at the flagged token
        opens = [probe.first_x[i] - 1 for i in range(b)]
        for head, targets, name in ((0, probe.first_x, "first_x"), (1, probe.first_y, "first_y")):
            s = head_scores(model, hidden, 0, head)
            true = s[rows, torch.tensor(targets), torch.tensor(opens)]
            factors[name] = margin / float(true.min())
            _Heads(lm.layers[0].self_attn, hd).scale_query(head, factors[name])
        hidden = _hidden(model, probe)
        # layer 1 at "]": the wanted token against every other one before it
        wanted = {0: probe.first_x, 1: probe.first_y, 2: probe.last_x, 3: probe.last_y}
        for head, name in ((0, "low_x"), (1, "low_y"), (2, "high_x"), (3, "high_y")):
            s = head_scores(model, hidden, 1, head)[rows, torch.tensor(probe.close)]  # (B, T)
            gaps = []
            for i in range(b):
                row = s[i, : probe.close[i] + 1]
                best_other = torch.cat([row[: wanted[head][i]], row[wanted[head][i] + 1:]]).max()
                gaps.append(float(row[wanted[head][i]] - best_other))
            if min(gaps) <= 0:
                raise RuntimeError(f"referring path: head {name} does not single out its token (gap {min(gaps):.3f})")
            factors[name] = margin / min(gaps)
            _Heads(lm.layers[1].self_attn, hd).scale_query(head, factors[name])
        hidden = _hidden(model, probe)
        # layer 2 at "]": inside patches score 0; the best outside patch and text token must trail
        s = head_scores(model, hidden, 2, 0)[rows, torch.tensor(probe.close)]
        outside, texts = [], []
        for i in range(b):
            img = s[i, img0:img1]
            inside = torch.as_tensor(probe.inside[i])
            if (~inside).any():
                outside.append(float(img[inside].min() - img[~inside].max()))
            texts.append(float(img[inside].min() - torch.cat([s[i, :img0], s[i, img1:probe.close[i] + 1]]).max()))
        if min(outside) <= 0 or min(texts) <= 0:
            raise RuntimeError("referring path: the lookup does not separate the region's patches")
        factors["lookup"] = margin / min(outside)
        _Heads(lm.layers[2].self_attn, hd).scale_query(0, factors["lookup"])
        text_factor = margin / (min(texts) * factors["lookup"])
        if text_factor > 1:  # only the text term grows
            row = _Heads(lm.layers[2].self_attn, hd).slow(2 * layout.grid)
            lm.layers[2].self_attn.q_proj.weight[row, layout.TEXT] *= text_factor
        hidden = _hidden(model, probe)
        # layer 3: "]" against every other token, from the answer position
        s = head_scores(model, hidden, 3, 0)[rows, torch.tensor(probe.answer)]
        gaps = [float(s[i, probe.close[i]] - torch.cat([s[i, :probe.close[i]],
                                                         s[i, probe.close[i] + 1:probe.answer[i] + 1]]).max())
                for i in range(b)]
        factors["copy"] = margin / min(gaps)
        _Heads(lm.layers[3].self_attn, hd).scale_query(0, factors["copy"])
    LOGGER.info("referring path calibrated: %s", ", ".join(f"{k} x{v:.3g}" for k, v in factors.items()))
    return factors


def check_path(model: Any, probe: Probe, layout: PathLayout) -> dict[str, float]:
    """How well the wired route works on ``probe``: attention mass where it belongs, and the cosine
    between the REGION an answer reads and the mean content of the region's patches."""
    import torch

    lm = model.model.language_model
    b = len(probe.close)
    img0, img1 = _image_span(model, probe)
    with torch.no_grad():
        hidden = _hidden(model, probe)
        out: dict[str, list[float]] = {k: [] for k in ("first_x", "first_y", "low_x", "low_y", "high_x", "high_y",
                                                      "inside", "copy", "region_cosine")}
        probs = {(layer, head): torch.softmax(_causal(head_scores(model, hidden, layer, head)), -1)
                 for layer, head in ((0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (1, 3), (2, 0), (3, 0))}
        for i in range(b):
            opens = probe.first_x[i] - 1
            out["first_x"].append(float(probs[0, 0][i, probe.first_x[i], opens]))
            out["first_y"].append(float(probs[0, 1][i, probe.first_y[i], opens]))
            c = probe.close[i]
            out["low_x"].append(float(probs[1, 0][i, c, probe.first_x[i]]))
            out["low_y"].append(float(probs[1, 1][i, c, probe.first_y[i]]))
            out["high_x"].append(float(probs[1, 2][i, c, probe.last_x[i]]))
            out["high_y"].append(float(probs[1, 3][i, c, probe.last_y[i]]))
            out["inside"].append(float(probs[2, 0][i, c, img0:img1][torch.as_tensor(probe.inside[i])].sum()))
            out["copy"].append(float(probs[3, 0][i, probe.answer[i], c]))
        final = hidden[WIRED_LAYERS]
        image = lm.layers[2].input_layernorm(hidden[2][:, img0:img1])[..., layout.image]
        for i in range(b):
            expected = image[i, torch.as_tensor(probe.inside[i])].mean(0)
            got = final[i, probe.answer[i], layout.answer_region]
            out["region_cosine"].append(float(torch.nn.functional.cosine_similarity(expected, got, dim=0)))
    return {k: float(np.mean(v)) for k, v in out.items()} | {f"min_{k}": float(np.min(v)) for k, v in out.items()}


def wiring_problems(model: Any, tokenizer: Any, coord_tokens: Sequence[str]) -> list[str]:
    """What a checkpoint lacks of the wired route, checked on the weights themselves (empty: wired).

    Shapes alone prove nothing (a LLaVA-1.5-7B has room for the route), so this reads the values
    that ``wire_*`` write and that neither calibration nor training with ``freeze`` changes: the
    vision tower's column/row one-hots, the TEXT/COORD/bracket markers and the bound codes of
    every coordinate token in the input embeddings, the copy heads of layers 2 and 3, and the LM
    head's box-readout columns (2 t : 1 - t^2, up to one scale). ``wire_projector`` is not checked:
    stage 0 writes it again after the tower has learned."""
    import torch

    try:
        layout = layout_for(model.config)
        check_shapes(model.config, layout)
    except (ValueError, AttributeError, ZeroDivisionError) as exc:
        return [str(exc)]
    problems: list[str] = []
    L, g = layout, layout.grid
    ids = tokenizer.convert_tokens_to_ids(list(coord_tokens))
    specials = {name: tokenizer.convert_tokens_to_ids(name) for name in ("[", "]", ",")}
    if any(i is None or i == tokenizer.unk_token_id for i in ids + list(specials.values())):
        return ["the tokenizer lacks single coordinate tokens '0.00'..'1.00' or '[', ']', ','"]
    lm = model.model.language_model
    with torch.no_grad():
        close = lambda a, b: bool(torch.allclose(a.float(), torch.as_tensor(b, dtype=torch.float32), atol=1e-3))  # noqa: E731
        pos = model.model.vision_tower.embeddings.position_embedding.weight[1:1 + g * g, :L.vision_dims].float()
        want = torch.zeros(g * g, L.vision_dims)
        for r in range(g):
            for c in range(g):
                want[r * g + c, [c, g + c, 2 * g + r, 3 * g + r]] = torch.tensor([1.0, -1.0, 1.0, -1.0])
        if not close(pos, want):
            problems.append("the vision tower's position embedding carries no patch column/row one-hots")
        emb = lm.get_input_embeddings().weight.float()
        if not close(emb[:, L.TEXT], torch.ones(emb.shape[0])):
            problems.append("the input embeddings carry no TEXT marker")
        coord = torch.zeros(emb.shape[0])
        coord[ids] = 1.0
        if not close(emb[:, L.COORD], coord):
            problems.append("the coordinate tokens carry no COORD marker")
        low, high = bound_codes([float(t) for t in coord_tokens], g)
        if not (close(emb[ids, L.low], low) and close(emb[ids, L.high], high)):
            problems.append("the coordinate tokens carry no bound codes")
        if not (close(emb[specials["["], L.OPEN], 1.0) and close(emb[specials["]"], L.CLOSE], 1.0)):
            problems.append("'[' and ']' carry no markers")
        for layer, src, dst in ((2, L.image, L.region), (3, L.region, L.answer_region)):
            attn = lm.layers[layer].self_attn
            v = attn.v_proj.weight[:L.image_dims, src].float()
            o = attn.o_proj.weight[dst, :L.image_dims].float()
            if not (close(v, torch.eye(L.image_dims)) and close(o, torch.eye(L.image_dims))):
                problems.append(f"decoder layer {layer} holds no wired copy head")
        readout = model.lm_head.weight[ids][:, L.sel:L.sel + 2].float()
        t = torch.tensor([float(c) for c in coord_tokens])
        scale = float(readout[:, 1].max())
        if scale <= 0 or not close(readout / scale, torch.stack([2 * t, 1 - t * t], 1)):
            problems.append("the LM head holds no box-readout columns")
    return problems


def _causal(scores: Any) -> Any:
    import torch

    t = scores.shape[-1]
    mask = torch.ones(t, t, dtype=torch.bool).tril()
    return scores.masked_fill(~mask, float("-inf"))


def freeze(model: Any) -> list[str]:
    """Keep the route fixed while the rest learns to read it: vision tower, projector, input
    embeddings and decoder layers 0-3 (their norms and MLPs would rescale and overwrite it).
    The LM head is untied, so it learns. Returns the frozen names."""
    lm = model.model.language_model
    frozen = []
    groups = [("vision_tower", model.model.vision_tower), ("multi_modal_projector", model.model.multi_modal_projector),
              ("embed_tokens", lm.get_input_embeddings())]
    groups += [(f"layers.{i}", lm.layers[i]) for i in range(WIRED_LAYERS)]
    for prefix, module in groups:
        for name, p in module.named_parameters():
            p.requires_grad_(False)
            frozen.append(f"{prefix}.{name}")
    protect_box_readout(model, layout_for(model.config))
    return frozen


def protect_box_readout(model: Any, layout: PathLayout) -> list[Any]:
    """Gradient hooks that keep SEL, SEL + 1 as wired while the later layers train: nothing after
    layer 3 writes them, the final norm keeps their gains, the LM head its readout columns."""
    sel = slice(layout.sel, layout.sel + 2)

    def rows(g: Any) -> Any:
        g = g.clone()
        g[sel] = 0.0
        return g

    def cols(g: Any) -> Any:
        g = g.clone()
        g[:, sel] = 0.0
        return g

    lm = model.model.language_model
    hooks = [lm.norm.weight.register_hook(rows), model.lm_head.weight.register_hook(cols)]
    for layer in lm.layers[WIRED_LAYERS:]:
        hooks += [layer.self_attn.o_proj.weight.register_hook(rows), layer.mlp.down_proj.weight.register_hook(rows)]
    return hooks


# --- the answer-box route (REC): probe, calibration, measurement -------------------------------

@dataclass
class BoxProbe:
    """Teacher-forced REC prompts: 'Where is the red cube ...?' followed by its box answer."""

    input_ids: Any
    attention_mask: Any
    pixel_values: Any
    opens: list[int]  # index of the answer's "["
    words: list[list[int]]  # indices of the colour/shape word tokens
    boxes: list[tuple[float, float, float, float]]  # the object's box, normalized

    def slots(self, i: int) -> list[int]:
        """The tokens that predict x1, y1, x2, y2 of row ``i``'s answer."""
        return [self.opens[i] + k for k in (0, 3, 6, 9)]


def build_box_probe(tokenizer: Any, builder: Any, conversation: Any, preprocess: Callable[[Sequence[np.ndarray]], Any],
                    num_image_tokens: int, *, frames: int = 24, seed: int = 998,
                    words: Sequence[str] | None = None) -> BoxProbe:
    """REC questions about every object of world frames of split ``seed``, answers appended."""
    import torch

    from chatspot_ros.referring import Region, RegionKind
    from chatspot_ros.tokens import IMAGE_TOKEN
    from chatspot_ros.world.language import referring_expression
    from chatspot_ros.world.scene import render, sample_scene

    word_ids = {i for ids in word_token_ids(tokenizer, words or world_words()) for i in ids}
    open_id = tokenizer.convert_tokens_to_ids("[")
    rows, images, meta = [], [], []
    for i in range(frames):
        scene = sample_scene(seed, i)
        w, h = scene.size
        for obj in scene.objects:
            x0, y0, x1, y1 = obj.box
            question = builder.find_region(referring_expression(obj), scene.size, style="short" if i % 2 else None)
            answer = builder.region_text(Region(RegionKind.BOX, ((x0, y0), (x1, y1))), scene.size)
            prompt = conversation.render(question.text).replace(IMAGE_TOKEN, IMAGE_TOKEN * num_image_tokens)
            n_prompt = len(tokenizer(prompt)["input_ids"])
            ids = tokenizer(prompt + " " + answer)["input_ids"]
            opens = [k for k, t in enumerate(ids) if t == open_id and k >= n_prompt - 1]
            if [tokenizer.convert_ids_to_tokens(ids[opens[0] + k]) for k in (3, 6, 9)] != [","] * 3:
                raise ValueError(f"answer {answer!r} does not tokenize as '[' x ',' y ',' x ',' y ']'")
            rows.append(ids)
            images.append(render(scene))
            meta.append((opens[0], [k for k, t in enumerate(ids[:n_prompt]) if t in word_ids],
                         (x0 / w, y0 / h, x1 / w, y1 / h)))
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return BoxProbe(input_ids, mask, preprocess(images), *[list(x) for x in zip(*meta)])


FIND_SCALES = (0.5, 1, 2, 4, 8, 16, 32, 64, 128)
READOUT_PEAK = 1e4  # G * SEL1 at a slot: one coordinate step (0.01) near the peak is worth ~2 nats
MAX_READOUT_GAIN = 1.5e4  # 2 G stays inside float16 (the shipped weights); tabletop_model.check_in_dtype
#                           checks the logits stay finite
SLOT_VALUE = 4.0  # SEL1 in the residual at a slot: large beside the rest of the token


def _found_boxes(model: Any, hidden: tuple[Any, ...], probe: BoxProbe, layout: PathLayout, scale: float) -> Any:
    """(B, 4) the box the find head (layer 3, head 1) would give with its queries scaled by
    ``scale``: each coordinate as read at the slot that predicts it."""
    import torch

    lm = model.model.language_model
    x = lm.layers[3].input_layernorm(hidden[3])
    s = _causal(head_scores(model, hidden, 3, 1)) * scale
    box = [layout.image.start + d for d in range(layout.IMAGE_BOX.start, layout.IMAGE_BOX.stop)]
    values = x[..., box + [layout.image.start + layout.IMAGE_ONE]]  # (B, T, 5)
    rows = torch.arange(len(probe.opens))
    out = []
    for k in range(4):
        at = torch.tensor([probe.slots(i)[k] for i in range(len(probe.opens))])
        attention = torch.softmax(s[rows, at], -1)  # (B, T)
        found = (attention.unsqueeze(-1) * values).sum(1)
        out.append(found[:, k] / found[:, 4].clamp(min=1e-9))
    return torch.stack(out, 1)


def _final_states(model: Any, probe: Any) -> tuple[Any, Any]:
    """((B, T, H) the decoder's output after its final norm, what the LM head reads; the logits)."""
    out = model(input_ids=probe.input_ids, attention_mask=probe.attention_mask, pixel_values=probe.pixel_values,
                output_hidden_states=True)
    last = out.hidden_states[-1]
    if not bool((model.lm_head(last) - out.logits).abs().max() < 1e-3 * out.logits.abs().max().clamp(min=1)):
        last = model.model.language_model.norm(last)
    return last, out.logits


def calibrate_answer_box(model: Any, probe: BoxProbe, layout: PathLayout, *, margin: float = 12.0) -> dict[str, float]:
    """Scale the REC route on ``probe``: slot flags and the word gather win by ``margin`` nats,
    the find head's sharpness is the one whose boxes score best, SEL1 sits near ``SLOT_VALUE``
    in the residual and the LM head's readout peaks near ``READOUT_PEAK``. Returns the factors."""
    import torch

    from chatspot_ros.evaluation.boxes import box_iou

    lm = model.model.language_model
    text = model.config.text_config
    hd = text.hidden_size // text.num_attention_heads
    b = len(probe.opens)
    rows = torch.arange(b)
    opens = torch.tensor(probe.opens)
    factors: dict[str, float] = {}
    with torch.no_grad():
        hidden = _hidden(model, probe)
        for layer, head, offset, name in SLOT_HEADS:
            if layer == 2:
                hidden = _hidden(model, probe)
            s = head_scores(model, hidden, layer, head)
            factors[name] = margin / float(s[rows, opens + offset, opens].min())
            _Heads(lm.layers[layer].self_attn, hd).scale_query(head, factors[name])
        hidden = _hidden(model, probe)
        for k, (layer, head, offset, name) in enumerate(SLOT_HEADS):  # flags ~1, like the markers
            flag = layout.slots.start + k
            value = float(hidden[layer + 1][rows, opens + offset, flag].mean())
            lm.layers[layer].self_attn.o_proj.weight[flag] /= value
        s = _causal(head_scores(model, hidden, 2, 1))[rows, opens]  # (B, T)
        gaps = []
        for i in range(b):
            words = torch.zeros(s.shape[1], dtype=torch.bool)
            words[probe.words[i]] = True
            row = s[i, : probe.opens[i] + 1]
            gaps.append(float(row[words[: len(row)]].min() - row[~words[: len(row)]].max()))
        if min(gaps) <= 0:
            raise RuntimeError(f"answer-box route: the word gather does not single out the words (gap {min(gaps):.3f})")
        factors["gather"] = margin / min(gaps)
        _Heads(lm.layers[2].self_attn, hd).scale_query(1, factors["gather"])
        hidden = _hidden(model, probe)
        best, best_key = None, None
        for scale in FIND_SCALES:
            boxes = _found_boxes(model, hidden, probe, layout, scale).tolist()
            ious = [box_iou(box, truth) for box, truth in zip(boxes, probe.boxes)]
            key = (float(np.mean(np.asarray(ious) >= 0.5)), float(np.mean(ious)))
            if best_key is None or key > best_key:
                best, best_key = scale, key
        factors["find"] = float(best)
        _Heads(lm.layers[3].self_attn, hd).scale_query(1, factors["find"])
        factors["find_text"] = fit_find_text_penalty(model, probe, layout, margin=margin, hidden=hidden)
        hidden = _hidden(model, probe)
        slots = torch.tensor([probe.slots(i) for i in range(b)])  # (B, 4)
        sel1 = hidden[WIRED_LAYERS][rows.unsqueeze(1), slots, layout.sel + 1]
        factors["slot_value"] = SLOT_VALUE / float(sel1.mean())
        lm.layers[3].mlp.down_proj.weight[layout.sel:layout.sel + 2, :8] *= factors["slot_value"]
        sel1 = _final_states(model, probe)[0][rows.unsqueeze(1), slots, layout.sel + 1]
        gain = min(READOUT_PEAK / float(sel1.min()), MAX_READOUT_GAIN)
        if gain == MAX_READOUT_GAIN:
            LOGGER.warning("answer-box route: SEL1 reaches the LM head as low as %.3g; readout gain capped at %.3g "
                           "(float16)", float(sel1.min()), MAX_READOUT_GAIN)
        readout = model.lm_head.weight[:, layout.sel:layout.sel + 2]
        readout *= gain / float(readout[:, 1].max())  # the column's largest entry is the gain (t = 0)
        factors["readout"] = gain
    LOGGER.info("answer-box route calibrated: %s", ", ".join(f"{k} x{v:.3g}" for k, v in factors.items()))
    return factors


def fit_find_text_penalty(model: Any, probe: BoxProbe, layout: PathLayout, *, margin: float = 12.0,
                          hidden: tuple[Any, ...] | None = None) -> float:
    """Set the find head's text penalty so that, at every slot of ``probe``, each text token
    trails the best image token by twice ``margin``: enough to keep text out of the box, and no
    more (a larger one overflows float16 queries). Idempotent; returns the factor applied."""
    import torch

    lm = model.model.language_model
    text = model.config.text_config
    heads = _Heads(lm.layers[3].self_attn, text.hidden_size // text.num_attention_heads)
    row = heads.row(1, heads.slow(layout.WORDS))
    weight = lm.layers[3].self_attn.q_proj.weight
    with torch.no_grad():
        hidden = hidden if hidden is not None else _hidden(model, probe)
        image = probe.input_ids == model.config.image_token_index  # (B, T)
        scores = head_scores(model, hidden, 3, 1)  # text tokens: the penalty alone (no image content)
        penalty = weight[row, layout.TEXT].item()
        weight[row, layout.TEXT] = 0.0
        content = head_scores(model, hidden, 3, 1)
        weight[row, layout.TEXT] = penalty
        per_unit = scores - content  # (B, T, T): the penalty term's share, linear in the weight
        needed = 0.0
        for i in range(len(probe.opens)):
            for at in probe.slots(i):
                seen = torch.zeros_like(image[i])
                seen[: at + 1] = True
                best = float(content[i, at][image[i] & seen].max())
                text_tokens = ~image[i] & seen & probe.attention_mask[i].bool()
                worst = float(per_unit[i, at][text_tokens].max())  # the least penalized text token (< 0)
                if worst >= 0:
                    raise RuntimeError("answer-box route: the find head's text penalty does not penalize")
                needed = max(needed, (2 * margin - best) / -worst)
        factor = max(needed, 1e-3)
        weight[row, layout.TEXT] *= factor
    return factor


def check_answer_box(model: Any, probe: BoxProbe, layout: PathLayout, tokenizer: Any,
                     coord_tokens: Sequence[str]) -> dict[str, float]:
    """How well the REC route works on ``probe`` (teacher-forced): attention mass of the slot
    flags and of the word gather, and Acc@0.5 of the box the find head reads (``found``), of the
    wired readout alone (``readout``) and of the model's own argmax at the four slots (``model``)."""
    import torch

    from chatspot_ros.evaluation.boxes import box_iou

    b = len(probe.opens)
    rows = torch.arange(b)
    opens = torch.tensor(probe.opens)
    ids = tokenizer.convert_tokens_to_ids(list(coord_tokens))
    values = {i: float(t) for i, t in zip(ids, coord_tokens)}
    with torch.no_grad():
        hidden = _hidden(model, probe)
        out: dict[str, list[float]] = {}
        for layer, head, offset, name in SLOT_HEADS:
            p = torch.softmax(_causal(head_scores(model, hidden, layer, head)), -1)
            out[name] = p[rows, opens + offset, opens].tolist()
        p = torch.softmax(_causal(head_scores(model, hidden, 2, 1)), -1)[rows, opens]
        out["gather"] = [float(p[i, probe.words[i]].sum()) for i in range(b)]
        found = hidden[WIRED_LAYERS][rows, opens][:, layout.found]
        boxes = (found[:, :4] / found[:, 4:].clamp(min=1e-9)).tolist()
        out["found"] = [float(box_iou(bx, t) >= 0.5) for bx, t in zip(boxes, probe.boxes)]
        final, logits = _final_states(model, probe)
        slots = torch.tensor([probe.slots(i) for i in range(b)])
        f = final[rows.unsqueeze(1), slots][..., layout.sel:layout.sel + 2]  # (B, 4, 2)
        w = model.lm_head.weight[ids][:, layout.sel:layout.sel + 2]  # (C, 2)
        wired = (f @ w.T).argmax(-1)  # (B, 4)
        t = torch.tensor([float(c) for c in coord_tokens])
        out["readout"] = [float(box_iou(t[wired[i]].tolist(), probe.boxes[i]) >= 0.5) for i in range(b)]
        own = logits[rows.unsqueeze(1), slots].argmax(-1).tolist()
        out["model"] = [float(all(k in values for k in row) and
                              box_iou([values[k] for k in row], probe.boxes[i]) >= 0.5) for i, row in enumerate(own)]
    return {k: float(np.mean(v)) for k, v in out.items()} | {f"min_{k}": float(np.min(v)) for k, v in out.items()}
