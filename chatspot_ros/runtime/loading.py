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
from chatspot_ros.runtime.config import DTYPES, RuntimeConfig
from chatspot_ros.runtime.projector import (
    load_projector_strict,
    make_linear_projector,
    projector_type_of,
)
from chatspot_ros.tokens import BOX_TOKENS, IMAGE_TOKEN

LOGGER = logging.getLogger("chatspot_ros.runtime")

PICKLE_SUFFIXES: tuple[str, ...] = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
TORCH_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
assert tuple(TORCH_DTYPES) == DTYPES, "runtime.config.DTYPES and TORCH_DTYPES disagree"
FAMILY_DIALECT: dict[str, str] = {"llava": "llava", "chatspot": "chatspot"}
FAMILY_CONVERSATION: dict[str, str] = {"llava": "vicuna_v1", "chatspot": "vicuna_v1"}
# The paper writes regions between BOX_TOKENS (chatspot_ros.tokens): a tokenizer that holds both was
# trained on the chatspot dialect, whatever the projector (the paper says MLP in 3.1 and linear in 4.1).
# Where transformers keeps the image processor settings, in the order it reads them itself
# (image_processing_base.get_image_processor_dict): 5.x nests them in processor_config.json under
# "image_processor"; 4.x and published llava-hf checkpoints have preprocessor_config.json (a
# 4.x processor_config.json holds processor settings only, no "image_processor").
PROCESSOR_FILE = "processor_config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
# Tokenizer files that list added / special tokens (read as JSON, before the tokenizer loads).
_TOKENIZER_FILES: tuple[str, ...] = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
)


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint folder holds, read from its files before anything is loaded."""

    path: Path
    model_config: dict[str, Any]
    processor_config: dict[str, Any]
    processor_source: str  # the file (and key) the image processor settings were read from
    weight_files: tuple[Path, ...]
    family: str  # "llava" | "chatspot"
    projector_type: str  # "mlp2x_gelu" | "linear"
    default_dialect: str
    dialect_source: str  # why that dialect: "config.json chatspot_dialect", "tokenizer <box> tokens", ...
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
            "(llava-hf layout: config.json, *.safetensors, tokenizer files, preprocessor_config.json "
            "or processor_config.json). "
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
    processor_config, processor_source = read_processor_config(path)

    projector_type = projector_type_of(model_config)
    family, dialect, dialect_source, conversation = _family_defaults(
        model_config, projector_type, config_path, tokenizer_tokens(path))
    try:
        geometry = ImageGeometry.from_checkpoint_configs(processor_config, model_config)
    except ValueError as err:
        raise ValueError(f"{path}: unsupported image preprocessing: {err}") from None
    LOGGER.info("%s: image processor settings from %s; default dialect %s (%s)",
                path, processor_source, dialect, dialect_source)
    return CheckpointInfo(
        path=path,
        model_config=model_config,
        processor_config=processor_config,
        processor_source=processor_source,
        weight_files=weight_files,
        family=family,
        projector_type=projector_type,
        default_dialect=dialect,
        dialect_source=dialect_source,
        conversation=conversation,
        geometry=geometry,
        # One source of truth with Φ: the pixels are padded exactly when the geometry the region
        # coordinates are normalized against says the model sees a padded square.
        pad_to_square=geometry.mode is ResizeMode.PAD and not processor_pads_to_square(processor_config),
    )


def read_processor_config(path: Path) -> tuple[dict[str, Any], str]:
    """(image processor settings, where they came from), from any layout transformers writes for LLaVA."""
    processor_path = path / PROCESSOR_FILE
    if processor_path.is_file():
        nested = _read_json(processor_path).get("image_processor")
        if nested is not None:
            if not isinstance(nested, dict):
                raise ValueError(f"{processor_path}: 'image_processor' must be a JSON object")
            return nested, f'{PROCESSOR_FILE} ("image_processor")'
    preprocessor_path = path / PREPROCESSOR_FILE
    if preprocessor_path.is_file():
        return _read_json(preprocessor_path), PREPROCESSOR_FILE
    raise FileNotFoundError(
        f"{path} has no image processor settings: neither {PREPROCESSOR_FILE} (transformers 4.x, llava-hf) "
        f"nor {PROCESSOR_FILE} with an \"image_processor\" entry (transformers 5 save_pretrained)"
    )


def tokenizer_tokens(path: Path) -> frozenset[str]:
    """The added and special tokens the checkpoint's tokenizer files declare (no tokenizer is loaded)."""
    found: set[str] = set()

    def take(item: Any) -> None:
        if isinstance(item, str):
            found.add(item)
        elif isinstance(item, dict) and isinstance(item.get("content"), str):
            found.add(item["content"])

    for name in _TOKENIZER_FILES:
        file = path / name
        if not file.is_file():
            continue
        try:
            data = _read_json(file)
        except ValueError:
            continue  # the tokenizer itself reports a damaged file when it loads
        if name == "added_tokens.json":
            found.update(k for k in data if isinstance(k, str))
            continue
        for entry in data.get("added_tokens", ()) if isinstance(data.get("added_tokens"), list) else ():
            take(entry)
        decoder = data.get("added_tokens_decoder")
        if isinstance(decoder, dict):
            for entry in decoder.values():
                take(entry)
        for key in ("additional_special_tokens", "extra_special_tokens"):
            value = data.get(key)
            items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
            for entry in items:
                take(entry)
    return frozenset(found)


