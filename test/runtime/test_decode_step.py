"""The static decode step as a GPU needs it, proven on the CPU: no host read inside a step or between
sync points, and one whole graph (no graph breaks) for every bucket shape."""
from __future__ import annotations

import pytest
import torch
from test_static_decoder import DECODE, SHAPES, _case
from torch.profiler import ProfilerActivity, profile

from chatspot_ros.runtime.config import GenerationConfig
from chatspot_ros.runtime.generation import generate_batch
from chatspot_ros.runtime.static_decoder import StaticDecoder

HOST_READ = "aten::_local_scalar_dense"  # what .item(), bool(t), int(t), float(t) become: the host waits


def host_reads(fn) -> tuple[int, object]:
    """(aten::_local_scalar_dense calls while fn runs, fn's result), counted by the profiler (a
    TorchDispatchMode does not see them under inference_mode, which the decode loops run in)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        result = fn()
    return sum(e.count for e in prof.key_averages() if e.key == HOST_READ), result


@pytest.mark.parametrize("kind, heads, kv_heads, head_dim", SHAPES)
def test_no_host_read_inside_a_decode_step_and_one_per_sync_point_between(kind, heads, kv_heads, head_dim) -> None:
    lm, kv, prefix_len, suffixes, _, expected = _case(kind, heads, kv_heads, head_dim)
    gen = GenerationConfig(max_new_tokens=10)
    sync_every = 5
    decoder = StaticDecoder(lm, torch.device("cpu"), torch.float32, compile="off", sync_every=sync_every)
    per_step: list[int] = []
    original = decoder._decode_fn

    def counted(key, step):
        fn = original(key, step)

        def run(*args):
            reads, out = host_reads(lambda: fn(*args))
            per_step.append(reads)
            return out
        return run

    decoder._decode_fn = counted
    out = generate_batch(lm, DECODE, kv, prefix_len, suffixes, gen, decoder=decoder)
    assert [list(g.token_ids) for g in out] == expected
    assert per_step and per_step == [0] * len(per_step), "a decode step read a device value on the host"
    # the whole loop: one `bool(done.all())` per drain of a block of tokens (the blocks come back
    # through one .tolist() each, the sync point itself), nothing between
    decoder._decode_fn = original
    total, _ = host_reads(lambda: generate_batch(lm, DECODE, kv, prefix_len, suffixes, gen, decoder=decoder))
    drains = -(-gen.max_new_tokens // sync_every)
    assert 1 <= total <= drains, (total, drains)


def test_the_counter_sees_a_planted_host_read() -> None:
    lm, kv, prefix_len, suffixes, gen, _ = _case("llama", 4, 2, 8, rows=2)
    decoder = StaticDecoder(lm, torch.device("cpu"), torch.float32, compile="off", sync_every=8)
    original = decoder._decode_fn

    def planted(key, step):
        fn = original(key, step)

        def run(*args):
            out = fn(*args)
            float(out[0, 0])  # a host read inside the step
            return out
        return run

    decoder._decode_fn = planted
    reads, _ = host_reads(lambda: generate_batch(lm, DECODE, kv, prefix_len, suffixes,
                                                 GenerationConfig(max_new_tokens=8), decoder=decoder))
    assert reads >= 7  # one per decode step (8 tokens: 7 steps after the prefill), plus the drain


@pytest.mark.parametrize("rows, prefix_len, suffix_len", [(1, 9, 12), (2, 70, 20), (4, 9, 40), (16, 130, 50)])
def test_every_bucket_captures_as_one_graph(rows, prefix_len, suffix_len) -> None:
    """torch._dynamo.explain over the decode step of each bucket: one graph, zero breaks."""
    lm, *_ = _case("llama", 4, 2, 8)
    decoder = StaticDecoder(lm, torch.device("cpu"), torch.float32, compile="off")
    key, step = decoder._bucket(rows, prefix_len, suffix_len)
    batch = key[0]
    ids = torch.zeros((batch, 1), dtype=torch.long)
    positions = torch.full((batch, 1), prefix_len, dtype=torch.long)
    slot = torch.tensor([3])
    torch._dynamo.reset()
    with torch.inference_mode():
        explained = torch._dynamo.explain(step)(ids, positions, slot)
    assert explained.graph_break_count == 0 and explained.break_reasons == [], explained.break_reasons
    assert explained.graph_count == 1


def test_warm_up_compiles_the_bucket_the_first_frame_uses(caplog) -> None:
    """warm_up (what the runtime calls at load/configure) compiles the step; the first frame reuses it."""
    lm, kv, prefix_len, suffixes, gen, expected = _case("llama", 4, 2, 8, rows=1)
    decoder = StaticDecoder(lm, torch.device("cpu"), torch.float32, compile="on", compile_backend="aot_eager")
    with caplog.at_level("INFO", logger="chatspot_ros.runtime.decoder"):
        seconds = decoder.warm_up(prefix_len, len(suffixes[0]) + gen.max_new_tokens)
    assert seconds > 0 and decoder.compiles == 1 and decoder.warmup_s == seconds
    assert "decode-step compile warm-up for batch 1" in caplog.text
    out = generate_batch(lm, DECODE, kv, prefix_len, suffixes, gen, decoder=decoder)
    assert [list(g.token_ids) for g in out] == expected
    assert decoder.compiles == 1, "the frame ran the step compiled at warm-up"


WARM_UP_SCRIPT = """
import logging, sys, time
sys.path.insert(0, sys.argv[1])
logging.basicConfig(level=logging.INFO, format="%(message)s")
import torch
from test_static_decoder import _case
from chatspot_ros.runtime.static_decoder import StaticDecoder
lm, kv, prefix_len, suffixes, gen, expected = _case("llama", 4, 2, 8, rows=1)
decoder = StaticDecoder(lm, torch.device("cpu"), torch.float32, compile="on")
print("WARMUP", decoder.warm_up(prefix_len, len(suffixes[0]) + gen.max_new_tokens))
"""


def test_compile_cache_on_disk_makes_a_restart_warm_up_faster(tmp_path) -> None:
    """Two processes (a node and its restart) with inductor and the same cache folder: the second loads
    the compiled step from disk; its warm-up is logged as warm and takes less time."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR="", CHATSPOT_COMPILE_CACHE=str(tmp_path / "cache"))
    env.pop("TORCHINDUCTOR_CACHE_DIR")
    runs = []
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", WARM_UP_SCRIPT, str(Path(__file__).parent)], env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        seconds = float(next(line for line in done.stdout.splitlines() if line.startswith("WARMUP")).split()[1])
        runs.append((seconds, done.stderr + done.stdout))
    (cold, cold_log), (warm, warm_log) = runs
    assert "cold (0 files before)" in cold_log and ", warm (" in warm_log
    assert any((tmp_path / "cache").rglob("*.py")), "the generated code is on disk"
    assert warm < cold, (cold, warm)


def test_explain_sees_a_planted_graph_break(monkeypatch) -> None:
    """The graph-break count above can fail: a step that reads a value on the host breaks the graph."""
    from chatspot_ros.runtime.static_decoder import StaticStep

    lm, *_ = _case("llama", 4, 2, 8)
    decoder = StaticDecoder(lm, torch.device("cpu"), torch.float32, compile="off")
    key, step = decoder._bucket(1, 9, 12)
    forward = StaticStep.forward

    def with_break(self, ids, positions, slots, valid=None):
        out = forward(self, ids, positions, slots, valid)
        if float(out[0, 0]) > 1e9:  # data-dependent Python control flow: dynamo must break here
            out = out + 1
        return out

    monkeypatch.setattr(StaticStep, "forward", with_break)
    torch._dynamo.reset()
    with torch.inference_mode():
        explained = torch._dynamo.explain(step)(torch.zeros((1, 1), dtype=torch.long),
                                                torch.full((1, 1), 9, dtype=torch.long), torch.tensor([3]))
    # this torch reports the break as a reason (the frame falls back to eager after it), not in the count
    assert explained.break_reasons
