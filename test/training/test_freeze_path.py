"""`chatspot-train run --freeze-path` refuses checkpoints that do not carry the wired route
(issue 24): the check reads the wiring in the weights, not the shapes."""
from __future__ import annotations

import pytest

from chatspot_ros.training import referring_path as rp
from chatspot_ros.training import tabletop_model as tm


def _run_freeze_path(base, tmp_path, capsys) -> tuple[int, str]:
    from chatspot_ros.cli.train import main

    code = main(["run", "--base", str(base), "--world-seed", "1", "--world-frames", "4", "--freeze-path",
                 "--steps", "1", "--batch-size", "2", "--out", str(tmp_path / "run")])
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def llava15_layout_dir(tmp_path_factory):
    """A LLaVA-1.5-layout checkpoint (CLIP/14 tower with pad-to-square, two-layer projector, LLaMA
    decoder, llava dialect) with tiny dims that still have room for the route: shapes pass."""
    from chatspot_ros.testing import tiny_model

    shapes = tiny_model._Shapes(112, 128, 2, 2, 256, 256, 5, 4, 4, 512, 1200, 512)
    saved = tiny_model._PRESET_SHAPES["tiny"]
    tiny_model._PRESET_SHAPES["tiny"] = shapes
    try:
        path = tiny_model.build_tiny_llava(tmp_path_factory.mktemp("llava15") / "m", preset="tiny")
    finally:
        tiny_model._PRESET_SHAPES["tiny"] = saved
    return path


@pytest.fixture(scope="module")
def unwired_tabletop_dir(tmp_path_factory):
    """The tabletop architecture and tokenizer (smoke preset) with transformers' default initialization."""
    from transformers import LlavaForConditionalGeneration

    from chatspot_ros.training.export import save_llava_hf

    shapes = tm.PRESETS["smoke"]
    tokenizer = tm.build_tokenizer(shapes.vocab_size)
    model = LlavaForConditionalGeneration(tm.llava_config(shapes, tokenizer)).eval()
    return save_llava_hf(model, tokenizer, tm.image_processor(shapes), tmp_path_factory.mktemp("plain") / "m")


def test_llava15_layout_passes_the_shape_check_but_is_refused(llava15_layout_dir, tmp_path, capsys) -> None:
    from chatspot_ros.training.model_setup import from_checkpoint

    setup = from_checkpoint(llava15_layout_dir)
    rp.check_shapes(setup.model.config, rp.layout_for(setup.model.config))  # the old check let it through
    assert rp.wiring_problems(setup.model, setup.tokenizer, tm.COORD_TOKENS)
    code, err = _run_freeze_path(llava15_layout_dir, tmp_path, capsys)
    lines = [line for line in err.splitlines() if "error" in line]
    assert code == 2 and len(lines) == 1
    assert "--freeze-path" in lines[0] and "does not carry the wired referring path" in lines[0]
    assert not (tmp_path / "run" / "state").exists()


def test_unwired_tabletop_checkpoint_is_refused_by_its_weights(unwired_tabletop_dir, tmp_path, capsys) -> None:
    from chatspot_ros.training.model_setup import from_checkpoint

    setup = from_checkpoint(unwired_tabletop_dir)
    problems = rp.wiring_problems(setup.model, setup.tokenizer, tm.COORD_TOKENS)
    assert any("position embedding" in p for p in problems) and any("copy head" in p for p in problems)
    code, err = _run_freeze_path(unwired_tabletop_dir, tmp_path, capsys)
    assert code == 2 and "does not carry the wired referring path" in err


def test_the_shipped_model_carries_the_wiring_and_one_undone_value_is_refused() -> None:
    """(A fresh wired preset passing the check is covered by the smoke recipe's --freeze-path run.)"""
    import torch

    from chatspot_ros.training.model_setup import from_checkpoint

    shipped = from_checkpoint("chatspot_ros/models/tabletop")
    assert rp.wiring_problems(shipped.model, shipped.tokenizer, tm.COORD_TOKENS) == []
    with torch.no_grad():
        shipped.model.model.language_model.layers[2].self_attn.v_proj.weight[0, rp.layout_for(
            shipped.model.config).image.start] = 0.5
    assert rp.wiring_problems(shipped.model, shipped.tokenizer, tm.COORD_TOKENS) == [
        "decoder layer 2 holds no wired copy head"]
