"""The half-precision fidelity rule (runtime/fidelity.py): teacher-forced logits against a reference,
every greedy divergence classified near-tie or real; bf16 and fp16 on the tiny shapes (MHA, GQA, MQA,
Qwen2) through both decode loops, and a planted off-by-one decode position caught as real."""
from __future__ import annotations

import pytest
import torch
from test_static_decoder import DECODE, EOS, IMAGE_TOKEN_ID, PAD, SHAPES, _language_model, _prompts
from transformers import LlamaConfig, LlamaForCausalLM

from chatspot_ros.runtime import fidelity
from chatspot_ros.runtime.config import GenerationConfig
from chatspot_ros.runtime.generation import LanguageModel, generate_batch, prefill_prefix
from chatspot_ros.runtime.static_decoder import StaticDecoder, StaticStep

STEPS = 10


def _reference(lm: LanguageModel, prefix_embeds: torch.Tensor, suffix: list[int]) -> tuple[list[int], torch.Tensor]:
    """The reference: the checkpoint's own forward over the whole sequence at every step (no cache, no
    batch), greedy; its tokens (eos included) and the logits each was chosen from."""
    ids, tokens, logits = list(suffix), [], []
    for _ in range(STEPS):
        embeds = torch.cat([prefix_embeds, lm.embed(torch.tensor([ids]))], dim=1)
        step = lm.lm_head(lm.decoder(inputs_embeds=embeds).last_hidden_state[:, -1]).float()[0]
        token = int(step.argmax())
        tokens.append(token)
        logits.append(step)
        if token == EOS:
            break
        ids.append(token)
    return tokens, torch.stack(logits)


@torch.inference_mode()
def _judge(lm: LanguageModel, dtype: torch.dtype, decoder_kind: str, seed: int) -> list[fidelity.RowFidelity]:
    prefix_ids, suffixes = _prompts(seed, rows=4)
    width = lm.embed.weight.shape[1]
    features = torch.randn(1, 6, width, generator=torch.Generator().manual_seed(1)).to(dtype)
    kv = prefill_prefix(lm, prefix_ids, features)
    embeds = lm.embed(prefix_ids).clone()
    embeds[0, prefix_ids[0] == IMAGE_TOKEN_ID] = features[0]
    references = [_reference(lm, embeds, s) for s in suffixes]
    decoder = StaticDecoder(lm, torch.device("cpu"), dtype, compile="off") if decoder_kind == "static" else None
    out = generate_batch(lm, DECODE, kv, prefix_ids.shape[1], suffixes, GenerationConfig(max_new_tokens=STEPS),
                         decoder=decoder)
    runtime_ids = [list(g.token_ids) + ([EOS] if g.stopped == "eos" else []) for g in out]
    forced = fidelity.teacher_forced_logits(lm, kv, prefix_ids.shape[1], suffixes, [r[0] for r in references],
                                            decoder=decoder)
    return [fidelity.compare_row(ref_ids, ref_logits, ids, got, dtype)
            for (ref_ids, ref_logits), ids, got in zip(references, runtime_ids, forced)]


def _half(lm: LanguageModel, dtype: torch.dtype) -> LanguageModel:
    lm.decoder.to(dtype)
    lm.lm_head.to(dtype)
    return lm


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("decoder_kind", ["dynamic", "static"])
@pytest.mark.parametrize("kind, heads, kv_heads, head_dim", SHAPES)
def test_half_precision_runtime_passes_the_rule(kind, heads, kv_heads, head_dim, decoder_kind, dtype) -> None:
    lm = _half(_language_model(kind, heads, kv_heads, head_dim, seed=heads + kv_heads), dtype)
    rows = _judge(lm, dtype, decoder_kind, seed=heads)
    assert [r.verdict for r in rows if r.verdict == "diverged"] == [], [r for r in rows]
    for r in rows:
        assert r.steps > 0 and r.max_diff <= r.budget
        assert all(d.kind == "near-tie" for d in r.divergences)
    assert sum(r.verdict == "identical" for r in rows) >= 2, "most rows of a correct runtime match exactly"


def _position_sensitive_lm(dtype: torch.dtype) -> LanguageModel:
    """A tiny Llama whose attention depends strongly on position (rope_theta 2, sharp q/k), so that a
    position off by one moves the logits far beyond half-precision rounding."""
    torch.manual_seed(7)
    config = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=256,
                         pad_token_id=PAD, eos_token_id=EOS, rope_theta=2.0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(8.0)
            layer.self_attn.k_proj.weight.mul_(8.0)
    model.to(dtype)
    return LanguageModel(embed=model.get_input_embeddings(), decoder=model.model, lm_head=model.lm_head,
                         text_config=model.config, eos_token_ids=frozenset({EOS}), pad_token_id=PAD,
                         image_token_id=IMAGE_TOKEN_ID)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_a_planted_off_by_one_decode_position_is_caught_as_real(dtype, monkeypatch) -> None:
    lm = _position_sensitive_lm(dtype)
    clean = _judge(lm, dtype, "static", seed=4)
    assert all(r.verdict != "diverged" for r in clean)  # the same model without the bug passes

    forward = StaticStep.forward

    def off_by_one(self, ids, positions, slots, valid=None):  # decode steps see position + 1
        return forward(self, ids, positions + 1 if ids.shape[1] == 1 else positions, slots, valid)

    monkeypatch.setattr(StaticStep, "forward", off_by_one)
    planted = _judge(lm, dtype, "static", seed=4)
    assert all(r.verdict == "diverged" for r in planted)
    assert all(r.max_diff > r.budget for r in planted)
    assert sum(r.real for r in planted) >= 1 and not any(d.kind == "near-tie" for r in planted for d in r.divergences)
    assert fidelity.summarize(planted)["diverged"] == len(planted)


def test_classification_on_hand_made_logits() -> None:
    """Margins below twice the largest difference are near-ties; above, real; identical ids, identical."""
    ref = torch.tensor([[5.0, 1.0, 0.0], [2.00, 1.99, 0.0], [0.0, 3.0, 0.0]])
    ref_ids = [0, 0, 1]
    near = ref.clone()
    near[1, 1] += 0.02  # flips step 1 (margin 0.01 < 2 * 0.02)
    row = fidelity.compare_row(ref_ids, ref, [0, 1, 2], near, torch.bfloat16)
    assert row.verdict == "near-tie" and [d.step for d in row.divergences] == [1]
    assert row.divergences[0].kind == "near-tie" and row.divergences[0].teacher_forced
    real = ref.clone()
    real[2, 2] += 3.5  # step 2 margin 3.0, difference 3.5: beyond the budget
    row = fidelity.compare_row(ref_ids, ref, [0, 0, 2], real, torch.bfloat16)
    assert row.verdict == "diverged" and row.real == 1
    row = fidelity.compare_row(ref_ids, ref, ref_ids, ref + 0.001, torch.bfloat16)
    assert row.verdict == "identical" and row.divergences == ()
    # a free-running divergence not seen under teacher forcing (batch rounding) is classified too
    row = fidelity.compare_row(ref_ids, ref, [0, 1, 1], ref, torch.float16)
    assert row.verdict == "diverged" and row.divergences[0].step == 1 and not row.divergences[0].teacher_forced
    with pytest.raises(ValueError, match="reference tokens"):
        fidelity.compare_row([0], ref, [0], ref, torch.float16)
