"""Load a local llava-hf-layout checkpoint (LLaVA-1.5 or ChatSpot-style) for the runtime.

Checks the folder before transformers sees it, so that a wrong path or a pickle-only checkpoint
fails with a message that says what to do. Never downloads, never adds tokens to the vocabulary,
never writes into the model folder.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from chatspot_ros.referring.conversation import CONVERSATIONS
from chatspot_ros.referring.dialects import DIALECTS
from chatspot_ros.referring.geometry import ImageGeometry, ResizeMode, processor_pads_to_square
from chatspot_ros.runtime.config import RuntimeConfig
from chatspot_ros.runtime.projector import (
    load_projector_strict,
    make_linear_projector,
    projector_type_of,
)

LOGGER = logging.getLogger("chatspot_ros.runtime")

PICKLE_SUFFIXES: tuple[str, ...] = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
TORCH_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
FAMILY_DIALECT: dict[str, str] = {"llava": "llava", "chatspot": "chatspot"}
FAMILY_CONVERSATION: dict[str, str] = {"llava": "vicuna_v1", "chatspot": "vicuna_v1"}


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint folder holds, read from its files before anything is loaded."""

    path: Path
    model_config: dict[str, Any]
    processor_config: dict[str, Any]
    weight_files: tuple[Path, ...]
    family: str  # "llava" | "chatspot"
    projector_type: str  # "mlp2x_gelu" | "linear"
    default_dialect: str
    conversation: str
    geometry: ImageGeometry  # how the model sees a frame (Φ normalizes against it)
    pad_to_square: bool  # the runtime pads frames itself (geometry is PAD, the processor does not pad)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); the checkpoint folder is damaged") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return data


def inspect_checkpoint(config: RuntimeConfig) -> CheckpointInfo:
    """Check the folder's files and read the family, dialect, template and geometry defaults from them."""
    path = Path(config.model_path).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"model folder {path} does not exist; pass the path of a local checkpoint folder "
            "(llava-hf layout: config.json, *.safetensors, tokenizer files, preprocessor_config.json). "
            "Nothing is downloaded."
        )
    if not path.is_dir():
        raise FileNotFoundError(f"model path {path} is a file; pass the checkpoint folder that holds config.json")
    config_path = path / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{path} has no config.json; is it a transformers checkpoint folder (save_pretrained)?")
    model_config = _read_json(config_path)
    model_type = model_config.get("model_type")
    if model_type != "llava":
        raise ValueError(
            f"{config_path} has model_type={model_type!r}; this runtime loads LLaVA-1.5 and ChatSpot-style "
            "checkpoints in the llava-hf layout (model_type 'llava')"
        )
    if "auto_map" in model_config and not config.trust_remote_code:
        raise ValueError(
            f"{config_path} asks for custom code (auto_map); it is not run unless trust_remote_code=True"
        )
    weight_files = _weight_files(path, config.safetensors_only)
    if not ((path / "tokenizer.json").is_file() or (path / "tokenizer.model").is_file()):
        raise FileNotFoundError(f"{path} has no tokenizer (tokenizer.json or tokenizer.model)")
    processor_path = path / "preprocessor_config.json"
    if not processor_path.is_file():
        raise FileNotFoundError(f"{path} has no preprocessor_config.json (the image processor settings)")
    processor_config = _read_json(processor_path)

    projector_type = projector_type_of(model_config)
    family, dialect, conversation = _family_defaults(model_config, projector_type, config_path)
    try:
        geometry = ImageGeometry.from_checkpoint_configs(processor_config, model_config)
    except ValueError as err:
        raise ValueError(f"{path}: unsupported image preprocessing: {err}") from None
    return CheckpointInfo(
        path=path,
        model_config=model_config,
        processor_config=processor_config,
        weight_files=weight_files,
        family=family,
        projector_type=projector_type,
        default_dialect=dialect,
        conversation=conversation,
        geometry=geometry,
        # One source of truth with Φ: the pixels are padded exactly when the geometry the region
        # coordinates are normalized against says the model sees a padded square.
        pad_to_square=geometry.mode is ResizeMode.PAD and not processor_pads_to_square(processor_config),
    )


