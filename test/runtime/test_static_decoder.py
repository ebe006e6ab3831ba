"""The static decoder (runtime/static_decoder.py): exact cascade attention, token parity with the
dynamic loop and with a plain full-sequence forward, on several shapes (MHA, GQA, MQA, biased
projections), eager and compiled; incremental detokenization equals a full decode."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from chatspot_ros.runtime.config import GenerationConfig
from chatspot_ros.runtime.generation import IncrementalText, LanguageModel, generate_batch, prefill_prefix
from chatspot_ros.runtime.static_decoder import StaticDecoder, cascade_attention, unsupported

IMAGE_TOKEN_ID = 5
EOS = 2
PAD = 0


def _reference_attention(q, keys, values, mask, scale):
    """Plain softmax over the concatenated keys: q (B, Hq, T, hd), keys (B, H, S, hd), mask (B, 1, T, S)."""
    groups = q.shape[1] // keys.shape[1]
    keys, values = keys.repeat_interleave(groups, 1), values.repeat_interleave(groups, 1)
    scores = (q @ keys.transpose(-1, -2)) * scale
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), -1) @ values


@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (4, 2), (4, 1)])
def test_cascade_attention_equals_softmax_over_the_concatenation(heads: int, kv_heads: int) -> None:
    g = torch.Generator().manual_seed(heads * 10 + kv_heads)
    rows, tokens, head_dim, prefix, suffix, used = 3, 2, 8, 7, 5, 4
    q = torch.randn(rows, heads, tokens, head_dim, generator=g)
    pk, pv = (torch.randn(kv_heads, prefix, head_dim, generator=g) for _ in range(2))
    sk, sv = (torch.randn(rows, kv_heads, suffix, head_dim, generator=g) for _ in range(2))
    prefix_mask = torch.arange(prefix) < used  # the prefix buffer's tail is unused capacity
    suffix_mask = torch.rand(rows, 1, 1, tokens, suffix, generator=g) > 0.4
    suffix_mask[0] = False  # a row whose queries see no suffix key at all
    out = cascade_attention(q.reshape(rows, kv_heads, heads // kv_heads, tokens, head_dim), pk, pv, prefix_mask,
                            sk, sv, suffix_mask, 0.3).reshape(rows, heads, tokens, head_dim)
    keys = torch.cat([pk.expand(rows, -1, -1, -1), sk], dim=2)
    values = torch.cat([pv.expand(rows, -1, -1, -1), sv], dim=2)
    mask = torch.cat([prefix_mask.expand(rows, 1, tokens, prefix), suffix_mask[:, :, 0]], dim=-1)
    torch.testing.assert_close(out, _reference_attention(q, keys, values, mask, 0.3), rtol=1e-5, atol=1e-5)


def _language_model(kind: str, heads: int, kv_heads: int, head_dim: int, seed: int) -> LanguageModel:
    torch.manual_seed(seed)
    common = dict(vocab_size=97, hidden_size=heads * head_dim, intermediate_size=48, num_hidden_layers=2,
                  num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=256,
                  pad_token_id=PAD, eos_token_id=EOS)
    if kind == "qwen2":  # q/k/v projections with bias
        model = Qwen2ForCausalLM(Qwen2Config(**common, use_sliding_window=False)).eval()
    else:
        model = LlamaForCausalLM(LlamaConfig(**common, head_dim=head_dim)).eval()
    with torch.no_grad():  # make the logits far from ties: scale up the output layer
        model.lm_head.weight.mul_(8.0)
    return LanguageModel(embed=model.get_input_embeddings(), decoder=model.model, lm_head=model.lm_head,
                         text_config=model.config, eos_token_ids=frozenset({EOS}), pad_token_id=PAD,
                         image_token_id=IMAGE_TOKEN_ID)


def _prompts(seed: int, rows: int) -> tuple[torch.Tensor, list[list[int]]]:
    """A prefix with 6 image tokens, and ``rows`` suffixes of different lengths (left padding)."""
    rng = np.random.default_rng(seed)
    prefix = [1, 10, 11] + [IMAGE_TOKEN_ID] * 6
    suffixes = [[int(t) for t in rng.integers(10, 97, size=int(rng.integers(2, 7)))] for _ in range(rows)]
    return torch.tensor([prefix]), suffixes


def _full_forward_greedy(lm: LanguageModel, prefix_embeds: torch.Tensor, suffix: list[int], steps: int) -> list[int]:
    """The reference: the whole sequence through the checkpoint's own forward at every step, no cache."""
    out: list[int] = []
    ids = list(suffix)
    for _ in range(steps):
        embeds = torch.cat([prefix_embeds, lm.embed(torch.tensor([ids]))], dim=1)
        hidden = lm.decoder(inputs_embeds=embeds).last_hidden_state
        token = int(lm.lm_head(hidden[:, -1]).argmax(-1))
        if token == EOS:
            break
        out.append(token)
        ids.append(token)
    return out


