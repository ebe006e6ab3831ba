"""The model runtime: loading, vision backends, batched generation (pure Python, torch + transformers).

The configuration and result types (``chatspot_ros.runtime.config``) and the typed errors
(``chatspot_ros.runtime.errors``) import without torch; :class:`ChatSpotRuntime` (which needs
torch and transformers) is imported on first use.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chatspot_ros.runtime.config import (
    BatchTiming,
    FrameFeatures,
    Generation,
    GenerationConfig,
    GenerationResult,
    RuntimeConfig,
)
from chatspot_ros.runtime.errors import ModelError, ModelOutOfMemory

if TYPE_CHECKING:
    from chatspot_ros.runtime.core import ChatSpotRuntime

__all__ = [
    "BatchTiming", "ChatSpotRuntime", "FrameFeatures", "Generation", "GenerationConfig", "GenerationResult",
    "ModelError", "ModelOutOfMemory", "RuntimeConfig",
]


def __getattr__(name: str) -> Any:
    if name == "ChatSpotRuntime":
        from chatspot_ros.runtime.core import ChatSpotRuntime

        return ChatSpotRuntime
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
