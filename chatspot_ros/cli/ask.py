"""chatspot-ask: answer a question about regions of one image file (no ROS).

    chatspot-ask --model DIR --image PATH --box 10,20,200,240 --point 320,200 \
        --question "What is this?" [--format chatspot] [--templates my_instructions.yaml] \
        [--vision-backend torch] [--json]
    chatspot-ask --backend vllm --server http://127.0.0.1:8000 --model CONFIG_DIR --image PATH ...

One answer per region (boxes and points in the order given; pixel coordinates of the image);
without regions, one answer about the whole image. With --json, one JSON object per line.
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

from chatspot_ros.remote.cli import add_backend_arguments, server_config_from_args
from chatspot_ros.runtime.config import DTYPES, QUANTIZATIONS, VISION_BACKENDS


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
    parser = argparse.ArgumentParser(prog="chatspot-ask", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True,
                        help="local checkpoint folder (llava-hf layout); with --backend vllm, a local copy of the "
                             "served checkpoint's config files")
    parser.add_argument("--image", required=True, help="image file (JPEG, PNG, ...)")
    parser.add_argument("--box", dest="regions", action="append", type=_box, default=[],
                        metavar="X1,Y1,X2,Y2", help="a box in pixels (repeatable)")
    parser.add_argument("--point", dest="regions", action="append", type=_point,
                        metavar="X,Y", help="a point in pixels (repeatable)")
    parser.add_argument("--question", required=True, help="the question; asked once per region")
    parser.add_argument("--format", dest="dialect", default=None,
                        help="coordinate dialect (default: the checkpoint's)")
    parser.add_argument("--templates", default="", metavar="YAML",
                        help="instruction templates file (default: the installed config/instructions.yaml)")
    parser.add_argument("--vision-backend", default="torch", choices=VISION_BACKENDS)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--dtype", default=None, choices=DTYPES, help="default: float32 on cpu, float16 on cuda")
    parser.add_argument("--quantization", default="none", choices=QUANTIZATIONS,
                        help="weight-only quantization of the LLM (torchao): int8, int4 (CUDA)")
    parser.add_argument("--engine-dir", default="engines")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--verbose", action="store_true")
    add_backend_arguments(parser.add_argument_group("backend"))
    return parser


def read_image(path: str) -> np.ndarray:
    import cv2

    if not Path(path).is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"OpenCV cannot read {path} as an image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _region_json(region: Any) -> dict[str, Any]:
    return {"kind": region.kind.name.lower(), "points": [list(p) for p in region.points]}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from transformers.utils import logging as hf_logging

    from chatspot_ros.pipeline import ChatSpot, load_templates
    from chatspot_ros.runtime import GenerationConfig, RuntimeConfig

    hf_logging.disable_progress_bar()
    chatspot = None
    try:
        dtype = args.dtype or ("float32" if args.device == "cpu" else "float16")
        frame = read_image(args.image)
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
        requests = [chatspot.builder.ask(args.question, r, size) for r in regions]
        answers = chatspot.answer(frame, args.image, requests, gen)
    except (FileNotFoundError, ValueError, ImportError, RuntimeError) as err:
        print(f"chatspot-ask: error: {err}", file=sys.stderr)
        return 2
    finally:
        if chatspot is not None:
            chatspot.close()
    for answer in answers:
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
