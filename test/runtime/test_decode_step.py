"""The static decode step as a GPU needs it, proven on the CPU: no host read inside a step or between
sync points, and one whole graph (no graph breaks) for every bucket shape."""
from __future__ import annotations

import pytest
import torch
from test_static_decoder import DECODE, SHAPES, _case
from torch.utils._python_dispatch import TorchDispatchMode

from chatspot_ros.runtime.config import GenerationConfig
from chatspot_ros.runtime.generation import generate_batch
from chatspot_ros.runtime.static_decoder import StaticDecoder

HOST_READ = torch.ops.aten._local_scalar_dense.default


class CountHostReads(TorchDispatchMode):
    """Counts ``aten._local_scalar_dense`` (``.item()``, ``bool(t)``, ``int(t)``: what blocks a host on a
    device), per decode step when ``step`` is advanced by the step wrapper."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0
        self.in_steps = 0
        self.inside = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is HOST_READ:
            self.total += 1
            self.in_steps += self.inside
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("kind, heads, kv_heads, head_dim", SHAPES)
def test_no_host_read_inside_a_decode_step_and_one_per_sync_point_between(kind, heads, kv_heads, head_dim) -> None:
    lm, kv, prefix_len, suffixes, _, expected = _case(kind, heads, kv_heads, head_dim)
    gen = GenerationConfig(max_new_tokens=10)
    sync_every = 5
    decoder = StaticDecoder(lm, torch.device("cpu"), torch.float32, compile="off", sync_every=sync_every)
    counter = CountHostReads()
    steps = []
    original = decoder._decode_fn

    def counted(key, step):
        fn = original(key, step)

        def run(*args):
            counter.inside = True
            try:
                steps.append(1)
                return fn(*args)
            finally:
                counter.inside = False
        return run

    decoder._decode_fn = counted
    with counter:
        out = generate_batch(lm, DECODE, kv, prefix_len, suffixes, gen, decoder=decoder)
    assert [list(g.token_ids) for g in out] == expected
    assert steps, "the decode step ran"
    assert counter.in_steps == 0, "a decode step read a device value on the host"
    # between sync points nothing reads either: one `bool(done.all())` per drain of a block of tokens
    # (the token blocks themselves come back through one .tolist() each)
    drains = -(-gen.max_new_tokens // sync_every)
    assert 1 <= counter.total <= drains, (counter.total, drains)  # >= 1: the counter does see host reads


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
    assert explained.graph_break_count == 0, explained.break_reasons
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