SHAPES = [("llama", 4, 4, 8), ("llama", 4, 2, 16), ("llama", 6, 1, 8), ("qwen2", 4, 2, 8)]
DECODE = lambda ids: " ".join(map(str, ids))  # noqa: E731 - any text; the ids are what is compared


def _case(kind: str, heads: int, kv_heads: int, head_dim: int, rows: int = 4):
    """A tiny LM of one shape, its prefilled prefix, ``rows`` suffixes and the full-forward reference ids."""
    lm = _language_model(kind, heads, kv_heads, head_dim, seed=heads + kv_heads)
    assert unsupported(lm) is None
    prefix_ids, suffixes = _prompts(heads, rows=rows)
    features = torch.randn(1, 6, heads * head_dim, generator=torch.Generator().manual_seed(1))
    gen = GenerationConfig(max_new_tokens=10)
    with torch.inference_mode():
        kv = prefill_prefix(lm, prefix_ids, features)
        embeds = lm.embed(prefix_ids).clone()
        embeds[0, prefix_ids[0] == IMAGE_TOKEN_ID] = features[0]
        expected = [_full_forward_greedy(lm, embeds, suffix, gen.max_new_tokens) for suffix in suffixes]
    return lm, kv, prefix_ids.shape[1], suffixes, gen, expected


@pytest.mark.parametrize("kind, heads, kv_heads, head_dim", SHAPES)
def test_static_decoder_matches_the_dynamic_loop_and_a_full_forward(kind, heads, kv_heads, head_dim) -> None:
    lm, kv, prefix_len, suffixes, gen, expected = _case(kind, heads, kv_heads, head_dim)
    dynamic = generate_batch(lm, DECODE, kv, prefix_len, suffixes, gen)
    decoder = StaticDecoder(lm, torch.device("cpu"), torch.float32, compile="off", sync_every=3)
    static = generate_batch(lm, DECODE, kv, prefix_len, suffixes, gen, decoder=decoder)
    assert [list(g.token_ids) for g in dynamic] == expected
    assert [list(g.token_ids) for g in static] == expected
    for row in range(len(suffixes)):
        assert static[row].stopped == dynamic[row].stopped and static[row].text == dynamic[row].text
    # the shared prefix is held once: its buffer does not grow with the rows
    step = next(iter(decoder._steps.values()))
    assert step.prefix_k.shape[1:] == (kv_heads, 64, head_dim) and step.suffix_k.shape[1] == len(suffixes)


@pytest.mark.parametrize("kind, heads, kv_heads, head_dim", SHAPES)
def test_captured_step_matches_a_full_forward_on_every_shape(kind, heads, kv_heads, head_dim) -> None:
    """The whole step captured by dynamo (fullgraph) and functionalized, for MHA, GQA, MQA and Qwen2:
    the in-place cache writes and the masks survive capture. Code generation: the inductor test below."""
    lm, kv, prefix_len, suffixes, gen, expected = _case(kind, heads, kv_heads, head_dim)
    decoder = StaticDecoder(lm, torch.device("cpu"), torch.float32, compile="on", compile_backend="aot_eager",
                            sync_every=4)
    captured = generate_batch(lm, DECODE, kv, prefix_len, suffixes, gen, decoder=decoder)
    assert [list(g.token_ids) for g in captured] == expected
    assert decoder.compiles == 1


