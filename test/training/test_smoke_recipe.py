"""The smoke recipe end to end through the real command: train, save, load in the runtime, answer."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_smoke_recipe_halves_the_loss_and_the_saved_model_answers(tmp_path) -> None:
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "chatspot_ros.cli.train", "run", "--preset", "smoke", "--world-seed", "1",
           "--world-frames", "200", "--max-turns", "2", "--steps", "40", "--batch-size", "8", "--lr", "3e-3",
           "--warmup-steps", "5", "--log-every", "1", "--save-every", "20", "--vision-pretrain-steps", "40",
           "--vision-pretrain-frames", "128", "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    done = subprocess.run(cmd, cwd=str(REPO), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    first = sum(float(r["loss"]) for r in rows[:3]) / 3
    last = sum(float(r["loss"]) for r in rows[-3:]) / 3
    assert last < first / 2, f"loss {first:.3f} -> {last:.3f}: did not halve"
    assert (out / "loss.png").stat().st_size > 1000
    assert "steps x batch" in (out / "model" / "README.md").read_text()

    from chatspot_ros.pipeline import ChatSpot
    from chatspot_ros.referring import Region, RegionKind
    from chatspot_ros.runtime import GenerationConfig, RuntimeConfig
    from chatspot_ros.world import render, sample_scene

    chatspot = ChatSpot.from_config(RuntimeConfig(model_path=str(out / "model")))
    try:
        assert chatspot.builder.dialect.name == "chatspot"
        scene = sample_scene(1000, 0)
        frame = render(scene)
        box = scene.objects[0].box
        ask = chatspot.builder.what_is_in_region(Region(RegionKind.BOX, ((box[0], box[1]), (box[2], box[3]))),
                                                 (320, 240))
        answer = chatspot.answer(frame, "f0", [ask], GenerationConfig(max_new_tokens=8))[0]
        assert answer.text.strip(), "the trained model answers with text"
        assert answer.generation.stopped in ("eos", "length", "stop")
    finally:
        chatspot.close()
