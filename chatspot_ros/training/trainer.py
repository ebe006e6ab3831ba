"""The training loop: seeded, resumable, with a progress bar, a metrics CSV and a loss curve.

``Trainer.run`` draws batches from a SampleSource, renders and encodes them for the checkpoint
(``dataset.ConversationEncoder``), and steps AdamW with warm-up + cosine, gradient clipping and
accumulation. Micro-batch k of step s is drawn from its own generator ``[seed, s, k]``
(``batch_rng``), so ``config.workers`` processes can draw, render, tokenize and collate batches
ahead of the step (a torch DataLoader) and hand over exactly the batches the single-process loop
would make (tested). AdamW is fused where torch supports it, ``bf16`` autocasts, ``compile``
compiles the model's forward. Every ``save_every`` steps it writes a resumable checkpoint (weights, optimizer,
step, random states); ``resume`` continues from the newest one and reproduces the run that was
not interrupted (tested). The final model is written in the llava-hf layout (export.py).
"""
from __future__ import annotations

import csv
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
from torch.utils.data import IterableDataset

from chatspot_ros.training.conversations import Sample
from chatspot_ros.training.dataset import ConversationEncoder, EncodeStats, PixelCache, collate
from chatspot_ros.training.recipe import TrainConfig, lr_at
from chatspot_ros.training.tokenization import Encoded

LOGGER = logging.getLogger("chatspot_ros.training")
METRICS_FILE = "metrics.csv"
STATE_DIR = "state"


class SampleSource(Protocol):
    """Where training samples come from: a JSONL dataset, or the world drawn afresh."""

    name: str

    def draw(self, rng: np.random.Generator, n: int) -> list[Sample]: ...

    def load_image(self, key: str) -> np.ndarray: ...


@dataclass
class ListSource:
    """A fixed list of samples (a dataset file); draws uniformly with replacement."""

    samples: Sequence[Sample]
    name: str = "dataset"

    def draw(self, rng: np.random.Generator, n: int) -> list[Sample]:
        return [self.samples[int(i)] for i in rng.integers(len(self.samples), size=n)]

    def load_image(self, key: str) -> np.ndarray:
        from chatspot_ros.training.dataset import load_rgb

        return load_rgb(key)


def batch_rng(seed: int, step: int, micro: int) -> np.random.Generator:
    """The generator micro-batch ``micro`` of step ``step`` is drawn from (any process, any order)."""
    return np.random.default_rng([int(seed), int(step), int(micro)])


def make_batch(source: SampleSource, encoder: ConversationEncoder, pixels: PixelCache, batch_size: int,
               rng: np.random.Generator, pad_id: int, stats: EncodeStats) -> tuple[dict[str, Any], int]:
    """One collated micro-batch (input_ids, attention_mask, labels, pixel_values) drawn with ``rng``;
    rejected samples are counted in ``stats`` and replaced. Returns the batch and the rejections."""
    items: list[tuple[Sample, Encoded]] = []
    rejected = 0
    for _ in range(20):
        for sample in source.draw(rng, batch_size - len(items)):
            result = encoder(sample)
            stats.add(sample, result)
            if isinstance(result, Encoded):
                items.append((sample, result))
            else:
                rejected += 1
        if len(items) == batch_size:
            break
    if not items:
        raise RuntimeError(f"every drawn sample was rejected:\n{stats.summary()}")
    batch = collate([e for _, e in items], pad_id)
    batch["pixel_values"] = pixels.get([s.image for s, _ in items])
    return batch, rejected


class BatchStream(IterableDataset):
    """Micro-batches from step ``start`` on, made in DataLoader worker processes (torch's
    IterableDataset protocol): worker w of W makes the batches whose running number is w mod W,
    and the DataLoader hands them over in order, each with its encode-stats delta."""

    def __init__(self, source: SampleSource, encoder: ConversationEncoder, preprocess: Callable[..., Any],
                 config: TrainConfig, pad_id: int, start: int) -> None:
        self.source, self.encoder, self.preprocess = source, encoder, preprocess
        self.config, self.pad_id, self.start = config, pad_id, start

    def __iter__(self):  # noqa: ANN204 (an iterator of (batch, rejected, stats))
        import torch

        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        torch.set_num_threads(1)  # the trainer's threads belong to the step
        pixels = PixelCache(self.preprocess, self.source.load_image)
        accum = self.config.grad_accum
        number = self.start * accum
        while True:
            if number % workers == worker:
                stats = EncodeStats()
                step, micro = divmod(number, accum)
                batch, rejected = make_batch(self.source, self.encoder, pixels, self.config.batch_size,
                                             batch_rng(self.config.seed, step, micro), self.pad_id, stats)
                yield batch, rejected, stats
            number += 1


