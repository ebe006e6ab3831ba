"""chatspot-eval end to end, as a real subprocess: every task on a tiny world split, OCR images and detections.

The follow-up runs (resume, errors) call main() in-process: a subprocess costs seconds of start-up.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chatspot_ros.cli import eval as eval_cli

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "chatspot_ros.cli.eval", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def detections(world_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A detector's COCO results on the world: every GT box shifted a little, plus one false box per image."""
    coco = json.loads((world_dir / "instances.json").read_text())
    results = [{"image_id": a["image_id"], "category_id": 1, "bbox": [a["bbox"][0] + 2, a["bbox"][1] + 1,
                                                                     a["bbox"][2], a["bbox"][3]],
                "score": round(0.9 - 0.01 * a["id"], 3)} for a in coco["annotations"]]
    results += [{"image_id": im["id"], "category_id": 1, "bbox": [1, 1, 20, 20], "score": 0.05}
                for im in coco["images"]]
    path = tmp_path_factory.mktemp("det") / "results.json"
    path.write_text(json.dumps(results))
    return path


def test_every_task_through_the_cli(tiny_model_dir, world_dir, ocr_file, detections, tmp_path) -> None:
    out = tmp_path / "out"
    common = ["--model", str(tiny_model_dir), "--out", str(out), "--world", str(world_dir),
              "--ocr", str(ocr_file), "--ocr-images", str(ocr_file.parent / "images"), "--detections", str(detections),
              "--noise", "--controls", "--max-new-tokens", "6", "--max-images", "3", "--seed", "2"]
    done = run_cli(*common, "--threads", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "region/s" in done.stderr  # the progress bar reports regions per second
    assert "# chatspot-eval report" in done.stdout

    metrics = json.loads((out / "metrics.json").read_text())
    groups = set(metrics["tasks"])
    assert groups == {"classification/box", "classification/point", "classification/detection", "ocr/box", "vqa/box",
                      "vqa/point", "rec/expression", "actions/box"}
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert {r["task"] for r in records} == {"classification", "ocr", "vqa", "rec", "actions"}
    assert len({r["image"] for r in records if r["task"] != "ocr"}) == 3  # --max-images 3 of the 4 frames
    assert metrics["tasks"]["ocr/box"]["n"] == 2  # the val images' legible words
    det = metrics["tasks"]["classification/detection"]
    assert set(det) >= {"ap", "ap50", "ap75", "aps", "apm", "apl"} and det["n"] > 0
    assert json.loads((out / "results_coco_detections.json").read_text()) == [
        {"image_id": r["image_id"], "category_id": r["pred_category_id"], "bbox": r["bbox"], "score": r["score"]}
        for r in records if r["prompt"] == "detection" and r["pred_category_id"] is not None]
    assert metrics["matcher"] == "exact" and metrics["regions_per_s"] > 0 and metrics["samples"] == len(records)
    report = (out / "report.md").read_text()
    for heading in ("Region classification (paper Table 1)", "Controls", "Robustness to box noise", "Detector boxes"):
        assert heading in report
    assert (out / "robustness.png").stat().st_size > 1000

    assert eval_cli.main([*common, "--resume", "--no-progress"]) == 0  # no --threads: leave this process's alone
    resumed = json.loads((out / "metrics.json").read_text())
    assert resumed["run"]["samples_this_run"] == 0 and resumed["run"]["resumed_samples"] == len(records)
    assert resumed["tasks"] == metrics["tasks"]


@pytest.mark.parametrize("extra, message", [
    (["--world", "nope"], "not a world split folder"),
    ([], "nothing to evaluate"),
    (["--vqa", "missing.jsonl"], "missing.jsonl does not exist"),
    (["--coco", "instances.json"], "coco needs images"),
    (["--vqa", "x.jsonl", "--noise", "0.5"], "noise scales must be in (0, 0.5)"),
    (["--vqa", "x.jsonl", "--matcher", "fuzzy"], "matcher must be 'exact' or 'clip:DIR'"),
])
def test_cli_errors_exit_2_with_the_reason(tiny_model_dir, tmp_path, capsys, monkeypatch, extra, message) -> None:
    monkeypatch.chdir(tmp_path)
    assert eval_cli.main(["--model", str(tiny_model_dir), "--out", "o", *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o" / "run.json").exists()  # a failed start leaves nothing to --resume
