"""The decode loop for GPUs: static shapes, one compiled step, the frame's prefix read once per step.

Why (docs/design.md, "Decoding"): single-stream decode is bound by memory bandwidth, and the
K region prompts of a frame share an image prefix of about 600 tokens. The dynamic loop
(generation.py) copies that prefix's KV into each of the K rows, grows its mask by one column
per token and waits for the host after every token. Here:

* **Static shapes.** One set of buffers per (batch, prefix capacity, suffix capacity) bucket,
  registered on a module (gpt-fast's ``KVCache``), written in place at a slot index tensor;
  a finished row is masked, never compacted, so every step is the same function of the same
  shapes and compiles once (``torch.compile``; CUDA graphs with ``reduce-overhead``).
* **Cascade attention** (Hydragen): each layer's queries of all rows attend to the one shared
  prefix copy in a single matmul, and to their own suffix rows separately; the two softmax parts
  merge exactly through their log-sum-exps. The prefix is read once per step, not K times.
* **Few host waits.** Tokens and end-of-sequence flags stay on the device; on CUDA the host reads
  them every ``sync_every`` steps (auto: 8 on CUDA, 1 on the CPU where a read costs nothing; every
  step while a caller streams tokens).

The transformer blocks themselves are the checkpoint's own modules (norms, projections, MLP,
rotary embedding), so Llama-family models (Llama, Vicuna, Mistral, Qwen2 without sliding window)
run unchanged; anything else falls back to the dynamic loop with a log line (``unsupported``).

Shapes: B = rows (regions), Hq/H = query/kv heads, G = Hq // H, hd = head dim, P = prefix
capacity, S = suffix capacity, T = tokens of this call, V = vocabulary, n = layers.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch

from chatspot_ros.runtime.config import COMPILE_MODES, GenerationConfig

LOGGER = logging.getLogger("chatspot_ros.runtime.decoder")
PREFIX_BUCKET = 64  # capacities are rounded up to these, so nearby lengths share one compiled step
SUFFIX_BUCKET = 32
MAX_BUCKETS = 4  # buffer sets kept (a 7B set for 16 rows, 640 prefix and 128 suffix slots: about 1.3 GB)
AUTO_SYNC_EVERY = 8  # CUDA: decode steps between host reads when sync_every is 0 (auto)
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
# Where torch.compile keeps its generated code between processes (inductor's FX graph and AOTAutograd
# caches): a restart of the node then loads the decode step instead of compiling it again.
COMPILE_CACHE_ENV = "CHATSPOT_COMPILE_CACHE"
DEFAULT_COMPILE_CACHE = Path("~/.cache/chatspot_ros/torch-compile")


def compile_cache_dir() -> Path:
    """The on-disk compile cache, made the one inductor uses: ``$CHATSPOT_COMPILE_CACHE``, else a
    ``TORCHINDUCTOR_CACHE_DIR`` the user chose, else ~/.cache/chatspot_ros/torch-compile (torch's own
    default is under /tmp, which a reboot clears; torch also writes that default into the environment
    on first use, so it is recognised and replaced)."""
    chosen = os.environ.get(COMPILE_CACHE_ENV)
    if not chosen:
        user = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
        try:
            from torch._inductor.runtime.cache_dir_utils import default_cache_dir

            torch_default = default_cache_dir()
        except (ImportError, AttributeError):
            torch_default = None
        chosen = user if user and user != torch_default else str(DEFAULT_COMPILE_CACHE)
    path = Path(chosen).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)  # read by inductor at each compile
    try:
        import torch._inductor.config as inductor_config

        inductor_config.fx_graph_cache = True
        import torch._functorch.config as functorch_config

        functorch_config.enable_autograd_cache = True
    except (ImportError, AttributeError):  # an older torch without these switches: its defaults
        pass
    return path


def _cached_files(path: Path) -> int:
    return sum(1 for _ in path.rglob("*") if _.is_file()) if path.is_dir() else 0


def unsupported(lm: Any) -> str | None:
    """Why this language model cannot use the static decoder (None when it can)."""
    config = lm.text_config
    model_type = getattr(config, "model_type", "")
    if model_type not in SUPPORTED_MODEL_TYPES:
        return f"model type {model_type!r} (supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", model_type == "mistral"):
        return "sliding-window attention"
    layer = lm.decoder.layers[0]
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        if not hasattr(layer.self_attn, name):
            return f"attention without {name}"
    if not hasattr(lm.decoder, "rotary_emb"):
        return "no rotary embedding module"
    return None


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Llama's rotary embedding (the half-split convention of its HF checkpoints): q, k (B, H, T, hd),
    cos, sin (B, T, hd) from the checkpoint's own rotary module."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


@torch.inference_mode()
def prefill(lm: Any, embeds: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """The runtime's own causal forward over a prefix: embeds (1, P, C) -> per layer (keys, values),
    each (1, H, P, hd), rotary applied. The checkpoint's own modules, the cache in plain tensors of
    its own: no transformers cache layout is read (compat.py). For models ``unsupported`` accepts."""
    _, length, _ = embeds.shape
    config = lm.text_config
    heads = int(config.num_key_value_heads)
    groups = int(config.num_attention_heads) // heads
    positions = torch.arange(length, device=embeds.device)[None]  # (1, P)
    cos, sin = lm.decoder.rotary_emb(embeds, positions)  # (1, P, hd)
    x = embeds
    out: list[tuple[torch.Tensor, torch.Tensor]] = []
    for layer in lm.decoder.layers:
        attn = layer.self_attn
        head_dim = int(attn.head_dim)
        h = layer.input_layernorm(x)
        q = attn.q_proj(h).view(1, length, -1, head_dim).transpose(1, 2)  # (1, Hq, P, hd)
        k = attn.k_proj(h).view(1, length, -1, head_dim).transpose(1, 2)  # (1, H, P, hd)
        v = attn.v_proj(h).view(1, length, -1, head_dim).transpose(1, 2)
        q, k = apply_rotary(q, k, cos, sin)
        out.append((k, v))
        o = torch.nn.functional.scaled_dot_product_attention(
            q, k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1),
            is_causal=True, scale=float(attn.scaling))  # (1, Hq, P, hd)
        x = x + attn.o_proj(o.transpose(1, 2).reshape(1, length, -1))
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    return tuple(out)


def cascade_attention(q: torch.Tensor, prefix_k: torch.Tensor, prefix_v: torch.Tensor, prefix_mask: torch.Tensor,
                      suffix_k: torch.Tensor, suffix_v: torch.Tensor, suffix_mask: torch.Tensor,
                      scale: float) -> torch.Tensor:
    """Exact softmax attention over [shared prefix | own suffix], the prefix read once for all rows.

    q (B, H, G, T, hd); prefix_k/v (H, P, hd), prefix_mask (P,) bool; suffix_k/v (B, H, S, hd),
    suffix_mask (B, 1, 1, T, S) bool. Returns (B, H, G, T, hd). Every query must see at least one
    prefix key (a frame's prompt always has one).
    """
    rows, heads, groups, tokens, head_dim = q.shape
    # prefix: (H, B*G*T, hd) @ (H, hd, P): one pass over the shared keys and values
    qp = q.permute(1, 0, 2, 3, 4).reshape(heads, rows * groups * tokens, head_dim)
    sp = (qp @ prefix_k.transpose(-1, -2)).float() * scale  # (H, BGT, P)
    sp = sp.masked_fill(~prefix_mask, float("-inf"))
    lse_p = torch.logsumexp(sp, dim=-1, keepdim=True)  # (H, BGT, 1)
    op = torch.exp(sp - lse_p).to(prefix_v.dtype) @ prefix_v  # (H, BGT, hd)
    op = op.reshape(heads, rows, groups, tokens, head_dim).permute(1, 0, 2, 3, 4)
    lse_p = lse_p.reshape(heads, rows, groups, tokens, 1).permute(1, 0, 2, 3, 4)
    # suffix: each row its own keys (B, H, 1, S, hd), shared by the G query heads of a kv head
    ss = (q @ suffix_k.unsqueeze(2).transpose(-1, -2)).float() * scale  # (B, H, G, T, S)
    ss = ss.masked_fill(~suffix_mask, float("-inf"))
    lse_s = torch.logsumexp(ss, dim=-1, keepdim=True)  # -inf where a query sees no suffix key
    weights_s = torch.exp(ss - lse_s.clamp_min(torch.finfo(torch.float32).min))
    os_ = weights_s.to(suffix_v.dtype) @ suffix_v.unsqueeze(2)  # (B, H, G, T, hd)
    lse = torch.logaddexp(lse_p, lse_s)
    out = op.float() * torch.exp(lse_p - lse) + os_.float() * torch.exp(lse_s - lse)
    return out.to(q.dtype)


class StaticStep(torch.nn.Module):
    """One bucket's buffers and the forward pass over them (prefill: T = L tokens; decode: T = 1)."""

    def __init__(self, lm: Any, batch: int, prefix_capacity: int, suffix_capacity: int,
                 device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        config = lm.text_config
        self.lm = lm
        self.layers = list(lm.decoder.layers)
        attn = self.layers[0].self_attn
        self.heads = int(config.num_key_value_heads)
        self.groups = int(config.num_attention_heads) // self.heads
        self.head_dim = int(attn.head_dim)
        self.scale = float(attn.scaling)
        self.batch, self.prefix_capacity, self.suffix_capacity = batch, prefix_capacity, suffix_capacity
        n = len(self.layers)
        kv = (self.heads, prefix_capacity, self.head_dim)
        self.register_buffer("prefix_k", torch.zeros((n, *kv), device=device, dtype=dtype), persistent=False)
        self.register_buffer("prefix_v", torch.zeros((n, *kv), device=device, dtype=dtype), persistent=False)
        self.register_buffer("prefix_mask", torch.zeros(prefix_capacity, device=device, dtype=torch.bool),
                             persistent=False)
        rows = (n, batch, self.heads, suffix_capacity, self.head_dim)
        self.register_buffer("suffix_k", torch.zeros(rows, device=device, dtype=dtype), persistent=False)
        self.register_buffer("suffix_v", torch.zeros(rows, device=device, dtype=dtype), persistent=False)
        self.register_buffer("suffix_valid", torch.zeros((batch, suffix_capacity), device=device, dtype=torch.bool),
                             persistent=False)
        positions = torch.arange(prefix_capacity + suffix_capacity, device=device)[None]  # (1, P + S)
        cos, sin = lm.decoder.rotary_emb(torch.zeros((), device=device, dtype=dtype), positions)
        self.register_buffer("cos", cos[0], persistent=False)  # (P + S, hd)
        self.register_buffer("sin", sin[0], persistent=False)

    @property
    def kv_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.prefix_k, self.prefix_v, self.suffix_k, self.suffix_v))

    @property
    def row_kv_bytes(self) -> int:
        """One row's own KV (its suffix slots): what each further region adds."""
        return 2 * self.suffix_k[:, 0].numel() * self.suffix_k.element_size()

    def load_prefix(self, prefix_kv: Sequence[tuple[torch.Tensor, torch.Tensor]], prefix_len: int) -> None:
        """Copy the frame's prefix KV (per layer (1, H, P, hd)) in once; reset the suffix rows."""
        for i, (keys, values) in enumerate(prefix_kv):
            self.prefix_k[i, :, :prefix_len] = keys[0]
            self.prefix_v[i, :, :prefix_len] = values[0]
        self.prefix_mask.zero_()
        self.prefix_mask[:prefix_len] = True
        self.suffix_valid.zero_()

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor,
                valid: torch.Tensor | None = None) -> torch.Tensor:
        """ids, positions (B, T); slots (T,) suffix slots written; valid (B, T): which of them are real
        tokens (default all). Returns the last position's logits (B, V), float32."""
        rows, tokens = ids.shape
        self.suffix_valid.index_copy_(1, slots, valid if valid is not None else torch.ones_like(ids, dtype=torch.bool))
        # a query sees the suffix slots written so far, causally, and always itself (a left-pad
        # query then has a softmax to take; its output is never read)
        written = self.suffix_valid[:, None, None, None, :]  # (B, 1, 1, 1, S)
        key_slot = torch.arange(self.suffix_capacity, device=ids.device)
        causal = key_slot[None, :] <= slots[:, None]  # (T, S)
        itself = key_slot[None, :] == slots[:, None]
        suffix_mask = (written & causal) | itself  # (B, 1, 1, T, S)
        cos, sin = self.cos[positions], self.sin[positions]  # (B, T, hd)
        x = self.lm.embed(ids)
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(rows, tokens, -1, self.head_dim).transpose(1, 2)  # (B, Hq, T, hd)
            k = attn.k_proj(h).view(rows, tokens, -1, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
            v = attn.v_proj(h).view(rows, tokens, -1, self.head_dim).transpose(1, 2)
            q, k = apply_rotary(q, k, cos, sin)
            self.suffix_k[i].index_copy_(2, slots, k.to(self.suffix_k.dtype))
            self.suffix_v[i].index_copy_(2, slots, v.to(self.suffix_v.dtype))
            o = cascade_attention(q.reshape(rows, self.heads, self.groups, tokens, self.head_dim),
                                  self.prefix_k[i], self.prefix_v[i], self.prefix_mask,
                                  self.suffix_k[i], self.suffix_v[i], suffix_mask, self.scale)
            o = o.reshape(rows, self.heads * self.groups, tokens, self.head_dim).transpose(1, 2)
            x = x + attn.o_proj(o.reshape(rows, tokens, -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        x = self.lm.decoder.norm(x[:, -1:])
        return self.lm.lm_head(x)[:, -1].float()


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


class StaticDecoder:
    """Decodes a frame's region suffixes on buffers sized per bucket; see the module docstring.

    ``sync_every``: decode steps between host reads (0: auto). ``compile``: "off" (eager), "on"
    (``torch.compile`` of the decode step; a failure raises), or "auto" (compiled on CUDA, eager on
    the CPU; a failed compile logs and falls back to eager). ``compile_backend``: torch.compile's
    backend; "aot_eager" captures and functionalizes the same whole graph without generating code,
    which isolates a capture problem from a code-generation one in seconds (the tests use it to
    cover many shapes; the inductor path is tested on one).
    """

    def __init__(self, lm: Any, device: torch.device, dtype: torch.dtype, *, compile: str = "auto",
                 sync_every: int = 0, compile_backend: str = "inductor") -> None:
        if compile not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {', '.join(COMPILE_MODES)}, got {compile!r}")
        if sync_every < 0:
            raise ValueError(f"sync_every must be >= 0 (0: auto), got {sync_every}")
        reason = unsupported(lm)
        if reason is not None:
            raise ValueError(f"the static decoder does not support {reason}")
        # 0 (auto): every step on the CPU, where reading the tokens costs nothing and a batch whose rows
        # have all ended stops at once; every AUTO_SYNC_EVERY steps on CUDA
        if sync_every == 0:
            sync_every = 1 if device.type == "cpu" else AUTO_SYNC_EVERY
        self.lm, self.device, self.dtype, self.sync_every = lm, device, dtype, sync_every
        self.compile_mode, self.compile_backend = compile, compile_backend
        self._use_compile = compile == "on" or (compile == "auto" and device.type == "cuda")
        self.cache_dir = compile_cache_dir() if self._use_compile and compile_backend == "inductor" else None
        self.warmup_s: float | None = None  # the compile warm-up at configure (warm_up), when it ran
        self._steps: OrderedDict[tuple[int, int, int], StaticStep] = OrderedDict()
        self._compiled: dict[tuple[int, int, int], Callable[..., torch.Tensor]] = {}
        self.compiles = 0  # decode-step graphs compiled (one per bucket the process has seen)
        self.eos = torch.tensor(sorted(lm.eos_token_ids), device=device, dtype=torch.long)
        self.last_kv_bytes = 0  # the buffers of the last generate call (bench figures)
        self.last_row_kv_bytes = 0

    def _bucket(self, batch: int, prefix_len: int, suffix_len: int) -> tuple[tuple[int, int, int], StaticStep]:
        """Rows rounded up to a power of two, capacities to their buckets: a node whose detection
        count varies frame to frame reuses a few compiled steps instead of compiling one per K."""
        rows = 1 << max(0, batch - 1).bit_length()
        key = (rows, _round_up(prefix_len, PREFIX_BUCKET), _round_up(suffix_len, SUFFIX_BUCKET))
        step = self._steps.get(key)
        if step is None:
            while len(self._steps) >= MAX_BUCKETS:
                old, _ = self._steps.popitem(last=False)
                self._compiled.pop(old, None)
            step = StaticStep(self.lm, *key, device=self.device, dtype=self.dtype)
            self._steps[key] = step
        self._steps.move_to_end(key)
        return key, step

    def _decode_fn(self, key: tuple[int, int, int], step: StaticStep) -> Callable[..., torch.Tensor]:
        fn = self._compiled.get(key)
        if fn is not None:
            return fn
        if not self._use_compile:
            return step
        # modes are inductor's: "reduce-overhead" adds CUDA graphs around its kernels
        mode = "reduce-overhead" if self.device.type == "cuda" and self.compile_backend == "inductor" else None
        compiled = torch.compile(step, backend=self.compile_backend, mode=mode, fullgraph=True, dynamic=False)

        def first_call(*args: torch.Tensor) -> torch.Tensor:
            start = time.perf_counter()
            try:
                out = compiled(*args)
            except Exception as exc:  # noqa: BLE001 - "auto" falls back loudly; "on" raises
                if self.compile_mode == "on":
                    raise
                LOGGER.warning("torch.compile of the decode step failed (%s: %s); decoding eagerly from now on",
                               type(exc).__name__, exc)
                self._use_compile = False
                self._compiled[key] = step
                return step(*args)
            self.compiles += 1
            LOGGER.info("compiled the decode step for batch %d, prefix capacity %d, suffix capacity %d "
                        "(graph %d of this process, %s, cache %s) in %.1f s", *key, self.compiles,
                        self.compile_backend, self.cache_dir or "off", time.perf_counter() - start)
            self._compiled[key] = compiled
            return out

        return first_call

    @torch.inference_mode()
    def warm_up(self, prefix_len: int, suffix_len: int, rows: int = 1) -> float:
        """Compile the decode step of one bucket now (at configure, not on the first frame); logs and
        returns its seconds. With the on-disk cache (compile_cache_dir) a restart loads it instead."""
        if not self._use_compile:
            return 0.0
        before = _cached_files(self.cache_dir) if self.cache_dir is not None else 0
        start = time.perf_counter()
        key, step = self._bucket(rows, prefix_len, suffix_len)
        step.load_prefix([], 0)
        step.prefix_mask[:1] = True  # a query must see one prefix key; the buffers are reset per frame
        batch = key[0]
        ids = torch.full((batch, 1), int(self.lm.pad_token_id), dtype=torch.long, device=self.device)
        positions = torch.ones((batch, 1), dtype=torch.long, device=self.device)
        self._decode_fn(key, step)(ids, positions, torch.tensor([0], device=self.device))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.warmup_s = time.perf_counter() - start
        state = "off" if self.cache_dir is None else \
            f"{self.cache_dir}, {'warm' if before else 'cold'} ({before} files before)"
        LOGGER.info("decode-step compile warm-up for batch %d, prefix capacity %d, suffix capacity %d: %.1f s "
                    "(%s, compile cache %s)", *key, self.warmup_s, self.compile_backend, state)
        return self.warmup_s

    @torch.inference_mode()
    def generate(self, prefix_kv: Sequence[tuple[torch.Tensor, torch.Tensor]], prefix_len: int,
                 suffixes: Sequence[Sequence[int]], gen: GenerationConfig, rows: Sequence[Any],
                 select_next: Callable[[torch.Tensor], torch.Tensor],
                 on_token: Callable[[int, str], None] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> tuple[float, float]:
        """Decode into ``rows`` (generation._Row, one per suffix); returns (prefill ms, decode ms)."""
        longest = max(len(s) for s in suffixes)
        sync = (lambda: torch.cuda.synchronize(self.device)) if self.device.type == "cuda" else (lambda: None)
        start = time.perf_counter()
        key, step = self._bucket(len(suffixes), prefix_len, longest + gen.max_new_tokens)
        batch = key[0]  # the bucket's rows; those past the K suffixes repeat the first and are never read
        suffixes = list(suffixes) + [suffixes[0]] * (batch - len(suffixes))
        self.last_kv_bytes, self.last_row_kv_bytes = step.kv_bytes, step.row_kv_bytes
        step.load_prefix(prefix_kv, prefix_len)
        ids = torch.full((batch, longest), self.lm.pad_token_id, dtype=torch.long)  # (B, L), left-padded
        positions = torch.full((batch, longest), prefix_len, dtype=torch.long)
        valid = torch.zeros((batch, longest), dtype=torch.bool)
        for row, suffix in enumerate(suffixes):
            n = len(suffix)
            ids[row, longest - n:] = torch.tensor(list(suffix), dtype=torch.long)
            positions[row, longest - n:] = torch.arange(prefix_len, prefix_len + n)
            valid[row, longest - n:] = True
        ids, positions, valid = ids.to(self.device), positions.to(self.device), valid.to(self.device)
        logits = step(ids, positions, torch.arange(longest, device=self.device), valid)
        next_ids = select_next(logits)  # (B,)
        positions = positions[:, -1:] + 1  # (B, 1)
        sync()
        prefill_ms = (time.perf_counter() - start) * 1e3

        start = time.perf_counter()
        every = 1 if on_token is not None else self.sync_every
        generated = torch.empty((batch, gen.max_new_tokens), dtype=torch.long, device=self.device)
        done = torch.zeros(batch, dtype=torch.bool, device=self.device)
        running = list(range(len(rows)))
        read = 0  # tokens the host has taken

        def drain(upto: int) -> None:  # the host's one wait per block of tokens
            nonlocal read
            if upto > read:
                block = generated[:, read:upto].tolist()
                for i in list(running):
                    for token in block[i]:
                        if not rows[i].take(token, self.lm.eos_token_ids, gen, on_token):
                            running.remove(i)
                            break
                read = upto

        for t in range(gen.max_new_tokens):
            if should_stop is not None and should_stop():
                drain(t)  # the tokens computed before the cancel are the answer so far
                for i in running:
                    rows[i].finish("cancelled")
                running = []
                break
            generated[:, t] = next_ids
            done |= torch.isin(next_ids, self.eos)
            if t + 1 - read >= every or t == gen.max_new_tokens - 1:
                drain(t + 1)
                if not running or bool(done[:len(rows)].all()):
                    break
            if t == gen.max_new_tokens - 1:
                break
            slot = torch.tensor([longest + t], device=self.device)
            logits = self._decode_fn(key, step)(next_ids[:, None], positions, slot)
            positions = positions + 1
            next_ids = select_next(logits)
        for i in running:
            if not rows[i].stopped:
                rows[i].finish("length")
        sync()
        return prefill_ms, (time.perf_counter() - start) * 1e3

