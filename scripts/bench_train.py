"""Trainer throughput, variants side by side in one run (samples/s over the same steps).

  python scripts/bench_train.py --preset tabletop --steps 12 --batch-size 32 --threads 2
  python scripts/bench_train.py --device cuda --bf16 --compile --workers 8 --batch-size 512   # a GPU machine

Variants: "before" (the old loop: inline encoding, plain AdamW, fp32), then inline + fused AdamW,
workers + fused, workers + fused + bf16 autocast, and (--compile) workers + fused + bf16 + compiled
forward. Every variant starts from the same weights (the preset with transformers' default
initialization: the data path and the optimizer step cost the same with or without the wiring)
and draws the same batches (batch_rng), warms up for --warmup steps, then times --steps steps.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tabletop", help="tabletop preset to train")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (worker start, compile)")
    parser.add_argument("--batch-size", type=int, default=32, help="samples per step")
    parser.add_argument("--workers", type=int, default=2, help="batch worker processes of the worker variants")
    parser.add_argument("--threads", type=int, default=0, help="torch threads of the step (0: torch's default)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--bf16", action="store_true", help="also the bf16 variant")
    parser.add_argument("--compile", action="store_true", help="also the compiled variant")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the variant sequence this many times (interleaved); the median per variant counts")
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args(argv)

    import torch

    from chatspot_ros.training.dataset import ConversationEncoder
    from chatspot_ros.training.model_setup import from_preset
    from chatspot_ros.training.recipe import TrainConfig, apply_stage
    from chatspot_ros.training.sources import SampleMix
    from chatspot_ros.training.trainer import Trainer
    from chatspot_ros.training.world_source import WorldSource

    if args.threads:
        torch.set_num_threads(args.threads)
    setup = from_preset(args.preset, wired=False)
    apply_stage(setup.model, "scratch")
    initial = copy.deepcopy(setup.model.state_dict())
    encoder = ConversationEncoder(setup.tokenizer, setup.builder, setup.conversation, setup.num_image_tokens, 512)
    mix = SampleMix(max_turns=1).with_weights("classify=4,describe=1,attribute=1,locate=1,task=2,image_level=0.5")
    variants = [("before: inline, plain AdamW, fp32", dict(workers=0, fused=False)),
                ("inline, fused AdamW", dict(workers=0, fused=True)),
                (f"{args.workers} workers, fused AdamW", dict(workers=args.workers, fused=True))]
    if args.bf16:
        variants.append((f"{args.workers} workers, fused, bf16", dict(workers=args.workers, fused=True, bf16=True)))
    if args.compile:
        variants.append((f"{args.workers} workers, fused, bf16, compiled", dict(
            workers=args.workers, fused=True, bf16=args.bf16, compile=True)))
    import statistics

    rates: dict[str, list[float]] = {name: [] for name, _ in variants}
    fused_used: dict[str, bool] = {}
    for name, options in [v for _ in range(args.rounds) for v in variants]:
        setup.model.load_state_dict(initial)
        config = TrainConfig(stage="scratch", steps=args.warmup + args.steps, batch_size=args.batch_size,
                             warmup_steps=1, save_every=10_000, log_every=10_000, device=args.device, **options)
        model = setup.model.to(args.device)
        source = WorldSource(seed=1, frames=8000, mix=mix)
        with tempfile.TemporaryDirectory() as out:
            trainer = Trainer(model, encoder, setup.preprocess, source, config, out, setup.tokenizer.pad_token_id)
            for _ in range(args.warmup):
                trainer.train_step()
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(args.steps):
                trainer.train_step()
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            wall = time.perf_counter() - start
            trainer.close()
        rate = args.steps * args.batch_size / wall
        rates[name].append(rate)
        fused_used[name] = trainer.fused
        print(f"{name:45s} {rate:10.2f} samples/s  (fused AdamW in use: {trainer.fused})", flush=True)
    results = [{"variant": name, "samples_per_s": round(statistics.median(r), 3), "runs": [round(v, 3) for v in r],
                "fused": fused_used[name]} for name, r in rates.items()]
    base = results[0]["samples_per_s"]
    print(f"\n| variant ({args.preset}, batch {args.batch_size}, {args.device}) | samples/s | vs before |")
    print("|---|---|---|")
    for r in results:
        print(f"| {r['variant']} | {r['samples_per_s']:.2f} | {r['samples_per_s'] / base:.2f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
