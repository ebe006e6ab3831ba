"""report.md (tables shaped like the paper's Tables 1-3) and robustness.png (Fig. 5, right)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from chatspot_ros.evaluation.cocoeval import AP_KEYS

_DASH = "-"
_GROUP_TITLES = {
    "classification/box": "Region classification, GT boxes",
    "classification/point": "Region classification, clicks (points)",
    "classification/detection": "Region classification, detector boxes",
    "ocr/box": "Regional OCR",
    "vqa/box": "Region VQA, boxes",
    "vqa/point": "Region VQA, points",
    "rec/expression": "Referring expression comprehension (Acc@0.5)",
    "actions/box": "Action plans",
}
# The curves of the robustness plot: the groups the box noise applies to.
NOISE_GROUPS = {"classification/box": "Region classification (GT boxes)", "vqa/box": "Region VQA (boxes)"}


def pct(value: float | None) -> str:
    return _DASH if value is None else f"{100 * value:.1f}"


def _headline(name: str, group: Mapping[str, Any]) -> float | None:
    return group.get("acc_at_0_5") if name.startswith("rec/") else group.get("accuracy")


def _table1(tasks: Mapping[str, Any]) -> list[str]:
    rows = [("GT boxes", "classification/box"), ("GT points", "classification/point"),
            ("Detector boxes", "classification/detection")]
    lines = ["| Region | AP | AP50 | AP75 | APs | APm | APl | Acc. | n |", "|---|---|---|---|---|---|---|---|---|"]
    for label, name in rows:
        g = tasks.get(name)
        if g is None:
            continue
        aps = " | ".join(pct(g.get(k)) for k in AP_KEYS)
        lines.append(f"| {label} | {aps} | {pct(g.get('accuracy'))} | {g['n']} |")
    return lines if len(lines) > 2 else []


def _table2(tasks: Mapping[str, Any], notes: Sequence[str]) -> list[str]:
    cols = [("OCR", "ocr/box"), ("VQA (B)", "vqa/box"), ("VQA (P)", "vqa/point"), ("REC Acc@0.5", "rec/expression"),
            ("Action plans", "actions/box")]
    present = [(label, name) for label, name in cols if name in tasks]
    if not present:
        return []
    ocr_na = any(n.startswith("Regional OCR: not applicable") for n in notes)
    if ocr_na and "ocr/box" not in tasks:
        present.insert(0, ("OCR", "ocr/box"))
    header = "| " + " | ".join(label for label, _ in present) + " |"
    values = []
    for _, name in present:
        g = tasks.get(name)
        values.append("n/a" if g is None else f"{pct(_headline(name, g))} (n={g['n']})")
    return [header, "|" + "---|" * len(present), "| " + " | ".join(values) + " |"]


def _controls_table(tasks: Mapping[str, Any]) -> list[str]:
    lines = ["| Task | Model | Chance | Whole image | Stage-0 head | Region swap | Swap answers B | Region skill |",
             "|---|---|---|---|---|---|---|---|"]
    for name, g in _ordered(tasks):
        if name.endswith("/detection"):
            continue
        c = g.get("controls", {})
        skill = g.get("region_skill")
        claimed = _DASH if skill is None else ("yes" if skill["claimed"] else "no")
        whole, swap = c.get("whole_image", {}), c.get("swap", {})
        stage0 = (g.get("baselines") or {}).get("stage0_head")
        lines.append(f"| {_GROUP_TITLES.get(name, name)} | {pct(_headline(name, g))} | {pct(g.get('chance'))} | "
                     f"{pct(whole.get('accuracy'))} | {pct(stage0)} | {pct(swap.get('accuracy'))} | "
                     f"{pct(swap.get('answers_partner'))} | {claimed} |")
    return lines


def _ordered(tasks: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """Groups in the order of the paper's tables, unknown ones last."""
    order = list(_GROUP_TITLES)
    return sorted(tasks.items(), key=lambda kv: (order.index(kv[0]) if kv[0] in order else len(order), kv[0]))


def noise_curves(tasks: Mapping[str, Any]) -> dict[str, list[tuple[float, float]]]:
    """group -> [(scale, accuracy)] from scale 0 (clean) up, for groups that ran with box noise."""
    curves = {}
    for name in NOISE_GROUPS:
        g = tasks.get(name)
        if not g or not g.get("noise") or g.get("accuracy") is None:
            continue
        points = [(0.0, g["accuracy"])] + sorted((float(s), v["accuracy"]) for s, v in g["noise"].items()
                                                 if v["accuracy"] is not None)
        curves[name] = points
    return curves


