"""Modality-align projectors and how a checkpoint names them.

transformers' ``LlavaMultiModalProjector`` is always ``linear_1 -> act -> linear_2`` (LLaVA-1.5's
"mlp2x_gelu"). The ChatSpot paper uses a single linear layer. A checkpoint in the llava-hf layout
says which one it holds with a ``projector_type`` entry in ``config.json``:

* missing or ``"mlp2x_gelu"``: the stock two-layer projector, keys ``multi_modal_projector.linear_1.*``
  and ``multi_modal_projector.linear_2.*``;
* ``"linear"``: one ``nn.Linear(vision_hidden * n_feature_layers, text_hidden)``, keys
  ``multi_modal_projector.linear.weight`` and ``multi_modal_projector.linear.bias`` (the llava-hf
  key layout that transformers 5's save_pretrained writes; a ``model.`` prefix is accepted too).

The loader swaps :class:`LinearProjector` in for a ``"linear"`` checkpoint and loads its weights
strictly: every key present, no key left over, every shape equal.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

PROJECTOR_TYPES: tuple[str, ...] = ("mlp2x_gelu", "linear")
LINEAR_PROJECTOR_KEYS: tuple[str, ...] = ("linear.weight", "linear.bias")


class LinearProjector(nn.Module):
    """ChatSpot's projector: one linear map from vision features to the LLM's embedding space."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=bias)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.linear(image_features)  # (B, N, C_vis) -> (B, N, C_txt)


def projector_type_of(model_config: Mapping[str, object] | object) -> str:
    """The projector type a checkpoint's config declares ("mlp2x_gelu" when it says nothing)."""
    if isinstance(model_config, Mapping):
        value = model_config.get("projector_type", None)
    else:
        value = getattr(model_config, "projector_type", None)
    name = "mlp2x_gelu" if value in (None, "", "mlp2x_gelu", "mlp") else str(value)
    if name not in PROJECTOR_TYPES:
        raise ValueError(
            f"config.json has projector_type={value!r}; supported: {', '.join(PROJECTOR_TYPES)}"
        )
    return name


def make_linear_projector(config: object) -> LinearProjector:
    """A LinearProjector sized from a LlavaConfig."""
    layers = config.vision_feature_layer  # type: ignore[attr-defined]
    n_layers = 1 if isinstance(layers, int) else len(layers)
    return LinearProjector(
        config.vision_config.hidden_size * n_layers,  # type: ignore[attr-defined]
        config.text_config.hidden_size,  # type: ignore[attr-defined]
        bias=bool(getattr(config, "multimodal_projector_bias", True)),
    )


def load_projector_strict(module: nn.Module, tensors: Mapping[str, torch.Tensor], where: str) -> None:
    """Load ``tensors`` (keys relative to the projector) into ``module``: all keys, exact shapes."""
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"{where}: projector weights do not match a {type(module).__name__}: "
            f"missing {missing}, unexpected {unexpected}"
        )
    for key, value in own.items():
        if tuple(tensors[key].shape) != tuple(value.shape):
            raise ValueError(
                f"{where}: projector weight {key!r} has shape {tuple(tensors[key].shape)}, "
                f"the config needs {tuple(value.shape)}"
            )
    module.load_state_dict(dict(tensors), strict=True)
