"""The ``vllm`` backend: the ChatSpot pipeline over an OpenAI-compatible serving engine (docs/vllm.md).

``ServerConfig`` and the errors import without the ``openai`` library; :class:`RemoteRuntime`
(which needs it) is imported on first use.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chatspot_ros.remote.config import BACKENDS, DEFAULT_API_KEY_ENV, IMAGE_FORMATS, ServerConfig

if TYPE_CHECKING:
    from chatspot_ros.remote.client import ServerError
    from chatspot_ros.remote.runtime import RemoteRuntime

__all__ = ["BACKENDS", "DEFAULT_API_KEY_ENV", "IMAGE_FORMATS", "RemoteRuntime", "ServerConfig", "ServerError"]


def __getattr__(name: str) -> Any:
    if name == "RemoteRuntime":
        from chatspot_ros.remote.runtime import RemoteRuntime

        return RemoteRuntime
    if name == "ServerError":
        from chatspot_ros.remote.client import ServerError

        return ServerError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
