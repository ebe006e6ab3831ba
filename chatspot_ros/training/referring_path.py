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


@dataclass(frozen=True)
class PathLayout:
    """Which residual dims of the decoder (and of the vision tower) the path owns."""

    grid: int  # patches per side
    image_dims: int = 32  # content an image token carries into the decoder

    TEXT, COORD, OPEN, CLOSE, FIRST_X, FIRST_Y = range(6)  # markers

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

    @property
    def content(self) -> int:
        """First dim of the token embeddings' own (random, fixed) content."""
        return self.answer_region.stop

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

    Content: the stage-0 patch head's logits (colour, shape) first, then fixed random
    projections of the patch features. Each linear unit u is the pair GELU(u) - GELU(-u).
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


def wire_decoder(model: Any, layout: PathLayout, tokenizer: Any, coord_tokens: Sequence[str], seed: int = 0) -> None:
    """Embeddings and layers 0-3 as the module docstring says (uncalibrated: see ``calibrate``)."""
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
    from chatspot_ros.testing.tiny_model import IMAGE_TOKEN
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
    return frozen