def _family_defaults(model_config: dict[str, Any], projector_type: str, config_path: Path) -> tuple[str, str, str]:
    """(family, default dialect, conversation template): from the projector, overridable in config.json."""
    family = str(model_config.get("chatspot_family", "chatspot" if projector_type == "linear" else "llava"))
    if family not in FAMILY_DIALECT:
        raise ValueError(f"{config_path}: chatspot_family must be one of {', '.join(FAMILY_DIALECT)}")
    dialect = str(model_config.get("chatspot_dialect", FAMILY_DIALECT[family]))
    if dialect not in DIALECTS:
        raise ValueError(f"{config_path}: chatspot_dialect {dialect!r} is not one of {', '.join(DIALECTS)}")
    conversation = str(model_config.get("chatspot_conversation", FAMILY_CONVERSATION[family]))
    if conversation not in CONVERSATIONS:
        raise ValueError(
            f"{config_path}: chatspot_conversation {conversation!r} is not one of {', '.join(CONVERSATIONS)}"
        )
    return family, dialect, conversation


def _weight_files(path: Path, safetensors_only: bool) -> tuple[Path, ...]:
    """The checkpoint's weight files: safetensors, or pickles only when they are allowed."""
    safetensors = sorted(path.glob("*.safetensors"))
    if safetensors:
        return tuple(safetensors)
    pickles = sorted(p for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if not pickles:
        raise FileNotFoundError(f"{path} holds no weights (*.safetensors)")
    if safetensors_only:
        raise ValueError(
            f"{path} only has pickle weights ({', '.join(p.name for p in pickles)}); pickle files can run code "
            "when loaded. Convert them to safetensors (load with torch.load(weights_only=True) and "
            "save_pretrained(safe_serialization=True)) or set safetensors_only=False if you trust them."
        )
    return tuple(pickles)


def _projector_tensors(weight_files: tuple[Path, ...]) -> dict[str, torch.Tensor]:
    """The linear projector's tensors from the safetensors files, keys relative to the projector."""
    from safetensors import safe_open

    found: dict[str, torch.Tensor] = {}
    for file in weight_files:
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                marker = "multi_modal_projector."
                if marker in key:
                    found[key.split(marker, 1)[1]] = handle.get_tensor(key)
    return found


def load_model(info: CheckpointInfo, config: RuntimeConfig) -> tuple[Any, Any, Any]:
    """(model, tokenizer, image processor), the model on the device in eval mode."""
    from transformers import AutoImageProcessor, AutoTokenizer, LlavaForConditionalGeneration
    from transformers.utils import logging as hf_logging

    dtype = TORCH_DTYPES[config.dtype]
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {config.device!r} asked for, but torch sees no CUDA device; use device='cpu'")
    linear = info.projector_type == "linear"
    previous = hf_logging.get_verbosity()
    if linear:  # linear_1/linear_2 are reported missing; the strict check below replaces them
        hf_logging.set_verbosity_error()
    try:
        model, loading = LlavaForConditionalGeneration.from_pretrained(
            str(info.path),
            dtype=dtype,
            use_safetensors=True if config.safetensors_only else None,
            trust_remote_code=config.trust_remote_code,
            local_files_only=True,
            output_loading_info=True,
        )
    finally:
        hf_logging.set_verbosity(previous)
    missing = set(loading.get("missing_keys", ()))
    unexpected = set(loading.get("unexpected_keys", ()))
    mismatched = loading.get("mismatched_keys", ())
    if linear:
        missing = {k for k in missing if "multi_modal_projector.linear_" not in k}
        unexpected = {k for k in unexpected if "multi_modal_projector." not in k}
    if missing or unexpected or mismatched:
        raise ValueError(
            f"{info.path}: weights do not match config.json: missing {sorted(missing)[:8]}, "
            f"unexpected {sorted(unexpected)[:8]}, mismatched {list(mismatched)[:8]}"
        )
    if linear:
        projector = make_linear_projector(model.config)
        tensors = _projector_tensors(tuple(p for p in info.weight_files if p.suffix == ".safetensors"))
        load_projector_strict(projector, tensors, str(info.path))  # every key, every shape
        model.model.multi_modal_projector = projector.to(dtype)
    model = model.to(device).eval()

    tokenizer = AutoTokenizer.from_pretrained(
        str(info.path), local_files_only=True, trust_remote_code=config.trust_remote_code
    )
    image_token_id = model.config.image_token_id
    if tokenizer.convert_tokens_to_ids("<image>") != image_token_id:
        raise ValueError(
            f"{info.path}: the tokenizer's '<image>' id is {tokenizer.convert_tokens_to_ids('<image>')}, "
            f"config.json says image_token_index={image_token_id}; the tokenizer and model do not belong together"
        )
    image_processor = AutoImageProcessor.from_pretrained(str(info.path), local_files_only=True)
    return model, tokenizer, image_processor
