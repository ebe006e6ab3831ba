"""Loader: clear errors for bad folders, families and dialect defaults, the strict linear projector."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from chatspot_ros.referring import ImageGeometry, ResizeMode
from chatspot_ros.runtime import ChatSpotRuntime, RuntimeConfig
from chatspot_ros.runtime.loading import inspect_checkpoint
from chatspot_ros.runtime.projector import LinearProjector


def _copy(src: Path, dst: Path, drop: tuple[str, ...] = ()) -> Path:
    shutil.copytree(src, dst)
    for name in drop:
        (dst / name).unlink()
    return dst


def _projector_key(tensors) -> str:
    """The saved name of the linear projector (transformers 5 writes the llava-hf layout, no 'model.')."""
    (name,) = [k for k in tensors if k.endswith("multi_modal_projector.linear.weight")]
    return name[: -len(".weight")]


def _load(path: Path, **kwargs) -> ChatSpotRuntime:
    return ChatSpotRuntime.load(RuntimeConfig(model_path=str(path), **kwargs))


def test_llava_checkpoint_defaults(runtime) -> None:
    assert runtime.family == "llava"
    # The tiny tokenizer holds <box> and </box> (trained on them): the chatspot dialect, whatever
    # the projector; test_dialect_default_* below cover the other cases.
    assert runtime.default_dialect == "chatspot"
    assert runtime.conversation_name == "vicuna_v1"
    assert runtime.backend_name == "torch"
    assert runtime.preprocess.pad_to_square  # image_aspect_ratio "pad" in config.json
    assert runtime.num_image_tokens == 64


def test_missing_folder(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _load(tmp_path / "nope")


@pytest.mark.parametrize("missing, match", [
    (("config.json",), "no config.json"),
    (("tokenizer.json",), "no tokenizer"),
    (("preprocessor_config.json", "processor_config.json"), "no image processor settings"),
    (("model.safetensors",), "holds no weights"),
])
def test_missing_files(tiny_model_dir, tmp_path, missing, match) -> None:
    folder = _copy(tiny_model_dir, tmp_path / "ckpt", drop=missing)
    with pytest.raises(FileNotFoundError, match=match):
        _load(folder)


def test_pickle_only_weights_are_refused(tiny_model_dir, tmp_path) -> None:
    folder = _copy(tiny_model_dir, tmp_path / "ckpt", drop=("model.safetensors",))
    (folder / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ValueError, match="pickle"):
        _load(folder)


def test_wrong_model_type_and_remote_code(tiny_model_dir, tmp_path) -> None:
    folder = _copy(tiny_model_dir, tmp_path / "ckpt")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "qwen2_5_vl"}))
    with pytest.raises(ValueError, match="model_type"):
        _load(folder)
    (folder / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "x.Y"}}))
    with pytest.raises(ValueError, match="trust_remote_code"):
        _load(folder)


def test_cuda_without_cuda(tiny_model_dir) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="CUDA"):
        _load(tiny_model_dir, device="cuda", dtype="float16")


def test_loading_never_writes_into_the_model_folder(tiny_model_dir) -> None:
    before = sorted((p.name, p.stat().st_mtime_ns) for p in tiny_model_dir.iterdir())
    _load(tiny_model_dir).close()
    assert sorted((p.name, p.stat().st_mtime_ns) for p in tiny_model_dir.iterdir()) == before


def test_linear_projector_loads_strictly(chatspot_model_dir) -> None:
    from safetensors.torch import load_file

    rt = _load(chatspot_model_dir)
    assert rt.family == "chatspot" and rt.default_dialect == "chatspot"
    projector = rt.model.model.multi_modal_projector
    assert isinstance(projector, LinearProjector)
    saved = load_file(str(chatspot_model_dir / "model.safetensors"))
    key = _projector_key(saved)
    assert torch.equal(projector.linear.weight, saved[f"{key}.weight"])
    assert torch.equal(projector.linear.bias, saved[f"{key}.bias"])
    assert not any("linear_1" in k or "linear_2" in k for k in saved)
    rt.close()


@pytest.mark.parametrize("change", ["drop_bias", "wrong_shape", "extra_key"])
def test_linear_projector_mismatch_is_an_error(chatspot_model_dir, tmp_path, change) -> None:
    from safetensors.torch import load_file, save_file

    folder = _copy(chatspot_model_dir, tmp_path / "ckpt")
    tensors = load_file(str(folder / "model.safetensors"))
    key = _projector_key(tensors)
    if change == "drop_bias":
        del tensors[f"{key}.bias"]
    elif change == "wrong_shape":
        tensors[f"{key}.weight"] = tensors[f"{key}.weight"][:, :-1].contiguous()
    else:
        tensors[key.replace(".linear", ".scale")] = torch.ones(1)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="projector"):
        _load(folder)


def test_unknown_projector_type(chatspot_model_dir, tmp_path) -> None:
    folder = _copy(chatspot_model_dir, tmp_path / "ckpt")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "projector_type": "qformer"}))
    with pytest.raises(ValueError, match="projector_type"):
        _load(folder)


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("model_changes, processor_changes, mode, runtime_pads", [
    ({}, {}, ResizeMode.PAD, True),  # image_aspect_ratio "pad" in config.json (LLaVA-1.5)
    ({"image_aspect_ratio": None}, {"image_aspect_ratio": "pad"}, ResizeMode.PAD, True),
    ({"image_aspect_ratio": None}, {"image_processor_type": "LlavaImageProcessor", "do_pad": True},
     ResizeMode.PAD, False),  # HF's processor pads itself: not twice
    ({"image_aspect_ratio": "square"}, {"do_pad": True}, ResizeMode.CENTER_CROP, False),  # CLIP ignores do_pad
])
def test_padding_follows_the_geometry(tiny_model_dir, tmp_path, model_changes, processor_changes, mode,
                                      runtime_pads) -> None:
    """One decision: the runtime pads the pixels exactly when Φ normalizes against a padded square."""
    folder = _copy(tiny_model_dir, tmp_path / "ckpt")
    _edit_json(folder / "config.json", **model_changes)
    (folder / "processor_config.json").unlink()  # one file to edit: the 4.x / llava-hf layout
    _edit_json(folder / "preprocessor_config.json", **processor_changes)
    info = inspect_checkpoint(RuntimeConfig(model_path=str(folder)))
    assert info.geometry.mode is mode and info.pad_to_square is runtime_pads
    assert info.geometry == ImageGeometry.from_checkpoint_configs(info.processor_config, info.model_config)


def test_runtime_geometry_is_the_checkpoints(runtime) -> None:
    assert runtime.geometry is runtime.info.geometry and runtime.geometry.mode is ResizeMode.PAD
    assert runtime.preprocess.pad_to_square is runtime.info.pad_to_square is True


@pytest.mark.parametrize("key, value", [("chatspot_dialect", "yolo"), ("chatspot_conversation", "llama3"),
                                        ("image_aspect_ratio", "anyres")])
def test_bad_overrides_fail_before_the_weights_load(tiny_model_dir, tmp_path, key, value) -> None:
    folder = _copy(tiny_model_dir, tmp_path / "ckpt")
    _edit_json(folder / "config.json", **{key: value})
    with pytest.raises(ValueError, match=key if key != "image_aspect_ratio" else "preprocessing"):
        inspect_checkpoint(RuntimeConfig(model_path=str(folder)))


def test_engine_dir_inside_the_model_folder_is_refused(tiny_model_dir) -> None:
    before = sorted(p.name for p in tiny_model_dir.rglob("*"))
    with pytest.raises(ValueError, match="inside the model folder"):
        _load(tiny_model_dir, vision_backend="onnxruntime", engine_dir=str(tiny_model_dir / "engines"))
    assert sorted(p.name for p in tiny_model_dir.rglob("*")) == before


def test_onnxruntime_backend_writes_only_under_engine_dir(onnx_runtime, tiny_model_dir, engine_dir) -> None:
    assert list(engine_dir.glob("onnx/vision-*.onnx"))
    assert not [p for p in tiny_model_dir.rglob("*") if p.suffix in (".onnx", ".engine")]


# -- defect: checkpoints written by transformers 5 (processor_config.json only) were refused ------

def test_a_folder_written_by_llava_processor_save_pretrained_loads(tiny_model_dir, runtime, tmp_path,
                                                                    caplog) -> None:
    """transformers 5 ``LlavaProcessor.save_pretrained`` writes one processor_config.json with the
    image processor nested under "image_processor" and no preprocessor_config.json."""
    from transformers import LlavaProcessor

    folder = _copy(tiny_model_dir, tmp_path / "ckpt",
                   drop=("preprocessor_config.json", "processor_config.json", "tokenizer.json",
                         "tokenizer_config.json"))
    LlavaProcessor.from_pretrained(str(tiny_model_dir), local_files_only=True).save_pretrained(folder)
    assert not (folder / "preprocessor_config.json").exists()
    assert "image_processor" in json.loads((folder / "processor_config.json").read_text())
    with caplog.at_level("INFO", logger="chatspot_ros.runtime"):
        rt = _load(folder)
    try:
        assert rt.info.processor_source == 'processor_config.json ("image_processor")'
        assert any('processor_config.json ("image_processor")' in r.getMessage() for r in caplog.records)
        assert rt.geometry == runtime.geometry and rt.preprocess.pad_to_square is runtime.preprocess.pad_to_square
        frame = np.random.default_rng(1).integers(0, 256, (90, 130, 3), dtype=np.uint8)
        assert torch.equal(rt.encode(frame).features, runtime.encode(frame).features)
    finally:
        rt.close()


def test_the_4x_layout_reports_preprocessor_config(tiny_model_dir, tmp_path) -> None:
    folder = _copy(tiny_model_dir, tmp_path / "ckpt")
    _edit_json(folder / "processor_config.json", image_processor=None)  # a 4.x processor_config.json
    info = inspect_checkpoint(RuntimeConfig(model_path=str(folder)))
    assert info.processor_source == "preprocessor_config.json"
    assert info.processor_config == json.loads((folder / "preprocessor_config.json").read_text())


# -- defect: the dialect default follows the tokenizer's <box> tokens, not the projector ----------

def _without_box_tokens(src: Path, dst: Path) -> Path:
    """A copy whose tokenizer files declare no <box>/</box> (as LLaVA-1.5's do not)."""
    folder = _copy(src, dst)
    data = json.loads((folder / "tokenizer.json").read_text())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] not in ("<box>", "</box>")]
    (folder / "tokenizer.json").write_text(json.dumps(data))
    return folder


