"""Greedy outputs of the batched, prefix-cached runtime == plain per-prompt HF generate(), token for token."""
from __future__ import annotations

import pytest
from runtime_reference import QUESTIONS, hf_generate, make_frame, processor_for, prompt

from chatspot_ros.runtime import ChatSpotRuntime, GenerationConfig, RuntimeConfig
from chatspot_ros.runtime.static_decoder import StaticDecoder

MAX_NEW = 12


@pytest.fixture(scope="module")
def seeded_runtimes(seeded_model_dirs):
    runtimes = {seed: ChatSpotRuntime.load(RuntimeConfig(model_path=str(path)))
                for seed, path in seeded_model_dirs.items()}
    yield runtimes
    for rt in runtimes.values():
        rt.close()


@pytest.mark.parametrize("decoder", ["dynamic", "static"])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_greedy_batch_matches_hf_generate(seeded_runtimes, seeded_model_dirs, seed: int, k: int, decoder: str) -> None:
    rt = seeded_runtimes[seed]
    rt.decoder = StaticDecoder(rt.lm, rt.device, rt.dtype, compile="off", sync_every=4) if decoder == "static" else None
    processor = processor_for(seeded_model_dirs[seed])
    frame = make_frame(seed + 10 * k, height=90 + 7 * k, width=160 - 9 * k)
    prompts = [prompt(q) for q in QUESTIONS[(seed + k) % 2:][:k]]
    features = rt.encode(frame, key=("frame", seed, k))
    results = rt.generate(features, prompts, GenerationConfig(max_new_tokens=MAX_NEW))
    assert len(results) == k
    for p, result in zip(prompts, results):
        expected = hf_generate(rt, processor, frame, p, MAX_NEW)
        assert list(result.token_ids) == expected
        markers = {rt.tokenizer.convert_tokens_to_ids(t) for t in ("<box>", "</box>")}
        control = set(rt.tokenizer.all_special_ids) - markers
        assert result.text == rt.tokenizer.decode([i for i in expected if i not in control])
        assert result.stopped in ("eos", "length")


def test_different_prompts_give_different_outputs(runtime) -> None:
    """Guards the tiny model itself: with the default init every prompt would repeat one token."""
    features = runtime.encode(make_frame(1))
    results = runtime.generate(features, [prompt(q) for q in QUESTIONS], GenerationConfig(max_new_tokens=8))
    assert len({r.token_ids for r in results}) == len(QUESTIONS)
    assert all(len(set(r.token_ids)) > 2 for r in results)


def _assert_matches_hf_generate(rt, model_dir, frame, prompts) -> None:
    processor = processor_for(model_dir)
    results = rt.generate(rt.encode(frame), prompts, GenerationConfig(max_new_tokens=MAX_NEW))
    assert len(results) == len(prompts)
    for p, result in zip(prompts, results):
        assert list(result.token_ids) == hf_generate(rt, processor, frame, p, MAX_NEW)


def test_onnxruntime_backend_matches_hf_generate(onnx_runtime, tiny_model_dir) -> None:
    _assert_matches_hf_generate(onnx_runtime, tiny_model_dir, make_frame(5), [prompt(q) for q in QUESTIONS[:5]])


def test_cached_prefix_gives_the_same_tokens(runtime) -> None:
    frame = make_frame(7)
    prompts = [prompt(q) for q in QUESTIONS[:3]]
    gen = GenerationConfig(max_new_tokens=MAX_NEW)
    features = runtime.encode(frame, key="cached-prefix")
    first = runtime.generate(features, prompts, gen)
    assert len(features.prefix_kv) == 1
    again = runtime.generate(runtime.encode(frame, key="cached-prefix"), prompts[::-1], gen)
    assert [r.token_ids for r in first] == [r.token_ids for r in again[::-1]]
    one_by_one = [runtime.generate(features, [p], gen)[0] for p in prompts]
    assert [r.token_ids for r in first] == [r.token_ids for r in one_by_one]


def test_linear_projector_checkpoint_matches_hf_generate(chatspot_model_dir) -> None:
    """The swapped-in linear projector: HF's model gets the same module, so generate() must agree."""
    rt = ChatSpotRuntime.load(RuntimeConfig(model_path=str(chatspot_model_dir)))
    try:
        _assert_matches_hf_generate(rt, chatspot_model_dir, make_frame(11), [prompt(q) for q in QUESTIONS[:3]])
    finally:
        rt.close()


def test_answer_text_keeps_region_markers_and_drops_control_tokens(runtime) -> None:
    tok = runtime.tokenizer
    ids = tok("<box>[0.10,0.20]</box>", add_special_tokens=False)["input_ids"] + [tok.eos_token_id, tok.pad_token_id]
    assert runtime.decode_text(ids) == "<box>[0.10,0.20]</box>"
