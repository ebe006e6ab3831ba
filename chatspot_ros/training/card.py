"""The run's paperwork: --dry-run report, mixed sources, and the model card (README.md in the folder)."""
from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from chatspot_ros.training.conversations import Sample


@dataclass
class MixedSource:
    """Several sources drawn from in proportion to their size (a world source counts its frames)."""

    sources: Sequence[Any]
    name: str = "mixed"

    def _weights(self) -> np.ndarray:
        sizes = [len(s.samples) if hasattr(s, "samples") else s.frames for s in self.sources]
        w = np.asarray(sizes, dtype=np.float64)
        return w / w.sum()

    def draw(self, rng: np.random.Generator, n: int) -> list[Sample]:
        picks = rng.choice(len(self.sources), size=n, p=self._weights())
        out: list[Sample] = []
        for k in range(len(self.sources)):
            m = int((picks == k).sum())
            if m:
                out += self.sources[k].draw(rng, m)
        return out

    def load_image(self, key: str) -> np.ndarray:
        for s in self.sources:
            if key.startswith("world:") == (s.name == "world"):
                return s.load_image(key)
        raise KeyError(key)


def dry_run(trainer: Any, n: int = 1000) -> int:
    """Encode n drawn samples; print supervised-token counts and rejections; train nothing."""
    from chatspot_ros.training.dataset import EncodeStats
    from chatspot_ros.training.tokenization import Encoded

    stats = EncodeStats()
    lengths, per_template = [], {}
    for sample in trainer.source.draw(trainer.rng, n):
        result = trainer.encoder(sample)
        stats.add(sample, result)
        if isinstance(result, Encoded):
            lengths.append(len(result.input_ids))
            for t in sample.turns:
                per_template[t.template] = per_template.get(t.template, 0) + 1
    print(stats.summary())
    if lengths:
        print(f"sequence length (image tokens included): median {int(np.median(lengths))}, max {max(lengths)}, "
              f"limit {trainer.config.max_length}")
    print(f"turns by template: {json.dumps(per_template, sort_keys=True)}")
    return 0 if stats.kept else 1


def _table(rows: Sequence[Sequence[Any]]) -> str:
    head, *body = rows
    lines = ["| " + " | ".join(str(c) for c in head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in body]
    return "\n".join(lines)


def write_model_card(model_dir: Path, *, args: Sequence[str], config: Any, setup: Any, trainer: Any, wall_s: float,
                     source: Any, eval_world_seed: int | None = None, eval_frames: int = 200,
                     evaluation: dict[str, Any] | None = None) -> Path:
    """README.md in the model folder: command, data, steps, wall time, encoding stats, evaluation."""
    n_params = sum(p.numel() for p in setup.model.parameters())
    history = trainer.history
    first = np.mean([h.loss for h in history[:10]]) if history else float("nan")
    last = np.mean([h.loss for h in history[-10:]]) if history else float("nan")
    data = source.name
    if hasattr(source, "seed"):
        data = f"tabletop world, split seed {source.seed}, frames {source.start}..{source.start + source.frames - 1}, " \
               f"turns drawn afresh each step (at most {source.mix.max_turns} per conversation)"
    lines = [
        "# ChatSpot model trained by chatspot_ros",
        "",
        f"Trained with `chatspot-train {' '.join(args)}` on {time.strftime('%Y-%m-%d')} "
        f"({platform.machine()}, {config.threads or 'default'} torch threads, device {config.device}).",
        "",
        _table([
            ("what", "value"),
            ("start", setup.origin),
            ("parameters", f"{n_params / 1e6:.2f} M"),
            ("stage", config.stage),
            ("steps x batch", f"{trainer.step} x {config.batch_size * config.grad_accum}"),
            ("data", data),
            ("dialect / conversation", f"{setup.builder.dialect.name} / {setup.conversation.name}"),
            ("image tokens", setup.num_image_tokens),
            ("wall time", f"{wall_s / 60:.1f} min"),
            ("loss (first 10 / last 10 steps)", f"{first:.3f} / {last:.3f}"),
            ("samples kept / rejected / truncated",
             f"{trainer.stats.kept} / {sum(trainer.stats.rejected.values())} / {trainer.stats.truncated}"),
        ]),
        "",
        "Hyper-parameters: `" + json.dumps(config.to_json(), sort_keys=True) + "`",
        "",
    ]
    if evaluation:
        lines += ["## Evaluation", "", evaluation.get("markdown", json.dumps(evaluation, indent=2)), ""]
    elif eval_world_seed is not None:
        lines += ["## Evaluation", "",
                  f"Run `chatspot-eval --model {model_dir} --world-seed {eval_world_seed} --frames {eval_frames}` "
                  "and paste its report here (see docs/training.md).", ""]
    path = Path(model_dir) / "README.md"
    path.write_text("\n".join(lines))
    return path