def test_dialect_default_box_tokens_mean_chatspot_whatever_the_projector(tiny_model_dir) -> None:
    info = inspect_checkpoint(RuntimeConfig(model_path=str(tiny_model_dir)))
    assert info.projector_type == "mlp2x_gelu" and info.family == "llava"
    assert info.default_dialect == "chatspot" and "<box>" in info.dialect_source


def test_dialect_default_llava_without_box_tokens(tiny_model_dir, tmp_path) -> None:
    folder = _without_box_tokens(tiny_model_dir, tmp_path / "ckpt")
    info = inspect_checkpoint(RuntimeConfig(model_path=str(folder)))
    assert info.family == "llava" and info.default_dialect == "llava"


@pytest.mark.parametrize("box_tokens, override", [(True, "llava"), (False, "chatspot"), (True, "qwen_vl")])
def test_dialect_default_config_json_overrides_both(tiny_model_dir, tmp_path, box_tokens, override) -> None:
    folder = (_copy(tiny_model_dir, tmp_path / "ckpt") if box_tokens
              else _without_box_tokens(tiny_model_dir, tmp_path / "ckpt"))
    _edit_json(folder / "config.json", chatspot_dialect=override)
    info = inspect_checkpoint(RuntimeConfig(model_path=str(folder)))
    assert info.default_dialect == override and info.dialect_source == "chatspot_dialect in config.json"


def test_box_tokens_are_read_from_every_tokenizer_file(tmp_path) -> None:
    from chatspot_ros.runtime.loading import tokenizer_tokens

    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"added_tokens_decoder": {"32000": {"content": "<box>", "special": True}}}))
    (tmp_path / "special_tokens_map.json").write_text(json.dumps(
        {"additional_special_tokens": [{"content": "</box>"}, "<ref>"]}))
    (tmp_path / "added_tokens.json").write_text(json.dumps({"<image>": 32002}))
    assert tokenizer_tokens(tmp_path) == {"<box>", "</box>", "<ref>", "<image>"}
