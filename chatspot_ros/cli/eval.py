"""chatspot-eval: the paper's region tasks and metrics on standard dataset files (no ROS).

    chatspot-eval --model DIR --out OUT --world DIR [--noise] [--controls]
    chatspot-eval --model DIR --out OUT --coco instances_val2017.json --images val2017 \
        [--detections dino_results.json] [--max-images 1000 --seed 0] [--matcher clip:CLIP_DIR]
    chatspot-eval --model DIR --out OUT --ocr cocotext.v2.json --ocr-images train2014
    chatspot-eval --model DIR --out OUT --vqa pointqa.jsonl --refs refcoco_val.jsonl --tasks tasks.jsonl

Writes predictions.jsonl, metrics.json, results_coco.json, report.md and robustness.png into OUT
(docs/evaluation.md). ``--resume`` continues an interrupted run from its predictions.jsonl.
"""
from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from chatspot_ros.cli.errors import cli_main, finish_parser, writable_folder
from chatspot_ros.cli.threads import configure_threads
from chatspot_ros.remote.cli import add_backend_arguments, server_config_from_args
from chatspot_ros.runtime.config import DTYPES, QUANTIZATIONS, VISION_BACKENDS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chatspot-eval", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.split("\n")[1:]))
    model = parser.add_argument_group("model")
    model.add_argument("--model", required=True, help="local checkpoint folder (llava-hf layout)")
    model.add_argument("--format", dest="dialect", default=None, help="coordinate dialect (default: the checkpoint's)")
    model.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    model.add_argument("--dtype", default=None, choices=DTYPES, help="default: float32 on cpu, float16 on cuda")
    model.add_argument("--quantization", default="none", choices=QUANTIZATIONS,
                        help="weight-only quantization of the LLM (torchao): int8, int4 (CUDA)")
    model.add_argument("--vision-backend", default="torch", choices=VISION_BACKENDS,
                       help="what runs the vision tower (docs/runtime.md)")
    model.add_argument("--engine-dir", default="engines", help="TensorRT/ONNX engine cache (chatspot-build-engine)")
    model.add_argument("--threads", type=int, default=None,
                       help="torch CPU threads (default: one per core, waiting threads sleep; docs/evaluation.md)")
    add_backend_arguments(parser.add_argument_group("backend (--backend vllm: --model is the served checkpoint's "
                                                    "config files)"))

    data = parser.add_argument_group("inputs (any subset)")
    data.add_argument("--world", type=Path, help="a tabletop-world split folder (chatspot-world render): "
                      "instances.json, "
                      "images/, refs.jsonl, region_qa.jsonl, tasks.jsonl; classification with boxes and clicks")
    data.add_argument("--coco", type=Path, help="COCO instances JSON (region classification)")
    data.add_argument("--images", type=Path, help="the folder of the COCO images (default of the other folders)")
    data.add_argument("--detections", type=Path, help="COCO results JSON of a detector on the --coco images")
    data.add_argument("--det-max-per-image", type=int, default=100, help="detections kept per image, best first")
    data.add_argument("--det-min-score", type=float, default=0.0, help="detections below this score are dropped")
    data.add_argument("--ocr", type=Path, help="COCO-Text v2 JSON (regional OCR)")
    data.add_argument("--ocr-images", type=Path, help="the COCO-Text images folder (default: --images)")
    data.add_argument("--ocr-split", default="val", choices=("train", "val", "all"), help="COCO-Text split")
    data.add_argument("--vqa", type=Path, help="region VQA JSONL {image, question, answers, box | point}")
    data.add_argument("--refs", type=Path, help="REC: JSONL {image, expression, bbox} or a refs(unc).p pickle")
    data.add_argument("--refs-instances", type=Path, help="the instances.json beside a refs pickle")
    data.add_argument("--refs-images", type=Path, help="images of a refs pickle (default: --images)")
    data.add_argument("--refs-split", default="val", help="split of a refs pickle: val, testA, testB, test, ...")
    data.add_argument("--tasks", type=Path, help="action tasks JSONL {image, task, category, bbox, destination}")

    run = parser.add_argument_group("what to run")
    run.add_argument("--class-prompts", nargs="+", choices=("box", "point"), default=None,
                     help="region classification prompts (default: box; with --world: box point)")
    run.add_argument("--noise", nargs="*", type=float, default=None, metavar="SCALE",
                     help="box-noise scales; --noise alone: 0.1 0.2 0.3")
    run.add_argument("--controls", action="store_true", help="ignore-the-region and region-swap controls")
    run.add_argument("--stage0-baseline", action="store_true",
                     help="also score region classification by the stage-0 patch head alone (wired tabletop models)")
    run.add_argument("--matcher", default="exact", help="exact | clip:DIR (a local transformers CLIPModel folder)")
    run.add_argument("--synonyms", type=Path, help="JSON {category: [synonyms]} for the exact matcher")
    run.add_argument("--max-images", type=int, default=None, help="random subset of N images per input")
    run.add_argument("--seed", type=int, default=0, help="seed of the subset, the noise and the swap partners")

    how = parser.add_argument_group("how")
    how.add_argument("--out", type=Path, required=True,
                     help="output folder (new or empty; see --overwrite and --resume)")
    how.add_argument("--batch-regions", type=int, default=16, help="prompts decoded together (default 16)")
    how.add_argument("--max-new-tokens", type=int, default=None,
                     help="answer budget for every task (default per task: 32, REC 48, action plans 160)")
    how.add_argument("--resume", action="store_true", help="continue the run in --out from its predictions")
    how.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    how.add_argument("--no-progress", action="store_true", help="no progress bar")
    how.add_argument("--verbose", action="store_true", help="log what loads and runs; tracebacks on errors")
    return finish_parser(parser)


