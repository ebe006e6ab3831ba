"""One model's metrics on several world splits as two Markdown tables, baselines beside every figure.

  python -m chatspot_ros.evaluation.splits_table build/eval/splits/{test,crowded,...}/metrics.json

Each argument is a ``chatspot-eval`` metrics.json (run with ``--controls``, and ``--stage0-baseline``
for a wired model); a row is named by the world split the run recorded.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from chatspot_ros.evaluation.report import pct


def _get(group: Mapping[str, Any] | None, *path: str) -> Any:
    value: Any = group
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _name(metrics: Mapping[str, Any], path: str) -> str:
    world = metrics.get("run", {}).get("world") or {}
    name = world.get("split") or Path(path).parent.name
    return f"{name} (seed {world.get('seed')}, {world.get('frames')} frames)" if world else name


def tables(runs: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    """Classification table, then REC / plans / VQA table (accuracy %, n per row)."""
    cls = ["| split | boxes: model | stage-0 head | whole image | chance | clicks: model | stage-0 head | "
           "whole image | n |", "|---|---|---|---|---|---|---|---|---|"]
    rest = ["| split | REC Acc@0.5 | REC chance | REC swapped expression | plans (target named) | plans strict | "
            "plans whole image | VQA boxes | VQA boxes whole image | VQA points | VQA points whole image |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for path, m in runs:
        t = m["tasks"]
        box, point = t.get("classification/box"), t.get("classification/point")
        name = _name(m, path)
        cls.append(f"| {name} | {pct(_get(box, 'accuracy'))} | {pct(_get(box, 'baselines', 'stage0_head'))} | "
                   f"{pct(_get(box, 'controls', 'whole_image', 'accuracy'))} | {pct(_get(box, 'chance'))} | "
                   f"{pct(_get(point, 'accuracy'))} | {pct(_get(point, 'baselines', 'stage0_head'))} | "
                   f"{pct(_get(point, 'controls', 'whole_image', 'accuracy'))} | {_get(box, 'n')} |")
        rec, plans = t.get("rec/expression"), t.get("actions/box")
        vb, vp = t.get("vqa/box"), t.get("vqa/point")
        rest.append(f"| {name} | {pct(_get(rec, 'acc_at_0_5'))} | {pct(_get(rec, 'chance'))} | "
                    f"{pct(_get(rec, 'controls', 'swap', 'accuracy'))} | {pct(_get(plans, 'accuracy'))} | "
                    f"{pct(_get(plans, 'strict', 'accuracy'))} | "
                    f"{pct(_get(plans, 'controls', 'whole_image', 'accuracy'))} | {pct(_get(vb, 'accuracy'))} | "
                    f"{pct(_get(vb, 'controls', 'whole_image', 'accuracy'))} | {pct(_get(vp, 'accuracy'))} | "
                    f"{pct(_get(vp, 'controls', 'whole_image', 'accuracy'))} |")
    return "\n".join(cls) + "\n\n" + "\n".join(rest)


def main(argv: Sequence[str] | None = None) -> int:
    paths = list(sys.argv[1:] if argv is None else argv)
    if not paths:
        print("usage: python -m chatspot_ros.evaluation.splits_table RUN/metrics.json ...", file=sys.stderr)
        return 2
    print(tables([(p, json.loads(Path(p).read_text())) for p in paths]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
