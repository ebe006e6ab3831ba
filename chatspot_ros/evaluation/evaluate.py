"""``evaluate(chatspot, config) -> metrics``: the whole run, and the files it writes into ``out_dir``.

    predictions.jsonl   one record per sample (task, image_id, region, instruction, answer, prediction, correct)
    metrics.json        flat summary keys (accuracy, ap..apl, acc_at_0_5, unparsed, ...), per-group ``tasks``, ``run``
    results_coco.json   COCO results of the GT-box classification (score 1.0), read by pycocotools for AP
                        (when a COCO instances file is given)
    results_coco_detections.json   the same for detector boxes (their scores), when detections are given
    report.md           tables shaped like the paper's Tables 1-3, controls, robustness
    robustness.png      accuracy against box-noise scale (when noise scales are given)
    run.json            the settings of the run; ``resume`` refuses to continue under other settings
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chatspot_ros.evaluation.config import EvalConfig
from chatspot_ros.evaluation.matching import CategoryMatcher, make_matcher
from chatspot_ros.evaluation.metrics import coco_results, compute_metrics
from chatspot_ros.evaluation.report import render_report, write_robustness_plot
from chatspot_ros.evaluation.runner import PredictionsFile, RunStats, run_samples
from chatspot_ros.evaluation.samples import EvalData, load_data, make_samples
from chatspot_ros.evaluation.scoring import ScoringContext

if TYPE_CHECKING:
    from chatspot_ros.pipeline import ChatSpot

log = logging.getLogger(__name__)

OUTPUT_FILES: tuple[str, ...] = ("predictions.jsonl", "metrics.json", "results_coco.json",
                                 "results_coco_detections.json", "report.md", "robustness.png", "run.json")


def run_settings(chatspot: ChatSpot, config: EvalConfig) -> dict[str, Any]:
    """What decides the answers: the evaluation settings, the checkpoint, its dialect and templates."""
    return {
        "evaluation": config.fingerprint(),
        "model": str(Path(chatspot.runtime.config.model_path).resolve()),
        "dialect": repr(chatspot.builder.dialect),
        "conversation": chatspot.runtime.conversation.name,
        "templates": dataclasses.asdict(chatspot.builder.templates),
    }


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _differences(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]


def _prepare_out_dir(config: EvalConfig, settings: dict[str, Any]) -> list[dict[str, Any]]:
    """Check ``out_dir``; return the records of an earlier run to resume from (or []).

    A new run's run.json is written by the caller once its inputs have been read without error.
    """
    out = config.out_dir
    out.mkdir(parents=True, exist_ok=True)
    predictions = PredictionsFile(out / "predictions.jsonl")
    run_file = out / "run.json"
    exists = predictions.path.exists() or run_file.exists()
    if exists and config.overwrite:
        for name in OUTPUT_FILES:
            (out / name).unlink(missing_ok=True)
        exists = False
    if exists and not config.resume:
        raise FileExistsError(f"{out} holds an earlier run; continue it with resume (--resume) or replace it "
                              "with overwrite (--overwrite)")
    if exists:
        if not run_file.is_file():
            raise ValueError(f"{out}: predictions.jsonl without run.json; cannot check its settings to resume")
        earlier = json.loads(run_file.read_text(encoding="utf-8"))
        changed = _differences(earlier, json.loads(json.dumps(settings)))
        if changed:
            raise ValueError(f"{out}: the earlier run used other settings ({', '.join(changed)}); "
                             "resume needs the same model, inputs and options (or use --overwrite)")
        return predictions.read()
    return []


def _context(chatspot: ChatSpot, data: EvalData, matcher: CategoryMatcher | None) -> ScoringContext:
    return ScoringContext(matcher=matcher, category_names={c.id: c.name for c in data.categories},
                          dialect=chatspot.builder.dialect, geometry=chatspot.runtime.geometry,
                          image_categories=data.image_categories, candidate_boxes=data.candidate_boxes)


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def evaluate(chatspot: ChatSpot, config: EvalConfig, *, matcher: CategoryMatcher | None = None,
             command: str = "") -> dict[str, Any]:
    """Run every task ``config`` names through ``chatspot``; write the outputs; return metrics.json's dict.

    ``matcher`` overrides ``config.matcher`` (e.g. a ClipMatcher built once for several runs).
    """
    settings = run_settings(chatspot, config)
    earlier = _prepare_out_dir(config, settings)
    data = load_data(config)
    samples = make_samples(data, config)
    if not (config.out_dir / "run.json").exists():
        _write_json(config.out_dir / "run.json", settings)
    keys = {s.key for s in samples}
    earlier = [r for r in earlier if r.get("key") in keys]
    done = {r["key"] for r in earlier}
    todo = [s for s in samples if s.key not in done]
    if matcher is None and data.categories and any(s.task == "classification" for s in todo):
        matcher = make_matcher(config.matcher, data.categories, device=str(chatspot.runtime.device))
    predictions = PredictionsFile(config.out_dir / "predictions.jsonl")
    new: list[dict[str, Any]] = []

    def write(records: list[dict[str, Any]]) -> None:
        predictions.append(records)
        new.extend(records)

    log.info("evaluating %d samples (%d answered earlier)", len(todo), len(done))
    stats = run_samples(chatspot, todo, _context(chatspot, data, matcher), batch_regions=config.batch_regions,
                        write=write, expected_sizes=data.sizes, progress=config.progress) if todo else RunStats()
    order = {s.key: i for i, s in enumerate(samples)}
    records = sorted(earlier + new, key=lambda r: order[r["key"]])
    return finish(chatspot, config, data, records, stats, resumed=len(earlier), command=command,
                  matcher_name=matcher.name if matcher is not None else config.matcher)


def finish(chatspot: ChatSpot, config: EvalConfig, data: EvalData, records: Sequence[dict[str, Any]],
           stats: RunStats, *, resumed: int = 0, command: str = "", matcher_name: str = "") -> dict[str, Any]:
    """Metrics, results files, report and plot from the records of a run."""
    start = time.perf_counter()
    out = config.out_dir
    gt = data.coco.dataset if data.coco is not None else None
    if gt is not None:
        _write_json(out / "results_coco.json", coco_results(records, "box"))
    if "detection" in data.items:
        _write_json(out / "results_coco_detections.json", coco_results(records, "detection"))
    metrics = compute_metrics(records, ground_truth=gt, image_ids=data.image_ids, n_categories=len(data.categories))
    metrics.update(model=str(chatspot.runtime.config.model_path), dialect=chatspot.builder.dialect.name,
                   matcher=matcher_name or config.matcher, wall_s=stats.wall_s,
                   regions_per_s=stats.regions_per_s)
    metrics["run"] = {
        "model": metrics["model"], "dialect": metrics["dialect"], "conversation": chatspot.runtime.conversation.name,
        "matcher": metrics["matcher"], "device": str(chatspot.runtime.device), "images": stats.images,
        "samples_this_run": stats.samples, "resumed_samples": resumed, "prompts": stats.prompts,
        "answer_calls": stats.answer_calls, "wall_s": round(stats.wall_s, 3),
        "generate_s": round(stats.generate_s, 3), "regions_per_s": round(stats.regions_per_s, 3),
        "finish_s": 0.0, "command": command, "seed": config.seed, "max_images": config.max_images,
        "notes": list(config.notes),
    }
    world = (gt or {}).get("info") or {}
    if "variant" in world or "seed" in world:
        metrics["run"]["world"] = {k: world.get(k) for k in ("split", "variant", "seed", "start", "frames")}
    if config.stage0_baseline:
        from chatspot_ros.evaluation.baselines import stage0_head_baseline

        for prompt, result in stage0_head_baseline(str(chatspot.runtime.config.model_path), records).items():
            group = metrics["tasks"].get(f"classification/{prompt}")
            if group is not None:
                group.setdefault("baselines", {})["stage0_head"] = result["accuracy"]
    plotted = config.plot and write_robustness_plot(metrics["tasks"], out / "robustness.png")
    metrics["run"]["robustness_png"] = bool(plotted)
    metrics["run"]["finish_s"] = round(time.perf_counter() - start, 3)  # metrics, AP, plot
    _write_json(out / "metrics.json", metrics)
    (out / "report.md").write_text(render_report(metrics, config.notes), encoding="utf-8")
    return metrics
