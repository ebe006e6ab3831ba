"""What in a wired tabletop model is built by hand and what is learned, counted from its weights.

``python -m chatspot_ros.training.inventory [MODEL_DIR]`` prints the Markdown table the README and
the model card carry (a test checks that they carry exactly this output): every parameter of the
checkpoint falls in one row, and the hand-built rows are located with referring_path's layout,
so the counts are read from the weights, never typed in.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

SHIPPED = "chatspot_ros/models/tabletop"


@dataclass(frozen=True)
class Row:
    part: str
    how: str  # "built by hand" | "learned (stage 0)" | "learned (stage scratch)" | ...
    parameters: int
    note: str


def _numel(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())


def _nonzero(tensor: Any) -> int:
    return int((tensor != 0).sum())


def inventory(model: Any) -> list[Row]:
    """One row per part of a wired tabletop model; the rows' parameters add up to the model's."""
    from chatspot_ros.training import referring_path as rp

    layout = rp.layout_for(model.config)
    lm = model.model.language_model
    tower, projector = model.model.vision_tower, model.model.multi_modal_projector
    wired = lm.layers[:rp.WIRED_LAYERS]
    trained = lm.layers[rp.WIRED_LAYERS:]
    emb = lm.get_input_embeddings().weight
    attn_nonzero = sum(_nonzero(getattr(layer.self_attn, n).weight) for layer in wired
                       for n in ("q_proj", "k_proj", "v_proj", "o_proj"))
    units = sum(int((layer.mlp.down_proj.weight != 0).any(0).sum()) for layer in wired)
    n = layout.vision_dims
    pos_dims = tower.embeddings.position_embedding.weight[:, :n].numel()
    # The tower's rows that write the position dims are set by wire_vision (zero, or LayerNorm's
    # identity) and pinned by protect_vision's gradient hooks: built by hand, though in learned modules.
    pinned_vision = sum(t[:n].numel() for t in (
        tower.embeddings.patch_embedding.weight, tower.embeddings.class_embedding,
        tower.pre_layrnorm.weight, tower.pre_layrnorm.bias,
        *(t for layer in tower.encoder.layers for linear in (layer.self_attn.out_proj, layer.mlp.fc2)
          for t in (linear.weight, linear.bias))))
    # Likewise the box channel (SEL, SEL + 1) of the trained layers and the final norm: protect_box_readout.
    sel = slice(layout.sel, layout.sel + 2)
    pinned_box = lm.norm.weight[sel].numel() + sum(
        t[sel].numel() for layer in trained for t in (layer.self_attn.o_proj.weight, layer.mlp.down_proj.weight))
    readout = 2 * model.lm_head.weight.shape[0]
    rows = [
        Row("vision tower", "learned (stage 0)", _numel(tower) - pos_dims - pinned_vision,
            "supervised per patch with the world's exact colour/shape masks and object boxes (vision_pretrain.py)"),
        Row("vision position one-hots", "built by hand", pos_dims + pinned_vision,
            f"patch column/row one-hots in {n} position-embedding dims, and the tower's rows that write those dims "
            "(patch and class embedding, pre-LayerNorm, every out_proj and fc2: zero or identity), pinned by "
            "gradient hooks"),
        Row("projector", "built by hand", _numel(projector),
            f"{_nonzero(projector.linear_1.weight) + _nonzero(projector.linear_2.weight):,} non-zero weights: "
            "column/row one-hots and the stage-0 head's logits and box, passed through unchanged"),
        Row("input embeddings", "built by hand", emb.numel(),
            f"markers, bound codes, colour/shape one-hots in {layout.content} dims; the other "
            f"{emb.shape[1] - layout.content} dims fixed random"),
        Row(f"decoder layers 0-{rp.WIRED_LAYERS - 1}", "built by hand", sum(_numel(layer) for layer in wired),
            f"{attn_nonzero} non-zero attention weights and {units} MLP units do the work (the rest frozen random "
            "or zero); query scales fitted on rendered frames"),
        Row(f"decoder layers {rp.WIRED_LAYERS}-{len(lm.layers) - 1} and final norm", "learned",
            sum(_numel(layer) for layer in trained) + _numel(lm.norm) - pinned_box,
            "answers: category words, attributes, captions, plans, counts (stage scratch, --freeze-path)"),
        Row("LM head", "learned", model.lm_head.weight.numel() - readout,
            "all columns but the two box-readout columns"),
        Row("LM head box readout", "built by hand", readout + pinned_box,
            "two columns that turn the wired box value into the nearest coordinate token (REC), and the rows of "
            f"that box channel in layers {rp.WIRED_LAYERS}-{len(lm.layers) - 1} and the final norm, pinned by "
            "gradient hooks"),
    ]
    total = sum(p.numel() for p in model.parameters())
    if sum(r.parameters for r in rows) != total:
        raise RuntimeError("inventory rows do not add up to the model's parameters")
    return rows


def markdown(rows: list[Row]) -> str:
    total = sum(r.parameters for r in rows)
    hand = sum(r.parameters for r in rows if r.how == "built by hand")
    lines = ["| part | how | parameters | what it holds |", "|---|---|---|---|"]
    lines += [f"| {r.part} | {r.how} | {r.parameters:,} | {r.note} |" for r in rows]
    lines.append(f"| **total** | built by hand {hand:,}; learned {total - hand:,} | **{total:,}** | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from chatspot_ros.training.model_setup import from_checkpoint

    args = sys.argv[1:] if argv is None else argv
    setup = from_checkpoint(args[0] if args else SHIPPED, add_box_tokens=False)
    print(markdown(inventory(setup.model)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