def config_from_args(args: argparse.Namespace):  # -> EvalConfig
    from chatspot_ros.evaluation.config import DEFAULT_NOISE, EvalConfig

    options = dict(
        detections=args.detections, det_max_per_image=args.det_max_per_image, det_min_score=args.det_min_score,
        ocr=args.ocr, ocr_images=args.ocr_images, ocr_split=args.ocr_split, refs_instances=args.refs_instances,
        refs_images=args.refs_images, refs_split=args.refs_split,
        noise=() if args.noise is None else (tuple(args.noise) or DEFAULT_NOISE),
        controls=args.controls, stage0_baseline=args.stage0_baseline, matcher=args.matcher, synonyms=args.synonyms,
        max_images=args.max_images,
        seed=args.seed, batch_regions=args.batch_regions, max_new_tokens=args.max_new_tokens, resume=args.resume,
        overwrite=args.overwrite, progress=not args.no_progress,
    )
    explicit = {k: getattr(args, k) for k in ("coco", "images", "vqa", "refs", "tasks") if getattr(args, k)}
    if args.class_prompts:
        options["classification_prompts"] = tuple(args.class_prompts)
    if args.world is not None:
        config = EvalConfig.for_world(args.world, args.out, **options)
        return config.with_options(**explicit) if explicit else config
    return EvalConfig(out_dir=args.out, **explicit, **options)


@cli_main("chatspot-eval")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from transformers.utils import logging as hf_logging

    from chatspot_ros.evaluation import evaluate
    from chatspot_ros.pipeline import ChatSpot
    from chatspot_ros.runtime import RuntimeConfig

    hf_logging.disable_progress_bar()
    command = shlex.join(["chatspot-eval", *(sys.argv[1:] if argv is None else argv)])
    chatspot = None
    try:
        config = config_from_args(args)
        if not args.resume:  # outputs never mix runs: an earlier run is replaced only with --overwrite
            writable_folder(args.out, "--out", overwrite=args.overwrite)
        configure_threads(args.threads)
        dtype = args.dtype or ("float32" if args.device == "cpu" else "float16")
        if args.backend == "vllm":
            chatspot = ChatSpot.from_server(server_config_from_args(args, str(args.model)), dialect=args.dialect)
        else:
            chatspot = ChatSpot.from_config(RuntimeConfig(model_path=str(args.model), device=args.device,
                                                          dtype=dtype, vision_backend=args.vision_backend,
                                                          engine_dir=args.engine_dir,
                                                          quantization=args.quantization), dialect=args.dialect)
        metrics = evaluate(chatspot, config, command=command)
    except KeyboardInterrupt:
        print(f"chatspot-eval: interrupted; continue with --resume --out {args.out}", file=sys.stderr)
        return 130
    except (FileNotFoundError, FileExistsError, ValueError, ImportError, RuntimeError) as err:
        print(f"chatspot-eval: error: {err}", file=sys.stderr)
        return 2
    finally:
        if chatspot is not None:
            chatspot.close()
    print((args.out / "report.md").read_text(encoding="utf-8"))
    print(f"chatspot-eval: {metrics['samples']} samples, {metrics['run']['regions_per_s']:.1f} regions/s; "
          f"outputs in {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
