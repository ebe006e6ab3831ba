"""What the served model expects, read from a local copy of its config files (no weights needed).

The geometry (Φ), the dialect and the conversation template come from the same files and the
same rules as the local runtime's (``runtime.loading``), so a region is normalized against the
image the served model sees. vLLM ignores LLaVA's ``image_aspect_ratio: "pad"`` (it runs the HF
image processor only), so for pad-mode checkpoints the client pads the frame itself
(``pad_to_square``) with the colour the local runtime pads with.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chatspot_ros.referring.geometry import ImageGeometry, ResizeMode, processor_pads_to_square

# model_type -> (family, dialect, conversation) for served models the local runtime does not load.
OTHER_FAMILIES: dict[str, tuple[str, str, str]] = {
    "qwen2_vl": ("qwen2_vl", "qwen_vl", "chatml"),
    "qwen2_5_vl": ("qwen2_5_vl", "qwen2_5_vl", "chatml"),
}


@dataclass(frozen=True)
class ServedModelInfo:
    path: Path
    model_type: str
    family: str
    default_dialect: str
    dialect_source: str
    conversation: str
    geometry: ImageGeometry
    pad_to_square: bool  # the client pads frames (geometry PAD and the processor does not pad)
    background: tuple[int, int, int]  # LLaVA's expand2square colour: int(255 * image_mean)
    processor_source: str


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return data


def read_served_model(folder: str | Path) -> ServedModelInfo:
    """Read config.json, the image processor settings and the tokenizer's tokens of ``folder``."""
    path = Path(folder).expanduser()
    config_path = path / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{path} has no config.json: server.model_config (or --model) must be a local copy of the served "
            "checkpoint's config files (config.json, preprocessor_config.json or processor_config.json, tokenizer "
            "files); the weights are not needed"
        )
    model_config = _read_json(config_path)
    model_type = str(model_config.get("model_type", ""))
    if model_type == "llava":
        from chatspot_ros.runtime.loading import _family_defaults, read_processor_config, tokenizer_tokens
        from chatspot_ros.runtime.projector import projector_type_of

        processor_config, source = read_processor_config(path)
        family, dialect, dialect_source, conversation = _family_defaults(
            model_config, projector_type_of(model_config), config_path, tokenizer_tokens(path))
    elif model_type in OTHER_FAMILIES:
        from chatspot_ros.runtime.loading import read_processor_config

        processor_config, source = read_processor_config(path)
        family, dialect, conversation = OTHER_FAMILIES[model_type]
        dialect = str(model_config.get("chatspot_dialect", dialect))
        dialect_source = "chatspot_dialect in config.json" if "chatspot_dialect" in model_config else f"{model_type}'s"
    else:
        raise ValueError(
            f"{config_path} has model_type={model_type!r}; the vllm backend knows llava, "
            f"{', '.join(OTHER_FAMILIES)}"
        )
    try:
        geometry = ImageGeometry.from_checkpoint_configs(processor_config, model_config)
    except ValueError as err:
        raise ValueError(f"{path}: unsupported image preprocessing: {err}") from None
    pad = geometry.mode is ResizeMode.PAD and not processor_pads_to_square(processor_config)
    mean = processor_config.get("image_mean") or ()
    if pad and len(mean) != 3:
        raise ValueError(f"{path}: pad-to-square needs the image processor's image_mean (the padding colour)")
    background = tuple(int(255 * float(m)) for m in mean) if len(mean) == 3 else (0, 0, 0)
    return ServedModelInfo(path=path, model_type=model_type, family=family, default_dialect=dialect,
                           dialect_source=dialect_source, conversation=conversation, geometry=geometry,
                           pad_to_square=pad, background=background,  # type: ignore[arg-type]
                           processor_source=source)
