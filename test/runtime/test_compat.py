"""The supported transformers range: declared once, enforced at load, and the version-dependent calls."""
from __future__ import annotations

from pathlib import Path

import pytest
import transformers

from chatspot_ros.runtime import ChatSpotRuntime, RuntimeConfig, compat

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("version, ok", [
    ("5.17.0", True), ("5.17.0.dev0", True), ("5.20.1", True), ("5.24.0", True), ("5.24.9", True),
    ("5.16.1", False), ("5.25.0", False), ("4.57.1", False), ("6.0.0", False),
])
def test_range_boundaries(version: str, ok: bool) -> None:
    assert compat.supported(version) is ok
    if not ok:
        with pytest.raises(ValueError, match=r"transformers>=5\.17,<5\.25"):
            compat.check_transformers(version)


def test_installed_version_is_supported() -> None:
    assert compat.check_transformers() == transformers.__version__


def test_requirements_declare_the_same_range() -> None:
    lines = (REPO / "requirements" / "runtime.txt").read_text().splitlines()
    assert f"transformers{compat.TRANSFORMERS_RANGE}" in [line.strip() for line in lines]
    lock = (REPO / "requirements" / "lock.txt").read_text().splitlines()
    pinned = next(line.split("==")[1] for line in lock if line.startswith("transformers=="))
    assert compat.supported(pinned)
    setup = (REPO / "scripts" / "setup_compat.sh").read_text()
    assert f"CHATSPOT_COMPAT_TRANSFORMERS:-{compat.TRANSFORMERS_MIN}.0" in setup  # CI tests the floor


def test_a_version_outside_the_range_fails_at_load(tiny_model_dir, monkeypatch) -> None:
    monkeypatch.setattr(compat, "installed_version", lambda: "5.16.0")
    with pytest.raises(ValueError, match=r"transformers 5\.16\.0 is not supported.*>=5\.17,<5\.25"):
        ChatSpotRuntime.load(RuntimeConfig(model_path=str(tiny_model_dir)))


def test_cache_keyword_follows_the_installed_forward(runtime) -> None:
    import inspect

    params = inspect.signature(type(runtime.lm.decoder).forward).parameters
    (name,) = compat.cache_kwargs(runtime.lm.decoder, None)
    assert name in params
    assert name == ("cache" if "cache" in params else "past_key_values")


def test_image_processor_from_saved_settings_matches_auto(tiny_model_dir, monkeypatch) -> None:
    """The PIL processor built from the saved settings (5.17 without torchvision) preprocesses as the
    one AutoImageProcessor gives where it builds one."""
    import numpy as np

    frame = np.random.default_rng(0).integers(0, 256, (40, 70, 3), dtype=np.uint8)
    reference = None
    try:
        reference = transformers.AutoImageProcessor.from_pretrained(str(tiny_model_dir), local_files_only=True)
    except ImportError:
        pass

    def refuse(*args, **kwargs):
        raise ImportError("AutoImageProcessor requires the Torchvision library")

    if reference is not None:  # where AutoImageProcessor works, make it refuse as 5.17's does
        monkeypatch.setattr(transformers.AutoImageProcessor, "from_pretrained", refuse)
    built = compat.load_image_processor(tiny_model_dir)
    assert type(built).__name__ == "CLIPImageProcessorPil"
    if reference is not None:
        a = reference(images=[frame], return_tensors="pt", input_data_format="channels_last")["pixel_values"]
        b = built(images=[frame], return_tensors="pt", input_data_format="channels_last")["pixel_values"]
        assert (a - b).abs().max().item() == 0.0


def test_the_public_cache_path_equals_the_owned_prefill(monkeypatch) -> None:
    """Models the static decoder does not support prefill through the model's forward and a public
    DynamicCache; its per-layer keys/values equal the runtime's own prefill on a supported model."""
    import torch
    from test_static_decoder import _case

    from chatspot_ros.runtime import static_decoder
    from chatspot_ros.runtime.generation import prefill_prefix

    lm, kv, *_ = _case("llama", 4, 2, 8)
    prefix_ids = torch.tensor([[1, 10, 11] + [5] * 6])
    features = torch.randn(1, 6, 32, generator=torch.Generator().manual_seed(1))
    owned = prefill_prefix(lm, prefix_ids, features)
    monkeypatch.setattr(static_decoder, "unsupported", lambda lm: "pretend")
    public = prefill_prefix(lm, prefix_ids, features)
    assert len(owned) == len(public) == lm.text_config.num_hidden_layers
    for (k1, v1), (k2, v2) in zip(owned, public):
        assert k1.shape == k2.shape == (1, 2, 9, 8)
        torch.testing.assert_close(k1, k2, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(v1, v2, rtol=1e-5, atol=1e-5)
