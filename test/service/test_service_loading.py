"""Which model the service loads: the demo fallback, the backend choice and the config mapping."""
from __future__ import annotations

from typing import Any

import pytest

from chatspot_ros.service import loading
from chatspot_ros.service.config import AgentConfig


def config(**values: Any) -> AgentConfig:
    return AgentConfig.from_parameters({k.replace("__", "."): v for k, v in values.items()})


def test_an_empty_model_path_loads_the_shipped_demo_model_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    import chatspot_ros.models as models

    monkeypatch.setattr(models, "shipped_model", lambda name="tabletop": "/pkg/models/tabletop")
    warnings: list[str] = []
    chosen = loading.with_model_path(config(model__path=""), warnings.append)
    assert chosen.model_path == "/pkg/models/tabletop"
    assert len(warnings) == 1 and "DEMO model /pkg/models/tabletop" in warnings[0]
    given = config(model__path="/models/x")
    assert loading.with_model_path(given, warnings.append) is given and len(warnings) == 1


def test_the_vllm_backend_needs_a_model_path() -> None:
    with pytest.raises(ValueError, match="model.backend vllm"):
        loading.with_model_path(config(model__backend="vllm", server__url="http://127.0.0.1:8000"))


def test_agent_parameters_map_onto_the_runtime_and_server_configs() -> None:
    agent = config(model__path="/m", model__dtype="bfloat16", vision__backend="onnxruntime",
                   model__feature_cache_size=7, generation__decoder="dynamic", generation__sync_every=3,
                   server__url="http://127.0.0.1:8000", server__max_concurrency=5)
    runtime = loading.runtime_config_for(agent)
    assert (runtime.model_path, runtime.dtype, runtime.vision_backend, runtime.feature_cache_size,
            runtime.decoder, runtime.sync_every) == ("/m", "bfloat16", "onnxruntime", 7, "dynamic", 3)
    server = loading.server_config_for(agent)
    assert (server.model_config, server.max_concurrency, server.feature_cache_size) == ("/m", 5, 7)
    other = config(model__path="/m", server__url="http://127.0.0.1:8000", server__model_config="/copy")
    assert loading.server_config_for(other).model_config == "/copy"


@pytest.mark.parametrize("backend", ["local", "vllm"])
def test_model_backend_picks_the_loader(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from chatspot_ros.pipeline import ChatSpot

    calls: list[tuple[str, Any, dict[str, Any]]] = []
    monkeypatch.setattr(ChatSpot, "from_config", classmethod(lambda cls, c, **kw: calls.append(("local", c, kw))))
    monkeypatch.setattr(ChatSpot, "from_server", classmethod(lambda cls, c, **kw: calls.append(("vllm", c, kw))))
    agent = config(model__path="/m", model__backend=backend, server__url="http://127.0.0.1:8000",
                   referring__format="chatspot", referring__precision=2)
    loading.load_chatspot(agent)
    ((kind, made, options),) = calls
    assert kind == backend and (options["dialect"], options["precision"]) == ("chatspot", 2)
    assert type(made).__name__ == ("RuntimeConfig" if backend == "local" else "ServerConfig")


def test_model_info_names_the_server_for_the_vllm_backend() -> None:
    class Served:
        model_name, family, backend_name, default_dialect = "served", "llava", "vllm", "llava"

    info = loading.model_info(config(model__path="/m", model__backend="vllm", server__url="http://gpu:8000"),
                              Served())  # type: ignore[arg-type]
    assert info["device"] == "server" and info["backend"] == "vllm" and "gpu:8000" in info["server"]
