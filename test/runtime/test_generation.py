"""Decoding features: sampling with a seed, stop strings, cancellation, streaming, caches, validation."""
from __future__ import annotations

import pytest
from runtime_reference import QUESTIONS, make_frame, prompt

from chatspot_ros.runtime import GenerationConfig, RuntimeConfig

PROMPTS = [prompt(q) for q in QUESTIONS[:3]]


def test_sampling_is_reproducible_with_a_seed(runtime) -> None:
    features = runtime.encode(make_frame(2))
    gen = GenerationConfig(max_new_tokens=10, temperature=0.9, top_p=0.9, seed=1234)
    first = runtime.generate(features, PROMPTS, gen)
    again = runtime.generate(features, PROMPTS, gen)
    assert [r.token_ids for r in first] == [r.token_ids for r in again]
    others = [runtime.generate(features, PROMPTS, GenerationConfig(max_new_tokens=10, temperature=0.9, seed=s))
              for s in (1, 2, 3)]
    assert len({tuple(r.token_ids for r in o) for o in others}) > 1
    greedy = runtime.generate(features, PROMPTS, GenerationConfig(max_new_tokens=10))
    hot = runtime.generate(features, PROMPTS, GenerationConfig(max_new_tokens=10, temperature=5.0, seed=7))
    assert [r.token_ids for r in greedy] != [r.token_ids for r in hot]


def test_tiny_top_p_is_greedy(runtime) -> None:
    features = runtime.encode(make_frame(2))
    greedy = runtime.generate(features, PROMPTS, GenerationConfig(max_new_tokens=8))
    nucleus = runtime.generate(features, PROMPTS, GenerationConfig(max_new_tokens=8, temperature=1.0,
                                                                   top_p=1e-6, seed=3))
    assert [r.token_ids for r in greedy] == [r.token_ids for r in nucleus]


