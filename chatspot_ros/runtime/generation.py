"""Batched generation over a shared, cached image prefix (gpt-fast style functions).

The prompts of one frame look like ``[system + "USER: " + <image> x N] [question_i + " ASSISTANT:"]``.
The part up to and including the last image token (the *prefix*, P tokens) is the same for every
region, so it is prefilled once per frame and its KV cache is kept with the frame's features.
The K region *suffixes* are then prefilled as one batch on top of a view of that cache and decoded
together. Suffixes are padded on the left, which puts the pad tokens between the prefix and the
suffix; they are masked out and position ids skip them, so each row computes exactly what a
plain unpadded ``generate()`` of that prompt computes.

Shapes: B or K = batch (regions), P = prefix tokens, L = longest suffix, C = hidden size,
V = vocabulary, H = kv heads, hd = head dim.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from chatspot_ros.runtime import compat
from chatspot_ros.runtime.config import Generation, GenerationConfig

if TYPE_CHECKING:
    from chatspot_ros.runtime.static_decoder import StaticDecoder

PrefixKV = tuple[tuple[torch.Tensor, torch.Tensor], ...]  # per layer (keys, values): (1, H, P, hd)


@dataclass
class LanguageModel:
    """The parts of a LlavaForConditionalGeneration the decoder loop uses."""

    embed: torch.nn.Module  # token ids -> (B, T, C)
    decoder: torch.nn.Module  # LlamaModel: inputs_embeds -> last hidden state
    lm_head: torch.nn.Module  # (B, T, C) -> (B, T, V)
    text_config: object
    eos_token_ids: frozenset[int]
    pad_token_id: int
    image_token_id: int


@torch.inference_mode()
def prefill_prefix(lm: LanguageModel, prefix_ids: torch.Tensor, image_features: torch.Tensor) -> PrefixKV:
    """Run the shared prefix (image tokens included) once; return its per-layer KV cache.

    prefix_ids: (1, P) with N image tokens; image_features: (1, N, C). The models the static decoder
    supports are run by the runtime's own forward into its own tensors (``static_decoder.prefill``);
    any other through the model's forward with a public ``DynamicCache`` (``compat``).
    """
    from chatspot_ros.runtime.static_decoder import prefill, unsupported

    embeds = lm.embed(prefix_ids)  # (1, P, C)
    image_mask = prefix_ids[0] == lm.image_token_id  # (P,)
    n_image = int(image_mask.sum())
    if n_image != image_features.shape[1]:
        raise ValueError(
            f"the prompt holds {n_image} image tokens but the frame has {image_features.shape[1]} "
            "feature vectors; put exactly one '<image>' in the prompt"
        )
    embeds = embeds.clone()
    embeds[0, image_mask] = image_features[0].to(embeds.dtype)
    if unsupported(lm) is None:
        return prefill(lm, embeds)
    cache = compat.new_dynamic_cache(lm.text_config)
    lm.decoder(inputs_embeds=embeds, use_cache=True, **compat.cache_kwargs(lm.decoder, cache))
    return tuple(_read_layer(cache, i, lm, embeds) for i in range(lm.text_config.num_hidden_layers))


def _read_layer(cache: object, index: int, lm: LanguageModel, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A layer's full keys and values through the public ``Cache.update``: adding zero positions returns them."""
    config = lm.text_config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    empty = like.new_zeros((1, config.num_key_value_heads, 0, head_dim))  # (1, H, 0, hd)
    return cache.update(empty, empty, index)  # type: ignore[attr-defined]


def _batch_cache(prefix_kv: PrefixKV, batch: int, text_config: object) -> object:
    """A public ``DynamicCache`` for ``batch`` rows holding copies of the frame's prefix (read, never written)."""
    cache = compat.new_dynamic_cache(text_config)
    compat.fill_cache(cache, ((k.expand(batch, -1, -1, -1).contiguous(), v.expand(batch, -1, -1, -1).contiguous())
                              for k, v in prefix_kv))
    return cache