def test_inductor_step_matches_a_full_forward_and_compiles_once(caplog) -> None:
    """Inductor code generation (CUDA graphs are the same graph on a GPU), on the GQA shape."""
    lm, kv, prefix_len, suffixes, gen, expected = _case("llama", 4, 2, 8, rows=2)
    gen = GenerationConfig(max_new_tokens=6)
    compiled_decoder = StaticDecoder(lm, torch.device("cpu"), torch.float32, compile="on")
    with caplog.at_level("INFO", logger="chatspot_ros.runtime.decoder"):
        first = generate_batch(lm, DECODE, kv, prefix_len, suffixes, gen, decoder=compiled_decoder)
        again = generate_batch(lm, DECODE, kv, prefix_len, suffixes, gen, decoder=compiled_decoder)
    assert [list(g.token_ids) for g in first] == [e[:6] for e in expected]
    assert [g.token_ids for g in again] == [g.token_ids for g in first]
    assert compiled_decoder.compiles == 1, "one graph for one bucket, reused by the second call"
    assert "compiled the decode step" in caplog.text and "inductor" in caplog.text


def test_streaming_still_sees_every_token_and_cancel_keeps_the_tokens_so_far() -> None:
    lm = _language_model("llama", 4, 2, 8, seed=5)
    prefix_ids, suffixes = _prompts(5, rows=3)
    features = torch.randn(1, 6, 32, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        kv = prefill_prefix(lm, prefix_ids, features)
    decoder = StaticDecoder(lm, torch.device("cpu"), torch.float32, compile="off", sync_every=8)
    decode = lambda ids: " ".join(map(str, ids))  # noqa: E731
    seen: dict[int, list[str]] = {}
    full = generate_batch(lm, decode, kv, prefix_ids.shape[1], suffixes, GenerationConfig(max_new_tokens=8),
                          decoder=decoder, on_token=lambda row, text: seen.setdefault(row, []).append(text))
    for row, result in enumerate(full):  # one callback per generated token, although the host reads blocks of 8
        assert len(seen.get(row, [])) == result.tokens
        assert not seen.get(row) or seen[row][-1] == result.text
    calls = iter(range(100))
    cancelled = generate_batch(lm, decode, kv, prefix_ids.shape[1], suffixes, GenerationConfig(max_new_tokens=8),
                               decoder=decoder, should_stop=lambda: next(calls) >= 2)
    for before, after in zip(full, cancelled):  # cancelled before step 2: the two tokens computed are kept
        assert after.token_ids == before.token_ids[:2]
        assert after.stopped == (before.stopped if before.tokens < 2 else "cancelled")


def test_incremental_text_equals_a_full_decode(runtime) -> None:
    """On the tiny checkpoint's tokenizer (byte fallback, box markers, control tokens dropped)."""
    rng = np.random.default_rng(0)
    vocab = len(runtime.tokenizer)
    for _ in range(40):
        ids = [int(i) for i in rng.integers(0, vocab, size=int(rng.integers(1, 30)))]
        text = IncrementalText(runtime.decode_text)
        for i in ids:
            text.append(i)
        assert text.flush() == runtime.decode_text(ids)


def test_incremental_text_waits_for_a_split_utf8_character() -> None:
    pieces = {1: b"caf", 2: b"\xc3", 3: b"\xa9 ok"}
    decode = lambda ids: b"".join(pieces[i] for i in ids).decode("utf-8", errors="replace")  # noqa: E731
    text = IncrementalText(decode)
    assert text.append(1) == "caf"
    assert text.append(2) == ""  # half of "é": nothing shown yet
    assert text.append(3) == "é ok"
    assert text.flush() == "café ok"


def test_runtime_picks_the_decoder_it_is_asked_for(tiny_model_dir) -> None:
    from chatspot_ros.runtime import ChatSpotRuntime, RuntimeConfig

    static = ChatSpotRuntime.load(RuntimeConfig(model_path=str(tiny_model_dir), decoder="static"))
    dynamic = ChatSpotRuntime.load(RuntimeConfig(model_path=str(tiny_model_dir)))  # auto on the CPU
    try:
        assert static.decoder is not None and dynamic.decoder is None
    finally:
        static.close()
        dynamic.close()
    with pytest.raises(ValueError, match="compile must be one of"):
        RuntimeConfig(model_path="x", compile="sometimes")
    with pytest.raises(ValueError, match="sync_every"):
        RuntimeConfig(model_path="x", sync_every=-1)