def _robustness_table(tasks: Mapping[str, Any]) -> list[str]:
    curves = noise_curves(tasks)
    if not curves:
        return []
    scales = sorted({s for points in curves.values() for s, _ in points})
    lines = ["| Noise scale | " + " | ".join(NOISE_GROUPS[n] for n in curves) + " |", "|---" * (len(curves) + 1) + "|"]
    for s in scales:
        cells = [pct(dict(points).get(s)) for points in curves.values()]
        lines.append(f"| {s:g} | " + " | ".join(cells) + " |")
    return lines


def write_robustness_plot(tasks: Mapping[str, Any], path: Path) -> bool:
    """Accuracy against box-noise scale (the paper's Fig. 5, right); False when no noise was run."""
    curves = noise_curves(tasks)
    if not curves:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    try:
        for name, points in curves.items():
            xs, ys = zip(*points)
            ax.plot(xs, [100 * y for y in ys], marker="o", label=NOISE_GROUPS[name])
        ax.set_xlabel("box noise scale")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 100)
        ax.set_xticks(sorted({s for points in curves.values() for s, _ in points}))
        ax.set_title("Robustness to box noise")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left", fontsize=8)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return True


def _world_line(world: Mapping[str, Any]) -> str:
    name = world.get("split") or "(unnamed)"
    return f"{name} (variant {world.get('variant', 'standard')}, seed {world.get('seed')}, {world.get('frames')} frames)"


def render_report(metrics: Mapping[str, Any], notes: Sequence[str] = ()) -> str:
    """The Markdown report of a run."""
    tasks = metrics["tasks"]
    run = metrics["run"]
    lines = ["# chatspot-eval report", "",
             f"- model: `{run['model']}` (dialect `{run['dialect']}`, conversation `{run['conversation']}`)",
             f"- matcher: `{run['matcher']}`",
             f"- samples: {metrics['samples']} ({run['prompts']} distinct prompts decoded this run, "
             f"{run['images']} images)",
             f"- wall time: {run['wall_s']:.1f} s, {run['regions_per_s']:.1f} regions/s"
             + (f" (resumed: {run['resumed_samples']} samples from an earlier run)" if run["resumed_samples"] else ""),
             *([f"- command: `{run['command']}`"] if run.get("command") else []),
             *([f"- world split: {_world_line(run['world'])}"] if run.get("world") else []),
             ""]
    lines += [f"> {n}" for n in notes] + ([""] if notes else [])
    table1 = _table1(tasks)
    if table1:
        lines += ["## Region classification (paper Table 1)", "", *table1, ""]
    table2 = _table2(tasks, notes)
    if table2:
        lines += ["## Region-level tasks (paper Tables 2-3; accuracy %, REC Acc@0.5 %)", "", *table2, ""]
    plans = tasks.get("actions/box")
    if plans and plans.get("strict"):
        strict = plans["strict"]
        lines += [f"Action plans, strict rule (kind, target, direction and destination all right): "
                  f"{pct(strict['accuracy'])} % (n={strict['n']}), beside {pct(plans.get('accuracy'))} % by the "
                  f"rule above (target named, no other object).", ""]
    rec = tasks.get("rec/expression")
    if rec:
        lines += [f"REC: {rec['unparsed']} of {rec['n']} answers held no parsable box (counted wrong); "
                  f"mean IoU {rec['mean_iou'] if rec['mean_iou'] is not None else 0:.3f}.", ""]
    if any("controls" in g for g in tasks.values()) or any("chance" in g for g in tasks.values()):
        lines += ["## Controls (accuracy %)", "",
                  "A region skill is claimed where the model beats both controls (McNemar p < 0.05, paired).", "",
                  *_controls_table(tasks), ""]
    robust = _robustness_table(tasks)
    if robust:
        lines += ["## Robustness to box noise (paper Fig. 5; accuracy %)", "", *robust, "",
                  "![robustness](robustness.png)", ""]
    invalid = {name: g["invalid"] for name, g in tasks.items() if g.get("invalid")}
    if invalid:
        lines += [f"Samples that could not be asked (region outside the image): {invalid}", ""]
    return "\n".join(lines).rstrip("\n") + "\n"