@torch.inference_mode()
def prefill_suffixes(
    lm: LanguageModel, cache: object, prefix_len: int, suffixes: Sequence[Sequence[int]]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prefill K suffixes as one left-padded batch on top of the prefix cache.

    Returns (last-position logits (K, V), attention mask (K, P + L), next position ids (K, 1)).
    """
    device = lm.lm_head.weight.device
    k = len(suffixes)
    longest = max(len(s) for s in suffixes)
    ids = torch.full((k, longest), lm.pad_token_id, dtype=torch.long, device=device)  # (K, L)
    mask = torch.zeros((k, prefix_len + longest), dtype=torch.long, device=device)  # (K, P + L)
    mask[:, :prefix_len] = 1
    positions = torch.full((k, longest), prefix_len, dtype=torch.long, device=device)  # (K, L)
    for row, suffix in enumerate(suffixes):
        n = len(suffix)
        ids[row, longest - n:] = torch.tensor(list(suffix), dtype=torch.long, device=device)
        mask[row, prefix_len + longest - n:] = 1
        positions[row, longest - n:] = torch.arange(prefix_len, prefix_len + n, device=device)
    hidden = lm.decoder(
        inputs_embeds=lm.embed(ids), attention_mask=mask, position_ids=positions, use_cache=True,
        **compat.cache_kwargs(lm.decoder, cache)).last_hidden_state  # (K, L, C)
    logits = lm.lm_head(hidden[:, -1, :]).float()  # (K, V)
    return logits, mask, positions[:, -1:] + 1


@torch.inference_mode()
def decode_one_token(
    lm: LanguageModel, cache: object, tokens: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor
) -> torch.Tensor:
    """One decoding step: tokens (B, 1), mask (B, S) already holding this step, positions (B, 1) -> logits (B, V)."""
    hidden = lm.decoder(
        inputs_embeds=lm.embed(tokens), attention_mask=mask, position_ids=positions, use_cache=True,
        **compat.cache_kwargs(lm.decoder, cache)).last_hidden_state  # (B, 1, C)
    return lm.lm_head(hidden[:, -1, :]).float()  # (B, V)


def select_next(logits: torch.Tensor, gen: GenerationConfig, generator: torch.Generator | None) -> torch.Tensor:
    """Greedy argmax, or temperature + top-p (nucleus) sampling. logits (B, V) -> token ids (B,)."""
    if gen.greedy:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / gen.temperature, dim=-1)  # (B, V)
    if gen.top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass strictly before each token
        sorted_probs = sorted_probs.masked_fill(before >= gen.top_p, 0.0)  # keeps at least the top token
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    sample = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1)  # (B,)
    return sample.to(logits.device)


class IncrementalText:
    """The text of a growing token list, decoding only its tail at each token.

    Decoding the whole answer again at every token costs O(n^2) over an answer. Instead the last
    two read offsets are kept (as vLLM and TGI do): the window from the older one is decoded with
    and without the new tokens, and the difference is the new text. The window starts on a token
    boundary both times, so a tokenizer's leading-space rule cancels out; an incomplete UTF-8
    sequence ("\ufffd" at the end) waits for its next token. ``text`` equals
    ``decode(ids)`` (test_static_decoder.py checks it on the tiny checkpoint's tokenizer).
    """

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self._decode = decode
        self.ids: list[int] = []
        self.text = ""
        self._prefix = 0  # window start
        self._read = 0  # ids already in ``text``

    def append(self, token: int) -> str:
        """Add one token; returns the text added (possibly empty)."""
        self.ids.append(token)
        before = self._decode(self.ids[self._prefix:self._read])
        after = self._decode(self.ids[self._prefix:])
        if len(after) <= len(before) or after.endswith("\ufffd") or not after.startswith(before):
            return ""
        added = after[len(before):]
        self.text += added
        self._prefix, self._read = self._read, len(self.ids)
        return added

    def flush(self) -> str:
        """The exact text of every id, pending bytes included (called once, when the answer ends)."""
        if self._read < len(self.ids):
            self.text = self._decode(self.ids)
            self._prefix = self._read = len(self.ids)
        return self.text


class _Row:
    """Book-keeping of one prompt while its batch decodes."""

    def __init__(self, index: int, decode_text: Callable[[list[int]], str]) -> None:
        self.index = index
        self._text = IncrementalText(decode_text)
        self.text = ""
        self.stopped = ""

    @property
    def ids(self) -> list[int]:
        return self._text.ids

    def take(self, token: int, eos_token_ids: frozenset[int], gen: GenerationConfig,
             on_token: Callable[[int, str], None] | None) -> bool:
        """Append one generated token; False once this row has finished (eos, stop string, length)."""
        if token in eos_token_ids:
            self.stopped = "eos"
            self.text = self._text.flush()
            return False
        previous = len(self.text)  # the text so far held no stop string
        self._text.append(token)
        if len(self.ids) >= gen.max_new_tokens:
            self.stopped = "length"
            text = self._text.flush()
        else:
            text = self._text.text
        cut = -1
        if gen.stop and len(text) > previous:  # a stop string can only end in the new text
            cut = _earliest_stop(text, gen.stop, max(0, previous - max(len(s) for s in gen.stop) + 1))
        if cut >= 0:
            self.text, self.stopped = text[:cut], "stop"
        else:
            self.text = text
        if on_token is not None:
            on_token(self.index, self.text)
        return not self.stopped

    def finish(self, reason: str) -> None:
        """End a row still decoding (cancelled, or out of steps) with the exact text of its ids."""
        self.stopped = reason
        self.text = self._text.flush()


def _take_tokens(
    active: Sequence[_Row],
    tokens: Sequence[int],
    eos_token_ids: frozenset[int],
    gen: GenerationConfig,
    on_token: Callable[[int, str], None] | None,
) -> list[int]:
    """Append each active row's new token (one per row, in batch order); the batch indices still decoding."""
    return [i for i, (row, token) in enumerate(zip(active, tokens)) if row.take(token, eos_token_ids, gen, on_token)]


def _earliest_stop(text: str, stops: Sequence[str], start: int = 0) -> int:
    hits = [text.find(s, start) for s in stops]
    hits = [h for h in hits if h >= 0]
    return min(hits) if hits else -1


@torch.inference_mode()
def generate_batch(
    lm: LanguageModel,
    decode_text: Callable[[list[int]], str],
    prefix_kv: PrefixKV,
    prefix_len: int,
    suffixes: Sequence[Sequence[int]],
    gen: GenerationConfig,
    *,
    prefix_ms: float = 0.0,
    on_token: Callable[[int, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    decoder: StaticDecoder | None = None,
    select: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> list[Generation]:
    """Decode every suffix on top of the shared prefix; one Generation per suffix, in order.

    With ``decoder`` the static loop (static_decoder.py) runs; without, this module's dynamic one.
    Both give the same tokens (test_parity.py) and the same row book-keeping. ``select`` replaces
    the choice of the next tokens from each step's logits (B, V) -> (B,) (teacher forcing,
    fidelity.ForcedTokens); by default greedy or sampling as ``gen`` says.
    """
    if not suffixes:
        return []
    if any(len(s) == 0 for s in suffixes):
        raise ValueError("every prompt needs text after '<image>' (e.g. the question and 'ASSISTANT:')")
    generator = None
    if not gen.greedy:
        generator = torch.Generator(device="cpu")
        generator.manual_seed(gen.seed if gen.seed is not None else int(torch.seed() % (2**63)))
    rows = [_Row(i, decode_text) for i in range(len(suffixes))]
    pick = select if select is not None else (lambda logits: select_next(logits, gen, generator))
    if decoder is not None:
        prefill_ms, decode_ms = decoder.generate(
            prefix_kv, prefix_len, suffixes, gen, rows, pick, on_token=on_token, should_stop=should_stop)
        prefill_ms += prefix_ms
    else:
        prefill_ms, decode_ms = _dynamic_loop(lm, prefix_kv, prefix_len, suffixes, gen, rows, pick,
                                              on_token, should_stop)
        prefill_ms += prefix_ms
    return [
        Generation(
            text=row.text,
            tokens=len(row.ids),
            prefill_ms=prefill_ms,
            decode_ms=decode_ms,
            stopped=row.stopped,
            token_ids=tuple(row.ids),
        )
        for row in rows
    ]


def _dynamic_loop(lm: LanguageModel, prefix_kv: PrefixKV, prefix_len: int, suffixes: Sequence[Sequence[int]],
                  gen: GenerationConfig, rows: list[_Row], pick: Callable[[torch.Tensor], torch.Tensor],
                  on_token: Callable[[int, str], None] | None,
                  should_stop: Callable[[], bool] | None) -> tuple[float, float]:
    """The first decode loop: K copies of the prefix, finished rows compacted, a host read per token."""
    sync = _synchronizer(lm.lm_head.weight.device)
    start = time.perf_counter()
    cache = _batch_cache(prefix_kv, len(suffixes), lm.text_config)
    logits, mask, positions = prefill_suffixes(lm, cache, prefix_len, suffixes)
    next_ids = pick(logits)  # (K,)
    sync()
    prefill_ms = (time.perf_counter() - start) * 1e3

    start = time.perf_counter()
    active = list(rows)  # rows still decoding, in batch order
    for step in range(gen.max_new_tokens):
        if should_stop is not None and should_stop():
            for row in active:
                row.finish("cancelled")
            active = []
            break
        keep = _take_tokens(active, next_ids.tolist(), lm.eos_token_ids, gen, on_token)
        if len(keep) == 0:
            active = []
            break
        if len(keep) < len(active):  # drop finished rows from the batch and the cache
            index = torch.tensor(keep, dtype=torch.long, device=mask.device)
            cache.batch_select_indices(index)
            mask, positions, next_ids = mask[index], positions[index], next_ids[index]
            active = [active[i] for i in keep]
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)  # (B, S + 1)
        logits = decode_one_token(lm, cache, next_ids[:, None], mask, positions)
        positions = positions + 1
        next_ids = pick(logits)
    for row in active:  # loop ran out (max_new_tokens reached before a check)
        if not row.stopped:
            row.finish("length")
    sync()
    return prefill_ms, (time.perf_counter() - start) * 1e3


def _synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None
