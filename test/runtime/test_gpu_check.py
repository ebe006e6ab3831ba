"""scripts/gpu_check.sh in its CPU mode (tiny preset, float32): every step runs and the one table comes out
with every row of issue #20's table, the fidelity counts and the versions, so the script cannot crash on
its first contact with a GPU for a reason a CPU can show. What only a GPU shows is not tested here."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROWS = ("single-stream decode", "K=16 decode step, dynamic / static / static+compile", "vision (tower + projector",
        "prefill of the", "TTFT (vision + prefill)", "compile warm-up of the static step (cold / restart)",
        "K=16 naive-vs-runtime row")


def test_cpu_mode_prints_the_whole_table(tmp_path) -> None:
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), CHATSPOT_GPU_DEVICE="cpu", CHATSPOT_GPU_PRESET="tiny",
               CHATSPOT_GPU_WORK=str(tmp_path / "work"), CHATSPOT_GPU_LIMIT_SCALE="4", PYTHON=sys.executable)
    done = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh")], env=env, capture_output=True, text=True,
                          timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    table = (out / "table.txt").read_text()
    assert table in done.stdout  # printed as well as saved
    for row in ROWS:
        assert f"| {row}" in table, row
    assert "no result" not in table and "timed out" not in table
    import torch
    import transformers

    assert f"torch {torch.__version__}, transformers {transformers.__version__}" in table
    for line in ("K=1 runtime vs HF generate: 1 / 0 / 0", "K=16 runtime vs HF generate: 16 / 0 / 0",
                 "K=16 static+compile vs dynamic: 16 / 0 / 0"):
        assert line in table
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == ["environment", "build", "bench", "decoders", "restart", "report"]
    assert all(s["rc"] == 0 and s["seconds"] <= s["limit"] for s in steps)
    assert sum(s["limit"] for s in steps) == 4 * 470  # 470 s with the report, under 8 minutes; x the CPU scale