def _family_defaults(model_config: dict[str, Any], projector_type: str, config_path: Path,
                     tokens: frozenset[str] = frozenset()) -> tuple[str, str, str, str]:
    """(family, default dialect, why that dialect, conversation template).

    The family follows the projector (overridable with ``chatspot_family``). The dialect is
    ``chatspot_dialect`` from config.json when given; else ``chatspot`` when the tokenizer holds
    both box tokens (the checkpoint was trained on them); else the family's.
    """
    family = str(model_config.get("chatspot_family", "chatspot" if projector_type == "linear" else "llava"))
    if family not in FAMILY_DIALECT:
        raise ValueError(f"{config_path}: chatspot_family must be one of {', '.join(FAMILY_DIALECT)}")
    if "chatspot_dialect" in model_config:
        dialect, source = str(model_config["chatspot_dialect"]), "chatspot_dialect in config.json"
    elif all(t in tokens for t in BOX_TOKENS):
        dialect, source = "chatspot", f"the tokenizer holds {' and '.join(BOX_TOKENS)}"
    else:
        dialect, source = FAMILY_DIALECT[family], f"the {family} family's (no {'/'.join(BOX_TOKENS)} tokens)"
    if dialect not in DIALECTS:
        raise ValueError(f"{config_path}: chatspot_dialect {dialect!r} is not one of {', '.join(DIALECTS)}")
    conversation = str(model_config.get("chatspot_conversation", FAMILY_CONVERSATION[family]))
    if conversation not in CONVERSATIONS:
        raise ValueError(
            f"{config_path}: chatspot_conversation {conversation!r} is not one of {', '.join(CONVERSATIONS)}"
        )
    return family, dialect, source, conversation


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


def _quiet_torchao_import() -> None:
    """transformers imports torchao (when installed) in every from_pretrained; on a machine without
    its CUDA kernels, torchao then warns about each kernel library it cannot load, and registers a
    pytree type torch calls deprecated. Neither concerns a user; both are silenced unless the
    application configured those loggers itself."""
    for name in ("torchao", "torchao.kernel.intmm", "torch.utils._pytree"):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.ERROR)


_quiet_torchao_import()


def quantize_language_model(model: Any, mode: str) -> int:
    """Weight-only int8 (any device) or int4 (CUDA) of the LLM's linear layers, with torchao.

    For 8-16 GB boards where a 7B model in fp16 (13.5 GB of weights) does not fit. The vision tower
    and projector stay in the model's dtype (small, and the regions' features are read from them).
    The LM head is quantized too: it is 260 MB of a 7B model's weights. Returns the layers quantized.
    """
    try:
        from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig, quantize_
    except ImportError as exc:
        raise ValueError(f"quantization {mode!r} needs torchao (pip install torchao): {exc}") from exc
    device = next(model.parameters()).device
    if mode == "int4" and device.type != "cuda":
        raise ValueError("quantization 'int4' needs a CUDA device (torchao's int4 kernels); use 'int8' on the CPU")
    config = Int8WeightOnlyConfig() if mode == "int8" else Int4WeightOnlyConfig(group_size=128)
    parts = (model.model.language_model, model.lm_head)
    count = sum(isinstance(m, torch.nn.Linear) for part in parts for m in part.modules())
    for part in parts:
        quantize_(part, config)  # torchao's default filter: every nn.Linear
    LOGGER.info("quantized %d linear layers of the language model to %s weights (torchao)", count, mode)
    return count


def load_model(info: CheckpointInfo, config: RuntimeConfig) -> tuple[Any, Any, Any]:
    """(model, tokenizer, image processor), the model on the device in eval mode."""
    from transformers import AutoTokenizer, LlavaForConditionalGeneration
    from transformers.utils import logging as hf_logging

    from chatspot_ros.runtime.compat import check_transformers, load_image_processor

    check_transformers()  # a version outside the tested range is refused, naming the range

    dtype = TORCH_DTYPES[config.dtype]
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {config.device!r} asked for, but torch sees no CUDA device; "
                         "use the CPU (--device cpu; the node: model.device:=cpu)")
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
    if config.quantization != "none":
        quantize_language_model(model, config.quantization)

    tokenizer = AutoTokenizer.from_pretrained(
        str(info.path), local_files_only=True, trust_remote_code=config.trust_remote_code
    )
    image_token_id = model.config.image_token_id
    if tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) != image_token_id:
        raise ValueError(
            f"{info.path}: the tokenizer's '{IMAGE_TOKEN}' id is {tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)}, "
            f"config.json says image_token_index={image_token_id}; the tokenizer and model do not belong together"
        )
    image_processor = load_image_processor(info.path, info.processor_config)
    return model, tokenizer, image_processor
