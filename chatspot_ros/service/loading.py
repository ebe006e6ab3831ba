"""Which model the agent loads and how (ROS-free): the demo fallback, the backend choice, and the
mapping of :class:`AgentConfig` onto the core's :class:`RuntimeConfig` / the ``vllm`` backend's
:class:`ServerConfig`.

:func:`load_chatspot` is the :class:`~chatspot_ros.service.agent_service.AgentService`'s default
loader; tests hand the service a loader that returns a stand-in ChatSpot instead.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Callable, Optional

from chatspot_ros.service.config import AgentConfig

if TYPE_CHECKING:
    from chatspot_ros.pipeline import ChatSpot, Runtime
    from chatspot_ros.remote.config import ServerConfig
    from chatspot_ros.runtime.config import RuntimeConfig

DEMO_MODEL_WARNING = (
    "model.path is empty: loading the shipped DEMO model {path}. It knows only the synthetic tabletop world "
    "(coloured cubes, balls and triangles); set model.path to a real checkpoint for your robot's scenes")


def with_model_path(config: AgentConfig, warn: Optional[Callable[[str], object]] = None) -> AgentConfig:
    """``config`` with the checkpoint it loads: an empty ``model.path`` falls back to the shipped
    demo model (and says so through ``warn``) for the local backend; ValueError for ``vllm``,
    which needs a local copy of the served checkpoint's config files."""
    if config.model_path.strip():
        return config
    if config.model_backend != "local":
        raise ValueError("model.path is empty: with model.backend vllm set it to a local copy of "
                         "the served checkpoint's config files")
    from chatspot_ros.models import shipped_model

    fallback = dataclasses.replace(config, model_path=str(shipped_model()))
    if warn is not None:
        warn(DEMO_MODEL_WARNING.format(path=fallback.model_path))
    return fallback


def runtime_config_for(config: AgentConfig) -> RuntimeConfig:
    """The local backend's settings (``model.*``, ``vision.*``, ``generation.decoder/compile/sync_every``)."""
    from chatspot_ros.runtime.config import RuntimeConfig

    return RuntimeConfig(
        model_path=config.model_path, device=config.model_device, dtype=config.model_dtype,
        vision_backend=config.vision_backend, engine_dir=config.vision_engine_dir,
        feature_cache_size=config.model_feature_cache_size, trust_remote_code=config.model_trust_remote_code,
        decoder=config.generation_decoder, compile=config.generation_compile,
        sync_every=config.generation_sync_every, quantization=config.model_quantization,
        warmup_new_tokens=config.generation_max_new_tokens,
    )


def server_config_for(config: AgentConfig) -> ServerConfig:
    """The ``vllm`` backend's settings (``server.*``); the served model's config files are
    ``server.model_config``, else ``model.path``."""
    from chatspot_ros.remote.config import ServerConfig

    return ServerConfig(
        url=config.server_url, model_config=config.server_model_config or config.model_path,
        model=config.server_model, timeout_s=config.server_timeout_s,
        max_concurrency=config.server_max_concurrency, image_format=config.server_image_format,
        feature_cache_size=config.model_feature_cache_size, startup_wait_s=config.server_startup_wait_s,
    )


def templates_label(config: AgentConfig) -> str:
    """Where the instruction templates come from, for the log and /diagnostics."""
    from chatspot_ros.pipeline import default_templates_file

    return config.referring_templates or str(default_templates_file() or "built-in defaults")


def load_chatspot(config: AgentConfig) -> ChatSpot:
    """Load the model ``config`` names, on the backend it names (``model.backend``): the local
    runtime, or the served model (whose health and name are checked here). The templates file is
    read first, so that a bad one fails before minutes of loading."""
    from chatspot_ros.pipeline import ChatSpot, load_templates

    templates = load_templates(config.referring_templates)
    options = dict(dialect=config.referring_format or None,
                   precision=None if config.referring_precision < 0 else config.referring_precision,
                   templates=templates)
    if config.model_backend == "vllm":
        return ChatSpot.from_server(server_config_for(config), **options)
    return ChatSpot.from_config(runtime_config_for(config), **options)


def model_info(config: AgentConfig, runtime: Runtime) -> dict[str, str]:
    """What /diagnostics and the log say about the loaded model."""
    info = {
        "model": str(runtime.model_name), "family": str(runtime.family), "backend": str(runtime.backend_name),
        "device": config.model_device, "dtype": config.model_dtype,
        "dialect": config.referring_format or str(runtime.default_dialect), "templates": templates_label(config),
    }
    if config.model_backend == "vllm":
        info.update({"device": "server", "dtype": "server", "server": server_config_for(config).display_url})
    return info
