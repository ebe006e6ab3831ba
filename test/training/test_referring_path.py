"""The wired referring path (training/referring_path.py): each part, and the route end to end."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from chatspot_ros.training import referring_path as rp  # noqa: E402
from chatspot_ros.training import tabletop_model as tm  # noqa: E402


def test_bound_codes_mark_patch_centres_beyond_half_a_patch() -> None:
    # grid 4: centres 0.125, 0.375, 0.625, 0.875; half a patch = 0.125
    low, high = rp.bound_codes([0.30, 0.30], 4)
    assert low[0].tolist() == [-1, 0, 0, 0]  # 0.125 < 0.30 - 0.125
    assert high[0].tolist() == [0, 0, -1, -1]  # 0.625 > 0.30 + 0.125
    low, high = rp.bound_codes([0.0, 1.0], 4)
    assert not low[0].any() and not high[1].any()
    # a click's bounds keep exactly the column that holds it
    for v in np.linspace(0.01, 0.99, 37):
        low, high = rp.bound_codes([v], 4)
        keep = np.flatnonzero((low[0] == 0) & (high[0] == 0))
        assert int(v * 4) in keep and len(keep) <= 2


@pytest.mark.parametrize("preset", ["tabletop", "smoke"])
def test_offset_kernels_single_out_their_offset(preset: str) -> None:
    shapes = tm.PRESETS[preset]
    head_dim = shapes.text_hidden // shapes.text_heads
    omega = shapes.rope_theta ** (-np.arange(0, head_dim, 2) / head_dim)
    every, third = rp.kernel_margins(omega)
    assert every > 0.1  # any other token within 400
    assert third > 0.5  # the other coordinates of a region
    k = rp.offset_kernel(omega, [0, 1, 2, 3])
    assert k[0] == pytest.approx(1.0) and (k[1:] < rp.threshold(omega)).all()


@pytest.fixture(scope="module")
def smoke(smoke_setup_factory):
    return smoke_setup_factory(seed=3)


def test_projector_carries_columns_and_rows_unchanged(smoke) -> None:
    model = smoke.model
    layout = rp.layout_for(model.config)
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = model.model.get_image_features(pixel_values=pixels)
    feats = feats.pooler_output if hasattr(feats, "pooler_output") else feats
    feats = torch.stack(list(feats)) if isinstance(feats, (list, tuple)) else feats
    feats = feats.reshape(2, -1, model.config.text_config.hidden_size)
    g = layout.grid
    col = feats[..., layout.col]
    row = feats[..., layout.row]
    for p in range(g * g):
        r, c = divmod(p, g)
        assert col[:, p].argmax(-1).tolist() == [c, c] and row[:, p].argmax(-1).tolist() == [r, r]
        others = torch.cat([col[:, p, :c], col[:, p, c + 1:]], -1)
        assert others.abs().max() < 1e-5 and (col[:, p, c] > 0).all()


def test_wired_route_reaches_the_answer_on_unseen_frames(smoke) -> None:
    layout = rp.layout_for(smoke.model.config)
    probe = rp.build_probe(smoke.tokenizer, smoke.builder, smoke.conversation, smoke.preprocess,
                           smoke.num_image_tokens, layout.grid, tm.COORD_TOKENS, frames=10, seed=77)
    report = rp.check_path(smoke.model, probe, layout)
    for part in ("first_x", "first_y", "low_x", "low_y", "high_x", "high_y", "inside", "copy"):
        assert report[f"min_{part}"] > 0.98, (part, report)
    assert report["min_region_cosine"] > 0.99


def test_stage0_keeps_the_position_dims_and_freeze_stops_the_path(smoke_setup_factory) -> None:
    from chatspot_ros.training.vision_pretrain import pretrain_vision

    setup = smoke_setup_factory(seed=4)
    layout = rp.layout_for(setup.model.config)
    tower = setup.model.model.vision_tower
    before = tower.embeddings.position_embedding.weight[:, :layout.vision_dims].clone()
    other = tower.embeddings.position_embedding.weight[:, layout.vision_dims:].clone()
    losses, head = pretrain_vision(setup.model, setup.preprocess, seed=5, frames=16, steps=3, batch_size=4,
                                   layout=layout, progress=False)
    assert head.weight.shape[0] == 15 and len(losses) == 3  # 7 colours, 4 shapes, a box
    assert torch.equal(tower.embeddings.position_embedding.weight[:, :layout.vision_dims], before)
    assert not torch.equal(tower.embeddings.position_embedding.weight[:, layout.vision_dims:], other)
    for layer in tower.encoder.layers:
        assert not layer.mlp.fc2.weight[:layout.vision_dims].any()
    rp.wire_projector(setup.model, layout, head)  # as chatspot-train does after stage 0
    assert rp.wiring_problems(setup.model, setup.tokenizer, tm.COORD_TOKENS) == []  # --freeze-path accepts it
    frozen = rp.freeze(setup.model)
    assert any(n.startswith("layers.3.") for n in frozen) and not any(n.startswith("layers.4.") for n in frozen)
    trainable = {n for n, p in setup.model.named_parameters() if p.requires_grad}
    assert trainable and all("lm_head" in n or "layers.4." in n or n.endswith("norm.weight") for n in trainable)


def test_patch_box_targets_give_each_patch_the_box_of_the_object_over_most_of_it() -> None:
    from chatspot_ros.training.vision_pretrain import patch_box_targets
    from chatspot_ros.world.scene import Scene, WorldObject

    # a 40 x 40 cube at (0, 0) in a 320 x 240 frame: grid 4 cells are 80 x 60 px
    cube = WorldObject("red", "cube", (220, 40, 40), 40, 0, 0)
    scene = Scene(0, 0, "wood", (150, 110, 70), 0.0, (1.0, 1.0), (cube,))
    assert scene.size == (320, 240)
    box, weight = patch_box_targets(scene, 4)
    assert weight[0] == pytest.approx(40 * 40 / (80 * 60))
    assert box[0] == pytest.approx([0.0, 0.0, 40 / 320, 40 / 240])
    assert not weight[1:].any() and not box[1:].any()


def test_box_readout_peaks_at_the_coordinate_nearest_the_found_value() -> None:
    import types

    tokens = tm.COORD_TOKENS
    layout = rp.PathLayout(4)
    vocab = {t: i for i, t in enumerate(tokens)}
    tokenizer = types.SimpleNamespace(convert_tokens_to_ids=lambda names: [vocab[n] for n in names])
    model = types.SimpleNamespace(lm_head=torch.nn.Linear(layout.content + 8, len(tokens), bias=False))
    rp.wire_box_readout(model, layout, tokenizer, tokens, gain=50.0)
    rng = np.random.default_rng(0)
    for _ in range(200):
        v, c = rng.uniform(0, 1), rng.uniform(0.2, 3.0)
        h = torch.zeros(layout.content + 8)
        h[layout.sel], h[layout.sel + 1] = v * c, c
        best = float(tokens[int(model.lm_head(h).argmax())])
        assert abs(best - v) <= 0.005 + 1e-9, (v, c, best)


def test_answer_box_route_flags_the_slots_and_gathers_the_expression_words(smoke) -> None:
    layout = rp.layout_for(smoke.model.config)
    probe = tm.box_probe(smoke, frames=6, seed=78)
    report = rp.check_answer_box(smoke.model, probe, layout, smoke.tokenizer, tm.COORD_TOKENS)
    for part in ("slot_y1", "slot_x2", "slot_y2", "gather"):
        assert report[f"min_{part}"] > 0.98, (part, report)
    # no stage 0 here, so the box dims are random: the boxes themselves are measured on the shipped model


def test_freeze_keeps_the_box_readout_as_wired(smoke_setup_factory) -> None:
    setup = smoke_setup_factory(seed=5)
    layout = rp.layout_for(setup.model.config)
    rp.freeze(setup.model)
    sel = slice(layout.sel, layout.sel + 2)
    lm = setup.model.model.language_model
    readout = setup.model.lm_head.weight[:, sel].clone()
    optimizer = torch.optim.SGD([p for p in setup.model.parameters() if p.requires_grad], lr=1.0)
    probe = tm.box_probe(setup, frames=2, seed=79)
    out = setup.model(input_ids=probe.input_ids, attention_mask=probe.attention_mask, pixel_values=probe.pixel_values)
    (out.logits.float() ** 2).mean().backward()
    optimizer.step()
    assert torch.equal(setup.model.lm_head.weight[:, sel], readout)
    assert (lm.norm.weight[sel] == 1).all()
    for layer in lm.layers[rp.WIRED_LAYERS:]:
        assert not layer.self_attn.o_proj.weight[sel].any() and not layer.mlp.down_proj.weight[sel].any()

