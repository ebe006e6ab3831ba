"""Session fixtures for the runtime tests: tiny checkpoints (variants), loaded runtimes, helpers."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)

@pytest.fixture(scope="session")
def chatspot_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ChatSpot-style checkpoint: one linear projector, declared with projector_type 'linear'."""
    from chatspot_ros.testing.tiny_model import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("tiny_chatspot"), preset="tiny", seed=3, projector="chatspot")


@pytest.fixture(scope="session")
def seeded_model_dirs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """Checkpoints with different weights: seed 0 (the shared fixture), 1 (pad), 2 (center crop)."""
    from chatspot_ros.testing.tiny_model import build_tiny_llava

    return {
        0: tiny_model_dir,
        1: build_tiny_llava(tmp_path_factory.mktemp("tiny_llava_s1"), preset="tiny", seed=1),
        2: build_tiny_llava(tmp_path_factory.mktemp("tiny_llava_s2"), preset="tiny", seed=2, image_mode="crop"),
    }


@pytest.fixture(scope="session")
def engine_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("engines")


@pytest.fixture(scope="session")
def runtime(tiny_model_dir: Path):
    from chatspot_ros.runtime import ChatSpotRuntime, RuntimeConfig

    rt = ChatSpotRuntime.load(RuntimeConfig(model_path=str(tiny_model_dir)))
    yield rt
    rt.close()


@pytest.fixture(scope="session")
def onnx_runtime(tiny_model_dir: Path, engine_dir: Path):
    from chatspot_ros.runtime import ChatSpotRuntime, RuntimeConfig

    rt = ChatSpotRuntime.load(
        RuntimeConfig(model_path=str(tiny_model_dir), vision_backend="onnxruntime", engine_dir=str(engine_dir))
    )
    yield rt
    rt.close()
