"""Stage freezing, token adding, resume equivalence, llava-hf names and the save -> runtime round trip."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from chatspot_ros.training.dataset import ConversationEncoder
from chatspot_ros.training.recipe import TrainConfig, apply_stage, ensure_box_tokens, lr_at
from chatspot_ros.training.sources import SampleMix
from chatspot_ros.training.trainer import Trainer
from chatspot_ros.training.world_source import WorldSource


def _trainer(setup, out, steps=4, stage="scratch", seed=0, save_every=100) -> Trainer:
    config = TrainConfig(stage=stage, steps=steps, batch_size=3, lr=1e-3, warmup_steps=1, seed=seed,
                         save_every=save_every, log_every=1)
    apply_stage(setup.model, stage)
    encoder = ConversationEncoder(setup.tokenizer, setup.builder, setup.conversation, setup.num_image_tokens, 256)
    source = WorldSource(seed=1, frames=20, mix=SampleMix(max_turns=2))
    return Trainer(setup.model, encoder, setup.preprocess, source, config, out, setup.tokenizer.pad_token_id)


@pytest.mark.parametrize("stage", ["projector", "projector_llm"])
def test_frozen_parameters_do_not_change(smoke_setup_factory, tmp_path, stage: str) -> None:
    setup = smoke_setup_factory()
    trainer = _trainer(setup, tmp_path, steps=2, stage=stage)
    before = {n: p.detach().clone() for n, p in setup.model.named_parameters()}
    trainer.run(progress=False)
    for name, p in setup.model.named_parameters():
        changed = not torch.equal(before[name], p.detach())
        trainable = "multi_modal_projector" in name or (stage == "projector_llm" and (
            "language_model" in name or name.startswith("lm_head")))
        if not trainable:
            assert not changed, f"{name} is frozen in stage {stage} but changed"
    assert any(not torch.equal(before[n], p) for n, p in setup.model.named_parameters() if "multi_modal_projector" in n)
    vision = [n for n, p in setup.model.named_parameters() if "vision_tower" in n and p.requires_grad]
    assert vision == []


def test_resume_continues_exactly_where_an_uninterrupted_run_would_be(smoke_setup_factory, tmp_path) -> None:
    straight = _trainer(smoke_setup_factory(), tmp_path / "a", steps=4)
    straight.run(progress=False)
    first = _trainer(smoke_setup_factory(), tmp_path / "b", steps=2)
    first.run(progress=False)  # saves state at the end (step 2)
    second = _trainer(smoke_setup_factory(), tmp_path / "b", steps=4)
    assert second.load_state() and second.step == 2
    second.run(progress=False)
    a = dict(straight.model.named_parameters())
    for name, p in second.model.named_parameters():
        assert torch.allclose(a[name], p, atol=1e-6), f"{name} differs after resume"
    assert [h.loss for h in straight.history[2:]] == pytest.approx([h.loss for h in second.history], rel=1e-5)


def test_resume_refuses_a_run_with_other_settings(smoke_setup_factory, tmp_path) -> None:
    _trainer(smoke_setup_factory(), tmp_path, steps=1).run(progress=False)
    other = _trainer(smoke_setup_factory(), tmp_path, steps=3, seed=5)
    with pytest.raises(ValueError, match="settings differ"):
        other.load_state()


def test_box_tokens_are_added_when_missing_and_embeddings_resized() -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "a": 3, "b": 4}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    model = LlamaForCausalLM(LlamaConfig(vocab_size=5, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    added = ensure_box_tokens(model, tok)
    assert added == ["<box>", "</box>"]
    assert model.get_input_embeddings().weight.shape[0] == len(tok) == 7
    ids = tok("a <box> b </box>", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["a", "<box>", "b", "</box>"]
    assert ensure_box_tokens(model, tok) == []  # idempotent


def test_learning_rate_warms_up_then_decays_to_the_floor() -> None:
    cfg = TrainConfig(steps=100, lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(cfg, 0) == pytest.approx(1e-4)
    assert lr_at(cfg, 9) == pytest.approx(1e-3)
    assert lr_at(cfg, 100) == pytest.approx(1e-4)
    values = [lr_at(cfg, s) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_saved_model_has_llava_hf_names_and_loads_in_the_runtime_with_the_same_logits(smoke_setup_factory,
                                                                                       tmp_path) -> None:
    from safetensors import safe_open

    from chatspot_ros.pipeline import ChatSpot
    from chatspot_ros.runtime import GenerationConfig, RuntimeConfig
    from chatspot_ros.training.export import save_llava_hf
    from chatspot_ros.world import render, sample_scene

    setup = smoke_setup_factory(seed=3)
    model = setup.model.eval()
    out = save_llava_hf(model, setup.tokenizer, setup.image_processor, tmp_path / "m")
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        names = list(f.keys())
    assert names and all(n.startswith(("vision_tower.vision_model.", "multi_modal_projector.",
                                       "language_model.model.", "language_model.lm_head.")) for n in names)
    assert any(n.startswith("vision_tower.vision_model.embeddings.") for n in names)
    assert (out / "preprocessor_config.json").is_file() and (out / "processor_config.json").is_file()
    assert json.loads((out / "config.json").read_text())["chatspot_dialect"] == "chatspot"

    chatspot = ChatSpot.from_config(RuntimeConfig(model_path=str(out)))
    frame = render(sample_scene(4, 0))
    instruction = chatspot.builder.what_is_in_region(
        __import__("chatspot_ros.referring", fromlist=["Region"]).Region(1, ((10.0, 10.0), (80.0, 90.0))), (320, 240))
    prompt = chatspot.prompt_for(instruction)
    ids = torch.tensor([chatspot.runtime.tokenize_prompt(prompt, setup.num_image_tokens)])
    pixels = setup.preprocess([frame])
    with torch.no_grad():
        ours = model(input_ids=ids, pixel_values=pixels).logits
        loaded = chatspot.runtime.model(input_ids=ids, pixel_values=pixels).logits
    assert torch.allclose(ours, loaded, atol=1e-5)
    answer = chatspot.answer(frame, "f", [instruction], GenerationConfig(max_new_tokens=4))[0]
    assert isinstance(answer.text, str)
    chatspot.close()
    assert np.isfinite(float(ours.abs().max()))
