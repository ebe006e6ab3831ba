"""Evaluation speed: chatspot-eval's batched path against naive per-region HF generate(), same samples.

    python scripts/bench_eval.py [--preset small | --model DIR] [--world DIR | --frames 4 --world-seed 7]
        [--max-new-tokens 16] [--naive-limit 48] [--controls] [--noise] [--threads N] [--device cuda] [--json]

chatspot-eval = ``evaluate()``: per image one encode, the shared prefix prefilled once, identical
                prompts decoded once, the rest as one batch (what ``chatspot-eval`` runs);
naive         = what an evaluation script usually does: for every sample, the LlavaProcessor on
                (image, prompt) and ``model.generate(max_new_tokens, stop_strings)``; images are
                read once (only the model work differs).

Both decode greedily with the same budget and the conversation's stop strings; the naive loop
runs on the first ``--naive-limit`` samples (it is slow) and its answers are checked against the
evaluator's, which must be identical. Rates are samples (regions) per second of wall time.
This is a benchmark, not a test: it prints figures and exits 1 only when answers differ.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run from a checkout without installing


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench_eval.py", description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", choices=("tiny", "small"), default="small",
                        help="a random-weight checkpoint of this size (default small: 25 M, 576 image tokens)")
    source.add_argument("--model", type=Path, help="an existing local checkpoint folder instead")
    parser.add_argument("--model-cache", type=Path, default=None, help="where to build/reuse the preset checkpoint")
    parser.add_argument("--world", type=Path, help="a world split folder (default: write one into a temp folder)")
    parser.add_argument("--frames", type=int, default=4, help="frames of the generated split")
    parser.add_argument("--world-seed", type=int, default=7)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--naive-limit", type=int, default=48, help="samples the naive loop runs (0: all)")
    parser.add_argument("--controls", action="store_true")
    parser.add_argument("--noise", action="store_true", help="box noise 0.1 0.2 0.3")
    parser.add_argument("--batch-regions", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="default float32 on cpu, float16 on cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def _model_dir(args: argparse.Namespace) -> Path:
    if args.model:
        return args.model
    from chatspot_ros.testing.tiny_model import build_tiny_llava

    folder = args.model_cache or Path(tempfile.gettempdir()) / f"chatspot-bench-{args.preset}"
    if not (folder / "config.json").is_file():
        print(f"building the {args.preset} checkpoint in {folder} ...", file=sys.stderr)
        build_tiny_llava(folder, preset=args.preset, seed=0)
    return folder


def _cut(text: str, stops: Sequence[str]) -> str:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[:min(hits)] if hits else text).strip()


def run_naive(chatspot: Any, processor: Any, records: Sequence[dict[str, Any]], max_new_tokens: int
              ) -> tuple[list[str], float]:
    """(answers, seconds) of per-sample processor + generate() over ``records``' prompts."""
    import torch

    from chatspot_ros.evaluation.runner import read_image
    from chatspot_ros.runtime.vision import CHANNELS_LAST

    runtime = chatspot.runtime
    stops = tuple(runtime.conversation.stop)
    frames: dict[str, Any] = {}
    for r in records:  # images read up front, outside the timing
        if r["image"] not in frames:
            frame = read_image(Path(r["image"]))
            frames[r["image"]] = runtime.preprocess.expand_to_square(frame) if runtime.preprocess.pad_to_square \
                else frame
    answers = []
    sync = torch.cuda.synchronize if runtime.device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    with torch.inference_mode():
        for r in records:
            prompt = runtime.conversation.render(r["instruction"])
            inputs = processor(images=[frames[r["image"]]], text=[prompt], return_tensors="pt",
                               input_data_format=CHANNELS_LAST).to(runtime.device)
            inputs["pixel_values"] = inputs["pixel_values"].to(runtime.dtype)
            out = runtime.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                         stop_strings=list(stops), tokenizer=processor.tokenizer)
            new = out[0, inputs["input_ids"].shape[1]:].tolist()
            answers.append(_cut(processor.tokenizer.decode(new, skip_special_tokens=True), stops))
    sync()
    return answers, time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch
    from transformers import AutoProcessor
    from transformers.utils import logging as hf_logging

    from chatspot_ros.evaluation import EvalConfig, evaluate
    from chatspot_ros.pipeline import ChatSpot
    from chatspot_ros.runtime import RuntimeConfig
    from chatspot_ros.world.annotations import write_split

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    folder = _model_dir(args)
    dtype = args.dtype or ("float32" if args.device == "cpu" else "float16")
    chatspot = ChatSpot.from_config(RuntimeConfig(model_path=str(folder), device=args.device, dtype=dtype))
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        world = args.world or write_split(Path(tmp) / "world", seed=args.world_seed, frames=args.frames)
        config = EvalConfig.for_world(world, Path(tmp) / "out", max_new_tokens=args.max_new_tokens,
                                      controls=args.controls, noise=(0.1, 0.2, 0.3) if args.noise else (),
                                      batch_regions=args.batch_regions, progress=False, plot=False)
        # A warm-up image, so that neither side pays one-time costs (allocator, kernels) in its timing.
        evaluate(chatspot, config.with_options(max_images=1, out_dir=Path(tmp) / "warm"))
        chatspot.runtime.clear_cache()
        start = time.perf_counter()
        metrics = evaluate(chatspot, config)
        eval_s = time.perf_counter() - start
        records = [json.loads(line) for line in (config.out_dir / "predictions.jsonl").read_text().splitlines()]
        records = [r for r in records if not r.get("error")]
        subset = records[: args.naive_limit] if args.naive_limit else records
        processor = AutoProcessor.from_pretrained(str(folder), local_files_only=True)
        run_naive(chatspot, processor, subset[:1], args.max_new_tokens)  # warm-up
        naive_answers, naive_s = run_naive(chatspot, processor, subset, args.max_new_tokens)
    mismatches = [r["key"] for r, a in zip(subset, naive_answers) if a != r["answer"]]
    run = metrics["run"]
    row = {
        "model": str(folder), "device": args.device, "dtype": dtype, "threads": torch.get_num_threads(),
        "max_new_tokens": args.max_new_tokens, "images": run["images"], "samples": len(records),
        "distinct_prompts": run["prompts"], "answer_calls": run["answer_calls"],
        "eval_wall_s": round(eval_s, 3), "eval_regions_per_s": round(len(records) / eval_s, 2),
        "naive_samples": len(subset), "naive_wall_s": round(naive_s, 3),
        "naive_regions_per_s": round(len(subset) / naive_s, 2),
        "speedup": round((len(records) / eval_s) / (len(subset) / naive_s), 2),
        "identical": not mismatches, "mismatched_keys": mismatches[:10],
    }
    chatspot.close()
    if args.json:
        print(json.dumps(row))
    else:
        print(f"# {row['model']}, {args.device} {dtype}, {row['threads']} threads, max_new_tokens "
              f"{args.max_new_tokens}, {row['images']} images, {row['samples']} samples "
              f"({row['distinct_prompts']} distinct prompts, {row['answer_calls']} answer calls)")
        print(f"{'path':<14} {'samples':>8} {'wall s':>9} {'regions/s':>10}")
        for name, n, wall, rate in (("chatspot-eval", row["samples"], row["eval_wall_s"], row["eval_regions_per_s"]),
                                    ("naive", row["naive_samples"], row["naive_wall_s"], row["naive_regions_per_s"])):
            print(f"{name:<14} {n:>8} {wall:>9.2f} {rate:>10.2f}")
        print(f"speedup {row['speedup']:.2f}x; answers identical on the naive samples: {row['identical']}")
    return 0 if not mismatches else 1


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
