"""The model runtime: loading, vision backends, batched generation (pure Python, torch + transformers)."""
from __future__ import annotations

from chatspot_ros.runtime.config import (
    FrameFeatures,
    Generation,
    GenerationConfig,
    RuntimeConfig,
)
from chatspot_ros.runtime.core import ChatSpotRuntime

__all__ = ["ChatSpotRuntime", "FrameFeatures", "Generation", "GenerationConfig", "RuntimeConfig"]
