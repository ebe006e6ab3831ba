"""chatspot-ask: answer a question about regions of one image file (no ROS).

    chatspot-world render --seed 7 --frames 1 --out /tmp/w     # a frame to ask about
    chatspot-ask --model chatspot_ros/models/tabletop --image /tmp/w/images/000000.png \
        --box 144,69,191,116 --question "What can you see in this region?"
    chatspot-ask --model DIR --image PATH --box 10,20,200,240 --point 320,200 \
        --question "What is this?" [--format chatspot] [--templates my_instructions.yaml] \
        [--vision-backend torch] [--json]
    chatspot-ask --backend vllm --server http://127.0.0.1:8000 --model CONFIG_DIR --image PATH ...

One answer per region (boxes and points in the order given; pixel coordinates of the image);
without regions, one answer about the whole image. With --json, one JSON object per line. A region
partly outside the image (or outside what the model sees) is clipped and the clip is reported on
stderr as a warning. Negative coordinates: --box=-10,20,200,240 or --box -10,20,200,240.
The shipped tabletop model knows only the questions its model card lists.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from chatspot_ros.cli.errors import UsageError, cli_main, existing_path, finish_parser
from chatspot_ros.cli.threads import configure_threads
from chatspot_ros.remote.cli import add_backend_arguments, server_config_from_args
from chatspot_ros.runtime.config import DTYPES, QUANTIZATIONS, VISION_BACKENDS

PROG = "chatspot-ask"


def _numbers(text: str, count: int, what: str) -> list[float]:
    parts = [p for p in text.replace(" ", "").split(",") if p]
    if len(parts) != count:
        raise argparse.ArgumentTypeError(f"{what} needs {count} comma-separated numbers, got {text!r}")
    try:
        return [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} needs numbers, got {text!r}") from None


def _box(text: str) -> Any:
    from chatspot_ros.referring import Region

    x1, y1, x2, y2 = _numbers(text, 4, "--box")
    try:
        return Region.box(x1, y1, x2, y2)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _point(text: str) -> Any:
    from chatspot_ros.referring import Region

    x, y = _numbers(text, 2, "--point")
    return Region.point(x, y)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__)
    parser.add_argument("--model", required=True,
                        help="local checkpoint folder (llava-hf layout); with --backend vllm, a local copy of the "
                             "served checkpoint's config files")
    parser.add_argument("--image", required=True, help="image file (JPEG, PNG, ...)")
    parser.add_argument("--box", dest="regions", action="append", type=_box, default=[],
                        metavar="X1,Y1,X2,Y2", help="a box in pixels (repeatable)")
    parser.add_argument("--point", dest="regions", action="append", type=_point,
                        metavar="X,Y", help="a point in pixels (repeatable; default: no regions, the whole image)")
    parser.add_argument("--question", required=True, help="the question; asked once per region")
    parser.add_argument("--style", choices=("short", "detail"), default=None,
                        help="append the answer-style tag of config/instructions.yaml ('Answer in short.'); "
                             "default: none")
    parser.add_argument("--format", dest="dialect", default=None,
                        help="coordinate dialect (default: the checkpoint's)")
    parser.add_argument("--templates", default="", metavar="YAML",
                        help="instruction templates file (default: the installed config/instructions.yaml)")
    parser.add_argument("--vision-backend", default="torch", choices=VISION_BACKENDS,
                        help="what runs the vision tower (docs/runtime.md)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: one per core, waiting threads sleep; docs/evaluation.md)")
    parser.add_argument("--dtype", default=None, choices=DTYPES, help="default: float32 on cpu, float16 on cuda")
    parser.add_argument("--quantization", default="none", choices=QUANTIZATIONS,
                        help="weight-only quantization of the LLM (torchao): int8, int4 (CUDA)")
    parser.add_argument("--engine-dir", default="engines", help="TensorRT/ONNX engine cache (chatspot-build-engine)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="answer length budget in tokens")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--verbose", action="store_true", help="log what loads and runs; tracebacks on errors")
    add_backend_arguments(parser.add_argument_group("backend"))
    return finish_parser(parser)


def _join_negative_values(argv: Sequence[str]) -> list[str]:
    """``--box -10,20,30,40`` -> ``--box=-10,20,30,40``: argparse would take ``-10,...`` for a flag."""
    out: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg in ("--box", "--point"):
            value = next(it, None)
            if value is not None and value.startswith("-") and value[1:2].isdigit():
                out.append(f"{arg}={value}")
                continue
            out.append(arg)
            if value is not None:
                out.append(value)
            continue
        out.append(arg)
    return out


def read_image(path: str) -> np.ndarray:
    import cv2

    existing_path(path, "--image", kind="file", hint="give an image file (JPEG, PNG, ...)")
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise UsageError(f"--image {path}: OpenCV cannot read it as an image; give a JPEG, PNG, BMP or TIFF file")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _region_json(region: Any) -> dict[str, Any]:
    return {"kind": region.kind.name.lower(), "points": [list(p) for p in region.points]}


def _check_model(path: str) -> None:
    """A local checkpoint folder: fail early with one line instead of a loader traceback."""
    existing_path(path, "--model", kind="dir", hint="give a checkpoint folder, e.g. chatspot_ros/models/tabletop")
    if not (Path(path) / "config.json").is_file():
        raise UsageError(f"--model {path} has no config.json; give a checkpoint folder (llava-hf layout), "
                         f"e.g. chatspot_ros/models/tabletop")


def _damaged_weights(err: Exception, model: str) -> UsageError | None:
    """A truncated or corrupt weights file, as one line (safetensors raises its own error type)."""
    name = type(err).__name__
    text = str(err)
    if name == "SafetensorError" or "deserializ" in text or "header" in text.lower() and "safetensors" in text:
        return UsageError(f"--model {model}: a weights file is damaged or truncated ({text.splitlines()[0]}); "
                          f"copy the checkpoint again")
    return None


@cli_main(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(_join_negative_values(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from transformers.utils import logging as hf_logging

    from chatspot_ros.pipeline import ChatSpot, load_templates
    from chatspot_ros.runtime import GenerationConfig, RuntimeConfig

    hf_logging.disable_progress_bar()
    chatspot = None
    frame = read_image(args.image)
    if args.templates:
        existing_path(args.templates, "--templates", kind="file")
    if args.backend != "vllm":
        _check_model(args.model)
    configure_threads(args.threads)
    try:
        dtype = args.dtype or ("float32" if args.device == "cpu" else "float16")
        gen = GenerationConfig(max_new_tokens=args.max_new_tokens)
        templates = load_templates(args.templates)
        if args.backend == "vllm":
            chatspot = ChatSpot.from_server(server_config_from_args(args, args.model), dialect=args.dialect,
                                            templates=templates)
        else:
            config = RuntimeConfig(model_path=args.model, device=args.device, dtype=dtype,
                                   vision_backend=args.vision_backend, engine_dir=args.engine_dir,
                                   quantization=args.quantization)
            chatspot = ChatSpot.from_config(config, dialect=args.dialect, templates=templates)
        size = (frame.shape[1], frame.shape[0])
        regions = [[r] for r in args.regions] if args.regions else [[]]
        requests = [chatspot.builder.ask(args.question, r, size, style=args.style) for r in regions]
        answers = chatspot.answer(frame, args.image, requests, gen)
    except (FileNotFoundError, ValueError, ImportError, RuntimeError) as err:
        raise UsageError(str(err)) from err
    except Exception as err:  # noqa: BLE001 (only a damaged weights file is the user's; the rest re-raises)
        damaged = _damaged_weights(err, args.model)
        if damaged is None:
            raise
        raise damaged from err
    finally:
        if chatspot is not None:
            chatspot.close()
    reported: set[str] = set()
    for answer in answers:
        for note in answer.instruction.notes:
            if note not in reported:  # the region adjustments docs/referring.md promises to report
                reported.add(note)
                print(f"{PROG}: warning: {note}", file=sys.stderr)
        _print_answer(answer, args.json)
    return 0


def _print_answer(answer: Any, as_json: bool) -> None:
    region = answer.instruction.regions[0] if answer.instruction.regions else None
    if as_json:
        print(json.dumps({
            "region": _region_json(region) if region is not None else None,
            "instruction": answer.instruction.text,
            "prompt": answer.prompt,
            "answer": answer.text,
            "vision_ms": round(answer.vision_ms, 3),
            "prefill_ms": round(answer.generation.prefill_ms, 3),
            "decode_ms": round(answer.generation.decode_ms, 3),
            "tokens": answer.generation.tokens,
        }), flush=True)
    else:
        where = f"{region.kind.name.lower()} {list(region.points)}" if region is not None else "image"
        print(f"[{where}] {answer.instruction.text}\n  -> {answer.text}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