def test_stop_string_truncates_the_answer(runtime) -> None:
    features = runtime.encode(make_frame(3))
    full = runtime.generate(features, PROMPTS, GenerationConfig(max_new_tokens=16))
    text = full[0].text
    stop = text[len(text) // 2:len(text) // 2 + 3]
    assert stop.strip() and stop in text
    stopped = runtime.generate(features, PROMPTS, GenerationConfig(max_new_tokens=16, stop=(stop,)))
    assert stopped[0].stopped == "stop"
    assert stopped[0].text == text[:text.index(stop)]
    assert stop not in stopped[0].text
    assert stopped[0].tokens < full[0].tokens
    for before, after in zip(full[1:], stopped[1:]):  # the other rows go on unless they hit it too
        if stop not in before.text:
            assert after.token_ids == before.token_ids and after.stopped == before.stopped


def test_cancellation_between_tokens(runtime) -> None:
    features = runtime.encode(make_frame(4))
    calls = {"n": 0}

    def should_stop() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    results = runtime.generate(features, PROMPTS, GenerationConfig(max_new_tokens=16), should_stop=should_stop)
    assert [r.stopped for r in results] == ["cancelled"] * len(PROMPTS)
    assert all(r.tokens == 3 for r in results)
    full = runtime.generate(features, PROMPTS, GenerationConfig(max_new_tokens=16))
    assert all(r.token_ids == f.token_ids[:3] for r, f in zip(results, full))


def test_streaming_callback_sees_growing_text(runtime) -> None:
    features = runtime.encode(make_frame(5))
    seen: dict[int, list[str]] = {}
    results = runtime.generate(features, PROMPTS, GenerationConfig(max_new_tokens=8),
                               on_token=lambda i, text: seen.setdefault(i, []).append(text))
    assert sorted(seen) == list(range(len(PROMPTS)))
    for index, result in enumerate(results):
        texts = seen[index]
        assert len(texts) == result.tokens
        assert texts[-1] == result.text
        assert all(len(a) <= len(b) + 4 for a, b in zip(texts, texts[1:]))  # byte-level BPE may hold back


def test_length_and_timings(runtime) -> None:
    features = runtime.encode(make_frame(6))
    results = runtime.generate(features, PROMPTS, GenerationConfig(max_new_tokens=5))
    for r in results:
        assert r.stopped in ("length", "eos") and r.tokens <= 5
        assert r.prefill_ms > 0 and r.decode_ms >= 0
    assert features.vision_ms > 0


def test_feature_cache_is_a_bounded_lru(tiny_model_dir) -> None:
    from chatspot_ros.runtime import ChatSpotRuntime

    rt = ChatSpotRuntime.load(RuntimeConfig(model_path=str(tiny_model_dir), feature_cache_size=2))
    a = rt.encode(make_frame(1), key="a")
    hit = rt.encode(make_frame(99), key="a")  # same key: no new encoding, the cached features shared
    assert not a.cache_hit and hit.cache_hit and hit.features is a.features and hit.prefix_kv is a.prefix_kv
    rt.encode(make_frame(2), key="b")
    rt.encode(make_frame(1), key="a")  # touch a
    rt.encode(make_frame(3), key="c")  # evicts b
    assert rt.cached_keys() == ["a", "c"]
    assert rt.encode(make_frame(1)) is not rt.encode(make_frame(1))  # no key: never cached
    rt.generate(a, PROMPTS[:1], GenerationConfig(max_new_tokens=2))
    assert len(a.prefix_kv) == 1  # the prefix KV is kept with the features
    rt.close()


def test_prompt_errors(runtime) -> None:
    features = runtime.encode(make_frame(1))
    with pytest.raises(ValueError, match="exactly one '<image>'"):
        runtime.generate(features, ["USER: no image here ASSISTANT:"], GenerationConfig())
    with pytest.raises(ValueError, match="exactly one '<image>'"):
        runtime.generate(features, ["<image><image> twice"], GenerationConfig())
    with pytest.raises(ValueError, match="text after"):
        runtime.generate(features, ["USER: <image>"], GenerationConfig())
    with pytest.raises(TypeError):
        runtime.generate(features, "a single string", GenerationConfig())  # type: ignore[arg-type]
    assert runtime.generate(features, [], GenerationConfig()) == []


@pytest.mark.parametrize("frame_shape, dtype", [((10, 10), "uint8"), ((10, 10, 4), "uint8"), ((10, 10, 3), "float32")])
def test_bad_frames(runtime, frame_shape, dtype) -> None:
    import numpy as np

    with pytest.raises(ValueError):
        runtime.encode(np.zeros(frame_shape, dtype=dtype))


@pytest.mark.parametrize("kwargs", [
    {"max_new_tokens": 0}, {"temperature": -1.0}, {"top_p": 0.0}, {"top_p": 1.5},
    {"stop": "USER:"}, {"stop": ("",)}, {"seed": 1.5}, {"temperature": float("nan")},
])
def test_generation_config_validates(kwargs) -> None:
    with pytest.raises(ValueError):
        GenerationConfig(**kwargs)


@pytest.mark.parametrize("kwargs", [
    {"model_path": ""}, {"model_path": "m", "device": "gpu"}, {"model_path": "m", "dtype": "int8"},
    {"model_path": "m", "dtype": "float16"}, {"model_path": "m", "vision_backend": "tvm"},
    {"model_path": "m", "feature_cache_size": 0},
])
def test_runtime_config_validates(kwargs) -> None:
    with pytest.raises(ValueError):
        RuntimeConfig(**kwargs)


def test_prompts_with_different_prefixes_decode_in_separate_batches(runtime) -> None:
    features = runtime.encode(make_frame(5))
    other_prefix = "Another system line. USER: <image>\nWhat is this? ASSISTANT:"
    results = runtime.generate(features, [PROMPTS[0], other_prefix, PROMPTS[1]], GenerationConfig(max_new_tokens=4))
    assert [r.batch for r in results] == [0, 1, 0]
    assert (results[0].prefill_ms, results[0].decode_ms) == (results[2].prefill_ms, results[2].decode_ms)