def _merge_stats(into: EncodeStats, delta: EncodeStats) -> None:
    into.kept += delta.kept
    into.truncated += delta.truncated
    into.supervised_tokens += delta.supervised_tokens
    into.total_tokens += delta.total_tokens
    into.rejected.update(delta.rejected)
    for reason, example in delta.examples.items():
        into.examples.setdefault(reason, example)


def make_adamw(groups: list[dict[str, Any]], config: TrainConfig, device: Any) -> tuple[Any, bool]:
    """AdamW, fused where torch supports it on ``device`` (``config.fused``); returns (optimizer, fused)."""
    import torch

    kwargs = {"lr": config.lr, "betas": config.betas}
    if config.fused:
        try:
            return torch.optim.AdamW(groups, fused=True, **kwargs), True
        except (RuntimeError, TypeError, ValueError) as err:  # a device or dtype the fused kernel lacks
            LOGGER.warning("fused AdamW not available here (%s); using the foreach implementation", err)
    return torch.optim.AdamW(groups, **kwargs), False


@dataclass
class StepLog:
    step: int
    loss: float
    lr: float
    grad_norm: float
    samples_per_s: float
    tokens: int
    supervised: int
    rejected: int
    elapsed_s: float


class Trainer:
    """Trains ``model`` on samples from ``source`` with ``config`` into ``out_dir``."""

    def __init__(self, model: Any, encoder: ConversationEncoder, preprocess: Callable[[Sequence[np.ndarray]], Any],
                 source: SampleSource, config: TrainConfig, out_dir: str | Path, pad_id: int) -> None:
        import torch

        self.model = model
        self.encoder = encoder
        self.source = source
        self.config = config
        self.out = Path(out_dir)
        self.pad_id = pad_id
        self.pixels = PixelCache(preprocess, source.load_image)
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("no trainable parameters: check the stage")
        decay = [p for p in self.params if p.dim() >= 2]
        no_decay = [p for p in self.params if p.dim() < 2]
        self.device = torch.device(config.device)
        if config.bf16 and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError("--bf16: this GPU has no bfloat16 support")
        self.optimizer, self.fused = make_adamw(
            [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            config, self.device)
        self.step = 0
        self.rng = np.random.default_rng(config.seed)  # dry runs and the card's samples; batches use batch_rng
        self.preprocess = preprocess
        self.stats = EncodeStats()
        self.history: list[StepLog] = []
        self.forward = torch.compile(model) if config.compile else model
        self._stream: Any = None

    # ------------------------------------------------------------------ batches
    def next_batch(self, micro: int = 0) -> tuple[dict[str, Any], int]:
        """Micro-batch ``micro`` of the current step (from the workers when ``config.workers``)."""
        if not self.config.workers:
            return make_batch(self.source, self.encoder, self.pixels, self.config.batch_size,
                              batch_rng(self.config.seed, self.step, micro), self.pad_id, self.stats)
        if self._stream is None:
            import torch

            stream = BatchStream(self.source, self.encoder, self.preprocess, self.config, self.pad_id, self.step)
            loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=self.config.workers,
                                                 prefetch_factor=4, pin_memory=self.device.type == "cuda")
            self._stream = iter(loader)
        batch, rejected, stats = next(self._stream)
        _merge_stats(self.stats, stats)
        return batch, int(rejected)

    def close(self) -> None:
        """Stop the batch workers (a later step starts them again from the current step)."""
        self._stream = None

    # ------------------------------------------------------------------ loop
    def train_step(self) -> StepLog:
        import torch

        cfg = self.config
        start = time.perf_counter()
        lr = lr_at(cfg, self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total_loss, tokens, supervised, rejected = 0.0, 0, 0, 0
        self.model.train()
        micro = []
        for k in range(cfg.grad_accum):
            batch, rej = self.next_batch(k)
            rejected += rej
            micro.append(batch)
        sup_total = sum(int((b["labels"] != -100).sum()) for b in micro)
        for batch in micro:
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            labels = batch.pop("labels")
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                logits = self.forward(**batch).logits  # (B, T, V)
            # token-mean over the whole accumulated batch, like one big batch
            shift_logits = logits[:, :-1].float().reshape(-1, logits.shape[-1])
            shift_labels = labels[:, 1:].reshape(-1)
            loss = torch.nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=-100,
                                                     reduction="sum") / max(sup_total, 1)
            loss.backward()
            total_loss += float(loss.detach())
            tokens += int(batch["attention_mask"].sum())
            supervised += int((shift_labels != -100).sum())
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, cfg.clip_grad))
        if not math.isfinite(grad_norm):
            raise FloatingPointError(f"step {self.step}: gradient norm is {grad_norm}; lower lr or check the data")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        elapsed = time.perf_counter() - start
        n = cfg.batch_size * cfg.grad_accum
        log = StepLog(self.step, total_loss, lr, grad_norm, n / elapsed, tokens, supervised, rejected, elapsed)
        self.history.append(log)
        return log

    def run(self, on_step: Callable[[StepLog], None] | None = None, *, progress: bool = True) -> list[StepLog]:
        """Train until ``config.steps``; checkpoints every ``save_every`` and at the end."""
        from tqdm import tqdm

        cfg = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        bar = tqdm(total=cfg.steps, initial=self.step, desc="train", unit="step", disable=not progress,
                   dynamic_ncols=True)
        smoothed = None
        try:
            started = time.perf_counter()
            while self.step < cfg.steps:
                if cfg.max_minutes and time.perf_counter() - started > 60 * cfg.max_minutes:
                    LOGGER.info("stopping at step %d: --max-minutes %g reached", self.step, cfg.max_minutes)
                    break
                log = self.train_step()
                smoothed = log.loss if smoothed is None else 0.9 * smoothed + 0.1 * log.loss
                bar.update(1)
                # loss: this step's mean token loss, the number metrics.csv records; loss_ema: its 0.9 average
                bar.set_postfix(loss=f"{log.loss:.3f}", loss_ema=f"{smoothed:.3f}", lr=f"{log.lr:.2e}",
                                sps=f"{log.samples_per_s:.1f}")
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    self._append_metrics(log)
                if on_step is not None:
                    on_step(log)
                if self.step % cfg.save_every == 0 and self.step < cfg.steps:
                    self.save_state()
        finally:
            bar.close()
            self.close()
        self.save_state()
        return self.history

    # ------------------------------------------------------------------ files
    def _append_metrics(self, log: StepLog) -> None:
        path = self.out / METRICS_FILE
        new = not path.exists()
        with open(path, "a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(list(log.__dataclass_fields__))
            writer.writerow([getattr(log, k) for k in log.__dataclass_fields__])

    def save_state(self) -> Path:
        """A resumable checkpoint: trainable weights, optimizer, step and random states."""
        import torch

        state_dir = self.out / STATE_DIR
        state_dir.mkdir(parents=True, exist_ok=True)
        # from scratch every weight may have moved (stage 0 included), frozen or not; otherwise the
        # frozen base is the checkpoint's own and only what trains is saved
        scratch = self.config.stage == "scratch" and not self.config.lora_r
        trainable = {n: p.detach().cpu() for n, p in self.model.named_parameters() if scratch or p.requires_grad}
        tmp = state_dir / "state.pt.tmp"
        torch.save({
            "step": self.step,
            "trainable": trainable,
            "optimizer": self.optimizer.state_dict(),
            "rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "config": self.config.to_json(),
            "encode_stats": {"kept": self.stats.kept, "rejected": dict(self.stats.rejected),
                             "truncated": self.stats.truncated},
        }, tmp)
        tmp.replace(state_dir / "state.pt")
        return state_dir / "state.pt"

    def load_state(self) -> bool:
        """Continue from ``out/state/state.pt`` when it exists; False when there is none."""
        import torch

        path = self.out / STATE_DIR / "state.pt"
        if not path.exists():
            return False
        state = torch.load(path, map_location="cpu", weights_only=False)
        saved = dict(state["config"])
        saved["betas"] = tuple(saved["betas"])
        saved["lora_targets"] = tuple(saved["lora_targets"])
        mismatch = {k: (saved.get(k), v) for k, v in self.config.to_json().items()
                    if k not in ("steps", "save_every", "log_every", "threads", "workers", "compile", "fused",
                                  "max_minutes")
                    and saved.get(k) != v}
        if mismatch:
            raise ValueError(f"cannot resume {path}: the run's settings differ ({mismatch}); use a new --out")
        named = dict(self.model.named_parameters())
        missing = [n for n in state["trainable"] if n not in named]
        if missing:
            raise ValueError(f"cannot resume {path}: the model has no parameters {missing[:4]}")
        with torch.no_grad():
            for n, tensor in state["trainable"].items():
                named[n].copy_(tensor)
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        self.step = int(state["step"])
        LOGGER.info("resumed %s at step %d", path, self.step)
        return True


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def plot_loss_curve(metrics_csv: str | Path, out_png: str | Path, title: str = "training loss") -> Path:
    """loss (and lr) against step, as a PNG (matplotlib, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_csv)
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(steps, [r["loss"] for r in rows], label="loss (logged steps, metrics.csv)", color="tab:blue")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (assistant tokens)")
    ax.grid(True, alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(steps, [r["lr"] for r in rows], label="lr", color="tab:orange", alpha=0.6)
    ax2.set_ylabel("learning rate")
    lines = ax.get_lines() + ax2.get_lines()
    ax.legend(lines, [line.get_label() for line in lines], loc="upper right")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    return Path(out_png)


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
