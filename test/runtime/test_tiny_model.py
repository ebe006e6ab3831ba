"""The offline checkpoint builder: layout, tokenizer, determinism, presets."""
from __future__ import annotations

import json

import pytest

from chatspot_ros.testing.tiny_model import build_tiny_llava, llava7b_parameter_count


def test_layout_and_config(tiny_model_dir) -> None:
    names = {p.name for p in tiny_model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json",
            "generation_config.json"} <= names
    assert not any(n.endswith(".bin") for n in names)
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["model_type"] == "llava" and config["image_aspect_ratio"] == "pad"
    assert config["text_config"]["initializer_range"] == 0.15
    assert "projector_type" not in config


def test_parameter_count_and_tokenizer(runtime) -> None:
    n = sum(p.numel() for p in runtime.model.parameters())
    assert 0.15e6 < n < 0.5e6
    tok = runtime.tokenizer
    for special in ("<image>", "<box>", "</box>", "<s>", "</s>", "<unk>", "<pad>"):
        assert special in tok.get_vocab()
    ids = tok("<box>[0.12, 0.34]</box>", add_special_tokens=False)["input_ids"]
    pieces = tok.convert_ids_to_tokens(ids)
    assert pieces[0] == "<box>" and pieces[-1] == "</box>"
    assert {"1", "2", "3", "4"} <= set(pieces)  # digits one by one, like LLaMA
    assert len(tok) == runtime.model.config.text_config.vocab_size


def test_same_seed_same_weights(tmp_path, tiny_model_dir) -> None:
    again = build_tiny_llava(tmp_path / "again", preset="tiny", seed=0)
    assert (again / "model.safetensors").read_bytes() == (tiny_model_dir / "model.safetensors").read_bytes()


def test_builder_rejects_unknown_options(tmp_path) -> None:
    for kwargs in ({"preset": "huge"}, {"projector": "qformer"}, {"image_mode": "stretch"}):
        with pytest.raises(ValueError):
            build_tiny_llava(tmp_path / "x", **kwargs)


def test_llava7b_shapes_on_the_meta_device() -> None:
    assert 7.0e9 < llava7b_parameter_count() < 7.1e9  # CLIP ViT-L/14-336 + MLP + LLaMA-7B (32064 vocab)
