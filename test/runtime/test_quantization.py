"""Weight-only int8 of the LLM (RuntimeConfig.quantization, torchao) through the same load path."""
from __future__ import annotations

import pytest
import torch
from runtime_reference import QUESTIONS, make_frame, prompt

from chatspot_ros.runtime import ChatSpotRuntime, GenerationConfig, RuntimeConfig


@pytest.fixture(scope="module")
def int8_runtime(tiny_model_dir):
    rt = ChatSpotRuntime.load(RuntimeConfig(model_path=str(tiny_model_dir), quantization="int8", decoder="static"))
    yield rt
    rt.close()


def test_int8_quantizes_every_linear_layer_of_the_llm_and_nothing_else(int8_runtime, runtime) -> None:
    from torchao.utils import TorchAOBaseTensor

    language_model = int8_runtime.model.model.language_model
    linears = [m for m in language_model.modules() if isinstance(m, torch.nn.Linear)] + [int8_runtime.model.lm_head]
    assert linears and all(isinstance(m.weight, TorchAOBaseTensor) for m in linears)
    tower = int8_runtime.model.model.vision_tower
    assert not any(isinstance(p, TorchAOBaseTensor) for p in tower.parameters())
    assert int8_runtime.decoder is not None  # the static decoder runs on the quantized layers
    # int8 weights round each output row to 1/127 of its largest weight: the logits stay close
    ids = torch.tensor([runtime.tokenize_prompt(prompt(QUESTIONS[0]), runtime.num_image_tokens)])
    features = runtime.encode(make_frame(7)).features
    with torch.inference_mode():
        embeds = runtime.lm.embed(ids).clone()
        embeds[0, ids[0] == runtime.image_token_id] = features[0]
        full = runtime.model(inputs_embeds=embeds).logits[0, -1]
        quantized = int8_runtime.model(inputs_embeds=embeds).logits[0, -1]
    assert float((quantized - full).abs().max() / full.abs().max()) < 0.05


def test_int8_answers_every_region(int8_runtime) -> None:
    features = int8_runtime.encode(make_frame(3))
    results = int8_runtime.generate(features, [prompt(q) for q in QUESTIONS[:3]], GenerationConfig(max_new_tokens=6))
    assert [r.stopped in ("eos", "length") for r in results] == [True] * 3
    assert all(r.tokens >= 1 for r in results)


def test_int4_is_refused_on_the_cpu_with_the_reason(tiny_model_dir) -> None:
    with pytest.raises(ValueError, match="int4.*CUDA"):
        ChatSpotRuntime.load(RuntimeConfig(model_path=str(tiny_model_dir), quantization="int4"))
    with pytest.raises(ValueError, match="quantization must be one of"):
        RuntimeConfig(model_path="x", quantization="int2")
