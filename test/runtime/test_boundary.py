"""The runtime boundary: pure imports, encode's cache report, batch timings once, typed model errors."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from runtime_reference import make_frame

from chatspot_ros.runtime import GenerationConfig, ModelError, ModelOutOfMemory
from chatspot_ros.runtime.errors import as_model_error, is_out_of_memory

PROMPTS = ["USER: <image>\nWhat is it? ASSISTANT:", "USER: <image>\nWhere is it? ASSISTANT:"]
PURE_MODULES = ("chatspot_ros.runtime.config", "chatspot_ros.runtime", "chatspot_ros.runtime.errors",
                "chatspot_ros.pipeline", "chatspot_ros.referring", "chatspot_ros.service.frames",
                "chatspot_ros.service.planning", "chatspot_ros.service.requests", "chatspot_ros.service.config")


def test_pure_modules_import_without_torch_or_transformers() -> None:
    code = ("import sys\n"
            f"for name in {PURE_MODULES!r}:\n"
            "    __import__(name)\n"
            "    heavy = sorted(m for m in ('torch', 'transformers', 'rclpy') if m in sys.modules)\n"
            "    assert not heavy, f'{name} imported {heavy}'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_encode_says_whether_it_hit_the_cache(runtime) -> None:
    frame = make_frame(21)
    first = runtime.encode(frame, key="boundary-a")
    again = runtime.encode(frame, key="boundary-a")
    assert not first.cache_hit and again.cache_hit
    assert again.features is first.features and again.prefix_kv is first.prefix_kv  # shared, not copied
    assert not runtime.encode(frame).cache_hit and not runtime.encode(frame).cache_hit  # key None: never cached


def test_generate_timed_reports_each_batch_once(runtime) -> None:
    features = runtime.encode(make_frame(22))
    other_prefix = "SYSTEM <image>\nWhat? ASSISTANT:"
    result = runtime.generate_timed(features, [PROMPTS[0], other_prefix, PROMPTS[1]], GenerationConfig(max_new_tokens=3))
    assert [b.prompts for b in result.batches] == [(0, 2), (1,)]
    assert [g.batch for g in result.generations] == [0, 1, 0]
    for b in result.batches:
        assert b.tokens == sum(result.generations[i].tokens for i in b.prompts)
        assert b.decode_ms == result.generations[b.prompts[0]].decode_ms
    assert result.decode_ms == pytest.approx(sum(b.decode_ms for b in result.batches))
    assert result.tokens == sum(g.tokens for g in result.generations)


def test_answer_frame_counts_vision_once_and_zero_on_a_hit(runtime) -> None:
    from chatspot_ros.pipeline import ChatSpot
    from chatspot_ros.referring import InstructionBuilder, Region, get_dialect

    chatspot = ChatSpot(runtime, InstructionBuilder(get_dialect("llava"), runtime.geometry))
    frame = make_frame(23)
    asks = [chatspot.builder.ask("What?", [Region.box(1, 1, 40, 40)], (frame.shape[1], frame.shape[0]))] * 2
    first = chatspot.answer_frame(frame, "boundary-b", asks, GenerationConfig(max_new_tokens=2))
    again = chatspot.answer_frame(frame, "boundary-b", asks, GenerationConfig(max_new_tokens=2))
    assert not first.cache_hit and first.vision_ms > 0 and again.cache_hit and again.vision_ms == 0.0
    assert len(first.batches) == 1 and first.tokens == sum(a.generation.tokens for a in first.answers)
    assert [a.text for a in chatspot.answer(frame, "boundary-b", asks, GenerationConfig(max_new_tokens=2))] == first.texts


def test_out_of_memory_is_a_typed_error_and_drops_the_caches(runtime, monkeypatch) -> None:
    runtime.encode(make_frame(24), key="boundary-c")
    assert "boundary-c" in runtime.cached_keys()

    def oom(frames):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")

    monkeypatch.setattr(runtime.backend, "encode", oom)
    with pytest.raises(ModelOutOfMemory, match="OutOfMemoryError") as info:
        runtime.encode(make_frame(25), key="boundary-d")
    assert isinstance(info.value.cause, torch.cuda.OutOfMemoryError)
    assert runtime.cached_keys() == []

    def boom(frames):
        raise RuntimeError("kernel failed")

    monkeypatch.setattr(runtime.backend, "encode", boom)
    with pytest.raises(ModelError, match="RuntimeError: kernel failed") as info:
        runtime.encode(make_frame(25))
    assert not isinstance(info.value, ModelOutOfMemory)


def test_a_callers_callback_error_is_not_a_model_error(runtime) -> None:
    features = runtime.encode(make_frame(26))

    def on_token(index: int, text: str) -> None:
        raise KeyError("caller bug")

    with pytest.raises(KeyError, match="caller bug"):
        runtime.generate(features, PROMPTS, GenerationConfig(max_new_tokens=2), on_token=on_token)
    with pytest.raises(ValueError):  # bad input stays a ValueError
        runtime.generate(features, ["no image"], GenerationConfig())


def test_error_typing_without_a_runtime() -> None:
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("x"))
    assert not is_out_of_memory(RuntimeError("CUDA out of memory"))  # types, not messages
    wrapped = as_model_error(torch.cuda.OutOfMemoryError("x"))
    assert isinstance(wrapped, ModelOutOfMemory) and as_model_error(wrapped) is wrapped
