"""evaluate() in-process: the batched path, resume, and metrics at known values through an oracle."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from eval_helpers import OracleChatSpot, cocoeval_from_files, oracle_table

from chatspot_ros.evaluation import EvalConfig, evaluate
from chatspot_ros.evaluation.runner import read_image
from chatspot_ros.evaluation.samples import CLEAN, build_instruction, load_data, make_samples, resolve_region
from chatspot_ros.runtime import GenerationConfig

TOKENS = 6


def _config(world_dir: Path, out: Path, **kw) -> EvalConfig:
    kw.setdefault("noise", (0.1, 0.2, 0.3))
    kw.setdefault("controls", True)
    return EvalConfig.for_world(world_dir, out, max_new_tokens=TOKENS, batch_regions=256, progress=False, **kw)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny_run(chatspot, world_dir, tmp_path_factory):
    """One full run of the tiny model on the world split, with answer() calls counted."""
    out = tmp_path_factory.mktemp("eval_tiny")
    calls: list[tuple[str, int]] = []
    real_answer = chatspot.answer

    def counting_answer(frame, key, requests, gen):
        calls.append((key, len(requests)))
        return real_answer(frame, key, requests, gen)

    chatspot.answer = counting_answer
    try:
        metrics = evaluate(chatspot, _config(world_dir, out))
    finally:
        del chatspot.answer
    return out, metrics, calls


def test_every_task_and_condition_is_asked(tiny_run, world_dir) -> None:
    out, metrics, _ = tiny_run
    records = _lines(out / "predictions.jsonl")
    n_ann = len(json.loads((world_dir / "instances.json").read_text())["annotations"])
    counts = Counter((r["task"], r["prompt"], r["condition"]) for r in records)
    for task, prompt in [("classification", "box"), ("classification", "point"), ("vqa", "box"), ("vqa", "point"),
                         ("rec", "expression"), ("actions", "box")]:
        assert counts[(task, prompt, CLEAN)] == n_ann, (task, prompt)
        assert 0 < counts[(task, prompt, "swap")] <= n_ann
    for scale in ("0.1", "0.2", "0.3"):
        assert counts[("classification", "box", f"noise{scale}")] == n_ann == counts[("vqa", "box", f"noise{scale}")]
    assert counts[("classification", "point", "noise0.1")] == 0  # box noise only
    assert counts[("rec", "expression", "whole_image")] == 0  # REC has no region in its prompt
    assert metrics["samples"] == len(records) == len({r["key"] for r in records})
    for r in records:
        assert {"task", "image_id", "region", "instruction", "answer", "correct"} <= set(r)
        assert 0 < r["tokens"] <= TOKENS
    assert all(r["region"] is None for r in records if r["task"] == "rec")
    # A swap asks about object B of the same image, whose truth differs from A's.
    anns = {f"ann{a['id']}": a for a in json.loads((world_dir / "instances.json").read_text())["annotations"]}
    swaps = [r for r in records if r["task"] == "classification" and r["condition"] == "swap"]
    for r in swaps:
        partner = anns[r["partner"]]
        assert partner["image_id"] == r["image_id"] and partner["category_id"] != r["gt_category_id"]
        if r["prompt"] == "box":
            assert r["region"]["bbox"] == partner["bbox"]
    assert {r["prompt"] for r in swaps} == {"box", "point"}
    assert {r["region"]["kind"] for r in records if r["prompt"] == "point" and r["condition"] == CLEAN} == {"point"}
    for key in ("accuracy", "ap", "ap50", "ap75", "aps", "apm", "apl", "acc_at_0_5", "unparsed", "model", "dialect",
                "matcher", "wall_s", "regions_per_s", "samples"):
        assert key in metrics
    assert metrics["apl"] is None  # the world has no object of COCO's "large" size
    assert metrics["unparsed"] == n_ann and metrics["acc_at_0_5"] == 0.0  # gibberish holds no box
    for name in ("metrics.json", "results_coco.json", "report.md", "robustness.png", "run.json"):
        assert (out / name).is_file(), name
    assert (out / "robustness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_one_answer_call_per_image_and_duplicates_decoded_once(tiny_run, world_dir) -> None:
    out, metrics, calls = tiny_run
    records = _lines(out / "predictions.jsonl")
    images = {r["image"] for r in records}
    assert sorted(k for k, _ in calls) == sorted(images)  # one call per image: every prompt in one batch
    distinct = {(r["image"], r["instruction"]) for r in records}
    assert sum(n for _, n in calls) == len(distinct) == metrics["run"]["prompts"] < len(records)


def test_batched_answers_equal_answers_asked_alone(chatspot, tiny_run, world_dir) -> None:
    out, _, _ = tiny_run
    by_key = {r["key"]: r for r in _lines(out / "predictions.jsonl")}
    config = _config(world_dir, out)
    samples = make_samples(load_data(config), config)
    picked = [next(s for s in samples if s.task == t and s.condition == c)
              for t, c in [("classification", "noise0.2"), ("vqa", CLEAN), ("rec", "swap"), ("actions", "whole_image")]]
    for s in picked:
        frame = read_image(s.item.image)
        size = (frame.shape[1], frame.shape[0])
        instruction = build_instruction(chatspot.builder, s, resolve_region(s, size), size)
        alone = chatspot.answer(frame, None, [instruction], GenerationConfig(max_new_tokens=TOKENS))[0]
        assert by_key[s.key]["instruction"] == instruction.text
        assert by_key[s.key]["answer"] == alone.text, s.key


def test_resume_continues_a_killed_run(chatspot, tiny_run, world_dir, tmp_path) -> None:
    out, metrics, _ = tiny_run
    full = _lines(out / "predictions.jsonl")
    first_image = [r for r in full if r["image"] == full[0]["image"]]
    (tmp_path / "run.json").write_text((out / "run.json").read_text())
    torn = "".join(json.dumps(r) + "\n" for r in first_image) + json.dumps(full[len(first_image)])[:40]
    (tmp_path / "predictions.jsonl").write_text(torn)
    with pytest.raises(FileExistsError, match="--resume"):
        evaluate(chatspot, _config(world_dir, tmp_path))
    with pytest.raises(ValueError, match=r"other settings \(evaluation.seed\)"):
        evaluate(chatspot, _config(world_dir, tmp_path, seed=5, resume=True))
    resumed = evaluate(chatspot, _config(world_dir, tmp_path, resume=True))
    again = _lines(tmp_path / "predictions.jsonl")
    assert sorted((r["key"], r["answer"]) for r in again) == sorted((r["key"], r["answer"]) for r in full)
    assert resumed["run"]["resumed_samples"] == len(first_image)
    assert resumed["run"]["samples_this_run"] == len(full) - len(first_image)
    assert resumed["tasks"] == metrics["tasks"]
    fresh = evaluate(chatspot, _config(world_dir, tmp_path, overwrite=True, noise=()))
    assert "noise" not in fresh["tasks"]["classification/box"] and not (tmp_path / "robustness.png").exists()


def _truth(sample, size, chatspot, wrong_every: int = 0) -> str | None:
    """The right answer to a clean sample (REC: the box in the checkpoint's dialect); None elsewhere."""
    from chatspot_ros.referring import Region
    from chatspot_ros.world.scene import CATEGORIES

    if sample.condition != CLEAN:
        return None
    item = sample.item
    if sample.task == "classification":
        index = item.category_id - 1
        if wrong_every and int(item.uid[3:]) % wrong_every == 0:
            index = (index + 1) % len(CATEGORIES)
        return f"I can see a {CATEGORIES[index]}."
    if sample.task == "vqa":
        return f"It is {item.answers[0]}."
    if sample.task == "rec":
        return chatspot.builder.region_text(Region.box(*item.box), size)
    if sample.task == "actions":
        return f"1. Move above the {item.category}.\n2. Grasp the {item.category}.\n3. Lift it."
    return None


def test_an_oracle_scores_full_marks_and_beats_the_controls(chatspot, world_dir, tmp_path) -> None:
    config = _config(world_dir, tmp_path, noise=(0.2,))
    oracle = OracleChatSpot(chatspot, oracle_table(chatspot, config, lambda s, size: _truth(s, size, chatspot)))
    m = evaluate(oracle, config)
    tasks = m["tasks"]
    assert m["accuracy"] == 1.0 and m["ap"] == pytest.approx(1.0) and m["acc_at_0_5"] == 1.0 and m["unparsed"] == 0
    for name in ("classification/box", "classification/point", "vqa/box", "vqa/point", "actions/box"):
        assert tasks[name]["accuracy"] == 1.0, name
        assert tasks[name]["controls"]["whole_image"]["accuracy"] == 0.0
    for name in ("classification/box", "classification/point", "vqa/box", "rec/expression", "actions/box"):
        assert tasks[name]["region_skill"]["claimed"] is True, name
    assert tasks["classification/box"]["noise"]["0.2"]["accuracy"] == 0.0  # the oracle only knows clean prompts
    report = (tmp_path / "report.md").read_text()
    assert "| GT boxes | 100.0 |" in report and "| n/a |" in report  # OCR not applicable on the world


def test_ap_equals_pycocotools_on_the_written_results(chatspot, world_dir, tmp_path) -> None:
    config = _config(world_dir, tmp_path, noise=(), controls=False, classification_prompts=("box",))
    table = oracle_table(chatspot, config, lambda s, size: _truth(s, size, chatspot, wrong_every=3))
    m = evaluate(OracleChatSpot(chatspot, table), config)
    results = json.loads((tmp_path / "results_coco.json").read_text())
    assert len(results) == m["tasks"]["classification/box"]["n"] and {r["score"] for r in results} == {1.0}
    gt = json.loads((world_dir / "instances.json").read_text())
    stats = cocoeval_from_files(tmp_path, gt, results)
    assert 0.0 < m["ap"] < 1.0 and 0.0 < m["accuracy"] < 1.0
    assert [m[k] for k in ("ap", "ap50", "ap75", "aps", "apm")] == pytest.approx(stats[:5], abs=1e-12)
    assert stats[5] == -1 and m["apl"] is None
