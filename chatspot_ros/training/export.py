"""Save a trained model as a llava-hf checkpoint folder with the published weight names.

transformers 5 ``save_pretrained`` writes ``model.vision_tower.embeddings...`` and
``model.language_model...``; published llava-hf checkpoints (and vLLM, and transformers 4.x)
use ``vision_tower.vision_model...``, ``language_model.model...`` and ``language_model.lm_head``.
transformers 5 reads the published names through its conversion mapping, so writing them keeps
one folder readable everywhere. The processor files are written in both layouts
(``preprocessor_config.json`` and transformers 5's ``processor_config.json``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from chatspot_ros.tokens import IMAGE_TOKEN

# (prefix transformers 5 uses in memory, prefix published llava-hf checkpoints use), first match wins
PUBLISHED_PREFIXES: tuple[tuple[str, str], ...] = (
    ("model.vision_tower.", "vision_tower.vision_model."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
)
WEIGHTS_FILE = "model.safetensors"


def published_name(name: str) -> str:
    for ours, published in PUBLISHED_PREFIXES:
        if name.startswith(ours):
            return published + name[len(ours):]
    raise ValueError(f"no llava-hf name for weight {name!r}")


def published_state_dict(model: Any) -> dict[str, Any]:
    """Contiguous CPU copies of every weight under its published name (tied weights written once each)."""
    out = {}
    for name, tensor in model.state_dict().items():
        out[published_name(name)] = tensor.detach().to("cpu").contiguous().clone()
    return out


def save_llava_hf(model: Any, tokenizer: Any, image_processor: Any, out_dir: str | Path,
                  *, dtype: str = "float32", extra_config: dict[str, Any] | None = None) -> Path:
    """Write config.json, model.safetensors (published names), generation, tokenizer and processor files."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlavaProcessor

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch_dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    tensors = {k: v.to(torch_dtype) if v.is_floating_point() else v for k, v in published_state_dict(model).items()}
    for stale in out.glob("*.safetensors"):
        stale.unlink()
    save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    config = model.config.to_dict()
    config["architectures"] = ["LlavaForConditionalGeneration"]
    config["torch_dtype"] = dtype
    config["dtype"] = dtype
    config.update(extra_config or {})
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    model.generation_config.save_pretrained(out)
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=model.config.vision_config.patch_size,
        vision_feature_select_strategy=model.config.vision_feature_select_strategy,
        num_additional_image_tokens=1,
        image_token=IMAGE_TOKEN,
    )
    processor.save_pretrained(out)  # processor_config.json (transformers 5) + tokenizer files
    image_processor.save_pretrained(out)  # preprocessor_config.json (transformers 4.x, vLLM)
    tokenizer.save_pretrained(out)
    return out
